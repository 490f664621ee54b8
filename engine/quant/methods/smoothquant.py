"""SmoothQuant W8A8 (Xiao et al., 2022, arXiv:2211.10438).

Activation outliers are migrated into the weights with strength ``alpha`` (default 0.5): for the
Linears that read a norm's output, ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` per input
channel (``max|W_j|`` over all those Linears' rows), ``X / s`` is folded into the norm's weight and
``W * s`` into the Linears. Weights are then rounded to int8 per output channel; at run time the
``w8a8`` kernel backend quantizes activations to int8 per token, dynamically, and multiplies
int8 x int8 -> int32 (see ``engine/quant/layers.py``). o_proj and down_proj are not smoothed (their
inputs have no norm before them), as in the paper's Llama recipe; they still run W8A8. Which norm
feeds which Linears is traced per architecture (:mod:`engine.quant.arch`); groups without one (OLMo-2's
post-norm blocks) are not smoothed and are listed under ``skipped``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from engine.quant.arch import fold_plan, fold_scale
from engine.quant.formats import FormatSpec
from engine.quant.methods import LinearStats, MethodConfig, MethodSpec, register
from engine.typed import option


@dataclass(frozen=True)
class SmoothQuantConfig(MethodConfig):
    alpha: float = option(
        0.5, "migration strength: 0 keeps activations as they are, 1 moves all to weights", min=0.0, max=1.0
    )


@torch.no_grad()
def prepare_block(
    block: nn.Module, stats: dict[str, LinearStats], fmt: FormatSpec, cfg: SmoothQuantConfig
) -> dict[str, object]:
    alpha = cfg.alpha
    done: list[str] = []
    plan = fold_plan(block, stats)
    for fold, prev in plan.folds:
        if isinstance(prev, nn.Linear):
            continue
        linears = [cast(nn.Linear, block.get_submodule(n)) for n in fold.linears]
        st = stats[fold.linears[0]]
        w_max = torch.stack([lin.weight.detach().abs().float().amax(dim=0) for lin in linears]).amax(dim=0)
        s = st.absmax.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
        s = s.clamp(min=1e-5)
        fold_scale(prev, fold, linears, s, s)
        st.scale_inputs(s)
        done.append(fold.prev)
    info: dict[str, object] = {"smoothed": done, "alpha": alpha}
    # o_proj / down_proj are not smoothed by design (see above): only norm-less groups are news
    labels = {", ".join(g) for g in plan.linear_groups}
    skipped = {k: v for k, v in plan.skipped.items() if k not in labels}
    if skipped:
        info["skipped"] = skipped
    return info


SMOOTHQUANT = register(
    MethodSpec(
        name="smoothquant",
        description="SmoothQuant W8A8: outliers migrated into weights, int8 weights x int8 per-token activations",
        needs_calibration=True,
        quantize_weight=lambda w, fmt, cfg: fmt.quantize(w),
        prepare_block=prepare_block,
        families=("w8a8",),
        config=SmoothQuantConfig,
    )
)
