"""Quantize a model from disk to disk, one decoder block at a time.

The source is a :class:`~engine.lazy.LazyModel` (a meta-device skeleton reading its safetensors
shards on demand) and the output a :class:`~engine.store.VariantWriter`. The pipeline asks for a
block (:meth:`DiskIO.load`: read in float32), quantizes it, and hands it back
(:meth:`DiskIO.done`: its tensors are hashed and queued for the output shards, then the block goes
back to the meta device). Embeddings, final norm and head are read at the end in 16 bits (the
embeddings earlier when calibration windows must go through them). So the memory a run needs is
one block in float32, the calibration activations and statistics, and the 16-bit embeddings and
head - not the model. A 16-bit variant is copied tensor by tensor in its own dtype.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine import budget, store
from engine.lazy import LazyModel
from engine.progress import ProgressFn
from engine.quant.calibration import Calibration
from engine.quant.layers import QLinear
from engine.quant.pipeline import decoder_layers, quantize_model
from engine.request import QuantRequest

if TYPE_CHECKING:
    from engine.sources import LoadedSource

BLOCKS = "model.layers."


def release(module: nn.Module) -> None:
    """Free a finished module: its tensors go back to the meta device, a quantized weight is dropped."""
    for sub in module.modules():
        if isinstance(sub, QLinear):
            sub.qw, sub.backend, sub._buffers_k = None, None, {}
        for name, p in list(sub._parameters.items()):
            if p is not None and not p.is_meta:
                sub._parameters[name] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None and not b.is_meta:
                sub._buffers[name] = torch.empty_like(b, device="meta")


class DiskIO:
    """The pipeline's :class:`~engine.quant.plan.BlockIO` for a model on disk."""

    def __init__(self, lazy: LazyModel, writer: store.VariantWriter) -> None:
        self.lazy, self.writer = lazy, writer

    def load(self, prefix: str) -> None:
        """A block in float32 (as the pipeline computes); anything else (the embeddings the
        calibration windows go through) as stored, so streaming computes what memory would."""
        self.lazy.materialize(prefix, torch.float32 if prefix.startswith(BLOCKS) else None)

    def done(self, prefix: str) -> None:
        module = self.lazy.model.get_submodule(prefix)
        self.writer.add(module, prefix)
        release(module)
        trim_heap()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS creeps up with
    every block although nothing is held)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def quantize_to_disk(
    request: QuantRequest,
    loaded: LoadedSource,
    lazy: LazyModel,
    calibration: Calibration | None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> store.SaveInfo:
    """What :func:`engine.variants.quantize_and_save` does, streaming the model through memory."""
    fmt, method = request.fmt, request.method
    model = lazy.model
    info = {"id": loaded.source.ref, "kind": loaded.source.kind, "label": loaded.source.label,
            "hash": loaded.content_hash}  # fmt: skip
    with store.VariantWriter(request.dest, fmt, request.overwrite, budget.SHARD_BYTES) as writer:
        report = None
        if fmt.is_float:
            layers = decoder_layers(model)
            for b in range(len(layers)):
                if progress:
                    progress(b, len(layers), f"copying block {b + 1}/{len(layers)}")
                prefix = f"{BLOCKS}{b}"
                writer.add(lazy.materialize(prefix, fmt.torch_dtype), prefix)
                release(layers[b])
        else:
            io = DiskIO(lazy, writer)
            report = quantize_model(
                model, fmt, method, request.config, request.options, progress, cancel,
                calibration=calibration, device=request.device, io=io,
            )  # fmt: skip
        # what is left: embeddings, final norm, head (16-bit unless quantized above)
        lazy.materialize("", fmt.torch_dtype, skip=(BLOCKS,))
        writer.add(model, "", skip=(BLOCKS,))
        if progress:
            progress(0, 1, "writing config, tokenizer and manifest")
        saved = writer.finish(model.config, loaded.tokenizer, method.name, info, report, cancel)
    if progress:
        progress(1, 1, "saved")
    return saved
