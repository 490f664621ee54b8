"""Save and load variants: a folder of safetensors + tokenizer + ``qtui-manifest.json``.

Writes go to a hidden temporary folder beside the destination, are fsynced, and are renamed into
place last, so an interrupted or failed save leaves nothing that looks like a variant. Loading
checks the manifest, each file's size and each tensor's sha256; any mismatch is a
:class:`StoreError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch
from torch import nn

import engine
from engine import locks, paths, typed
from engine.errors import Cancelled, StoreError
from engine.lazy import TensorSpan, read_header, read_tensor
from engine.manifest import Manifest
from engine.progress import ProgressFn
from engine.quant import allocation, arch, rotation
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format
from engine.quant.layers import QEmbedding, QLinear
from engine.quant.plan import LayerReport, QuantOptions, QuantReport, hf_model, quantized_modules, set_module

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

MANIFEST = paths.MANIFEST
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MANIFEST_VERSION = 1
TRANSFORM_SUFFIX = ".input_transform"  # a QLinear's input transform (float32)
ADAPTER_SUFFIXES = (".adapter_a", ".adapter_b")  # a QLinear's distilled low-rank adapter (16-bit)


def run_time_only(names: Iterable[str]) -> tuple[str, str, str] | None:
    """The first tensor among ``names`` that only qtui's own layers apply at run time (an input
    transform, the rotation, a distilled adapter), what it is and a hint for the user (may be
    empty), or None: an exporter to another engine's model code refuses such a variant, naming it."""
    for key in names:
        if key.endswith(TRANSFORM_SUFFIX) or key == rotation.KEY:
            return key, "an input transform applied at run time", ""
        if key.endswith(ADAPTER_SUFFIXES):
            return (
                key,
                "a distilled low-rank adapter run beside the quantized weight",
                " (distil without --adapter-rank to export)",
            )
    return None


FLOAT_NAMES = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of the tensor's bytes, hashed in place (no copy: an embedding table can be ~1 GB)."""
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.data).hexdigest()


def variant_name(fmt: FormatSpec, method: str, options: QuantOptions | None = None) -> str:
    """``int4-g64-gptq``; mixed precision adds ``-keepKxB`` (the one place that suffix is made)."""
    name = fmt.name if fmt.is_float else f"{fmt.name}-{method}"
    budget = options.bits_per_weight if options is not None and not fmt.is_float else None
    if budget is not None:  # a bit budget over every candidate (--format mixed), or above a floor
        name = f"mixed{budget:g}-{method}" if allocation.is_mixed(fmt) else f"{name}-bpw{budget:g}"
    if options is not None and options.keep_sensitive and not fmt.is_float:
        name += f"-keep{options.keep_sensitive}x{options.sensitive_bits}"
    if options is not None and options.rotate != "none" and not fmt.is_float:
        name += f"-{options.rotate}" + (f"{options.rotate_seed}" if options.rotate_seed else "")
    if options is not None and options.distill is not None and not fmt.is_float:
        d = options.distill
        name += f"-distill{d.steps}" + (f"r{d.adapter_rank}" if d.adapter_rank else "")
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


def _state_to_save(
    module: nn.Module, fmt: FormatSpec, prefix: str = "", skip: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], Described, int, int]:
    """Every tensor of ``module`` to write (names under ``prefix``), the manifest's per-tensor
    description, and the quantized weights' parameter count and bytes. Tensors still on the meta
    device (released blocks of a model streamed to disk) and names starting with ``skip`` are left
    out; tensors shared within ``module`` are written once and listed as tied."""
    base_dtype = fmt.torch_dtype
    base = f"{prefix}." if prefix else ""
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, TensorEntry] = {}
    qparams = qbytes = 0
    for name, qmod in quantized_modules(module).items():
        full = base + name
        if skip and full.startswith(skip):
            continue
        if qmod.qw is None:
            raise StoreError(f"{full}: quantized weight was released; save before preparing kernels")
        for key, t in qmod.qw.tensors(full).items():
            tensors[key] = t.contiguous().cpu()
        described[f"{full}.weight"] = {"format": qmod.qw.fmt.name, "shape": list(qmod.qw.shape)}
        qparams += qmod.qw.shape[0] * qmod.qw.shape[1]
        qbytes += qmod.qw.nbytes
    seen: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, t in module.state_dict().items():
        key = base + name
        if key in tensors or t.is_meta or (skip and key.startswith(skip)):
            continue
        if t.data_ptr() in seen:
            tied[key] = seen[t.data_ptr()]
            continue
        seen[t.data_ptr()] = key
        dtype = torch.float32 if key.endswith(TRANSFORM_SUFFIX) else base_dtype  # kept exact
        out = t.detach().to(dtype) if t.is_floating_point() else t.detach()
        tensors[key] = out.contiguous().cpu()
        described[key] = {"format": FLOAT_NAMES[dtype], "shape": list(t.shape)}
    return tensors, {"tensors": described, "tied": tied}, qparams, qbytes


@dataclass
class SaveInfo:
    """What a save wrote: the variant folder, its manifest, and the quantization report if any."""

    path: Path
    manifest: Manifest
    report: QuantReport | None = None


class VariantWriter:
    """A variant written piece by piece: modules are added as they are finished (a model streamed
    from disk adds one decoder block at a time and releases it), tensors are hashed and written
    to shards of at most ``shard_bytes`` in a hidden temporary folder beside ``dest``, and
    :meth:`finish` writes config, tokenizer and manifest, fsyncs and renames the folder into place.
    Leaving the ``with`` block by an exception removes the temporary folder: nothing is saved."""

    def __init__(self, dest: Path, fmt: FormatSpec, overwrite: bool = False, shard_bytes: int = 1 << 30):
        self.dest = Path(dest)
        self.fmt = fmt
        self.shard_bytes = shard_bytes
        # one writer per variant, held until the folder is renamed into place or removed: a second
        # writer is told (locks.Busy) and the start-up clean-up of stale temporary folders leaves
        # this one's alone; a caller that holds the lock already (quantize_and_save) re-enters it
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(locks.exclusive(self.dest, "written"))
        try:
            if self.dest.exists() and not overwrite:
                raise StoreError(f"{self.dest} already exists; remove it or pass overwrite")
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}.tmp-"))
        except OSError as exc:
            self._lock.close()
            raise _store_error(exc, self.dest) from exc
        except BaseException:
            self._lock.close()
            raise
        self.described: Described = {"tensors": {}, "tied": {}}
        self.hashes: dict[str, str] = {}
        self.shards: list[str] = []
        self.weight_map: dict[str, str] = {}
        self.qparams = self.qbytes = 0
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0

    def __enter__(self) -> VariantWriter:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        try:
            shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._lock.close()
        if isinstance(exc, OSError):
            raise _store_error(exc, self.dest) from exc

    def add(self, module: nn.Module, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
        """Hash and queue every tensor of ``module`` (named under ``prefix``) for writing."""
        tensors, described, qparams, qbytes = _state_to_save(module, self.fmt, prefix, skip)
        self.described["tensors"].update(described["tensors"])
        self.described["tied"].update(described["tied"])
        self.qparams += qparams
        self.qbytes += qbytes
        for key, t in tensors.items():
            if key in self.hashes:
                raise StoreError(f"{self.dest.name}: tensor {key} written twice")
            self.hashes[key] = tensor_sha256(t)
            self._pending[key] = t
            self._pending_bytes += t.numel() * t.element_size()
        if self._pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        name = f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file(self._pending, self.tmp / name, metadata={"format": "pt", "qtui": self.fmt.name})
        self.weight_map.update(dict.fromkeys(self._pending, name))
        self.shards.append(name)
        self._pending, self._pending_bytes = {}, 0

    def finish(
        self,
        config: PretrainedConfig,
        tokenizer: PreTrainedTokenizerBase,
        method: str,
        source: Mapping[str, object],
        report: QuantReport | None = None,
        cancel: threading.Event | None = None,
    ) -> SaveInfo:
        """Write what is left, config, tokenizer and manifest; rename into place atomically."""
        self._flush()
        if len(self.shards) == 1:  # one file: the usual single-file layout
            os.replace(self.tmp / self.shards[0], self.tmp / WEIGHTS)
            self.weight_map = dict.fromkeys(self.weight_map, WEIGHTS)
            self.shards = [WEIGHTS]
        elif self.shards:
            total = len(self.shards)
            renamed = {n: f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i, n in enumerate(self.shards)}
            for old, new in renamed.items():
                os.replace(self.tmp / old, self.tmp / new)
            self.shards = list(renamed.values())
            self.weight_map = {k: renamed[v] for k, v in self.weight_map.items()}
            index = {"metadata": {"total_size": self.qbytes}, "weight_map": self.weight_map}
            (self.tmp / INDEX).write_text(json.dumps(index, indent=1))
        config.save_pretrained(self.tmp)
        tokenizer.save_pretrained(self.tmp)
        manifest = _manifest(self, config, method, source, report)
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync_tree(self.tmp)
        if cancel is not None and cancel.is_set():
            raise Cancelled("save cancelled")
        if self.dest.exists():
            shutil.rmtree(self.dest)
        os.replace(self.tmp, self.dest)
        return SaveInfo(self.dest, Manifest.from_dict(manifest, self.dest / MANIFEST), report)


def _store_error(exc: OSError, dest: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"disk full while saving {dest.name}; nothing was saved")
    return StoreError(f"could not save {dest}: {exc}; nothing was saved")


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
    """Write ``model`` (already quantized in place, or float, all in memory) as a variant at ``dest``."""
    with VariantWriter(dest, fmt, overwrite, shard_bytes=1 << 62) as writer:
        if cancel is not None and cancel.is_set():
            raise Cancelled("save cancelled")
        if progress:
            progress(0, 2, f"hashing and writing {WEIGHTS}")
        writer.add(model)
        if progress:
            progress(1, 2, "writing config, tokenizer and manifest")
        saved = writer.finish(hf_model(model).config, tokenizer, method, source, report, cancel)
    if progress:
        progress(1, 1, "saved")
    return saved


def _manifest(
    writer: VariantWriter,
    config: PretrainedConfig,
    method: str,
    source: Mapping[str, object],
    report: QuantReport | None,
) -> dict[str, object]:
    fmt, described, qparams = writer.fmt, writer.described, writer.qparams
    total_params = sum(int(torch.tensor(d["shape"]).prod()) for d in described["tensors"].values())
    files: dict[str, dict[str, int]] = {}
    for p in sorted(writer.tmp.iterdir()):
        if p.is_file():
            files[p.name] = {"bytes": p.stat().st_size}
    weight_bytes = sum(files[name]["bytes"] for name in writer.shards)
    return {
        "qtui_variant": MANIFEST_VERSION,
        "engine_version": engine.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source,
        "model_type": config.model_type,
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
            **(
                {"rotate": report.options.rotate, "rotate_seed": report.options.rotate_seed}
                if report and report.options.rotate != "none"
                else {}
            ),
        },
        "quantize_seconds": round(report.seconds, 3) if report else 0.0,
        "bits_per_weight": {
            "quantized_tensors": round(writer.qbytes * 8 / qparams, 4) if qparams else float(fmt.bits),
            "whole_model": round(weight_bytes * 8 / max(total_params, 1), 4),
        },
        "params": {"total": total_params, "quantized": qparams},
        "bytes_on_disk": sum(f["bytes"] for f in files.values()),
        "weight_files": list(writer.shards),
        "tensors": described["tensors"],
        "tied": described["tied"],
        "tensor_sha256": writer.hashes,
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
        "bit_budget": report.allocation if report else None,  # the format chosen per Linear
        "distill": report.distill if report else None,  # what distillation trained, its curves
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


class TensorFiles(Mapping[str, torch.Tensor]):
    """The variant's stored tensors, read one at a time on access (plain reads, no memory map)
    and checked against the manifest's sha256: a model is built a layer at a time from it."""

    def __init__(self, folder: Path, manifest: Manifest, verify: bool = True) -> None:
        self.folder = Path(folder)
        self.verify = verify
        verify_files(self.folder, manifest)
        self.expected = manifest.tensor_sha256
        self.entries: dict[str, tuple[Path, TensorSpan]] = {}
        for name in manifest.weight_files:
            path = self.folder / name
            for key, entry in read_header(path, StoreError).items():
                self.entries[key] = (path, entry)
        if set(self.entries) != set(self.expected):
            odd = sorted(set(self.entries) ^ set(self.expected))[:1]
            raise StoreError(
                f"{self.folder}: the weight files hold other tensors than the manifest lists ({odd[0]})"
            )

    def __getitem__(self, key: str) -> torch.Tensor:
        path, entry = self.entries[key]
        try:
            t = read_tensor(path, entry)
        except OSError as exc:
            raise StoreError(f"{path} cannot be read: {exc}") from exc
        if self.verify and tensor_sha256(t) != self.expected[key]:
            raise StoreError(f"{path}: tensor {key} fails its sha256 check (corrupted)")
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def load_tensors(folder: Path, manifest: Manifest, verify: bool = True) -> dict[str, torch.Tensor]:
    """Every stored tensor of the variant (one file or several shards), sha256-checked."""
    files = TensorFiles(folder, manifest, verify)
    return {key: files[key] for key in files}


def quantized_weight(
    tensors: Mapping[str, torch.Tensor], name: str, fmt: FormatSpec, shape: list[int]
) -> QuantizedWeight:
    return QuantizedWeight(
        fmt,
        (shape[0], shape[1]),
        tensors[f"{name}.qweight"],
        tensors[f"{name}.scales"],
        tensors.get(f"{name}.qzeros"),
    )


def build_model(
    folder: Path,
    manifest: Manifest,
    tensors: Mapping[str, torch.Tensor],
    place: Callable[[nn.Module], None] | None = None,
    convert: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Rebuild the transformers model skeleton and put the stored tensors in it (no copies).

    ``tensors`` may read on access (:class:`TensorFiles`): each quantized layer is then read, built
    and handed to ``place`` (which lays it out for its kernel and drops the stored codes) before
    the next is read, and each 16-bit tensor goes through ``convert`` (to the compute dtype and
    device) as it is read, so a large variant loads with its final size plus one layer in memory.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    fmt = manifest.fmt
    config = AutoConfig.from_pretrained(folder)
    # a skeleton without memory; torch's device context is thread-local, unlike accelerate's
    # init_empty_weights, which patches nn.Module for every thread (the app loads in workers)
    with torch.device("meta"):
        model: nn.Module = AutoModelForCausalLM.from_config(config, dtype=fmt.torch_dtype)
    floats = FLOAT_NAMES.values()
    quantized = {k.removesuffix(".weight") for k, d in manifest.tensors.items() if d["format"] not in floats}
    parts = {name + suffix for name in quantized for suffix in (".qweight", ".scales", ".qzeros")}
    state: dict[str, torch.Tensor] = {}
    for key in tensors:
        if key not in parts:
            t = tensors[key]
            state[key] = t if convert is None or key.endswith(TRANSFORM_SUFFIX) else convert(t)
    for key, desc in manifest.tensors.items():
        name = key.removesuffix(".weight")
        if name not in quantized:
            continue
        qw = quantized_weight(tensors, name, get_format(desc["format"]), desc["shape"])
        old = model.get_submodule(name)
        if isinstance(old, nn.Embedding):
            new: nn.Module = QEmbedding(qw, old.padding_idx)
        else:
            bias = state.get(f"{name}.bias")  # stays in state: load_state_dict fills QLinear.bias
            a, b = (state.get(name + suffix) for suffix in ADAPTER_SUFFIXES)  # distilled
            adapter = (a, b) if a is not None and b is not None else None
            new = QLinear(qw, bias, state.get(name + TRANSFORM_SUFFIX), adapter)
        del qw
        set_module(model, name, new)
        if place is not None:
            place(new)
    if rotation.KEY in state:  # a rotated variant: R and its entry/exit hooks
        rotation.install(model, state[rotation.KEY])
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
            if arch.restore_buffers(model, module):  # not config-built (Gemma's scaled embeddings)
                continue
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
