"""One quantization request, built once where the user asked (CLI flags or the Models screen).

Everything in it is parsed and checked when it is built - the format, the method and its typed
config, the calibration choice, the device - so an unknown parameter or a missing GPU is a one-line
error before any model is loaded, and the layers below receive typed values, never strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import budget, devices, limits, sources, store, typed
from engine.errors import QtuiError
from engine.quant import allocation
from engine.quant.calibration import BUILTIN, CalibrationSpec
from engine.quant.formats import FormatSpec, get_format
from engine.quant.methods import MethodConfig, MethodSpec, get_method
from engine.quant.plan import QuantOptions


@dataclass(frozen=True)
class QuantRequest:
    source: sources.ModelSource
    fmt: FormatSpec
    method: MethodSpec
    config: MethodConfig  # the method's own typed parameters (defaults filled in)
    calibration: CalibrationSpec | None = None  # None: the built-in set when the method needs one
    options: QuantOptions = field(default_factory=QuantOptions)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    out: Path | None = None  # None: the data folder, named by format, method and options
    overwrite: bool = False
    max_memory: int | None = None  # bytes the run may use; None: what is free now, less headroom

    @classmethod
    def build(
        cls,
        source: str | sources.ModelSource,
        fmt: str | FormatSpec,
        method: str | MethodSpec = "rtn",
        params: Mapping[str, object] | str | MethodConfig | None = None,
        calibration: CalibrationSpec | str | None = None,
        options: QuantOptions | None = None,
        device: str | torch.device | None = "cpu",
        out: str | Path | None = None,
        overwrite: bool = False,
        max_memory: str | int | None = None,
    ) -> QuantRequest:
        """Parse and check every part; ``params`` is ``{"KEY": "VALUE"}``, ``"KEY=VALUE ..."`` or a
        config; ``calibration`` a spec or ``SOURCE[:SAMPLESxSEQ_LEN]``."""
        from engine import specs

        spec = get_format(fmt) if isinstance(fmt, str) else fmt
        meth = get_method(method)
        meth.check_format(spec)
        allocation.check(spec, meth, options or QuantOptions())  # a bit budget's refusals, before any load
        if options is not None and options.distill is not None and spec.is_float:
            raise QtuiError(f"--distill trains a quantized model's scales: {spec.name} has none to train")
        if isinstance(params, str):
            params = typed.parse_assignments(params, f"method {meth.name} parameter")
        config = meth.configure(params)
        calib = specs.parse_calibration(calibration) if isinstance(calibration, str) else calibration
        if calib is not None and calib.source != BUILTIN:  # a missing or binary file: now, not after the load
            limits.check_text_file(Path(calib.source).expanduser(), "calibration file")
        src = sources.resolve(source) if isinstance(source, str) else source
        return cls(
            src,
            spec,
            meth,
            config,
            calib,
            options or QuantOptions(),
            devices.resolve(device, "quantizing"),
            Path(out).expanduser() if out else None,
            overwrite,
            budget.parse_bytes(max_memory) if isinstance(max_memory, str) else max_memory,
        )

    @property
    def dest(self) -> Path:
        """The variant folder this request writes."""
        if self.out is not None:
            return self.out
        return store.default_variant_dir(self.source.slug, self.fmt, self.method.name, self.options)

    @property
    def name(self) -> str:
        return self.dest.name
