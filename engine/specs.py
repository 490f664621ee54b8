"""Every short spec a user types, parsed in one place into typed values.

* ``MODEL[:FORMAT]`` - a model (``default``, a HF folder, a ``.gguf`` file, a hub id) and
  optionally a format (``default:int4-g128``); a saved variant's folder is a spec too.
* ``FORMAT[@BACKEND]`` - a format forced onto one kernel backend (``int4-g64@naive``).
* ``SOURCE[:SAMPLESxSEQ_LEN]`` - calibration data (``builtin:16x256``, ``notes.jsonl:32x512``).
* ``TASK[:MODE]`` - an evaluation task and mode (``arc_easy:loglik``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine import paths, sources, typed
from engine.errors import QtuiError
from engine.quant.calibration import CalibrationSpec
from engine.quant.formats import FormatSpec, get_format

EvalMode = Literal["generate", "loglik", "fidelity"]
EVAL_MODES: tuple[EvalMode, ...] = typing.get_args(EvalMode)


@dataclass(frozen=True)
class ModelSpec:
    """What ``MODEL[:FORMAT]`` names: a source and a format, or a saved variant's folder."""

    text: str
    source: sources.ModelSource | None  # None when the spec is a saved variant folder
    fmt: FormatSpec | None  # None: the source's 16-bit baseline
    method: str = "rtn"
    folder: Path | None = None  # a saved variant's folder

    @property
    def display(self) -> str:
        if self.folder is not None and self.source is None:
            return self.folder.name
        return self.fmt.name if self.fmt else "bf16"


def parse_model_spec(text: str, method: str = "rtn") -> ModelSpec:
    path = Path(text).expanduser()
    if path.is_dir() and (path / paths.MANIFEST).exists():
        return ModelSpec(text, None, None, method, path)
    if not path.exists() and ":" in text:
        model, _, fmt_name = text.rpartition(":")
        return ModelSpec(text, sources.resolve(model or "default"), get_format(fmt_name), method)
    return ModelSpec(text, sources.resolve(text), None, method)


def parse_format_backend(text: str) -> tuple[FormatSpec, str | None]:
    """``int4-g64`` -> (int4-g64, None); ``int4-g64@naive`` (or the older ``int4-g64:naive``) ->
    (int4-g64, "naive"). The backend name is checked by whoever runs it (engine.quant.layers)."""
    fmt_name, sep, backend = text.partition("@")
    if not sep:
        fmt_name, _, backend = text.partition(":")
    return get_format(fmt_name), (backend.strip() or None)


def parse_calibration(text: str) -> CalibrationSpec | None:
    """``""`` (defaults: None), ``"builtin:16x256"``, ``"notes.txt"`` or ``"notes.txt:32x512"``."""
    text = text.strip()
    if not text:
        return None
    source, shape = text, ""
    if ":" in text and "x" in text.rsplit(":", 1)[1].lower():
        source, _, shape = text.rpartition(":")
    values: dict[str, object] = {"source": source or "builtin"}
    if shape:
        samples, sep, seq_len = shape.lower().partition("x")
        if not sep or not samples.strip().isdigit() or not seq_len.strip().isdigit():
            raise QtuiError(f"calibration {text!r}: expected SOURCE:SAMPLESxSEQ_LEN, e.g. builtin:16x256")
        values.update(samples=samples, seq_len=seq_len)
    return calibration_spec(values)


def calibration_spec(values: dict[str, object]) -> CalibrationSpec:
    """A checked :class:`CalibrationSpec` from field values (strings or numbers)."""
    return typed.build(CalibrationSpec, values, "calibration")


def parse_task_mode(text: str, default: EvalMode = "loglik") -> tuple[str, EvalMode]:
    """``arc_easy`` -> ("arc_easy", default); ``gsm8k:generate`` -> ("gsm8k", "generate")."""
    task, _, mode = text.partition(":")
    mode = mode.strip() or default
    if mode not in EVAL_MODES:
        raise QtuiError(f"{text!r}: unknown mode {mode!r} (use {', '.join(EVAL_MODES)})")
    return task.strip(), mode  # narrowed to EvalMode by the check above


ENGINES = ("torch", "llama.cpp", "remote")  # what a chat column runs on (engine.columns)


@dataclass(frozen=True)
class ColumnSpec:
    """What a chat column runs: ``target`` (a model spec, a ``.gguf`` file or a URL) on ``engine``."""

    text: str
    target: str
    engine: str  # one of ENGINES


def parse_column_spec(text: str) -> ColumnSpec:
    """``default:int4`` -> torch; ``default:int4@llama.cpp`` -> llama.cpp; ``remote:URL`` or an
    ``http(s)://`` URL -> a remote OpenAI-compatible server (``@torch`` is accepted too)."""
    raw = text.strip()
    if raw.startswith("remote:"):
        return ColumnSpec(text, raw.removeprefix("remote:"), "remote")
    if raw.startswith(("http://", "https://")):
        return ColumnSpec(text, raw, "remote")
    target, sep, engine = raw.rpartition("@")
    if sep and engine in ("torch", "llama.cpp", "llamacpp"):
        return ColumnSpec(text, target, "llama.cpp" if engine == "llamacpp" else engine)
    return ColumnSpec(text, raw, "torch")
