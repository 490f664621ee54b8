"""Quantization methods: how the codes, scales and zeros of a weight are chosen.

A method is one registered :class:`MethodSpec`; each lives in its own module here and registers
itself on import. Formats never know about methods: a method returns a ``QuantizedWeight`` of the
format it was given, so every method's output runs on the same kernels.

The pipeline drives every method the same way, block by block:

1. it runs the calibration windows through the block and fills one :class:`LinearStats` per
   distinct Linear input (``H = sum x x^T``, per-channel max and mean of ``|x|``, a token sample);
2. ``prepare_block`` (AWQ, SmoothQuant) may rescale the block's weights - folding scales into the
   preceding norm or Linear, an exact rewrite in float - and then updates the stats to match;
3. each Linear is quantized by ``quantize_linear(weight, stats, fmt, cfg)`` (GPTQ, HQQ), or by
   ``quantize_weight(weight, fmt, cfg)`` for methods that need no statistics (RTN).

Around the blocks, ``prepare_model`` / ``finalize_model`` run once on the whole model (a rotation
or other model-level transform is one method file). ``cfg`` is the method's own frozen
:class:`MethodConfig`, parsed and validated once where the user typed it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine import typed
from engine.errors import FormatError
from engine.quant.formats import FormatSpec, QuantizedWeight


class LinearStats:
    """Statistics of one Linear input over the calibration tokens (shared by Linears on one input)."""

    def __init__(self, in_features: int, device: torch.device | str, sample_tokens: int = 512):
        H = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.H: torch.Tensor | None = H  # None once take_hessian has handed the accumulator over
        self.absmax = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.abssum = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.n = 0
        self.sample_tokens = sample_tokens
        self._sample: list[torch.Tensor] = []
        self.names: list[str] = []

    def add(self, x: torch.Tensor, per_batch_sample: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self._accumulator().addmm_(x.t(), x)
        self.absmax = torch.maximum(self.absmax, x.abs().amax(dim=0))
        self.abssum += x.abs().sum(dim=0)
        self.n += x.shape[0]
        take = min(per_batch_sample, x.shape[0])
        idx = torch.linspace(0, x.shape[0] - 1, take, device=x.device).long()
        self._sample.append(x[idx].clone())

    @property
    def absmean(self) -> torch.Tensor:
        return self.abssum / max(self.n, 1)

    def top_channels(self, k: int = 10) -> tuple[tuple[int, float, float], ...]:
        """The ``k`` input channels with the largest max |x|: (channel, max |x|, mean |x|)."""
        values, index = self.absmax.topk(min(k, self.absmax.numel()))
        mean = self.absmean
        pairs = zip(values.tolist(), index.tolist(), strict=True)
        return tuple((int(i), round(float(v), 5), round(float(mean[i]), 5)) for v, i in pairs)

    @property
    def sample(self) -> torch.Tensor:
        """``[tokens, in]`` rows of the calibration inputs (for output-error measurements)."""
        return torch.cat(self._sample)[: self.sample_tokens]

    def hessian(self) -> torch.Tensor:
        """GPTQ's ``H = 2 X^T X / n`` (float32 ``[in, in]``)."""
        return self._accumulator() * (2.0 / max(self.n, 1))

    def take_hessian(self) -> torch.Tensor:
        """:meth:`hessian` without a copy: the accumulator is handed over (the stats lose it)."""
        H, self.H = self._accumulator(), None
        return H.mul_(2.0 / max(self.n, 1))

    def _accumulator(self) -> torch.Tensor:
        if self.H is None:
            raise RuntimeError(f"{', '.join(self.names)}: the Hessian was already taken (take_hessian)")
        return self.H

    def scale_inputs(self, s: torch.Tensor) -> None:
        """The input was divided by ``s`` per channel (a scale folded into the layer before)."""
        inv = 1.0 / s.float()
        self._accumulator().mul_(inv.unsqueeze(0) * inv.unsqueeze(1))
        self.absmax *= inv
        self.abssum *= inv
        self._sample = [t * inv for t in self._sample]


@dataclass(frozen=True)
class MethodConfig:
    """A method's parameters. Each method subclasses this with frozen fields declared with
    :func:`engine.typed.option` (default, help, bounds); ``MethodSpec.configure`` builds it once
    from what the user typed and the manifest records :func:`engine.typed.values` of it."""

    def resolved(self, fmt: FormatSpec) -> MethodConfig:
        """The config with format-dependent values (``auto``) decided, so the manifest says what ran."""
        return self


@dataclass(frozen=True)
class NoParams(MethodConfig):
    """A method without parameters (RTN)."""


# (weight [out, in] float32, format, config) -> QuantizedWeight
QuantizeWeight = Callable[[torch.Tensor, FormatSpec, Any], QuantizedWeight]
# (weight, stats of its input or None, format, config) -> QuantizedWeight
QuantizeLinear = Callable[[torch.Tensor, "LinearStats | None", FormatSpec, Any], QuantizedWeight]
# (block, {linear name in block: stats}, format, config) -> what it chose (for the report)
PrepareBlock = Callable[[nn.Module, dict[str, LinearStats], FormatSpec, Any], dict[str, object]]
# (model, format, config) -> what it did (for the report); runs once before any block
PrepareModel = Callable[[nn.Module, FormatSpec, Any], dict[str, object]]
# (model, format, config) -> what it did; runs once after every block is quantized
FinalizeModel = Callable[[nn.Module, FormatSpec, Any], dict[str, object]]


@dataclass(frozen=True)
class MethodSpec:
    """One method: its config class and its steps. The pipeline calls, in order,
    ``prepare_model`` (model-level transforms such as a rotation), per block ``prepare_block``,
    per Linear ``quantize_linear`` / ``quantize_weight``, and ``finalize_model`` - GPTQModel's
    processor lifecycle. Every step but ``quantize_weight`` is optional."""

    name: str
    description: str
    needs_calibration: bool
    quantize_weight: QuantizeWeight
    config: type[MethodConfig] = NoParams
    quantize_linear: QuantizeLinear | None = None
    prepare_block: PrepareBlock | None = None
    prepare_model: PrepareModel | None = None
    finalize_model: FinalizeModel | None = None
    families: tuple[str, ...] | None = None  # format families it accepts (None: every integer one)

    def configure(self, values: Mapping[str, object] | MethodConfig | None = None) -> MethodConfig:
        """The typed config from ``{"KEY": "VALUE"}`` (strings or values); unknown keys and bad
        values are one-line :class:`engine.typed.ConfigError`s naming the valid ones."""
        if isinstance(values, MethodConfig):
            if not isinstance(values, self.config):
                raise typed.ConfigError(
                    f"{self.name} takes a {self.config.__name__}, not {type(values).__name__}"
                )
            return values
        return typed.build(self.config, values, f"method {self.name}")

    def parameters(self) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of each parameter."""
        return typed.describe(self.config)

    def hint(self) -> str:
        """One line: the method, whether it calibrates, its parameters with their defaults."""
        shown = " ".join(f"{n}={_show(d)}" for n, _, d, _ in self.parameters())
        calib = "calibrated" if self.needs_calibration else "no calibration"
        return f"{self.name} ({calib}): {shown or 'no parameters'}"

    def linear(
        self, weight: torch.Tensor, stats: LinearStats | None, fmt: FormatSpec, cfg: MethodConfig
    ) -> QuantizedWeight:
        if self.quantize_linear is not None:
            return self.quantize_linear(weight, stats, fmt, cfg)
        return self.quantize_weight(weight, fmt, cfg)

    def check_format(self, fmt: FormatSpec) -> None:
        if self.families is not None and fmt.family not in self.families:
            raise FormatError(
                f"method {self.name} works with {', '.join(self.families)} only, not {fmt.name}"
            )


def _show(value: object) -> str:
    return "auto" if value is None else str(value).lower()


METHODS: dict[str, MethodSpec] = {}


def register(method: MethodSpec) -> MethodSpec:
    METHODS[method.name] = method
    return method


def _load_all() -> None:
    """Import every module of this package once: each registers its method (a new method is one
    new file here)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get_method(name: str | MethodSpec) -> MethodSpec:
    if isinstance(name, MethodSpec):
        return name
    _load_all()
    key = name.strip().lower()
    if key not in METHODS:
        raise FormatError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def list_methods() -> list[MethodSpec]:
    _load_all()
    return list(METHODS.values())
