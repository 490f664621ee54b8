"""From what a user names to a variant ready to run: SPEC parsing, quantize-and-save, loading.

A SPEC is one of
  * a model: ``default``, a HF folder, a ``.gguf`` file, a hub id -> its 16-bit baseline (bf16);
  * ``MODEL:FORMAT`` such as ``default:int4`` or ``default:int4-g128`` -> that variant, quantized
    and saved first if it is not saved yet;
  * the folder of a saved variant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import sources, store
from engine.errors import Cancelled, QtuiError
from engine.quant.calibration import CalibrationSpec
from engine.quant.calibration import build as build_calibration
from engine.quant.formats import FormatSpec, get_format
from engine.quant.methods import get_method
from engine.quant.pipeline import QuantOptions, QuantReport, quantize_model
from engine.runtime import Variant, load_variant, variant_from_model

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Spec:
    text: str
    source: sources.ModelSource | None  # None when the spec is a saved variant folder
    fmt: FormatSpec | None  # None: the source's 16-bit baseline
    method: str = "rtn"
    folder: Path | None = None  # a saved variant's folder

    @property
    def display(self) -> str:
        if self.folder is not None and self.source is None:
            return self.folder.name
        return (
            self.fmt.name if self.fmt and not self.fmt.is_float else (self.fmt.name if self.fmt else "bf16")
        )


def parse_spec(text: str, method: str = "rtn") -> Spec:
    path = Path(text).expanduser()
    if path.is_dir() and (path / store.MANIFEST).exists():
        return Spec(text, None, None, method, path)
    if not path.exists() and ":" in text:
        model, _, fmt_name = text.rpartition(":")
        return Spec(text, sources.resolve(model or "default"), get_format(fmt_name), method)
    return Spec(text, sources.resolve(text), None, method)


def variant_dir(source: sources.ModelSource, fmt: FormatSpec, method: str) -> Path:
    return store.default_variant_dir(source.slug, fmt, method)


def quantize_and_save(
    source: sources.ModelSource | sources.LoadedSource,
    fmt: FormatSpec,
    method: str = "rtn",
    out: Path | None = None,
    options: QuantOptions = QuantOptions(),
    params: dict | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    overwrite: bool = False,
    calibration: CalibrationSpec | None = None,
) -> tuple[Path, QuantReport | None]:
    """Quantize ``source`` into ``fmt`` with ``method`` and save it; returns the variant folder.

    Calibrated methods (and ``options.keep_sensitive``) use ``calibration`` (default: the built-in
    set, :class:`CalibrationSpec` defaults); passing one makes any method run block by block and
    record per-Linear output errors.
    """
    loaded = (
        source
        if isinstance(source, sources.LoadedSource)
        else sources.load(source, progress=progress, cancel=cancel)
    )
    meth = get_method(method)
    dest = Path(out) if out else variant_dir(loaded.source, fmt, meth.name)
    if out is None and options.keep_sensitive:
        dest = dest.with_name(f"{dest.name}-keep{options.keep_sensitive}x{options.sensitive_bits}")
    calib = None
    if not fmt.is_float and (calibration is not None or meth.needs_calibration or options.keep_sensitive):
        calib = build_calibration(calibration or CalibrationSpec(), loaded.tokenizer)
    # work on a copy so the caller's float model stays usable (cheap for the sizes qtui targets)
    import copy

    model = copy.deepcopy(loaded.model)
    report = None
    if fmt.is_float:
        model.to(fmt.torch_dtype)
    else:
        report = quantize_model(model, fmt, meth, params, options, progress, cancel, calibration=calib)
    if cancel is not None and cancel.is_set():
        raise Cancelled("quantization cancelled; nothing was saved")
    info = {
        "id": loaded.source.ref,
        "kind": loaded.source.kind,
        "label": loaded.source.label,
        "hash": loaded.content_hash,
    }
    saved = store.save_variant(
        model, loaded.tokenizer, dest, fmt, meth.name, info, report, progress, cancel, overwrite=overwrite
    )
    return saved.path, report


def open_spec(
    spec: Spec | str,
    device=None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    loaded_cache: dict | None = None,
) -> Variant:
    """Load what ``spec`` names, quantizing and saving it first when needed."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    if spec.folder is not None:
        return load_variant(spec.folder, device)
    assert spec.source is not None
    fmt = spec.fmt
    if fmt is None or fmt.family == "bf16":
        loaded = _load_source(spec.source, progress, cancel, loaded_cache)
        model = _copy_model(loaded.model, torch.bfloat16)
        return variant_from_model("bf16", model, loaded.tokenizer, get_format("bf16"), device)
    folder = variant_dir(spec.source, fmt, spec.method)
    if not (folder / store.MANIFEST).exists():
        loaded = _load_source(spec.source, progress, cancel, loaded_cache)
        folder, _ = quantize_and_save(loaded, fmt, spec.method, folder, progress=progress, cancel=cancel)
    return load_variant(folder, device)


def _load_source(source, progress, cancel, cache: dict | None) -> sources.LoadedSource:
    key = source.ref
    if cache is not None and key in cache:
        return cache[key]
    loaded = sources.load(source, progress=progress, cancel=cancel)
    if cache is not None:
        cache[key] = loaded
    return loaded


def _copy_model(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


def describe_error(exc: BaseException) -> str:
    """One line for a user: QtuiError messages as they are, anything else with its type."""
    if isinstance(exc, QtuiError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
