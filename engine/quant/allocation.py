"""A bit budget: each decoder Linear gets its own format, chosen so that the summed output error is
least at a requested average bits per weight (llama.cpp's mixed quants, HAWQ-style sensitivity).

``--bits-per-weight 2.5`` (or a recipe name, ``mixed-2.5``) with ``--format FLOOR``: the candidates
are FLOOR and every format of :data:`CANDIDATES` that stores more bits per weight than it (``--format
mixed``: the candidates within :data:`MIXED_SPREAD` bits under the budget, and every wider one).
Two passes over the blocks:

1. **Measure** (:func:`measure`): the calibration windows go through the float blocks one at a time
   (as :func:`engine.quant.blocks.quantize_blocks` does); for every Linear and every candidate ``c``
   the output error of round-to-nearest, ``||(W - Q_c(W)) X||^2 = tr(dW H dW^T)`` with ``H`` the sum
   of ``x x^T`` over every calibration token (mean per token; on the token sample for a Linear
   with more inputs than sampled tokens, where that is cheaper), and its storage,
   ``c.storage_bytes(shape)`` (the one size formula; a 16-bit candidate is 2 bytes a weight).
2. **Solve** (:func:`solve`): a multiple-choice knapsack, minimise the summed error with the summed
   bits at most ``budget x weights``, by dynamic programming over the budget in small units (each
   Linear's cost above its cheapest format, exact where the costs fit in :data:`UNITS` units of
   their greatest common divisor, else rounded *up* to 1/UNITS of the range, so the average reached
   never exceeds the budget; the solution is exact for those costs, and a larger budget never
   gives a larger error).

Then :func:`engine.quant.blocks.quantize_blocks` quantizes each Linear with the user's method in its
chosen format (a Linear given a 16-bit format stays a float Linear). The budget counts the decoder
blocks' Linears only: embeddings and the LM head stay 16-bit (``--quantize-embeddings`` /
``--quantize-head`` are refused with a budget). The model is held in memory (no streaming: the
choice needs every block's statistics before the first block is quantized).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.errors import Cancelled, QtuiError
from engine.progress import ProgressFn
from engine.quant.blocks import _hidden, capture_inputs, collect_stats
from engine.quant.formats import FormatSpec, get_format
from engine.quant.methods import LinearStats, MethodSpec
from engine.quant.plan import QuantOptions, decoder_layers

# what a budget chooses among (more group sizes give the solver finer steps)
CANDIDATES = (
    "q1_0_g128",
    "int2-g128",
    "int2-g64",
    "int2-g32",
    "int3-g128",
    "int3-g64",
    "int4-g128",
    "int4-g64",
    "int4-g32",
    "int8",
    "bf16",
)
MIXED = "mixed"  # --format mixed: the candidates within MIXED_SPREAD bits under the budget
# --format mixed leaves out formats more than this many bits/weight under the budget. The solver sums
# per-Linear output errors, and that sum cannot see how errors compound through the blocks: at 2.5
# bits/weight over every candidate it put 69-78 of 210 Linears in 1-bit and the rest mostly in int3
# (KLD 5.8-7.0 on the default model, worse than uniform int2-g64's 3.2), while over int2-g128 and
# wider it reached 2.3 (bench/RESULTS.md, issue 10). A floor given as a format (--format int2-g64)
# offers that format and every wider one, as before.
MIXED_SPREAD = 1.0
MAX_BITS = 16.0
UNITS = 1 << 17  # the solver's resolution: the model's Linears at 16 bits are this many units


@dataclass(frozen=True)
class Recipe:
    name: str
    bits: float
    description: str


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("mixed-2.5", 2.5, "about int2 with the sensitive Linears wider (issue 10's target)"),
        Recipe("mixed-3.5", 3.5, "between int3 and int4, the sensitive Linears at 4-8 bits"),
        Recipe("mixed-4.5", 4.5, "int4 with the most sensitive Linears at 8 or 16 bits"),
    )
}


def parse_budget(text: str | float) -> float:
    """``2.5``, ``mixed-2.5`` or a recipe name -> bits per weight (range checked by :func:`check`)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = text.strip().lower()
        recipe = RECIPES.get(raw)
        try:
            value = recipe.bits if recipe else float(raw.removeprefix(f"{MIXED}-"))
        except ValueError:
            names = ", ".join(RECIPES)
            raise QtuiError(
                f"--bits-per-weight {text!r} is neither a number (2.5) nor a recipe ({names}, mixed-B)"
            ) from None
    if not math.isfinite(value):
        raise QtuiError(f"--bits-per-weight must be a finite number, got {text!r}")
    return value


def floor_format(name: str, group_size: int | None = None, symmetric: bool | None = None) -> FormatSpec:
    """``--format``: ``mixed`` is the smallest candidate; anything else a format name."""
    if name.strip().lower() == MIXED:
        return get_format(CANDIDATES[0])
    return get_format(name, group_size, symmetric)


def candidates(floor: FormatSpec, budget: float | None = None) -> tuple[FormatSpec, ...]:
    """``floor`` and every candidate that stores more bits per weight (by its nominal figure); for
    ``--format mixed`` with a ``budget``, only those within :data:`MIXED_SPREAD` bits under it (and
    never none under it)."""
    specs = [floor] + [get_format(n) for n in CANDIDATES]
    out: dict[str, FormatSpec] = {}
    for spec in specs:
        if spec.bits_per_weight() < floor.bits_per_weight() or spec.name in out:
            continue
        out[spec.name] = spec
    ordered = sorted(out.values(), key=lambda s: s.bits_per_weight())
    if budget is not None and is_mixed(floor):
        under = [s for s in ordered if s.bits_per_weight() <= budget]
        lowest = min(budget - MIXED_SPREAD, under[-1].bits_per_weight() if under else 0.0)
        ordered = [s for s in ordered if s.bits_per_weight() >= lowest - 1e-9] if under else ordered
    return tuple(ordered)


def is_mixed(floor: FormatSpec) -> bool:
    """Whether a budget over ``floor`` is ``--format mixed`` (every candidate)."""
    return floor.name == CANDIDATES[0]


def check(floor: FormatSpec, method: MethodSpec, options: QuantOptions) -> None:
    """A budget's one-line refusals, before any model is loaded."""
    bits = options.bits_per_weight
    if bits is None:
        return
    if floor.is_float:
        raise QtuiError(
            f"a bit budget chooses among quantized formats: give --format mixed or a floor such as "
            f"int2-g64, not {floor.name}"
        )
    if options.keep_sensitive:
        raise QtuiError("--bits-per-weight already keeps sensitive Linears wider; drop --keep-sensitive")
    if options.quantize_embeddings or options.quantize_head:
        raise QtuiError(
            "--bits-per-weight counts the decoder blocks' Linears only; drop --quantize-embeddings/--quantize-head"
        )
    if method.families is not None:
        raise QtuiError(
            f"method {method.name} takes {', '.join(method.families)} only: it has no formats to mix"
        )
    cands = candidates(floor, bits)
    low = cands[0].bits_per_weight()
    if not low <= bits <= MAX_BITS:
        raise QtuiError(
            f"--bits-per-weight {bits:g} is outside {low:g}..{MAX_BITS:g} "
            f"(the smallest format here, {cands[0].name}, takes {low:g} bits/weight)"
        )


@dataclass
class Sensitivity:
    """Pass 1: per Linear (forward order) its shape and, per candidate, error and stored bits."""

    candidates: tuple[FormatSpec, ...]
    names: list[str] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    errors: list[list[float]] = field(default_factory=list)  # mean squared output error per token
    bits: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Allocation:
    target: float
    achieved: float  # bits per weight over the blocks' Linears, with the chosen formats
    candidates: tuple[str, ...]
    choice: dict[str, str]  # Linear -> format name
    error: float  # the summed output error the choice predicts (pass 1, RTN)
    seconds: float  # measuring and solving

    def formats(self) -> dict[str, FormatSpec]:
        return {name: get_format(f) for name, f in self.choice.items()}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.choice.values():
            out[f] = out.get(f, 0) + 1
        order = {n: i for i, n in enumerate(self.candidates)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], -1)))

    def describe(self) -> dict[str, object]:
        """What the manifest records (``bit_budget``)."""
        return {
            "target": self.target,
            "achieved": round(self.achieved, 4),
            "candidates": list(self.candidates),
            "counts": self.counts(),
            "choice": dict(self.choice),
            "predicted_error": self.error,
            "seconds": round(self.seconds, 3),
        }


def summary(described: Mapping[str, Any] | None) -> str:
    """One line from :meth:`Allocation.describe` (a manifest's ``bit_budget``): target, reached, counts."""
    if not described:
        return ""
    counts = ", ".join(f"{f} x{n}" for f, n in dict(described.get("counts") or {}).items())
    return (
        f"bit budget {float(described['target']):g}: {float(described['achieved']):.3f} bits/weight "
        f"over the blocks' Linears ({counts})"
    )


def output_error(w: torch.Tensor, fmt: FormatSpec, st: LinearStats | None) -> float:
    """The mean squared output error per token of ``dW = W - Q(W)`` (RTN; a 16-bit format: the
    cast) on the calibration inputs: ``tr(dW H dW^T)`` with ``H = X^T X / n`` over every token, or
    ``||dW x||^2`` averaged over the token sample where that is cheaper (more inputs than sampled
    tokens: down_proj); ``||dW||^2`` for a Linear that saw no input."""
    wq = w.to(fmt.torch_dtype).float() if fmt.is_float else fmt.fake_quantize(w)
    dw = w - wq
    if not bool(dw.any()):
        return 0.0
    if st is None:
        return float(dw.pow(2).sum())
    if st.sample_tokens < w.shape[1]:
        x = st.sample
        return float((x @ dw.t()).pow(2).sum()) / max(x.shape[0], 1)
    return float(((dw @ (st.hessian() / 2)) * dw).sum())


@torch.no_grad()
def measure(
    model: nn.Module,
    cands: tuple[FormatSpec, ...],
    ids: torch.Tensor,
    options: QuantOptions,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: torch.device | str | None = None,
) -> Sensitivity:
    """Pass 1 (see the module doc): the float blocks, one at a time on ``device``."""
    t0 = time.perf_counter()
    device = torch.device(device or "cpu")
    layers = decoder_layers(model)
    inputs, block_kwargs = capture_inputs(model, ids, options.batch_size, device)
    out = Sensitivity(cands)
    for b, block in enumerate(layers):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"quantization cancelled while measuring block {b} for the bit budget")
        if progress:
            progress(b, len(layers), f"bit budget: measuring block {b + 1}/{len(layers)}")
        inputs = [(h, kw) for (h, _), kw in zip(inputs, block_kwargs[b], strict=True)]
        dtype = next(block.parameters()).dtype
        block.to(device=device, dtype=torch.float32)
        stats = collect_stats(block, inputs, options.sample_tokens)
        for name, module in block.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            st = stats.get(name)
            w = module.weight.detach().float()
            shape = (w.shape[0], w.shape[1])
            out.names.append(f"model.layers.{b}.{name}")
            out.shapes.append(shape)
            out.errors.append([output_error(w, c, st) for c in cands])
            out.bits.append([c.storage_bytes(shape) * 8 for c in cands])
        del stats
        inputs = [(_hidden(block(h, **kw)), kw) for h, kw in inputs]
        block.to(device="cpu", dtype=dtype)
    if progress:
        progress(len(layers), len(layers), "bit budget: measured")
    out.seconds = time.perf_counter() - t0
    return out


def solve(bits: list[list[int]], errors: list[list[float]], budget_bits: float) -> list[int]:
    """The candidate index per item that minimises the summed error with the summed bits at most
    ``budget_bits`` (see the module doc); a budget no choice meets is a :class:`QtuiError`."""
    n = len(bits)
    if n == 0:
        return []
    # costs above each item's cheapest choice, rounded up to units: the cheapest choice of every
    # item always fits a budget that exact bits allow, and rounding only ever undershoots
    base = [min(row) for row in bits]
    spare = budget_bits - sum(base)
    if spare < 0:
        raise QtuiError("budget below the smallest size")  # callers check first, with a better message
    extra = [c - b for row, b in zip(bits, base, strict=True) for c in row]
    step = math.gcd(*extra) or 1  # exact costs when they are few enough units, else rounded
    span = sum(max(row) - b for row, b in zip(bits, base, strict=True))
    unit = float(step) if span / step <= UNITS else span / UNITS
    cost = [[math.ceil((c - b) / unit) for c in row] for row, b in zip(bits, base, strict=True)]
    cap = int(math.floor(spare / unit + 1e-9))
    inf = float("inf")
    dp = torch.zeros(cap + 1, dtype=torch.float64)  # least error within b units, items so far
    choice = torch.zeros(n, cap + 1, dtype=torch.int8)
    for i in range(n):
        new = torch.full((cap + 1,), inf, dtype=torch.float64)
        pick = torch.zeros(cap + 1, dtype=torch.int8)
        order = sorted(range(len(cost[i])), key=lambda c: cost[i][c])  # ties: the cheaper wins
        for c in order:
            w = cost[i][c]
            if w > cap:
                continue
            cand = dp[: cap + 1 - w] + errors[i][c]
            better = cand < new[w:]
            new[w:] = torch.where(better, cand, new[w:])
            pick[w:] = torch.where(better, torch.tensor(c, dtype=torch.int8), pick[w:])
        dp, choice[i] = new, pick
    out = [0] * n
    b = cap
    for i in range(n - 1, -1, -1):
        c = int(choice[i, b])
        out[i] = c
        b -= cost[i][c]
    return out


def allocate(
    model: nn.Module,
    floor: FormatSpec,
    method: MethodSpec,
    options: QuantOptions,
    ids: torch.Tensor,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: torch.device | str | None = None,
) -> Allocation:
    """Measure (pass 1) and solve: the format of each decoder Linear under ``options.bits_per_weight``."""
    check(floor, method, options)
    target = options.bits_per_weight
    assert target is not None  # check() passed and the caller asked for a budget
    cands = candidates(floor, target)
    sens = measure(model, cands, ids, options, progress, cancel, device)
    t0 = time.perf_counter()
    weights = sum(o * i for o, i in sens.shapes)
    least = sum(min(row) for row in sens.bits) / max(weights, 1)
    if target < least:
        raise QtuiError(
            f"--bits-per-weight {target:g} is below the smallest this model's Linears take "
            f"({least:.3f} bits/weight, every Linear at its smallest format); nothing was saved"
        )
    picks = solve(sens.bits, sens.errors, target * weights)
    achieved = sum(row[c] for row, c in zip(sens.bits, picks, strict=True)) / max(weights, 1)
    return Allocation(
        target=target,
        achieved=achieved,
        candidates=tuple(c.name for c in cands),
        choice={n: cands[c].name for n, c in zip(sens.names, picks, strict=True)},
        error=sum(row[c] for row, c in zip(sens.errors, picks, strict=True)),
        seconds=sens.seconds + time.perf_counter() - t0,
    )
