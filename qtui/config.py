"""User settings, persisted as JSON in the XDG config folder (``~/.config/qtui/settings.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from engine import paths


@dataclass
class Settings:
    model: str = "default"
    formats: list[str] = field(default_factory=lambda: ["int4-g64"])
    method: str = "rtn"
    method_params: str = ""  # "KEY=VALUE ..." passed to the method
    calibration: str = ""  # "" (built-in defaults) or SOURCE[:SAMPLESxSEQ_LEN]

    device: str = "cpu"
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    theme: str = "textual-dark"

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
        clean = {k: v for k, v in data.items() if k in known}
        try:
            return cls(**clean)
        except TypeError:
            return cls()

    def save(self) -> None:
        path = self.path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
