"""The one door from the UI to the engine.

Screens call an :class:`EngineService`; tests pass a scripted fake with the same methods
(``tests/ui/fake_engine.py``). Every long call takes ``progress(done, total, text)`` and a
``threading.Event`` and runs in a thread worker, never on the UI thread.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from engine.divergence import Divergence
from engine.evals.results import TaskResult
from engine.inspection import LinearView, VariantTable
from engine.manifest import Manifest
from engine.progress import ProgressFn
from engine.request import QuantRequest
from engine.runtime import GenResult, GenSettings, Message, Token, Variant
from engine.sources import LoadedSource, ModelSource
from engine.specs import EvalMode
from qtui.cli_export import TARGETS as EXPORT_TARGETS

if TYPE_CHECKING:
    from engine.columns import Column
    from engine.quant import rotation

# where a saved variant can be exported (the targets of ``qtui export --to``), as the app names them
EXPORT_LABELS = {
    "gguf": "GGUF (llama.cpp, ollama)",
    "compressed-tensors": "compressed-tensors (vLLM)",
}


@dataclass(frozen=True)
class FormatInfo:
    name: str
    family: str
    bits_per_weight: float
    description: str


@dataclass(frozen=True)
class VariantInfo:
    """A saved variant, as the Models screen lists it."""

    name: str  # "int4-g64-rtn"
    fmt: str  # "int4-g64"
    method: str
    path: Path
    bytes_on_disk: int
    bits_per_weight: float

    @classmethod
    def of(cls, path: Path, m: Manifest) -> VariantInfo:
        return cls(path.name, m.format_name, m.method, path, m.bytes_on_disk, m.bits_per_weight)


@dataclass
class Loaded:
    """A variant loaded for chat: what a column shows about it, plus the engine's handle."""

    name: str
    backend: str
    weight_bytes: int
    bytes_on_disk: int
    bits_per_weight: float
    handle: object = None  # the engine's Variant (a fake service's own object in UI tests)


def _variant(loaded: Loaded) -> Variant:
    """The engine's handle of a variant :class:`EngineService` loaded (a torch column)."""
    if not isinstance(loaded.handle, Variant):  # a llama.cpp or remote column (engine.columns)
        from engine.errors import QtuiError

        raise QtuiError(f"{loaded.name} runs on {loaded.backend.split(' (')[0]}: this needs a torch column")
    return loaded.handle


class Service(Protocol):
    note: str

    def sources(self) -> list[ModelSource]: ...
    def formats(self) -> list[FormatInfo]: ...
    def methods(self) -> list[str]: ...
    def method_hint(self, name: str) -> str: ...
    def devices(self) -> list[str]: ...
    def saved_variants(self, source_ref: str) -> list[VariantInfo]: ...
    def expected_bytes(self, source_ref: str, fmt: str) -> int | None: ...
    def quantize_request(
        self,
        source_ref: str,
        fmt: str,
        method: str,
        params: str = "",
        calibration: str = "",
        device: str = "cpu",
        rotate: str = "none",
        bits_per_weight: str = "",
        distill: str = "",
    ) -> QuantRequest: ...
    def quantize(
        self, request: QuantRequest, progress: ProgressFn, cancel: threading.Event
    ) -> VariantInfo: ...

    def load(self, spec: str, device: str, progress: ProgressFn, cancel: threading.Event) -> Loaded: ...
    def stream(
        self, loaded: Loaded, messages: list[Message], settings: GenSettings, cancel: threading.Event
    ) -> Generator[Token, None, GenResult]: ...
    def decode(self, loaded: Loaded, token_ids: list[int]) -> str: ...
    def release_sources(self) -> None: ...
    def eval_tasks(self) -> list[tuple[str, str, tuple[EvalMode, ...]]]: ...
    def evaluate(
        self,
        loaded: Loaded,
        baseline: Loaded | None,
        task: str,
        mode: EvalMode,
        limit: int | None,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> TaskResult: ...
    def inspect_variant(self, path: str, progress: ProgressFn, cancel: threading.Event) -> VariantTable: ...
    def divergence(
        self,
        baseline: Loaded,
        loaded: Loaded,
        messages: list[Message],
        answer_ids: list[int],
        system: str | None,
        cancel: threading.Event,
    ) -> Divergence: ...
    def inspect_linear(
        self, path: str, name: str, progress: ProgressFn, cancel: threading.Event
    ) -> LinearView: ...
    def export_variant(
        self, path: str, target: str, progress: ProgressFn, cancel: threading.Event
    ) -> str: ...


class EngineService:
    """The real engine behind the :class:`Service` protocol."""

    def __init__(self) -> None:
        from engine import sources

        sources.preload_libraries()  # before any worker thread imports transformers
        self.note = sources.DEFAULT_NOTE
        self._loaded_sources: dict[str, LoadedSource] = {}
        self._lock = threading.Lock()

    def sources(self) -> list[ModelSource]:
        from engine import sources

        return sources.list_sources()

    def formats(self) -> list[FormatInfo]:
        from engine.quant.formats import get_format, list_format_names

        out = []
        for name in list_format_names():
            fmt = get_format(name)
            out.append(FormatInfo(fmt.name, fmt.family, fmt.bits_per_weight(4096), fmt.description))
        return out

    def methods(self) -> list[str]:
        from engine.quant.methods import METHODS, get_method

        get_method("rtn")
        return sorted(METHODS)

    def method_hint(self, name: str) -> str:
        """One line for the params field: the method's parameters with their defaults."""
        from engine.quant.methods import get_method

        try:
            return get_method(name).hint()
        except Exception:
            return "method params: key=value ..."

    def devices(self) -> list[str]:
        from engine import devices

        return devices.available()

    def saved_variants(self, source_ref: str) -> list[VariantInfo]:
        from engine import sources, store

        slug = sources.resolve(source_ref).slug
        return [VariantInfo.of(path, m) for path, m in store.list_variants() if path.parent.name == slug]

    def expected_bytes(self, source_ref: str, fmt: str) -> int | None:
        from engine import sizing, sources
        from engine.quant.formats import get_format

        source = sources.resolve(source_ref)
        if source.path is None or not (source.path / "config.json").exists():
            return None
        return sizing.estimate_bytes(source.path, get_format(fmt))

    def _source(self, ref: str, progress: ProgressFn, cancel: threading.Event) -> LoadedSource:
        from engine import sources

        with self._lock:
            if ref not in self._loaded_sources:
                self._loaded_sources[ref] = sources.load(ref, progress=progress, cancel=cancel, eager=False)
            return self._loaded_sources[ref]

    def quantize_request(
        self,
        source_ref: str,
        fmt: str,
        method: str,
        params: str = "",
        calibration: str = "",
        device: str = "cpu",
        rotate: str = "none",
        bits_per_weight: str = "",
        distill: str = "",
    ) -> QuantRequest:
        """The typed request for one job, checked here (unknown parameters, bad values, a device
        this machine lacks are one-line errors before anything is queued)."""
        from engine.quant.distill import parse as parse_distill
        from engine.quant.plan import QuantOptions
        from engine.request import QuantRequest

        options = QuantOptions(
            rotate=rotate_kind(rotate),
            bits_per_weight=budget_bits(bits_per_weight),
            distill=parse_distill(distill),
        )
        return QuantRequest.build(
            source_ref, fmt, method, params, calibration or None, options, device=device, overwrite=True
        )

    def memory_estimate(self, request: QuantRequest, progress: ProgressFn, cancel: threading.Event) -> int:
        """Bytes the job will need at its peak (engine.budget), from the model's shapes alone."""
        from engine import variants

        loaded = self._source(request.source.ref, progress, cancel)
        lazy = loaded.lazy() if variants.streamable(request) else None
        return variants.estimate_memory(request, loaded, lazy).total

    def quantize(self, request: QuantRequest, progress: ProgressFn, cancel: threading.Event) -> VariantInfo:
        from engine import variants

        loaded = self._source(request.source.ref, progress, cancel)
        saved = variants.quantize_and_save(request, progress, cancel, loaded=loaded)
        return VariantInfo.of(saved.path, saved.manifest)

    def load(self, spec: str, device: str, progress: ProgressFn, cancel: threading.Event) -> Loaded:
        from engine import columns, specs, variants

        if specs.parse_column_spec(spec).engine != "torch":  # SPEC@llama.cpp, remote:URL
            col = columns.open_column(spec, device, progress, cancel)
            m = getattr(col, "manifest", None)
            disk = m.bytes_on_disk if m else col.weight_bytes()
            bpw = float(getattr(getattr(col, "info", None), "bits_per_weight", 0.0))
            return Loaded(col.name, col.backend, col.weight_bytes(), disk, bpw, col)
        parsed = specs.parse_model_spec(spec)
        cache: dict[str, LoadedSource] | None = None
        if parsed.source is not None:
            cache = {parsed.source.ref: self._source(parsed.source.ref, progress, cancel)}
        variant = variants.open_spec(parsed, device, progress, cancel, loaded_cache=cache)
        variant.warm_up(progress)
        m = variant.manifest
        disk = m.bytes_on_disk if m else variant.weight_bytes()
        bpw = m.bits_per_weight if m else 16.0
        name = variant.name  # a saved variant's name comes from its manifest (rotation included)
        return Loaded(name, variant.backend, variant.weight_bytes(), disk, bpw, variant)

    def stream(
        self, loaded: Loaded, messages: list[Message], settings: GenSettings, cancel: threading.Event
    ) -> Generator[Token, None, GenResult]:
        from engine import columns, limits

        if isinstance(loaded.handle, Variant):  # a conversation past the context: a notice, not garbage
            limits.check_prompt(loaded.handle, messages, settings, "max tokens")
        return columns.stream(cast("Column", loaded.handle), messages, settings, cancel)

    def decode(self, loaded: Loaded, token_ids: list[int]) -> str:
        tokenizer = getattr(loaded.handle, "tokenizer", None)  # a remote column has none
        if tokenizer is None:
            return ""
        text: str = tokenizer.decode([i for i in token_ids if i >= 0], skip_special_tokens=True)
        return text

    def release_sources(self) -> None:
        """Drop the float source models kept for quantizing (reloaded in ~0.3 s when needed)."""
        import ctypes
        import gc

        with self._lock:
            self._loaded_sources.clear()
        gc.collect()
        try:  # hand freed heap pages back to the OS so RSS shows what is really in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    def eval_tasks(self) -> list[tuple[str, str, tuple[EvalMode, ...]]]:
        """(name, title, modes) of every registered evaluation task."""
        from engine.evals.tasks import TASKS

        texts: list[tuple[str, str, tuple[EvalMode, ...]]] = [
            ("wikitext", "WikiText-2 sample: fidelity text", ("fidelity",)),
            ("passages", "built-in passages: fidelity text", ("fidelity",)),
        ]
        return [(t.name, t.title, tuple(t.modes)) for t in TASKS.values()] + texts

    def evaluate(
        self,
        loaded: Loaded,
        baseline: Loaded | None,
        task: str,
        mode: EvalMode,
        limit: int | None,
        progress: ProgressFn,
        cancel: threading.Event,
    ) -> TaskResult:
        """One variant on one task in one mode (cached by content); fidelity is vs ``baseline``."""
        from engine.evals import api

        base = _variant(baseline) if baseline is not None else None
        subject = api.subject_from_variant(_variant(loaded), base)
        return api.run(subject, task, mode, limit, progress=progress, cancel=cancel)

    def export_variant(self, path: str, target: str, progress: ProgressFn, cancel: threading.Event) -> str:
        """Export the saved variant at ``path`` to ``target`` (one of :data:`EXPORT_TARGETS`: GGUF by
        engine.gguf_export, compressed-tensors by engine.hf_export); one line saying where, what and
        the read-back check."""
        if target == "compressed-tensors":
            from engine import hf_export

            ct = hf_export.export_compressed_tensors(Path(path), None, progress, cancel)
            return (
                f"{ct.path} (compressed-tensors, {ct.bytes / 2**20:.1f} MiB): {len(ct.checks)} quantized "
                f"Linears, max |dW| {ct.max_abs_dw:.3g}; loads with transformers and vLLM"
            )
        if target != "gguf":
            raise ValueError(f"unknown export target {target!r}; one of {', '.join(EXPORT_TARGETS)}")
        from engine import gguf_export

        r = gguf_export.export_gguf(Path(path), None, progress, cancel)
        exact = sum(t.exact for t in r.tensors)
        return (
            f"{r.path} ({r.file_type}, {r.bytes / 2**20:.1f} MiB): {exact}/{len(r.tensors)} tensors exact, "
            f"max |dW| {r.max_abs_dw:.3g}"
        )

    def inspect_variant(self, path: str, progress: ProgressFn, cancel: threading.Event) -> VariantTable:
        """The per-Linear table of a saved variant (engine.inspection; cached by its hash)."""
        from engine import inspection

        return inspection.inspect_variant(Path(path), progress, cancel)

    def inspect_linear(
        self, path: str, name: str, progress: ProgressFn, cancel: threading.Event
    ) -> LinearView:
        """One Linear of a saved variant up close (histogram, group grids, activation channels)."""
        from engine import inspection

        return inspection.inspect_linear(Path(path), name, progress, cancel)

    def divergence(
        self,
        baseline: Loaded,
        loaded: Loaded,
        messages: list[Message],
        answer_ids: list[int],
        system: str | None,
        cancel: threading.Event,
    ) -> Divergence:
        """Per-token KLD of ``loaded`` from ``baseline``, teacher-forced on the baseline's answer."""
        from engine import divergence

        return divergence.divergence(
            _variant(baseline), _variant(loaded), messages, answer_ids, system, cancel=cancel
        )


def budget_bits(value: str) -> float | None:
    """A bit budget typed in the UI (``2.5``, ``mixed-2.5``; empty: none), parsed; engine/quant/allocation.py."""
    from engine.quant.allocation import parse_budget

    return parse_budget(value) if value.strip() else None


def rotate_kind(value: str) -> rotation.Kind:
    """A rotation name from the UI, checked (engine/quant/rotation.py)."""
    from engine.errors import QtuiError
    from engine.quant.rotation import KINDS

    if value not in KINDS:
        raise QtuiError(f"unknown rotation {value!r}: {', '.join(KINDS)}")
    return value  # narrowed by the check above
