"""Quantization methods: how the codes, scales and zeros of a weight are chosen.

A method is one registered :class:`MethodSpec`; each lives in its own module here and registers
itself on import. Formats never know about methods: a method returns a ``QuantizedWeight`` of the
format it was given, so every method's output runs on the same kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.errors import FormatError
from engine.quant.formats import FormatSpec, QuantizedWeight


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    needs_calibration: bool
    # (weight [out, in] float32, format, params) -> QuantizedWeight
    quantize_weight: Callable[[torch.Tensor, FormatSpec, dict], QuantizedWeight]
    default_params: dict = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register(method: MethodSpec) -> MethodSpec:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MethodSpec:
    from engine.quant.methods import rtn  # noqa: F401  (registers itself)

    key = name.strip().lower()
    if key not in METHODS:
        raise FormatError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[key]
