"""Cheap checks of a saved variant made from file headers alone, before any tensor is read.

The store verifies file sizes and every tensor's sha256 against the manifest; that proves the files
are the ones the manifest lists, not that the manifest describes them. These checks close the gap:

* every stored tensor has the shape its manifest entry implies (an edited ``shape`` would otherwise
  build a layer of the wrong size around the right bytes);
* a folder holding a variant's packed tensors without its manifest is not taken for a model folder
  (the packed tensors would be ignored and the missing weights initialised at random).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from engine import paths
from engine.errors import QtuiError, StoreError

if TYPE_CHECKING:  # resolving a source folder uses this module without importing torch
    from engine.manifest import Manifest

HEADER_LIMIT = 100 << 20  # safetensors' own cap on a header


def safetensors_header(path: Path) -> dict[str, dict[str, object]]:
    """The JSON header of a safetensors file (``__metadata__`` included); a StoreError if it is
    not one."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n <= 0 or n > HEADER_LIMIT or 8 + n > size:
                raise StoreError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict):
        raise StoreError(f"{path} is not a safetensors file (header is not an object)")
    return header


def written_by_qtui(path: Path) -> bool:
    """Whether a safetensors file is a qtui variant's (its metadata names the qtui format)."""
    try:
        meta = safetensors_header(path).get("__metadata__") or {}
    except StoreError:
        return False
    return isinstance(meta, dict) and "qtui" in meta


def expected_shapes(name: str, entry: dict[str, object]) -> dict[str, list[int]]:
    """Stored tensor name -> shape for one manifest entry (a float tensor, or a quantized weight's
    packed codes and per-group scales and zeros)."""
    from engine.quant import primitives as P
    from engine.quant.formats import get_format

    shape = [int(d) for d in entry["shape"]]  # type: ignore[attr-defined]
    fmt = get_format(str(entry["format"]))
    if fmt.is_float or len(shape) != 2:
        return {name: shape}
    out_features, in_features = shape
    group = fmt.group_for(in_features)
    n_groups = -(-in_features // group)
    base = name.removesuffix(".weight")
    codes = P.packed_length(P.padded_length(in_features, group), fmt.bits)
    want = {f"{base}.qweight": [out_features, codes], f"{base}.scales": [out_features, n_groups]}
    if not fmt.symmetric:
        want[f"{base}.qzeros"] = [out_features, n_groups]
    return want


def check_variant_shapes(folder: Path, manifest: Manifest) -> None:
    """Every tensor the manifest describes is stored with the shape the description implies."""
    stored: dict[str, list[int]] = {}
    for file in manifest.weight_files:
        path = folder / file
        if not path.exists():
            raise StoreError(f"{path} is missing; the variant is incomplete")
        for key, info in safetensors_header(path).items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if key != "__metadata__" and isinstance(shape, list):
                stored[key] = [int(d) for d in shape]
    for name, entry in manifest.tensors.items():
        try:
            want = expected_shapes(name, entry)
        except (QtuiError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{folder}: manifest entry {name} is malformed ({exc})") from exc
        for key, shape in want.items():
            got = stored.get(key)
            if got is None:
                raise StoreError(f"{folder}: {key} is missing from the weight files")
            if got != shape:
                raise StoreError(
                    f"{folder}: {key} is stored as {got} but the manifest implies {shape}; "
                    "the variant was modified or is corrupt"
                )


def check_not_orphan_variant(folder: Path) -> None:
    """A folder of a variant's packed tensors whose manifest was deleted is refused as a source."""
    for path in sorted(folder.glob("*.safetensors")):
        if written_by_qtui(path):
            raise StoreError(
                f"{folder} holds a qtui variant's packed tensors but no {paths.MANIFEST}; "
                "a variant cannot be loaded without its manifest (quantize it again)"
            )
