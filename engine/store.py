"""Save and load variants: a folder of safetensors + tokenizer + ``qtui-manifest.json``.

Writes go to a hidden temporary folder beside the destination, are fsynced, and are renamed into
place last, so an interrupted or failed save leaves nothing that looks like a variant. Loading
checks the manifest, each file's size and each tensor's sha256; any mismatch is a
:class:`StoreError` naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import nn

import engine
from engine import paths, typed
from engine.errors import Cancelled, StoreError
from engine.manifest import Manifest
from engine.progress import ProgressFn
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.plan import LayerReport, QuantOptions, QuantReport, hf_model, quantized_modules, set_module

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PreTrainedTokenizerBase

MANIFEST = paths.MANIFEST
WEIGHTS = "model.safetensors"
MANIFEST_VERSION = 1
TRANSFORM_SUFFIX = ".input_transform"  # a QLinear's input transform (float32)
FLOAT_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


def tensor_sha256(t: torch.Tensor) -> str:
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def variant_name(fmt: FormatSpec, method: str, options: QuantOptions | None = None) -> str:
    """``int4-g64-gptq``; mixed precision adds ``-keepKxB`` (the one place that suffix is made)."""
    name = fmt.name if fmt.is_float else f"{fmt.name}-{method}"
    if options is not None and options.keep_sensitive and not fmt.is_float:
        name += f"-keep{options.keep_sensitive}x{options.sensitive_bits}"
    return name


def default_variant_dir(
    source_slug: str, fmt: FormatSpec, method: str, options: QuantOptions | None = None
) -> Path:
    return paths.variants_dir() / source_slug / variant_name(fmt, method, options)


class TensorEntry(TypedDict):
    """The manifest's description of one stored tensor."""

    format: str  # a format name, or a float name of FLOAT_NAMES
    shape: list[int]


class Described(TypedDict):
    tensors: dict[str, TensorEntry]  # tensor name -> its description
    tied: dict[str, str]  # a tied tensor's name -> the stored tensor it shares


def _state_to_save(model: nn.Module, fmt: FormatSpec) -> tuple[dict[str, torch.Tensor], Described]:
    """Every tensor to write, plus the manifest's per-tensor description."""
    base_dtype = fmt.torch_dtype
    qmods = quantized_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, TensorEntry] = {}
    for name, module in qmods.items():
        if module.qw is None:
            raise StoreError(f"{name}: quantized weight was released; save before preparing kernels")
        for key, t in module.qw.tensors(name).items():
            tensors[key] = t.contiguous().cpu()
        described[f"{name}.weight"] = {"format": module.qw.fmt.name, "shape": list(module.qw.shape)}
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for key, t in model.state_dict().items():
        if key in tensors:
            continue
        if t.data_ptr() in seen:
            tied[key] = seen[t.data_ptr()]
            continue
        seen[t.data_ptr()] = key
        dtype = torch.float32 if key.endswith(TRANSFORM_SUFFIX) else base_dtype  # kept exact
        out = t.detach().to(dtype) if t.is_floating_point() else t.detach()
        tensors[key] = out.contiguous().cpu()
        described[key] = {"format": FLOAT_NAMES[dtype], "shape": list(t.shape)}
    return tensors, {"tensors": described, "tied": tied}


@dataclass
class SaveInfo:
    """What a save wrote: the variant folder, its manifest, and the quantization report if any."""

    path: Path
    manifest: Manifest
    report: QuantReport | None = None


def save_variant(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dest: Path,
    fmt: FormatSpec,
    method: str,
    source: Mapping[str, object],
    report: QuantReport | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    overwrite: bool = False,
) -> SaveInfo:
    """Write ``model`` (already quantized in place, or float) as a variant at ``dest``."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise StoreError(f"{dest} already exists; remove it or pass overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        tensors, described = _state_to_save(model, fmt)
        hashes: dict[str, str] = {}
        for i, (key, t) in enumerate(tensors.items()):
            if cancel is not None and cancel.is_set():
                raise Cancelled("save cancelled")
            hashes[key] = tensor_sha256(t)
            if progress and i % 16 == 0:
                progress(i, len(tensors) + 2, f"hashing {key}")
        if progress:
            progress(len(tensors), len(tensors) + 2, f"writing {WEIGHTS}")
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt", "qtui": fmt.name})
        hf_model(model).config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = _manifest(model, fmt, method, source, report, described, hashes, tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(tmp)
        if cancel is not None and cancel.is_set():
            raise Cancelled("save cancelled")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"disk full while saving {dest.name}; nothing was saved") from exc
        raise StoreError(f"could not save {dest}: {exc}; nothing was saved") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        progress(1, 1, "saved")
    return SaveInfo(dest, Manifest.from_dict(manifest, dest / MANIFEST), report)


def _manifest(
    model: nn.Module,
    fmt: FormatSpec,
    method: str,
    source: Mapping[str, object],
    report: QuantReport | None,
    described: Described,
    hashes: dict[str, str],
    folder: Path,
) -> dict[str, object]:
    qparams = sum(
        m.qw.shape[0] * m.qw.shape[1] for m in quantized_modules(model).values() if m.qw is not None
    )
    qbytes = sum(m.qw.nbytes for m in quantized_modules(model).values() if m.qw is not None)
    total_params = sum(int(torch.tensor(d["shape"]).prod()) for d in described["tensors"].values())
    files: dict[str, dict[str, int]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            files[p.name] = {"bytes": p.stat().st_size}
    return {
        "qtui_variant": MANIFEST_VERSION,
        "engine_version": engine.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source,
        "model_type": hf_model(model).config.model_type,
        "format": {
            "name": fmt.name,
            "family": fmt.family,
            "bits": fmt.bits,
            "group_size": fmt.group_size,
            "symmetric": fmt.symmetric,
            "grid": fmt.grid,
            "description": fmt.description,
        },
        "method": {"name": method, "params": typed.values(report.config) if report else {}},
        "quantized_on": report.device if report else None,
        "options": {
            "quantize_embeddings": bool(report and report.options.quantize_embeddings),
            "quantize_head": bool(report and report.options.quantize_head),
        },
        "quantize_seconds": round(report.seconds, 3) if report else 0.0,
        "bits_per_weight": {
            "quantized_tensors": round(qbytes * 8 / qparams, 4) if qparams else float(fmt.bits),
            "whole_model": round(files[WEIGHTS]["bytes"] * 8 / max(total_params, 1), 4),
        },
        "params": {"total": total_params, "quantized": qparams},
        "bytes_on_disk": sum(f["bytes"] for f in files.values()),
        "tensors": described["tensors"],
        "tied": described["tied"],
        "tensor_sha256": hashes,
        "files": files,
        "layers": [_layer_entry(r) for r in (report.layers if report else [])],
        "calibration": report.calibration if report else None,
        "mixed_precision": (
            {
                "keep": report.options.keep_sensitive,
                "bits": report.options.sensitive_bits,
                "layers": list(report.kept),
            }
            if report and report.options.keep_sensitive
            else None
        ),
        "method_info": report.block_info if report else [],
    }


def _finite(x: float | None, digits: int) -> float | None:
    return round(x, digits) if x is not None and x == x and abs(x) != float("inf") else None


def _layer_entry(r: LayerReport) -> dict[str, object]:
    """Per-Linear diagnostics: weight error and SQNR, and (calibrated) relative output error."""
    entry: dict[str, object] = {
        "name": r.name,
        "rel_error": _finite(r.weight_rel_error, 6),
        "sqnr_db": _finite(r.sqnr_db, 3),
    }
    if getattr(r, "out_rel_error", None) is not None:
        entry["out_rel_error"] = _finite(r.out_rel_error, 6)
    entry["format"] = r.fmt
    return entry


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ loading
def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.exists():
        raise StoreError(f"{folder}: no such variant folder")
    if not path.exists():
        raise StoreError(f"{folder} is not a qtui variant (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is corrupt (not valid JSON: {exc})") from exc
    manifest = Manifest.from_dict(data, path)
    if manifest.version > MANIFEST_VERSION:
        raise StoreError(f"{path} was written by a newer qtui (manifest v{manifest.version})")
    return manifest


def verify_files(folder: Path, manifest: Manifest) -> None:
    for name, info in manifest.files.items():
        if name == MANIFEST:
            continue
        p = folder / name
        if not p.exists():
            raise StoreError(f"{p} is missing; the variant is incomplete")
        if p.stat().st_size != info["bytes"]:
            raise StoreError(
                f"{p} is {p.stat().st_size} bytes, manifest says {info['bytes']}: truncated or modified"
            )


def load_tensors(folder: Path, manifest: Manifest, verify: bool = True) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = Path(folder)
    verify_files(folder, manifest)
    try:
        tensors: dict[str, torch.Tensor] = load_file(folder / WEIGHTS)
    except Exception as exc:
        raise StoreError(f"{folder / WEIGHTS} cannot be read (corrupt?): {exc}") from exc
    expected = manifest.tensor_sha256
    if set(tensors) != set(expected):
        raise StoreError(f"{folder / WEIGHTS} holds other tensors than the manifest lists")
    if verify:
        for key, t in tensors.items():
            if tensor_sha256(t) != expected[key]:
                raise StoreError(f"{folder / WEIGHTS}: tensor {key} fails its sha256 check (corrupted)")
    return tensors


def quantized_weight(
    tensors: dict[str, torch.Tensor], name: str, fmt: FormatSpec, shape: list[int]
) -> QuantizedWeight:
    return QuantizedWeight(
        fmt,
        (shape[0], shape[1]),
        tensors[f"{name}.qweight"],
        tensors[f"{name}.scales"],
        tensors.get(f"{name}.qzeros"),
    )


def build_model(folder: Path, manifest: Manifest, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the transformers model skeleton and put the stored tensors in it (no copies)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fmt = manifest.fmt
    config = AutoConfig.from_pretrained(folder)
    # a skeleton without memory; torch's device context is thread-local, unlike accelerate's
    # init_empty_weights, which patches nn.Module for every thread (the app loads in workers)
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config, dtype=fmt.torch_dtype)
    state = dict(tensors)
    for key, desc in manifest.tensors.items():
        if desc["format"] in FLOAT_NAMES.values():
            continue
        name = key.removesuffix(".weight")
        qw = quantized_weight(state, name, get_format(desc["format"]), desc["shape"])
        for suffix in (".qweight", ".scales", ".qzeros"):
            state.pop(name + suffix, None)
        old = model.get_submodule(name)
        if isinstance(old, nn.Embedding):
            new: nn.Module = QEmbedding(qw, old.padding_idx)
        else:
            bias = state.get(f"{name}.bias")  # stays in state: load_state_dict fills QLinear.bias
            new = QLinear(qw, bias, state.get(name + TRANSFORM_SUFFIX))
        set_module(model, name, new)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k not in manifest.tied]
    if missing or unexpected:
        raise StoreError(
            f"{folder}: tensors do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if manifest.tied:
        hf_model(model).tie_weights()
    _rebuild_meta_buffers(model, folder)
    return model.eval()


def _rebuild_meta_buffers(model: nn.Module, folder: Path) -> None:
    """Recompute buffers that are not stored (rotary ``inv_freq``): rebuild their module on CPU."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        config = getattr(module, "config", None) or model.config
        try:
            fresh = type(module)(config=config)
        except TypeError as exc:
            raise StoreError(f"{folder}: cannot rebuild {name} ({type(module).__name__}): {exc}") from exc
        set_module(model, name, fresh)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise StoreError(f"{folder}: tensors missing from the variant: {leftover[:3]}")


def list_variants(root: Path | None = None) -> list[tuple[Path, Manifest]]:
    """Every saved variant under ``root`` (default: the data folder) with its manifest."""
    root = Path(root) if root else paths.variants_dir()
    found: list[tuple[Path, Manifest]] = []
    if not root.exists():
        return found
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
        try:
            found.append((manifest_path.parent, read_manifest(manifest_path.parent)))
        except StoreError:
            continue
    return found
