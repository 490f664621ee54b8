"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv:2210.17323), as published:

* ``H = 2 X^T X / n`` from the calibration inputs of the Linear, dampened by ``percdamp`` times
  its mean diagonal; dead inputs (zero diagonal) get a unit diagonal and a zero weight column;
* the upper Cholesky factor of ``H^-1`` gives each column's error feedback;
* columns are quantized one at a time inside blocks of ``blocksize`` columns, the error spread over
  the block's remaining columns at once and over the rest lazily, once per block (the paper uses
  128; the result is the same up to float rounding, and 32 is several times faster on CPU);
* group-wise scales/zeros are computed from the *updated* weights when a group's first column is
  reached (the format's own statistics: min/max, absmax or mean |w|, so every grid works, 1-bit
  signs included); with ``act_order`` the columns go in order of decreasing ``diag(H)`` and the
  group parameters are computed first from the original column order ("static groups"), because
  the kernels need contiguous groups;
* ``mse`` (the reference code's ``Quantizer(mse=True)``): each group's range is shrunk to the
  factor that minimises ``sum |w - q(w)|^2.4``; on by default at 4 bits and fewer.

The result is built with ``fmt.quantize(Q, scales=, zeros=)``, so it is an ordinary
``QuantizedWeight`` of the format and runs on the same kernels as RTN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import torch

from engine.quant.formats import FormatSpec, QuantizedWeight
from engine.quant.methods import LinearStats, MethodConfig, MethodSpec, register
from engine.typed import option

F16_TINY = torch.finfo(torch.float16).tiny


def group_params(fmt: FormatSpec, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The format's scale (rounded through f16, as stored) and zero for ``cols`` ``[out, k]``."""
    groups = cols.unsqueeze(1)
    scales, zeros = fmt.default_params(groups, torch.ones_like(groups, dtype=torch.bool))
    scales = scales[:, 0].to(torch.float16).float().clamp(min=F16_TINY)
    return scales, None if zeros is None else zeros[:, 0]


def search_params(
    fmt: FormatSpec, cols: torch.Tensor, norm: float = 2.4, grid: int = 100, maxshrink: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GPTQ's ``mse`` option (the reference code's ``Quantizer.find_params(mse=True)``): shrink the
    group's range by ``p = 1 - i / grid`` (``i`` up to ``maxshrink * grid``) and keep, per row, the
    ``p`` with the smallest ``sum |w - q(w)|^norm``. Every grid's statistic scales with ``p``
    (min/max, absmax, mean |w|), so ``default_params(p * cols)`` is each format's shrunk range.

    Searched coarse to fine (every 4th step, then the 3 steps either side of each row's best):
    27 evaluations instead of 81, which finds the same minimum wherever the error is unimodal
    in ``p`` (it is, for min/max ranges, up to rounding plateaus)."""
    rows = cols.shape[0]
    top = int(maxshrink * grid)
    best_i = torch.zeros(rows, dtype=torch.long, device=cols.device)
    best_err = _shrunk_error(fmt, cols, best_i, grid, norm)

    def consider(i: torch.Tensor) -> None:
        nonlocal best_i, best_err
        err = _shrunk_error(fmt, cols, i, grid, norm)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_i = torch.where(better, i, best_i)

    for i in range(4, top + 1, 4):
        consider(torch.full((rows,), i, device=cols.device))
    centre = best_i.clone()
    for j in (-3, -2, -1, 1, 2, 3):
        consider((centre + j).clamp(0, top))
    return group_params(fmt, cols * (1.0 - best_i.to(cols.dtype) / grid).unsqueeze(1))


def _shrunk_error(
    fmt: FormatSpec, cols: torch.Tensor, i: torch.Tensor, grid: int, norm: float
) -> torch.Tensor:
    """Per row: ``sum |w - q(w)|^norm`` with the range shrunk by ``1 - i / grid`` (``i`` per row)."""
    s, z = group_params(fmt, cols * (1.0 - i.to(cols.dtype) / grid).unsqueeze(1))
    return (quantize_column(fmt, cols, s, z) - cols).abs_().pow_(norm).sum(1)


def quantize_column(
    fmt: FormatSpec, cols: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Round ``cols`` (one column ``[out]`` or columns ``[out, k]`` of one group) to the format's
    grid with per-row ``scale`` / ``zero`` ``[out]``; returns their real values, shaped as ``cols``."""
    out = cols.shape[0]
    q = fmt.encode(cols.reshape(out, 1, -1), scale.view(-1, 1, 1), None if zero is None else zero.view(-1, 1))
    z = zero.view(-1, 1) if zero is not None else fmt.zero_const
    return ((fmt.mult * q.reshape(out, -1).float() - z) * scale.view(-1, 1)).view_as(cols)


def column_quantizer(
    fmt: FormatSpec, scale: torch.Tensor, zero: torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fast ``col -> real value`` for one group (same result as :func:`quantize_column`)."""
    if fmt.grid == "sign":
        neg = -scale
        return lambda w: torch.where(w >= 0, scale, neg)
    z = zero if zero is not None else torch.full_like(scale, fmt.zero_const)
    inv = 1.0 / (scale * fmt.mult)
    zm = z / fmt.mult
    step = scale * fmt.mult
    offset = z * scale
    qmax = float(fmt.levels - 1)
    return lambda w: torch.addcmul(zm, w, inv).round_().clamp_(0.0, qmax).mul_(step).sub_(offset)


def _inverse_cholesky(holder: list[torch.Tensor], percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp I)^-1``; ``H`` (``holder``'s only item) is consumed,
    so at most two ``n x n`` matrices are alive at once (a 9728-wide down_proj: 2 x 378 MB)."""
    H = holder.pop()
    damp = float(percdamp * torch.mean(torch.diag(H)))
    added = 0.0
    for factor in (1.0, 10.0, 100.0, 1000.0):
        H.diagonal().add_(damp * factor - added)
        added = damp * factor
        L, info = torch.linalg.cholesky_ex(H)
        if int(info) == 0:
            del H
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0:
                return cast(torch.Tensor, U)  # torch's stubs type cholesky_ex's result as Any
            break
    # torch.linalg re-exports LinAlgError as `_LinAlgError as LinAlgError`, which mypy does not
    # count as an explicit export; it is the documented public name
    raise torch.linalg.LinAlgError(  # type: ignore[attr-defined]
        "GPTQ: Hessian is not positive definite even with 1000x dampening"
    )


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    fmt: FormatSpec,
    blocksize: int = 32,
    percdamp: float = 0.01,
    act_order: bool = False,
    own_h: bool = False,
    mse: bool = False,
) -> QuantizedWeight:
    """GPTQ of ``weight`` ``[out, in]`` given ``H`` ``[in, in]``; ``own_h``: ``H`` may be overwritten."""
    W = weight.detach().float().clone()
    H = H.detach().float()
    H = H if own_h else H.clone()
    out_features, n = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    gs = fmt.group_for(n)
    n_groups = -(-n // gs)
    scales = torch.zeros(out_features, n_groups, device=W.device)
    zeros = None if fmt.symmetric else torch.zeros(out_features, n_groups, device=W.device)

    def set_group(g: int, cols: torch.Tensor) -> None:
        s, z = search_params(fmt, cols) if mse else group_params(fmt, cols)
        scales[:, g] = s
        if zeros is not None:
            zeros[:, g] = cast(torch.Tensor, z)  # an asymmetric format's params always have zeros

    perm = None
    if act_order:
        for g in range(n_groups):  # static groups: parameters from the original column order
            set_group(g, W[:, g * gs : (g + 1) * gs])
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    group_of: list[int] = ((perm if perm is not None else torch.arange(n, device=W.device)) // gs).tolist()
    holder = [H]
    del H
    U = _inverse_cholesky(holder, percdamp)
    Q = torch.zeros_like(W)
    current = -1
    quant: Callable[[torch.Tensor], torch.Tensor] | None = None
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1).tolist()
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if perm is None and col % gs == 0:
                # the group's statistics from the weights as updated so far
                ahead = W1[:, i : i + gs] if i + gs <= i2 - i1 else torch.cat([W1[:, i:], W[:, i2:]], 1)
                set_group(g, ahead[:, :gs])
            if g != current:
                current = g
                quant = column_quantizer(fmt, scales[:, g], None if zeros is None else zeros[:, g])
            assert quant is not None  # set at the first column (current starts at -1)
            w = W1[:, i]
            q = quant(w)
            Q1[:, i] = q
            err = (w - q).div_(d[i])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:].addmm_(E1, U[i1:i2, i2:], alpha=-1.0)
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return fmt.quantize(Q, scales=scales, zeros=zeros)


@dataclass(frozen=True)
class GPTQConfig(MethodConfig):
    blocksize: int = option(
        32, "columns per lazy-update block (speed only; the paper uses 128, 32 is faster on CPU)", min=1
    )
    percdamp: float = option(
        0.01, "dampening added to diag(H), as a fraction of its mean", min=1e-9, max=10.0
    )
    act_order: bool = option(False, "quantize columns in decreasing diag(H) order (static groups)")
    # auto: on for formats of 4 bits or fewer (min/max ranges waste levels on outliers: on the
    # default model it lowers int4-g64's KLD from 0.36 to 0.28 and int2-g64's from 12.1 to 6.9,
    # for ~15 s more), off at 8 bits
    mse: bool | None = option(
        None, "shrink each group's range to minimise |w - q|^2.4 (auto: on at <= 4 bits)"
    )

    def resolved(self, fmt: FormatSpec) -> GPTQConfig:
        return self if self.mse is not None else replace(self, mse=fmt.bits <= 4)


def quantize_linear(
    weight: torch.Tensor, stats: LinearStats | None, fmt: FormatSpec, cfg: GPTQConfig
) -> QuantizedWeight:
    if stats is None:
        return fmt.quantize(weight)
    return gptq_quantize(
        weight,
        stats.take_hessian(),
        fmt,
        blocksize=cfg.blocksize,
        percdamp=cfg.percdamp,
        act_order=cfg.act_order,
        mse=cfg.resolved(fmt).mse is True,
        own_h=True,  # the stats' own accumulator, scaled in place: no n x n copy
    )


GPTQ = register(
    MethodSpec(
        name="gptq",
        description="GPTQ: second-order error feedback from calibration inputs (Frantar et al. 2022)",
        needs_calibration=True,
        quantize_weight=lambda w, fmt, cfg: fmt.quantize(w),
        quantize_linear=quantize_linear,
        config=GPTQConfig,
    )
)
