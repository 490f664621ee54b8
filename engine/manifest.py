"""The manifest of a saved variant (``qtui-manifest.json``) as one typed, read-only object.

``engine.store`` writes the JSON and parses it back through :meth:`Manifest.from_dict`, which checks
the keys every reader needs; callers use attributes (``m.fmt``, ``m.bits_per_weight``), never nested
dict lookups. ``raw`` keeps the whole JSON for reports and for fields only one reader needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.quant.formats import FormatSpec, get_format

REQUIRED = ("qtui_variant", "format", "tensors", "tensor_sha256", "files")


@dataclass(frozen=True)
class SourceRecord:
    """Where a variant came from: the spec a user gave, its kind, a label and its content hash."""

    id: str = ""
    kind: str = ""
    label: str = ""
    hash: str | None = None


@dataclass(frozen=True)
class Manifest:
    version: int
    format_name: str
    method: str
    method_params: dict[str, Any]
    source: SourceRecord
    model_type: str
    created: str
    bytes_on_disk: int
    bits_per_weight: float  # in the quantized tensors (codes, scales, zeros)
    bits_per_weight_model: float  # the whole weights file over every parameter
    tensors: dict[str, dict[str, Any]]  # name -> {"format", "shape"}
    tied: dict[str, str]
    tensor_sha256: dict[str, str]
    files: dict[str, dict[str, int]]  # file name -> {"bytes"}
    layers: list[dict[str, Any]]  # per-Linear errors
    quantized_on: str | None
    weight_files: list[str]  # the safetensors files: one, or the shards of a large variant
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def fmt(self) -> FormatSpec:
        return get_format(self.format_name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | str = "manifest") -> Manifest:
        """Parse the JSON a save wrote; a missing key is a :class:`StoreError` naming it."""
        if not isinstance(data, dict):
            raise StoreError(f"{where} is not a JSON object; not a qtui variant manifest")
        for key in REQUIRED:
            if key not in data:
                raise StoreError(f"{where} is missing {key!r}; not a qtui variant manifest")
        try:
            bpw = data.get("bits_per_weight") or {}
            method = data.get("method") or {}
            m = cls(
                version=int(data["qtui_variant"]),
                format_name=str(data["format"]["name"]),
                method=str(method.get("name", "rtn")),
                method_params=dict(method.get("params") or {}),
                source=SourceRecord(**{k: v for k, v in (data.get("source") or {}).items() if k in _SOURCE}),
                model_type=str(data.get("model_type", "")),
                created=str(data.get("created", "")),
                bytes_on_disk=int(data.get("bytes_on_disk", 0)),
                bits_per_weight=float(bpw.get("quantized_tensors", 16.0)),
                bits_per_weight_model=float(bpw.get("whole_model", 16.0)),
                tensors=dict(data["tensors"]),
                tied=dict(data.get("tied") or {}),
                tensor_sha256=dict(data["tensor_sha256"]),
                files=dict(data["files"]),
                layers=list(data.get("layers") or []),
                quantized_on=data.get("quantized_on"),
                weight_files=[str(f) for f in data.get("weight_files") or ["model.safetensors"]],
                raw=data,
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise StoreError(f"{where} has a malformed field ({type(exc).__name__}: {exc})") from exc
        for name in [*m.weight_files, *m.files]:
            if Path(name).name != name or name in (".", ".."):
                raise StoreError(f"{where} names a file outside the variant folder: {name!r}")
        return m


_SOURCE = {"id", "kind", "label", "hash"}
