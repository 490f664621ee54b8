"""Reading evaluation records: JSONL / JSON / parquet files or folders, built-in suites, the hub.

Records keep their Hugging Face schema (one dict per example). The hub is tried only when a
task names a hub file and no local file is given; offline that is one clear :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

from engine.errors import QtuiError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "evals"


def _shared_samples() -> Path:
    """The workplace's dataset samples: ``shared/datasets`` beside the checkout or beside one of
    its parent folders (a clone one level deeper still finds them); the nearest one wins."""
    repo = Path(__file__).resolve().parents[2]
    for folder in repo.parents:
        candidate = folder / "shared" / "datasets"
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "datasets"  # absent: callers check .exists()


SHARED_SAMPLES = _shared_samples()
EXTENSIONS = (".jsonl", ".json", ".parquet")


class DataError(QtuiError):
    """An evaluation dataset is missing, unreadable or in an unexpected schema."""


def read_records(path: Path, prefer: str | None = None) -> list[dict[str, Any]]:
    """Records from a file, or from the first suitable file in a folder (``prefer`` in its name)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in EXTENSIONS)
        if prefer:
            files = sorted(files, key=lambda p: (prefer not in p.name, "test" not in p.name, p.name))
        if not files:
            raise DataError(f"{path}: no .jsonl, .json or .parquet file in this folder")
        path = files[0]
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            return _parquet(path)
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl" or (text.lstrip().startswith("{") and "\n{" in text):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read records ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, dict):
        for key in ("data", "rows", "records", "examples"):
            if isinstance(data.get(key), list):
                records: list[dict[str, Any]] = data[key]
                return records
        raise DataError(f"{path}: a JSON object without a list of records")
    return list(data)


def _parquet(path: Path) -> list[dict[str, Any]]:
    try:  # an optional dependency (untyped, often absent): imported by name
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise DataError(
            f"{path}: reading parquet needs pyarrow (pip install pyarrow); or convert it to JSONL"
        ) from exc
    try:
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__})") from exc


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_file(repo_id: str, filename: str) -> Path:
    """Download one dataset file from the Hugging Face hub (cached); offline: a DataError."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as exc:
        raise DataError(
            f"dataset {repo_id} is not available offline and the hub is unreachable; "
            f"pass --data with a local JSONL/JSON/parquet file ({type(exc).__name__})"
        ) from exc
