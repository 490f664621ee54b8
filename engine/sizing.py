"""Expected variant size before anything runs, from the model's config alone (meta tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.quant.formats import FormatSpec
from engine.quant.pipeline import QuantOptions, targets

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _meta_model(folder: Path) -> PreTrainedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    # torch's device context is thread-local; accelerate's init_empty_weights patches nn.Module
    # globally and would put a model another thread is loading at that moment on "meta"
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def estimate_bytes(folder: Path, fmt: FormatSpec, options: QuantOptions = QuantOptions()) -> int:
    """Bytes of weights a variant of the model in ``folder`` takes on disk (tensors only)."""
    model = _meta_model(folder)
    seen: set[int] = set()
    quantized: dict[int, tuple[int, int]] = {}  # id(weight) -> (out, in) of each weight to quantize
    if not fmt.is_float:
        quantized = {id(m.weight): (m.weight.shape[0], m.weight.shape[1]) for _, m in targets(model, options)}
    head = model.get_output_embeddings()
    total = 0
    if getattr(model.config, "tie_word_embeddings", False) and head is not None:
        # Stored once, as the embeddings, unless quantizing either side unties them (the pipeline
        # then gives the head its own copy). Counted here, whether or not the skeleton shares the
        # tensor (torch.device("meta") ties it, accelerate's init_empty_weights does not).
        emb = model.get_input_embeddings().weight
        seen.update((id(emb), id(head.weight)))

        def size(w: torch.Tensor, quantize: bool) -> int:
            return fmt.storage_bytes((w.shape[0], w.shape[1])) if quantize else w.numel() * 2

        total += size(emb, not fmt.is_float and options.quantize_embeddings)
        if not fmt.is_float and (options.quantize_embeddings or options.quantize_head):
            total += size(head.weight, options.quantize_head)
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in quantized:
            total += fmt.storage_bytes(quantized[id(param)])
        else:
            total += param.numel() * 2
    return total
