"""What an evaluation run returns (:class:`TaskResult`) and the on-disk result cache.

Results are stored as JSON under ``data_dir()/evals``, one file per key = sha256 of (variant
content hash, task content hash, mode, settings); a later run with the same key is free.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import paths
from engine.evals.stats import Proportion

if TYPE_CHECKING:
    from engine.specs import EvalMode

RESULT_VERSION = 1


@dataclass
class TaskResult:
    variant: str
    variant_hash: str
    task: str
    task_hash: str
    mode: EvalMode
    settings: dict[str, Any]
    n: int  # items (fidelity: scored tokens)
    correct: int  # loglik: acc; generate: correct incl. fallback answers; fidelity: top-1 agreements
    metrics: dict[str, Any] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    machine: str = ""
    cached: bool = False

    @property
    def accuracy(self) -> Proportion:
        return Proportion(self.correct, self.n)

    def count(self, name: str) -> Proportion:
        """Any counted metric as k / n: correct_norm, correct_strict, boxed, fallback, looped, ..."""
        return Proportion(int(self.metrics.get(name, 0)), self.n)

    @property
    def acc_norm(self) -> Proportion:
        return self.count("correct_norm")

    @property
    def strict(self) -> Proportion:
        return self.count("correct_strict")

    @property
    def compliance(self) -> Proportion:
        return self.count("boxed")

    @property
    def degenerate(self) -> int:
        return int(self.metrics.get("degenerate", 0))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("cached")
        out["accuracy"] = self.accuracy.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskResult:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "cached"}
        return cls(**fields)


def cache_key(variant_hash: str, task_hash: str, mode: EvalMode, settings: dict[str, Any]) -> str:
    blob = json.dumps([RESULT_VERSION, variant_hash, task_hash, mode, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_dir() -> Path:
    return paths.data_dir() / "evals"


def load_cached(key: str) -> TaskResult | None:
    path = cache_dir() / f"{key}.json"
    try:
        result = TaskResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    result.cached = True
    return result


def store(key: str, result: TaskResult) -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result.to_json()))
    os.replace(tmp, path)
    return path


def cached_results(variant_hash: str | None = None) -> list[TaskResult]:
    """Every stored result (of one variant when ``variant_hash`` is given), newest first."""
    out = []
    for path in sorted(cache_dir().glob("*.json")) if cache_dir().exists() else []:
        try:
            r = TaskResult.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if variant_hash is None or r.variant_hash == variant_hash:
            r.cached = True
            out.append(r)
    return sorted(out, key=lambda r: r.created, reverse=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
