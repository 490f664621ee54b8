"""User settings, persisted as JSON in the XDG config folder (``~/.config/qtui/settings.json``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from engine import paths, specs, typed
from engine.errors import QtuiError
from engine.runtime import GenSettings

GENERATION = ("max_new_tokens", "temperature", "top_p", "seed")


@dataclass
class Settings:
    """What the app remembers, as parsed values (never raw text a later reader must re-parse)."""

    model: str = "default"
    formats: list[str] = field(default_factory=lambda: ["int4-g64"])
    method: str = "rtn"
    method_params: dict[str, object] = field(default_factory=dict)  # the values changed from defaults
    calibration: dict[str, object] | None = None  # CalibrationSpec fields; None = built-in defaults

    device: str = "cpu"
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    theme: str = "textual-dark"

    # not settings: who hears that a save failed (the app sets it), and the last such message
    on_error: ClassVar[Callable[[str], None] | None] = None
    last_error: ClassVar[str] = ""

    def generation(self) -> GenSettings:
        return GenSettings(**{name: getattr(self, name) for name in GENERATION})

    def set_generation(self, values: dict[str, object]) -> None:
        """Check ``values`` (strings or numbers) as generation settings and keep them."""
        gen = typed.build(GenSettings, values, "generation settings")
        for name in GENERATION:
            setattr(self, name, getattr(gen, name))

    @classmethod
    def path(cls) -> Path:
        return paths.config_dir() / "settings.json"

    @classmethod
    def load(cls) -> Settings:
        try:
            data = json.loads(cls.path().read_text())
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in fields(cls)}
        clean = {k: v for k, v in data.items() if k in known} if isinstance(data, dict) else {}
        try:
            settings = cls(**clean)
        except TypeError:
            return cls()
        return settings._checked()

    def _checked(self) -> Settings:
        """Values from an older or hand-edited file, parsed; what cannot be parsed is reset."""
        defaults = Settings()
        for name in ("model", "method", "device", "theme"):  # a hand-edited type is reset
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                setattr(self, name, getattr(defaults, name))
        if not isinstance(self.formats, list) or not all(isinstance(f, str) for f in self.formats):
            self.formats = defaults.formats
        if isinstance(self.method_params, str):  # written by qtui <= 0.1 as "KEY=VALUE ..."
            try:
                self.method_params = dict(typed.parse_assignments(self.method_params))
            except QtuiError:
                self.method_params = {}
        if isinstance(self.calibration, str):
            try:
                spec = specs.parse_calibration(self.calibration)
                self.calibration = typed.values(spec) if spec else None
            except QtuiError:
                self.calibration = None
        if not isinstance(self.method_params, dict):
            self.method_params = {}
        if self.calibration is not None:
            try:  # a hand-edited dict is checked like typed text
                self.calibration = typed.values(specs.calibration_spec(dict(self.calibration)))
            except (QtuiError, TypeError, ValueError):
                self.calibration = None
        try:
            self.set_generation({name: getattr(self, name) for name in GENERATION})
        except QtuiError:
            for name in GENERATION:
                setattr(self, name, getattr(defaults, name))
        return self

    @property
    def params_text(self) -> str:
        return " ".join(
            f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.method_params.items()
        )

    @property
    def calibration_text(self) -> str:
        c = self.calibration
        return f"{c['source']}:{c['samples']}x{c['seq_len']}" if c else ""

    def save(self) -> bool:
        """Write the settings atomically. A file or folder that cannot be written (read-only, full,
        a folder where the file should be) is reported once per message through ``on_error`` (the
        app shows it) and never raised: the app goes on with the settings it holds."""
        path = self.path()
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(self), indent=1))
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            message = f"settings not saved to {path}: {exc.strerror or exc}"
            if self.on_error is not None and message != self.last_error:
                self.on_error(message)
            self.last_error = message
            return False
        self.last_error = ""
        return True
