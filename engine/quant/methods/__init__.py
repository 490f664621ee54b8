"""Quantization methods: how the codes, scales and zeros of a weight are chosen.

A method is one registered :class:`MethodSpec`; each lives in its own module here and registers
itself on import. Formats never know about methods: a method returns a ``QuantizedWeight`` of the
format it was given, so every method's output runs on the same kernels.

The pipeline drives every method the same way, block by block:

1. it runs the calibration windows through the block and fills one :class:`LinearStats` per
   distinct Linear input (``H = sum x x^T``, per-channel max and mean of ``|x|``, a token sample);
2. ``prepare_block`` (AWQ, SmoothQuant) may rescale the block's weights - folding scales into the
   preceding norm or Linear, an exact rewrite in float - and then updates the stats to match;
3. each Linear is quantized by ``quantize_linear(weight, stats, fmt, params)`` (GPTQ, HQQ), or by
   ``quantize_weight(weight, fmt, params)`` for methods that need no statistics (RTN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.errors import FormatError
from engine.quant.formats import FormatSpec, QuantizedWeight


class LinearStats:
    """Statistics of one Linear input over the calibration tokens (shared by Linears on one input)."""

    def __init__(self, in_features: int, device, sample_tokens: int = 512):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.absmax = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.abssum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0
        self.sample_tokens = sample_tokens
        self._sample: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, x: torch.Tensor, per_batch_sample: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.H.addmm_(x.t(), x)
        self.absmax = torch.maximum(self.absmax, x.abs().amax(dim=0))
        self.abssum += x.abs().sum(dim=0)
        self.n += x.shape[0]
        take = min(per_batch_sample, x.shape[0])
        idx = torch.linspace(0, x.shape[0] - 1, take, device=x.device).long()
        self._sample.append(x[idx].clone())

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(self.n, 1)

    @property
    def sample(self) -> torch.Tensor:
        """``[tokens, in]`` rows of the calibration inputs (for output-error measurements)."""
        return torch.cat(self._sample)[: self.sample_tokens]

    def hessian(self) -> torch.Tensor:
        """GPTQ's ``H = 2 X^T X / n`` (float32 ``[in, in]``)."""
        return self.H * (2.0 / max(self.n, 1))

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian` without a copy: the accumulator is handed over (the stats lose it)."""
        H, self.H = self.H, None
        return H.mul_(2.0 / max(self.n, 1))

    def scale_inputs(self, s: torch.Tensor) -> None:
        """The input was divided by ``s`` per channel (a scale folded into the layer before)."""
        inv = 1.0 / s.float()
        self.H *= inv.unsqueeze(0) * inv.unsqueeze(1)
        self.absmax *= inv
        self.abssum *= inv
        self._sample = [t * inv for t in self._sample]


# (weight [out, in] float32, format, params) -> QuantizedWeight
QuantizeWeight = Callable[[torch.Tensor, FormatSpec, dict], QuantizedWeight]
# (weight, stats of its input or None, format, params) -> QuantizedWeight
QuantizeLinear = Callable[[torch.Tensor, "LinearStats | None", FormatSpec, dict], QuantizedWeight]
# (block, {linear name in block: stats}, format, params) -> what it chose (for the report)
PrepareBlock = Callable[[nn.Module, dict, FormatSpec, dict], dict]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    needs_calibration: bool
    quantize_weight: QuantizeWeight
    default_params: dict = field(default_factory=dict)
    quantize_linear: QuantizeLinear | None = None
    prepare_block: PrepareBlock | None = None
    families: tuple[str, ...] | None = None  # format families it accepts (None: every integer one)
    param_help: dict = field(default_factory=dict)
    # (format, params) -> params with format-dependent values resolved ("auto" -> the value used),
    # so the manifest records what ran
    resolve_params: Callable[[FormatSpec, dict], dict] | None = None

    def linear(self, weight: torch.Tensor, stats: LinearStats | None, fmt: FormatSpec, params: dict):
        if self.quantize_linear is not None:
            return self.quantize_linear(weight, stats, fmt, params)
        return self.quantize_weight(weight, fmt, params)

    def check_format(self, fmt: FormatSpec) -> None:
        if self.families is not None and fmt.family not in self.families:
            raise FormatError(
                f"method {self.name} works with {', '.join(self.families)} only, not {fmt.name}"
            )


METHODS: dict[str, MethodSpec] = {}


def register(method: MethodSpec) -> MethodSpec:
    METHODS[method.name] = method
    return method


def _load_all() -> None:
    from engine.quant.methods import awq, gptq, hqq, rtn, smoothquant  # noqa: F401  (register themselves)


def get_method(name: str) -> MethodSpec:
    _load_all()
    key = name.strip().lower()
    if key not in METHODS:
        raise FormatError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def list_methods() -> list[MethodSpec]:
    _load_all()
    return list(METHODS.values())


def parse_param(text: str) -> tuple[str, object]:
    """``alpha=0.5`` -> ("alpha", 0.5); ``act_order=true`` -> ("act_order", True)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise FormatError(f"method parameter {text!r} is not KEY=VALUE")
    raw = raw.strip()
    low = raw.lower()
    value: object
    if low in ("true", "yes", "on"):
        value = True
    elif low in ("false", "no", "off"):
        value = False
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    return key.strip(), value
