"""Expected variant size before anything runs, from the model's config alone (meta tensors)."""

from __future__ import annotations

from pathlib import Path

from engine.quant import primitives as P
from engine.quant.formats import FormatSpec
from engine.quant.pipeline import QuantOptions, targets


def _meta_model(folder: Path):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def quantized_weight_bytes(shape: tuple[int, int], fmt: FormatSpec) -> int:
    out_features, in_features = shape
    group = fmt.group_for(in_features)
    n_groups = -(-in_features // group)
    codes = out_features * P.padded_length(in_features, group) * fmt.bits // 8
    return codes + out_features * n_groups * (2 + (0 if fmt.symmetric else 1))


def estimate_bytes(folder: Path, fmt: FormatSpec, options: QuantOptions = QuantOptions()) -> int:
    """Bytes of weights a variant of the model in ``folder`` takes on disk (tensors only)."""
    model = _meta_model(folder)
    seen: set[int] = set()
    quantized = {} if fmt.is_float else {id(m.weight): m.weight.shape for _, m in targets(model, options)}
    head = model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and head is not None:
        seen.add(id(head.weight))  # stored once, as the embeddings
        quantized.pop(id(head.weight), None)
    total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in quantized:
            total += quantized_weight_bytes(tuple(quantized[id(param)]), fmt)
        else:
            total += param.numel() * 2
    return total
