"""Round-to-nearest: scales and zeros from each group's own statistics, no calibration."""

from __future__ import annotations

import torch

from engine.quant.formats import FormatSpec, QuantizedWeight
from engine.quant.methods import MethodSpec, NoParams, register


def quantize_weight(weight: torch.Tensor, fmt: FormatSpec, cfg: NoParams) -> QuantizedWeight:
    return fmt.quantize(weight)


RTN = register(
    MethodSpec(
        name="rtn",
        description="round-to-nearest with per-group min/max (asym), absmax (sym) or mean |w| (1-bit)",
        needs_calibration=False,
        quantize_weight=quantize_weight,
    )
)
