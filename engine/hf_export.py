"""Export a saved variant as a Hugging Face checkpoint that transformers and vLLM load as it is:
compressed-tensors' ``pack-quantized`` layout (what llm-compressor writes), the variant's own codes.

transformers reads it with ``from_pretrained`` when the ``compressed-tensors`` package is installed
(a pure-Python package; it runs on CPU), vLLM with its compressed-tensors W4A16/W8A16 kernels
(Marlin, Machete, ...). Nothing is re-quantized; every mapping is exact:

* compressed-tensors computes ``w = (q_s - zp_s) * scale`` with *signed* codes
  ``q_s = q - 2**(bits-1)`` and stores them offset by ``2**(bits-1)`` again, packed little-endian
  into int32 words (code ``i`` of a row in bits ``bits*i ...`` of word ``bits*i // 32``). qtui's
  codes are unsigned (``w = (q - zero) * scale``, :meth:`FormatSpec.decode`), so the stored words
  hold exactly qtui's codes: ``q_s = q - 8`` (int4), ``q - 128`` (int8).
* int4 asymmetric (``int4-gN``, integer zero ``z`` in 0..15 per group): strategy ``group``,
  ``symmetric: false``, ``weight_zero_point`` = ``z - 8`` (signed), packed the same way along the
  output dimension (``[ceil(out / 8), n_groups]`` int32), so ``(q - 8) - (z - 8) = q - z``.
* int4 symmetric (``int4-gN-sym``, ``w = (q - 8) * s``): strategy ``group``, no zero point.
* int8 per output channel (``w = (q - 128) * s``): strategy ``channel``, 8-bit, no zero point.
* scales: qtui's f16 scales as stored, ``[out, n_groups]`` (``[out, 1]`` per channel); a loader
  casts them to the model's dtype (bf16 for qtui's integer formats: qtui's own kernels do the same).
* every 16-bit tensor (embeddings, norms, biases, an unquantized LM head) as stored.

Refused with a one-line reason: formats vLLM's weight-only kernels do not take (int2, int3, 1-bit),
float zero points (int4fz/int2fz: compressed-tensors' zero points are integers), w8a8, group sizes
that do not divide a quantized row (qtui pads such rows; compressed-tensors and vLLM need whole
groups), rotated variants and input transforms (hooks qtui runs that the model code of transformers
and vLLM has no place for), quantized embeddings (only Linear layers are quantized in this layout),
16-bit variants (the variant folder already is a Hugging Face checkpoint).

The folder is written beside its destination under a temporary name, every quantized tensor read
back from the written file and decoded with the compressed-tensors formula (max |dW| against qtui's
de-quantized weight: 0 for every mapping here), then renamed into place. ``qtui-export.json`` in the
folder records the variant, the mapping and the per-tensor check.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engine
from engine import paths, store
from engine.errors import Cancelled
from engine.gguf_export import ExportError, _write_error
from engine.manifest import Manifest
from engine.progress import ProgressFn, no_progress
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format

TARGET = "compressed-tensors"
RECORD = "qtui-export.json"
_SHARD_BYTES = 2 << 30  # weight files of at most ~2 GiB, as transformers' save_pretrained shards
_VLLM_BITS = (4, 8)  # weight widths of vLLM's compressed-tensors WNA16 kernels
_SKIP_FILES = {paths.MANIFEST, store.INDEX}


@dataclass(frozen=True)
class TensorCheck:
    """One quantized weight as written, and the read-back check."""

    name: str  # the module (``model.layers.0.self_attn.q_proj``)
    format: str
    shape: list[int]
    max_abs_dw: float  # max |decode(written tensors) - qtui's de-quantized weight|


@dataclass
class HfExportResult:
    path: Path
    variant: Path
    format: str
    method: str
    bytes: int
    seconds: float
    quantization_config: dict[str, Any]
    checks: list[TensorCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_dw(self) -> float:
        return max((c.max_abs_dw for c in self.checks), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "qtui_export": 1,
            "engine_version": engine.__version__,
            "to": TARGET,
            "path": str(self.path),
            "variant": str(self.variant),
            "format": self.format,
            "method": self.method,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "max_abs_dw": self.max_abs_dw,
            "notes": self.notes,
            "quantization_config": self.quantization_config,
            "tensors": [asdict(c) for c in self.checks],
        }

    def log_lines(self) -> list[str]:
        groups = self.quantization_config["config_groups"]
        lines = []
        for name, group in groups.items():
            w = group["weights"]
            how = f"groups of {w['group_size']}" if w["strategy"] == "group" else "per output channel"
            zero = "symmetric" if w["symmetric"] else "integer zero point"
            lines.append(f"{name}: int{w['num_bits']} {how}, {zero} -> {', '.join(group['targets'][:3])}")
        ignored = self.quantization_config.get("ignore") or []
        if ignored:
            lines.append(f"kept 16-bit: {', '.join(ignored)}")
        lines.append(
            f"{len(self.checks)} quantized Linears, max |dW| {self.max_abs_dw:.3g} "
            f"(decoded from the written files vs qtui's weights); {self.bytes / 1e6:.1f} MB"
        )
        return lines


# ------------------------------------------------------------------------------ mapping
def weight_args(fmt: FormatSpec) -> dict[str, Any]:
    """compressed-tensors' ``weights`` quantization args that hold ``fmt``'s codes exactly, or
    :class:`ExportError` with the reason."""
    why = _refusal(fmt)
    if why:
        raise ExportError(f"cannot export {fmt.name} to {TARGET}: {why}")
    per_channel = fmt.group_size is None
    return {
        "num_bits": fmt.bits,
        "type": "int",
        "symmetric": fmt.symmetric,
        "group_size": None if per_channel else fmt.group_size,
        "strategy": "channel" if per_channel else "group",
        "block_structure": None,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }


def _refusal(fmt: FormatSpec) -> str:
    if fmt.is_float:
        return "nothing is quantized (the variant folder already is a Hugging Face checkpoint)"
    if fmt.family == "w8a8":
        return "w8a8 quantizes activations per token at run time; export int8 (weight-only) instead"
    if fmt.zero_dtype != "uint8" and not fmt.symmetric:
        return "its zero points are f16 numbers; compressed-tensors' zero points are integers"
    if fmt.bits not in _VLLM_BITS:
        return f"{fmt.bits}-bit weights: vLLM's compressed-tensors kernels take 4- or 8-bit weights"
    offset = 1 << (fmt.bits - 1)
    if fmt.grid == "symint" and fmt.mult == 1 and fmt.zero_const == offset:
        return ""  # (q - 2**(b-1)) * s: signed codes, no zero point
    if fmt.grid == "affine" and fmt.mult == 1 and not fmt.symmetric:
        return ""  # (q - z) * s: signed codes and signed integer zero points
    return f"its grid ({fmt.grid}) has no compressed-tensors equivalent"


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[rows, n]`` (< 2**bits, ``bits`` in 4/8) packed along the last dim into int32
    words as compressed-tensors' ``pack_to_int32`` stores them (offset already applied): code ``i``
    in bits ``bits*i % 32`` of word ``bits*i // 32``, the last word zero-padded."""
    per_word = 32 // bits
    rows, n = codes.shape
    padded = -(-n // per_word) * per_word
    c: np.ndarray[Any, Any] = np.zeros((rows, padded), dtype=np.uint32)
    c[:, :n] = codes.cpu().numpy().astype(np.uint32)
    c = c.reshape(rows, -1, per_word)
    shifts: np.ndarray[Any, Any] = (np.arange(per_word, dtype=np.uint32) * bits).astype(np.uint32)
    words = np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint32)
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int32))


def unpack_int32(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of :func:`pack_int32`: unsigned codes ``[rows, n]`` (int64)."""
    w: np.ndarray[Any, Any] = words.cpu().numpy().view(np.uint32).astype(np.int64)
    per_word = 32 // bits
    shifts: np.ndarray[Any, Any] = np.arange(per_word, dtype=np.int64) * bits
    codes = (w[..., None] >> shifts) & ((1 << bits) - 1)
    return torch.from_numpy(codes.reshape(w.shape[0], -1)[:, :n])


def compress(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one quantized Linear (names without the module prefix)."""
    fmt = qw.fmt
    rows, cols = qw.shape
    codes = qw.codes()[:, :cols]
    out = {
        "weight_packed": pack_int32(codes, fmt.bits),
        "weight_scale": qw.scales.to(torch.float16).contiguous(),
        "weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if not fmt.symmetric:
        assert qw.qzeros is not None
        zeros = qw.qzeros.to(torch.int64)
        if int(zeros.min()) < 0 or int(zeros.max()) >= fmt.levels:
            raise ExportError(
                f"cannot export {fmt.name} to {TARGET}: a zero point outside 0..{fmt.levels - 1}"
            )
        out["weight_zero_point"] = pack_int32(zeros.t().contiguous(), fmt.bits).t().contiguous()
    return out


def decode(tensors: dict[str, torch.Tensor], args: dict[str, Any]) -> torch.Tensor:
    """The weight compressed-tensors computes from the written tensors, ``(q_s - zp_s) * scale``
    (float32), written independently of qtui's decode so that the check compares two formulas."""
    bits = int(args["num_bits"])
    offset = 1 << (bits - 1)
    rows, cols = (int(v) for v in tensors["weight_shape"].tolist())
    q = unpack_int32(tensors["weight_packed"], bits, cols) - offset
    scale = tensors["weight_scale"].float()
    group = cols if args["strategy"] == "channel" else int(args["group_size"])
    zp = torch.zeros_like(scale, dtype=torch.int64)
    if "weight_zero_point" in tensors:
        zp = unpack_int32(tensors["weight_zero_point"].t().contiguous(), bits, rows).t() - offset
    idx = torch.arange(cols) // group
    return (q - zp[:, idx]).float() * scale[:, idx]


# ------------------------------------------------------------------------------ plan
@dataclass(frozen=True)
class _Plan:
    quantized: dict[str, FormatSpec]  # module name -> format
    linears: set[str]  # every Linear of the model
    tied: set[str]


def _skeleton(variant: Path) -> tuple[set[str], set[str]]:
    """The model's ``nn.Linear`` modules and its parameter/buffer names, from a skeleton without memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(variant)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return linears, set(model.state_dict())


def plan(variant: Path, manifest: Manifest) -> _Plan:
    """What will be written, checked from the manifest before any tensor is read."""
    options = manifest.raw.get("options") or {}
    if options.get("rotate", "none") != "none":
        raise ExportError(
            f"cannot export a rotated variant (rotate={options['rotate']}) to {TARGET}: its residual "
            "stream runs through a rotation that transformers' and vLLM's model code have no place for"
        )
    found = store.run_time_only(manifest.tensors)
    if found is not None:
        key, what, hint = found
        raise ExportError(
            f"cannot export to {TARGET}: {key} is {what}; transformers' and vLLM's model code have no "
            f"place for it{hint}"
        )
    floats = set(store.FLOAT_NAMES.values())
    quantized = {
        k.removesuffix(".weight"): get_format(str(d["format"]))
        for k, d in manifest.tensors.items()
        if str(d["format"]) not in floats
    }
    if not quantized:
        raise ExportError(f"cannot export {manifest.fmt.name} to {TARGET}: {_refusal(manifest.fmt)}")
    for fmt in sorted(set(quantized.values()), key=lambda f: f.name):
        weight_args(fmt)  # refuses an unmappable format
    linears, names = _skeleton(variant)
    extra = sorted(
        k for k in manifest.tensors if k not in names and k.removesuffix(".weight") not in quantized
    )
    if extra:
        raise ExportError(
            f"cannot export to {TARGET}: {extra[0]} is not a tensor of the transformers model "
            "(qtui runs it itself); nothing reads it in this layout"
        )
    for name, fmt in sorted(quantized.items()):
        if name not in linears:
            raise ExportError(
                f"cannot export to {TARGET}: {name} is quantized but is not a Linear layer "
                "(quantized embeddings are not part of this layout; quantize without --quantize-embeddings)"
            )
        rows, cols = (int(v) for v in manifest.tensors[f"{name}.weight"]["shape"])
        if fmt.group_size is not None and cols % fmt.group_size:
            raise ExportError(
                f"cannot export {fmt.name} to {TARGET}: groups of {fmt.group_size} do not divide {name}'s "
                f"{cols} inputs (compressed-tensors and vLLM need whole groups; use a group size that divides it)"
            )
    return _Plan(quantized, linears, set(manifest.tied))


def quantization_config(p: _Plan) -> dict[str, Any]:
    """The ``quantization_config`` of config.json: one config group per format (``targets:
    ["Linear"]`` when one format covers every quantized Linear, else the modules by name), the
    Linears left in 16 bits under ``ignore``."""
    by_format: dict[str, list[str]] = {}
    for name, fmt in sorted(p.quantized.items()):
        by_format.setdefault(fmt.name, []).append(name)
    single = len(by_format) == 1
    groups: dict[str, Any] = {}
    for i, (fmt_name, names) in enumerate(sorted(by_format.items(), key=lambda kv: -len(kv[1]))):
        groups[f"group_{i}"] = {
            "targets": ["Linear"] if single else names,
            "weights": weight_args(get_format(fmt_name)),
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(p.linears - set(p.quantized)),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        # transformers (5.x with compressed-tensors 0.20) lays packed zero points out unpacked
        # before loading and then refuses the checkpoint's packed ones (llm-compressor#1618): with
        # `dequantize` it decompresses each weight as it reads it, which it would do on the first
        # forward anyway. vLLM ignores the key and reads the packed zero points.
        **({"dequantize": True} if any(not f.symmetric for f in p.quantized.values()) else {}),
    }


# ------------------------------------------------------------------------------ export
def default_out(folder: Path) -> Path:
    """``$XDG_DATA_HOME/qtui/exports/<source>-<variant>-compressed-tensors``."""
    source = folder.parent.name or "model"
    return paths.data_dir() / "exports" / f"{source}-{folder.name}-{TARGET}"


def export_compressed_tensors(
    variant: Path,
    out: Path | None = None,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    overwrite: bool = True,
) -> HfExportResult:
    """Write the saved variant at ``variant`` as a compressed-tensors checkpoint folder (see the
    module doc) and return what was written with the per-tensor check. Nothing is left behind on
    any failure; an existing ``out`` is replaced only when ``overwrite``."""
    t0 = time.perf_counter()
    variant = Path(variant)
    manifest = store.read_manifest(variant)
    p = plan(variant, manifest)
    out = Path(out) if out is not None else default_out(variant)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; remove it or pass --force")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; an export is a folder")
    qconfig = quantization_config(p)
    args_of = {name: weight_args(fmt) for name, fmt in p.quantized.items()}
    files = store.TensorFiles(variant, manifest, verify=True)  # a failed hash check stops there
    tmp = _temp_dir_beside(out)
    try:
        checks, n_shards = _write_weights(tmp, manifest, files, p, args_of, progress, cancel)
        for src in sorted(variant.iterdir()):
            if src.is_file() and src.name not in _SKIP_FILES and src.name not in manifest.weight_files:
                shutil.copyfile(src, tmp / src.name)
        config = json.loads((variant / "config.json").read_text())
        config["quantization_config"] = qconfig
        # the dtype qtui computes in (bf16 for the integer formats), not the source's (the default
        # model comes from a GGUF as float32): vLLM's kernels take bf16/f16 activations
        dtype_key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[dtype_key] = str(manifest.fmt.torch_dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        notes = _notes(p, manifest)
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
        result = HfExportResult(
            out, variant, manifest.fmt.name, manifest.method, size, 0.0, qconfig, checks, notes
        )
        (tmp / RECORD).write_text(json.dumps(_record(result, manifest), indent=1) + "\n")
        if cancel is not None and cancel.is_set():
            raise Cancelled("export cancelled; nothing was written")
        progress(n_shards + 1, n_shards + 2, f"renaming into {out.name}")
        _publish(tmp)
        _replace_dir(tmp, out)
    except OSError as exc:
        raise _write_error(exc, out) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result.path = out
    result.seconds = time.perf_counter() - t0
    progress(1, 1, "exported")
    return result


def _write_weights(
    tmp: Path,
    manifest: Manifest,
    files: store.TensorFiles,
    p: _Plan,
    args_of: dict[str, dict[str, Any]],
    progress: ProgressFn,
    cancel: threading.Event | None,
) -> tuple[list[TensorCheck], int]:
    """Write the weights (shards of ~2 GiB with an index when there are several), then read every
    quantized Linear back from the written files and check its decode against qtui's weight."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    keys = [k for k in manifest.tensors if k not in p.tied]
    for i, key in enumerate(keys):
        if cancel is not None and cancel.is_set():
            raise Cancelled("export cancelled; nothing was written")
        progress(i, len(keys) + 2, "converting the weights")
        name = key.removesuffix(".weight")
        if name in p.quantized:
            qw = store.quantized_weight(files, name, p.quantized[name], list(manifest.tensors[key]["shape"]))
            new = {f"{name}.{k}": v for k, v in compress(qw).items()}
        else:
            new = {key: files[key].contiguous()}
        nbytes = sum(t.numel() * t.element_size() for t in new.values())
        if size and size + nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1].update(new)
        size += nbytes
    names = (
        [store.WEIGHTS]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    meta = {"format": "pt"}
    for fname, shard in zip(names, shards, strict=True):
        save_file(shard, str(tmp / fname), metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    del shards
    if len(names) > 1:
        total = sum((tmp / n).stat().st_size for n in names)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / store.INDEX).write_text(json.dumps(index, indent=2) + "\n")
    progress(len(keys), len(keys) + 2, "reading the export back and comparing")
    checks: list[TensorCheck] = []
    for fname in names:  # one shard at a time: the check holds one shard's Linears at most
        back: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(tmp / fname), framework="pt") as f:
            for k in f.keys():
                module, _, part = k.rpartition(".")
                if module in p.quantized:
                    t: torch.Tensor = f.get_tensor(k)
                    back.setdefault(module, {})[part] = t
        for name, written in sorted(back.items()):
            fmt = p.quantized[name]
            shape = list(manifest.tensors[f"{name}.weight"]["shape"])
            ref = store.quantized_weight(files, name, fmt, shape).dequantize(torch.float32)
            dw = float((decode(written, args_of[name]) - ref).abs().max())
            checks.append(TensorCheck(name, fmt.name, shape, dw))
    if len(checks) != len(p.quantized):
        raise ExportError(f"the written files hold {len(checks)} of {len(p.quantized)} quantized Linears")
    checks.sort(key=lambda c: c.name)
    return checks, len(names)


def _notes(p: _Plan, manifest: Manifest) -> list[str]:
    notes = []
    heads = [n for n in p.quantized if n.endswith("lm_head")]
    if heads:
        notes.append(
            "the LM head is quantized: transformers loads it; vLLM keeps its LM head unquantized and may "
            "refuse this checkpoint"
        )
    if manifest.fmt.torch_dtype == torch.bfloat16:
        notes.append(
            "scales are stored in f16 as qtui keeps them; bf16 loaders round them to bf16 (as qtui's kernels)"
        )
    return notes


def _record(result: HfExportResult, manifest: Manifest) -> dict[str, Any]:
    out = result.to_json()
    out.pop("path", None)
    out["source"] = {"id": manifest.source.id, "hash": manifest.source.hash}
    out["method_params"] = manifest.method_params
    return out


def _temp_dir_beside(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise _write_error(exc, out) from exc


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` is process-wide: racy in threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _publish(folder: Path) -> None:
    """Permissions as a plain folder gets them (``mkdtemp`` makes it private), then fsync."""
    umask = _umask()
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put ``tmp`` at ``out``: a rename; an existing export is moved aside first, removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
