"""Drive a model through a method and a format, layer by layer, with progress and cancellation.

Which tensors are quantized: every ``nn.Linear`` inside the decoder blocks. Embeddings and the LM
head stay 16-bit unless asked (``quantize_embeddings`` / ``quantize_head``); norms always stay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.errors import Cancelled, QtuiError
from engine.quant.calibration import Calibration
from engine.quant.formats import FormatSpec, QuantizedWeight
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.methods import MethodSpec

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class QuantOptions:
    quantize_embeddings: bool = False
    quantize_head: bool = False
    keep_sensitive: int = 0  # keep the k Linears with the largest output error at ...
    sensitive_bits: int = 8  # ... 8-bit (int8 per channel, RTN) or 16-bit (unquantized)
    batch_size: int = 8  # calibration windows per forward pass
    sample_tokens: int = 512  # calibration tokens kept per Linear input for output errors / AWQ


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    fmt: str
    seconds: float
    weight_rel_error: float  # ||W - W_q|| / ||W||
    sqnr_db: float
    out_rel_error: float | None = None  # ||WX - W_qX|| / ||WX|| on the calibration sample


@dataclass
class QuantReport:
    fmt: FormatSpec
    method: MethodSpec
    params: dict
    options: QuantOptions
    seconds: float = 0.0
    layers: list[LayerReport] = field(default_factory=list)
    calibration: dict | None = None  # Calibration.describe() when calibrated
    kept: list[str] = field(default_factory=list)  # Linears kept at sensitive_bits (mixed precision)
    block_info: list[dict] = field(default_factory=list)  # what prepare_block chose, per block


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers; unsupported layout")
    return layers


def targets(model: nn.Module, options: QuantOptions) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of everything to quantize, in forward order."""
    out: list[tuple[str, nn.Module]] = []
    inner = getattr(model, "model", model)
    if options.quantize_embeddings:
        out.append(("model.embed_tokens", inner.embed_tokens))
    for i, block in enumerate(decoder_layers(model)):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                out.append((f"model.layers.{i}.{name}", module))
    if options.quantize_head:
        out.append(("lm_head", model.get_output_embeddings()))
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _errors(weight: torch.Tensor, qw: QuantizedWeight) -> tuple[float, float]:
    w = weight.float()
    err = (w - qw.dequantize(torch.float32)).pow(2).sum()
    power = w.pow(2).sum().clamp(min=1e-30)
    rel = float((err / power).sqrt())
    sqnr = float(10 * torch.log10(power / err.clamp(min=1e-30)))
    return rel, sqnr


def quantize_model(
    model: nn.Module,
    fmt: FormatSpec,
    method: MethodSpec,
    params: dict | None = None,
    options: QuantOptions = QuantOptions(),
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    calibration: Calibration | None = None,
    device=None,
) -> QuantReport:
    """Replace the target modules of ``model`` in place with quantized ones.

    With ``calibration`` (token windows) the model is quantized block by block (see
    :func:`engine.quant.blocks.quantize_blocks`); without it, weight by weight.
    Raises :class:`Cancelled` between layers when ``cancel`` is set; the model is then partly
    quantized and must be discarded (nothing has been written to disk).
    """
    params = {**method.default_params, **(params or {})}
    method.check_format(fmt)
    if method.resolve_params is not None:
        params = method.resolve_params(fmt, params)
    if calibration is None and (method.needs_calibration or options.keep_sensitive):
        raise QtuiError(f"{method.name} needs calibration data (and so does --keep-sensitive)")
    report = QuantReport(fmt, method, params, options)
    if options.quantize_embeddings and model.config.tie_word_embeddings:
        model.config.tie_word_embeddings = False  # the head keeps its own (16-bit) copy
        head = model.get_output_embeddings()
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    start = time.perf_counter()
    todo = targets(model, options)
    if calibration is not None:
        from engine.quant.blocks import quantize_blocks

        report.calibration = calibration.describe()
        extra = [(n, m) for n, m in todo if not n.startswith("model.layers.")]
        quantize_blocks(
            model, fmt, method, params, options, report, calibration.ids, progress, cancel, device
        )
        todo = extra
    for i, (name, module) in enumerate(todo):
        if cancel is not None and cancel.is_set():
            raise Cancelled(f"quantization cancelled at {name}")
        if progress:
            progress(i, len(todo), name)
        t0 = time.perf_counter()
        weight = module.weight.detach().float()
        qw = method.quantize_weight(weight, fmt, params)
        rel, sqnr = _errors(weight, qw)
        if isinstance(module, nn.Embedding):
            new: nn.Module = QEmbedding(qw, module.padding_idx)
        else:
            new = QLinear(qw, module.bias)
        set_module(model, name, new)
        report.layers.append(LayerReport(name, qw.shape, fmt.name, time.perf_counter() - t0, rel, sqnr))
    report.seconds = time.perf_counter() - start
    if progress and (todo or calibration is None):
        progress(len(todo), len(todo), "done")
    return report


def quantized_modules(model: nn.Module) -> dict[str, QLinear | QEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QLinear, QEmbedding))}


def prepare_model(
    model: nn.Module, device="cpu", dtype=torch.bfloat16, backend: str | None = None, release: bool = True
) -> dict[str, int]:
    """Move ``model`` to ``device``/``dtype`` and lay out every quantized layer for its kernel.

    Returns how many layers run on each backend label.
    """
    model.to(device=device, dtype=dtype)
    labels: dict[str, int] = {}
    for module in quantized_modules(model).values():
        if isinstance(module, QLinear):
            module.prepare(device, dtype, backend, release=release)
        else:
            module.prepare(device, dtype)
        labels[module.backend_label] = labels.get(module.backend_label, 0) + 1
    return labels
