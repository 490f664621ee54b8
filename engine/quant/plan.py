"""What a quantization run works on and what it reports: options, targets, per-Linear errors.

Shared by the two drivers (``pipeline.quantize_model``, weight by weight, and ``blocks``, block by
block) and by the store and size estimates; it imports neither driver, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, overload

import torch
from torch import nn

from engine.errors import QtuiError
from engine.quant.arch import decoder_blocks
from engine.quant.distill import DistillConfig
from engine.quant.formats import FormatSpec
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.methods import MethodConfig, MethodSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from engine.quant.rotation import Kind as RotationKind


@dataclass(frozen=True)
class QuantOptions:
    quantize_embeddings: bool = False
    quantize_head: bool = False
    keep_sensitive: int = 0  # keep the k Linears with the largest output error at ...
    sensitive_bits: int = 8  # ... 8-bit (int8 per channel, RTN) or 16-bit (unquantized)
    batch_size: int = 8  # calibration windows per forward pass
    sample_tokens: int = 512  # calibration tokens kept per Linear input for output errors / AWQ
    rotate: RotationKind = "none"  # incoherence processing (quant/rotation.py)
    rotate_seed: int = 0
    distill: DistillConfig | None = None  # train scales/adapters against the 16-bit model (quant/distill.py)
    bits_per_weight: float | None = None  # a bit budget: a format per block Linear (quant/allocation.py)

    @property
    def needs_calibration(self) -> bool:
        """Whether these options need calibration data whatever the method (mixed precision)."""
        return bool(self.keep_sensitive) or self.bits_per_weight is not None or self.distill is not None


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
    config: MethodConfig  # resolved: what ran
    options: QuantOptions
    device: str = "cpu"  # where the weights were quantized
    seconds: float = 0.0
    layers: list[LayerReport] = field(default_factory=list)
    calibration: dict[str, object] | None = None  # Calibration.describe() when calibrated
    kept: list[str] = field(default_factory=list)  # Linears kept at sensitive_bits (mixed precision)
    block_info: list[dict[str, object]] = field(default_factory=list)  # what prepare_block chose, per block
    distill: dict[str, object] | None = None  # DistillReport.describe() when distilled
    allocation: dict[str, object] | None = None  # the bit budget's choice (Allocation.describe())


def hf_model(model: nn.Module) -> PreTrainedModel:
    """``model`` as the transformers model it is, for what transformers adds to ``nn.Module``
    (``config``, ``get_output_embeddings()``, ...); transformers is not type-checked here."""
    return cast("PreTrainedModel", model)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks (see :func:`engine.quant.arch.decoder_blocks`; a SourceError naming the
    architecture when the model has none)."""
    return decoder_blocks(model)


def targets(model: nn.Module, options: QuantOptions) -> list[tuple[str, nn.Linear | nn.Embedding]]:
    """(qualified name, module) of everything to quantize, in forward order."""
    out: list[tuple[str, nn.Linear | nn.Embedding]] = []
    inner = hf_model(getattr(model, "model", model))
    if options.quantize_embeddings:
        embed = inner.embed_tokens
        if type(embed).forward is not nn.Embedding.forward:  # Gemma multiplies by sqrt(hidden)
            raise QtuiError(
                f"{type(embed).__name__} is not a plain embedding table (its forward does more); "
                "quantize without --quantize-embeddings"
            )
        out.append(("model.embed_tokens", embed))
    for i, block in enumerate(decoder_layers(model)):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                out.append((f"model.layers.{i}.{name}", module))
    if options.quantize_head:
        out.append(("lm_head", hf_model(model).get_output_embeddings()))
    return out


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@overload
def weight_errors(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]: ...
@overload
def weight_errors(w: torch.Tensor, wq: torch.Tensor, x: None = None) -> tuple[float, float, None]: ...


def weight_errors(
    w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor | None = None
) -> tuple[float, float, float | None]:
    """Relative weight error ``||W - W_q|| / ||W||``, SQNR in dB and, given calibration inputs
    ``x`` ``[tokens, in]``, the relative output error ``||(W - W_q) x|| / ||W x||``."""
    w = w.float()
    diff = w - wq.float()
    err = diff.pow(2).sum()
    power = w.pow(2).sum().clamp(min=1e-30)
    rel = float((err / power).sqrt())
    sqnr = float(10 * torch.log10(power / err.clamp(min=1e-30)))
    out = None
    if x is not None:
        out = float((x @ diff.t()).norm() / (x @ w.t()).norm().clamp(min=1e-30))
    return rel, sqnr, out


def quantized_modules(model: nn.Module) -> dict[str, QLinear | QEmbedding]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QLinear, QEmbedding))}


def input_transform_of(module: nn.Module) -> torch.Tensor | None:
    """The input transform a model-level method put on a Linear (kept when it is quantized)."""
    return getattr(module, "input_transform", None)


class BlockIO(Protocol):
    """Where a model's weights live while it is quantized. :data:`IN_MEMORY`: all in memory
    already. A model streamed from disk (``engine.stream``) reads a module in :meth:`load` and,
    for a decoder block, writes and frees it in :meth:`done`, so one block is in memory at a time."""

    def load(self, prefix: str) -> None: ...
    def done(self, prefix: str) -> None: ...


class _InMemory:
    def load(self, prefix: str) -> None:
        pass

    def done(self, prefix: str) -> None:
        pass


IN_MEMORY: BlockIO = _InMemory()


def block_prefix(name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.3``; a name outside the blocks: itself."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers":
        return ".".join(parts[:3])
    return name
