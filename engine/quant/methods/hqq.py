"""HQQ: Half-Quadratic Quantization (Badri & Shaji, 2023, https://mobiusml.github.io/hqq_blog/),
calibration-free, stored in qtui's own formats so it runs on qtui's kernels.

* Asymmetric grids (``int4-gN``, ``int2-gN-asym``): the ``hqq`` package's own solver,
  ``hqq.core.optimize.optimize_weights_proximal`` (sparsity-promoting lp error, p=0.7), chooses
  each group's scale and *float* zero. qtui stores integer zeros (uint8, so that 0 stays exact and
  the store is the same as RTN's), so the zero is then rounded to the nearest integer and the
  scale is re-fitted by least squares for that zero (``refit`` alternations of encode / refit).
  The cost of rounding is measured in tests and in bench/RESULTS.md.
* Float-zero formats (``int4fz-gN``, ``int2fz-gN``: f16 zero per group, which the int4 kernel runs
  natively) keep hqq's float zero exactly. On the default model this matters: relative weight
  error of int4 g64 is 0.094 (RTN), 0.089 (HQQ, integer zero) and 0.074 (HQQ, float zero).
* Symmetric grids (``int4-gN-sym``, ``int2-gN`` half-step, ``q1_0_g128`` signs) have no zero to
  optimize; the same half-quadratic splitting is applied to the *scale* instead: the error is
  shrunk with hqq's ``shrink_lp_op`` and the scale re-fitted to the shrunk target each step. This
  adaptation is qtui's, not part of the hqq package.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import cast

import torch

from engine.errors import QtuiError
from engine.quant import primitives as P
from engine.quant.formats import FormatSpec, QuantizedWeight
from engine.quant.methods import LinearStats, MethodConfig, MethodSpec, register
from engine.typed import option

F16_TINY = torch.finfo(torch.float16).tiny


def _hqq() -> ModuleType:
    try:
        from hqq.core import optimize
    except ImportError as exc:  # pragma: no cover - hqq is a dependency
        raise QtuiError("the hqq method needs the 'hqq' package: pip install hqq") from exc
    return cast(ModuleType, optimize)  # hqq is not type-checked here (see [tool.mypy])


def _refit_scale(
    groups: torch.Tensor,
    mask: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    fmt: FormatSpec,
    rounds: int,
) -> torch.Tensor:
    """Least-squares scale per group for fixed zeros: s = sum w*l / sum l*l over the codes' levels."""
    for _ in range(rounds):
        q = fmt.encode(groups, scales.unsqueeze(-1), zeros)
        z = zeros.unsqueeze(-1) if zeros is not None else fmt.zero_const
        levels = (fmt.mult * q - z) * mask
        den = (levels * levels).sum(-1)
        new = (groups * levels).sum(-1) / den.clamp(min=1e-12)
        scales = torch.where(den > 0, new, scales).abs().clamp(min=F16_TINY)
        scales = scales.to(torch.float16).float().clamp(min=F16_TINY)
    return scales


@dataclass(frozen=True)
class HQQConfig(MethodConfig):
    lp_norm: float = option(0.7, "p of the sparsity-promoting error norm (p < 1)", min=0.01, max=1.0)
    beta: float = option(10.0, "initial half-quadratic penalty", min=1e-6)
    kappa: float = option(1.01, "growth of the penalty per iteration", min=1.0)
    iters: int = option(20, "solver iterations (early-stopped)", min=1)
    refit: int = option(3, "least-squares scale refits after rounding hqq's float zero to an integer", min=0)


def hqq_affine(
    weight: torch.Tensor, fmt: FormatSpec, cfg: HQQConfig, round_zero: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """hqq's proximal solver on each group; returns (scales, zeros) ``[out, n_groups]`` (qtui convention)."""
    opt = _hqq()
    w = weight.detach().float()
    out_features = w.shape[0]
    groups, mask = P.grouped(w, fmt.group_for(w.shape[1]))
    flat = groups.reshape(-1, groups.shape[-1])
    qmax = fmt.levels - 1
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    scale_h = qmax / (hi - lo).clamp(min=1e-8)  # hqq's convention: W_q = W * scale + zero
    zero_h = -lo * scale_h
    opt_params = {"lp_norm": cfg.lp_norm, "beta": cfg.beta, "kappa": cfg.kappa, "iters": cfg.iters}
    _, scale_h, zero_h = opt.optimize_weights_proximal(
        tensor=flat, scale=scale_h, zero=zero_h, min_max=[0, qmax], axis=1, opt_params=opt_params
    )
    scales = (1.0 / scale_h.float()).reshape(out_features, -1)
    zeros = zero_h.float().reshape(out_features, -1)
    if not round_zero:
        return scales, zeros
    zeros = torch.round(zeros).clamp(0, qmax)
    scales = scales.to(torch.float16).float().clamp(min=F16_TINY)
    return _refit_scale(groups, mask, scales, zeros, fmt, cfg.refit), zeros


def hqq_scale_only(weight: torch.Tensor, fmt: FormatSpec, cfg: HQQConfig) -> torch.Tensor:
    """Half-quadratic splitting on the scale of a symmetric grid (qtui's adaptation, see module doc)."""
    shrink = _hqq().shrink_lp_op
    w = weight.detach().float()
    groups, mask = P.grouped(w, fmt.group_for(w.shape[1]))
    scales, _ = fmt.default_params(groups, mask)
    scales = scales.clamp(min=F16_TINY)
    p, beta, kappa = cfg.lp_norm, cfg.beta, cfg.kappa
    best, best_err = scales, float("inf")
    for _ in range(cfg.iters):
        q = fmt.encode(groups, scales.unsqueeze(-1), None)
        levels = (fmt.mult * q - fmt.zero_const) * mask
        err = (groups - levels * scales.unsqueeze(-1)) * mask
        current = float(err.abs().mean())
        if current < best_err:
            best, best_err = scales, current
        target = groups - shrink(err, beta, p)
        den = (levels * levels).sum(-1)
        new = (target * levels).sum(-1) / den.clamp(min=1e-12)
        scales = torch.where(den > 0, new.abs(), scales).clamp(min=F16_TINY)
        beta *= kappa
    return best


def quantize_weight(weight: torch.Tensor, fmt: FormatSpec, cfg: HQQConfig) -> QuantizedWeight:
    if fmt.grid == "affine":
        scales, zeros = hqq_affine(weight, fmt, cfg, round_zero=fmt.zero_dtype != "float16")
        return fmt.quantize(weight, scales=scales, zeros=zeros)
    return fmt.quantize(weight, scales=hqq_scale_only(weight, fmt, cfg))


def quantize_linear(
    weight: torch.Tensor, stats: LinearStats | None, fmt: FormatSpec, cfg: HQQConfig
) -> QuantizedWeight:
    return quantize_weight(weight, fmt, cfg)


HQQ = register(
    MethodSpec(
        name="hqq",
        description="HQQ: half-quadratic proximal solver for scales/zeros, no calibration (hqq package)",
        needs_calibration=False,
        quantize_weight=quantize_weight,
        quantize_linear=quantize_linear,
        config=HQQConfig,
    )
)
