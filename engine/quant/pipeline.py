"""Drive a model through a method and a format, layer by layer, with progress and cancellation.

Which tensors are quantized: every ``nn.Linear`` inside the decoder blocks. Embeddings and the LM
head stay 16-bit unless asked (``quantize_embeddings`` / ``quantize_head``); norms always stay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from engine.errors import Cancelled, QtuiError
from engine.progress import ProgressFn
from engine.quant import allocation, rotation
from engine.quant.blocks import quantize_blocks
from engine.quant.calibration import Calibration
from engine.quant.formats import FormatSpec
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.methods import MethodConfig, MethodSpec
from engine.quant.plan import (
    IN_MEMORY,
    BlockIO,
    LayerReport,
    QuantOptions,
    QuantReport,
    block_prefix,
    decoder_layers,
    hf_model,
    input_transform_of,
    quantized_modules,
    set_module,
    targets,
    weight_errors,
)

# the pipeline's public names (plan's re-exported)
__all__ = [
    "IN_MEMORY",
    "BlockIO",
    "LayerReport",
    "QuantOptions",
    "QuantReport",
    "decoder_layers",
    "input_transform_of",
    "prepare_model",
    "quantize_model",
    "quantized_modules",
    "set_module",
    "targets",
    "weight_errors",
]


def quantize_model(
    model: nn.Module,
    fmt: FormatSpec,
    method: MethodSpec,
    config: MethodConfig | Mapping[str, object] | None = None,
    options: QuantOptions = QuantOptions(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    calibration: Calibration | None = None,
    device: torch.device | str | None = None,
    io: BlockIO = IN_MEMORY,
) -> QuantReport:
    """Replace the target modules of ``model`` in place with quantized ones.

    ``config`` is the method's typed config (a mapping is parsed and checked by the method). The
    method's ``prepare_model`` runs first and its ``finalize_model`` last. With ``calibration``
    (token windows) the model is quantized block by block (see
    :func:`engine.quant.blocks.quantize_blocks`), each block moved to ``device``; without it,
    weight by weight, each weight moved to ``device`` and its codes brought back to the CPU.
    ``io`` says where the weights are: in memory (default), or on disk for a model streamed block
    by block (``io.load`` before a block, ``io.done`` after it; see :class:`BlockIO`).
    Raises :class:`Cancelled` between layers when ``cancel`` is set; the model is then partly
    quantized and must be discarded (nothing has been written to disk).
    """
    method.check_format(fmt)
    allocation.check(fmt, method, options)
    cfg = method.configure(config).resolved(fmt)
    if calibration is None and (method.needs_calibration or options.needs_calibration):
        raise QtuiError(
            f"{method.name} needs calibration data (and so do --keep-sensitive and --bits-per-weight)"
        )
    dev = torch.device(device or "cpu")
    report = QuantReport(fmt, method, cfg, options, device=str(dev))
    if options.quantize_embeddings and hf_model(model).config.tie_word_embeddings:
        hf_model(model).config.tie_word_embeddings = False  # the head keeps its own (16-bit) copy
        head = hf_model(model).get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    start = time.perf_counter()
    if options.rotate != "none":
        if options.quantize_embeddings:
            raise QtuiError(
                "--rotate leaves the embeddings 16-bit: it cannot be combined with --quantize-embeddings"
            )
        report.block_info.append(
            {"model": "rotate", **rotation.rotate_model(model, options.rotate, options.rotate_seed)}
        )
    if method.prepare_model is not None:
        report.block_info.append({"model": "prepare", **method.prepare_model(model, fmt, cfg)})
    # names only: a list of the modules would keep every replaced float Linear (and its weights)
    # alive until the end, which defeats reading the model one block at a time
    todo = [name for name, _ in targets(model, options)]
    if calibration is not None:
        report.calibration = calibration.describe()
        todo = [n for n in todo if not n.startswith("model.layers.")]
        formats = None
        if options.bits_per_weight is not None:  # pass 1: a format per Linear (quant/allocation.py)
            if io is not IN_MEMORY:
                raise QtuiError("a bit budget needs the model in memory (it is not streamed from disk)")
            chosen = allocation.allocate(model, fmt, method, options, calibration.ids, progress, cancel, dev)
            report.allocation = chosen.describe()
            formats = chosen.formats()
        quantize_blocks(
            model, fmt, method, cfg, options, report, calibration.ids, progress, cancel, dev, io, formats
        )
    current = ""
    for i, name in enumerate(todo):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"quantization cancelled at {name}")
        if progress:
            progress(i, len(todo), name)
        where = block_prefix(name)
        if where != current:  # a new block (or a module outside the blocks): its weights in
            if current.startswith("model.layers."):
                io.done(current)
            io.load(where)
            current = where
        t0 = time.perf_counter()
        module = cast("nn.Linear | nn.Embedding", model.get_submodule(name))
        weight = module.weight.detach().to(dev, torch.float32)
        qw = method.quantize_weight(weight, fmt, cfg)
        rel, sqnr, _ = weight_errors(weight, qw.dequantize(torch.float32))
        qw = qw.to("cpu")
        if isinstance(module, nn.Embedding):
            new: nn.Module = QEmbedding(qw, module.padding_idx)
        else:
            new = QLinear(qw, module.bias, input_transform_of(module))
        set_module(model, name, new)
        del module, weight
        report.layers.append(LayerReport(name, qw.shape, fmt.name, time.perf_counter() - t0, rel, sqnr))
    if current.startswith("model.layers."):
        io.done(current)
    if method.finalize_model is not None:
        report.block_info.append({"model": "finalize", **method.finalize_model(model, fmt, cfg)})
    report.seconds = time.perf_counter() - start
    if progress and (todo or calibration is None):
        progress(len(todo), len(todo), "done")
    return report


def prepare_model(
    model: nn.Module,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
    release: bool = True,
) -> dict[str, int]:
    """Move ``model`` to ``device``/``dtype`` and lay out every quantized layer for its kernel.

    Returns how many layers run on each backend label.
    """
    model.to(device=device, dtype=dtype)
    labels: dict[str, int] = {}
    for module in quantized_modules(model).values():
        if not (isinstance(module, QLinear) and module.qw is None and module.backend is not None):
            prepare_module(module, device, dtype, backend, release)  # else laid out as it was loaded
        labels[module.backend_label] = labels.get(module.backend_label, 0) + 1
    return labels


def prepare_module(
    module: nn.Module,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    backend: str | None = None,
    release: bool = True,
) -> None:
    """Lay out one quantized layer for its kernel on ``device`` (``release``: drop the stored codes)."""
    if isinstance(module, QLinear):
        module.prepare(device, dtype, backend, release=release)
    elif isinstance(module, QEmbedding):
        module.prepare(device, dtype)
