"""AWQ: activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978).

For each group of Linears that read the same input, a per-input-channel scale
``s = mean|x|^alpha`` (normalised to geometric mean 1) is searched over ``n_grid`` values of
``alpha`` in [0, 1]; the one that minimises the Linears' output error ``||W X - Q(W s) s^-1 X||`` on
the calibration token sample wins. ``W`` is multiplied by ``s`` column-wise and ``1/s`` is folded
into the layer before (an exact rewrite in float), then the weights are rounded to nearest.
``alpha = 0`` is RTN itself, so the search never does worse than RTN on the sample.

Where a scale can fold is discovered per architecture (:mod:`engine.quant.arch`): a norm whose
output is exactly the input of a group of Linears (traced), and the name-based Linear -> Linear
pairs. On a Llama / Qwen / Mistral block:

* ``input_layernorm``          -> q_proj, k_proj, v_proj  (Qwen3's q_norm/k_norm come after the
  projections; the folded scale cancels exactly inside q_proj/k_proj, tested)
* ``self_attn.v_proj``         -> o_proj. With grouped-query attention v_proj has fewer outputs than
  o_proj has inputs (``num_heads / num_kv_heads`` query heads share one value head): the scale is
  averaged over the heads sharing a value head and repeated back, so it folds into v_proj's rows.
* ``post_attention_layernorm`` -> gate_proj, up_proj (Gemma: ``pre_feedforward_layernorm``)
* ``mlp.up_proj``              -> down_proj (Phi-3: the value rows of ``qkv_proj`` -> o_proj, the up
  half of ``gate_up_proj`` -> down_proj)

Groups with nothing to fold into (OLMo-2's q/k/v and gate/up read the residual stream: its norms come
after attention and MLP) are left as RTN and listed under ``skipped`` in what ``prepare_block``
returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

from engine.quant.arch import Fold, fold_plan, fold_scale
from engine.quant.formats import FormatSpec
from engine.quant.methods import LinearStats, MethodConfig, MethodSpec, register
from engine.typed import option

# how a scale is shared under grouped-query attention: (n_rep, head_dim), or None (not shared)
Tying = tuple[int, int] | None


def head_tying(fold: Fold, prev: nn.Module, in_features: int, block: nn.Module) -> Tying | Literal[False]:
    """For a Linear -> Linear pair whose sizes differ (GQA v_proj -> o_proj): (n_rep, head_dim)."""
    if not isinstance(prev, nn.Linear):
        return None
    out = fold.rows[1] if fold.rows else prev.out_features
    if out == in_features:
        return None
    parent = fold.linears[0].rpartition(".")[0]
    head_dim = getattr(block.get_submodule(parent), "head_dim", None)
    if head_dim is None or in_features % out or out % head_dim:
        return False  # cannot be folded: skip this group
    return in_features // out, head_dim


def tie_heads(s: torch.Tensor, tying: Tying) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale for the consumer's inputs, scale for the producer's outputs) under GQA sharing."""
    if tying is None:
        return s, s
    n_rep, head_dim = tying
    kv = s.reshape(-1, n_rep, head_dim).mean(dim=1)  # [kv_heads, head_dim]
    return kv.repeat_interleave(n_rep, dim=0).reshape(-1), kv.reshape(-1)


def output_error(weights: list[torch.Tensor], s: torch.Tensor, x: torch.Tensor, fmt: FormatSpec) -> float:
    total = 0.0
    for w in weights:
        wq = fmt.fake_quantize(w * s.unsqueeze(0)) / s.unsqueeze(0)
        total += float(((w - wq) @ x.t()).pow(2).sum())
    return total


@dataclass(frozen=True)
class AWQConfig(MethodConfig):
    n_grid: int = option(20, "number of alpha values tried in [0, 1)", min=1)


@torch.no_grad()
def prepare_block(
    block: nn.Module, stats: dict[str, LinearStats], fmt: FormatSpec, cfg: AWQConfig
) -> dict[str, object]:
    n_grid = cfg.n_grid
    chosen: dict[str, str | float] = {}
    plan = fold_plan(block, stats)
    for fold, prev in plan.folds:
        linears = [cast(nn.Linear, block.get_submodule(n)) for n in fold.linears]
        st = stats[fold.linears[0]]
        tying = head_tying(fold, prev, linears[0].in_features, block)
        if tying is False:
            chosen[fold.prev] = "skipped (shapes do not fold)"
            continue
        x = st.sample
        x_mean = st.absmean.clamp(min=1e-6)
        weights = [lin.weight.detach().float() for lin in linears]
        best_alpha, best_err = 0.0, float("inf")
        best_s: tuple[torch.Tensor, torch.Tensor] | None = None
        for k in range(n_grid):
            alpha = k / n_grid
            s = x_mean.pow(alpha)
            s = s / (s.max() * s.min()).sqrt()
            s_in, s_prev = tie_heads(s, tying)
            err = output_error(weights, s_in, x, fmt)
            if err < best_err:
                best_alpha, best_err, best_s = alpha, err, (s_in, s_prev)
        assert best_s is not None  # set at alpha = 0 (any finite error is below inf)
        s_in, s_prev = best_s
        if best_alpha > 0:
            fold_scale(prev, fold, linears, s_in, s_prev)
            st.scale_inputs(s_in)
        chosen[fold.prev] = round(best_alpha, 3)
    info: dict[str, object] = {"alpha": chosen}
    if plan.skipped:
        info["skipped"] = plan.skipped
    return info


AWQ = register(
    MethodSpec(
        name="awq",
        description="AWQ: activation-aware per-channel scales (grid over alpha), folded into the layer before",
        needs_calibration=True,
        quantize_weight=lambda w, fmt, cfg: fmt.quantize(w),
        prepare_block=prepare_block,
        config=AWQConfig,
    )
)
