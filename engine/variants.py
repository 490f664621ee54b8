"""From what a user names to a variant ready to run: SPEC parsing, quantize-and-save, loading.

A SPEC is one of
  * a model: ``default``, a HF folder, a ``.gguf`` file, a hub id -> its 16-bit baseline (bf16);
  * ``MODEL:FORMAT`` such as ``default:int4`` or ``default:int4-g128`` -> that variant, quantized
    and saved first if it is not saved yet;
  * the folder of a saved variant.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from engine import budget, integrity, limits, locks, runtime, sources, store, stream
from engine.errors import Cancelled, QtuiError, StoreError
from engine.lazy import LazyModel
from engine.progress import ProgressFn, no_progress
from engine.quant import distill
from engine.quant.calibration import CalibrationSpec
from engine.quant.calibration import build as build_calibration
from engine.quant.formats import get_format
from engine.quant.pipeline import quantize_model
from engine.request import QuantRequest
from engine.runtime import Variant, load_variant, variant_from_model
from engine.specs import ModelSpec, parse_model_spec


def streamable(request: QuantRequest) -> bool:
    """Whether the request can run from disk to disk. Not: mixed precision (which Linears to keep
    wider is known only after every block, when the blocks are already written) and methods with
    a model-level step (``prepare_model`` / ``finalize_model`` see the whole model)."""
    meth, options = request.method, request.options
    model_level = (
        meth.prepare_model is not None or meth.finalize_model is not None or options.rotate != "none"
    )
    budget = options.bits_per_weight is not None  # a bit budget: every block's statistics first
    distill = options.distill is not None  # trains the whole model against the 16-bit one
    return not options.keep_sensitive and not model_level and not budget and not distill


def estimate_memory(
    request: QuantRequest, loaded: sources.LoadedSource, lazy: LazyModel | None = None
) -> budget.MemoryEstimate:
    """The peak memory this request will need (see :mod:`engine.budget`), from shapes alone."""
    fmt, meth, options = request.fmt, request.method, request.options
    calibrated = not fmt.is_float and (
        request.calibration is not None or meth.needs_calibration or options.needs_calibration
    )
    calib = (request.calibration or CalibrationSpec()) if calibrated else None
    if lazy is not None:
        skeleton: nn.Module = lazy.model
        stored = max(dtype.itemsize for dtype, _ in lazy.index.info.values())
    elif loaded.given_in_memory:
        skeleton, stored = loaded.model, 4
    else:
        skeleton, stored = _skeleton(loaded.folder), 4
    est = budget.estimate(
        skeleton, stored, calib, streaming=lazy is not None, gptq=meth.name == "gptq",
        batch_size=options.batch_size, sample_tokens=options.sample_tokens,
    )  # fmt: skip
    if options.distill is not None and calib is not None:
        est = dataclasses.replace(
            est, training=distill.memory_bytes(skeleton, options.distill, calib.seq_len)
        )
    return est


def _skeleton(folder: Path) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return model


def quantize_and_save(
    request: QuantRequest,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    loaded: sources.LoadedSource | None = None,
) -> store.SaveInfo:
    """Quantize what ``request`` names and save it; returns what was saved (folder, manifest and
    the quantization report), so nobody reads the manifest back from disk.

    ``loaded`` is the request's source already in memory (the app keeps it between jobs).
    Calibrated methods (and ``keep_sensitive``) use ``request.calibration`` (default: the built-in
    set); giving one makes any method run block by block and record per-Linear output errors.
    """
    # one writer per variant: a second process asking for the same one is told, nothing is mixed
    with locks.exclusive(request.dest, "quantized"):
        if (request.dest / store.MANIFEST).exists() and not request.overwrite:
            raise StoreError(f"{request.dest} already exists; use --force (overwrite) to redo")
        try:
            return _quantize_and_save(request, progress, cancel, loaded)
        except SafetensorError as exc:  # safetensors' own error type, even for a full disk
            if "serializ" in str(exc).lower():  # writing the variant ("Error while serializing")
                raise locks.write_error(exc, request.dest) from exc
            raise QtuiError(f"could not read the weights of {request.source.ref}: {_short(exc)}") from exc
        except torch.linalg.LinAlgError as exc:  # type: ignore[attr-defined]  # the public name (see gptq)
            raise QtuiError(
                f"{request.method.name}: {_short(exc)} (non-finite weights or calibration activations, "
                "or too few calibration tokens); try a larger -p percdamp, more --samples or other "
                "calibration data; nothing was saved"
            ) from exc


def _quantize_and_save(
    request: QuantRequest,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    loaded: sources.LoadedSource | None,
) -> store.SaveInfo:
    if loaded is None:
        loaded = sources.load(request.source, progress=progress or no_progress, cancel=cancel, eager=False)
    fmt, meth, options = request.fmt, request.method, request.options
    calib = None
    lazy = loaded.lazy() if streamable(request) else None
    if not fmt.is_float and (
        request.calibration is not None or meth.needs_calibration or options.needs_calibration
    ):
        spec = request.calibration or CalibrationSpec()
        limits.check_seq_len(spec.seq_len, _config(loaded, lazy))
        calib = build_calibration(spec, loaded.tokenizer)
    est = estimate_memory(request, loaded, lazy)
    budget.check(est, request.max_memory or budget.default_budget())
    if progress:
        progress(0, 0, f"memory: {est.describe()}")
    if lazy is not None:  # from disk to disk, one block in memory at a time
        return stream.quantize_to_disk(request, loaded, lazy, calib, progress, cancel)
    # in memory: a model given in memory, or what streaming cannot do (see streamable); the
    # caller's float model stays usable (a copy), a model on disk is read once in float32
    model = loaded.model_in(torch.float32)
    report = None
    if fmt.is_float:
        model.to(fmt.torch_dtype)
    else:
        report = quantize_model(
            model,
            fmt,
            meth,
            request.config,
            options,
            progress,
            cancel,
            calibration=calib,
            device=request.device,
        )
    if report is not None and options.distill is not None and calib is not None:
        teacher = loaded.model_in(torch.float32)
        report.distill = distill.distill(
            model, teacher, calib, options.distill, progress, cancel, device=request.device
        ).describe()
        del teacher
    if cancel is not None and cancel.is_set():
        raise Cancelled("quantization cancelled; nothing was saved")
    info = {
        "id": loaded.source.ref,
        "kind": loaded.source.kind,
        "label": loaded.source.label,
        "hash": loaded.content_hash,
    }
    return store.save_variant(
        model, loaded.tokenizer, request.dest, fmt, meth.name, info, report, progress, cancel,
        overwrite=request.overwrite,
    )  # fmt: skip


def _config(loaded: sources.LoadedSource, lazy: LazyModel | None) -> object:
    """The source model's config without reading its weights."""
    from transformers import AutoConfig

    if lazy is not None:
        return lazy.model.config
    if loaded.given_in_memory:
        return loaded.model.config
    return AutoConfig.from_pretrained(loaded.folder)


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def open_spec(
    spec: ModelSpec | str,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    loaded_cache: dict[str, sources.LoadedSource] | None = None,
) -> Variant:
    """Load what ``spec`` names, quantizing and saving it first when needed."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if spec.folder is not None:
        manifest = store.read_manifest(spec.folder)
        store.verify_files(spec.folder, manifest)  # sizes first: a cut file is named as cut
        integrity.check_variant_shapes(spec.folder, manifest)
        return load_variant(spec.folder, device)
    assert spec.source is not None
    fmt = spec.fmt
    if fmt is None or fmt.family == "bf16":
        loaded = _load_source(spec.source, progress, cancel, loaded_cache)
        model = loaded.model_in(torch.bfloat16)  # from disk in bf16, never through float32
        variant = variant_from_model("bf16", model, loaded.tokenizer, get_format("bf16"), device)
        if spec.source.from_gguf:
            variant.note = runtime.GGUF_NOTE
        return variant
    request = QuantRequest.build(spec.source, fmt, spec.method)
    folder = request.dest
    if not (folder / store.MANIFEST).exists():
        loaded = _load_source(spec.source, progress, cancel, loaded_cache)
        folder = quantize_and_save(request, progress, cancel, loaded=loaded).path
    return load_variant(folder, device)


def _load_source(
    source: sources.ModelSource,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    cache: dict[str, sources.LoadedSource] | None,
) -> sources.LoadedSource:
    key = source.ref
    if cache is not None and key in cache:
        return cache[key]
    loaded = sources.load(source, progress=progress or no_progress, cancel=cancel, eager=False)
    if cache is not None:
        cache[key] = loaded
    return loaded


def describe_error(exc: BaseException) -> str:
    """One line for a user: QtuiError messages as they are, anything else with its type."""
    if isinstance(exc, QtuiError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
