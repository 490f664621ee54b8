"""Export a saved variant to a GGUF file that llama.cpp (and LM Studio, ollama) load, bit-faithfully.

The weights are the variant's own codes, never re-quantized. Every qtui low-bit format is affine per
group, ``w = (mult*q - zero) * scale`` (see ``engine.quant.formats``), and maps onto a ggml block type
of 32 weights with the group's scale repeated over the group's blocks:

* a constant zero (symmetric grids: int4-sym, int3-sym, int2's half-step grid, 1-bit sign) onto
  ``Q4_0`` (``(q4 - 8) * d``) with ``d = scale / k`` and ``q4 = k*(mult*q - zero) + 8`` for the
  smallest ``k`` in (1, 2) that makes the codes integers: int4-sym ``q4 = q``, int2 ``d = s/2,
  q4 = 2q + 5``, 1-bit ``d = mean|w|, q4 = 2q + 7``; when the codes do not fit 4 bits (int8 per
  channel) onto ``Q8_0`` (``q8 * d``, ``q8 = q - 128``);
* a zero per group (asymmetric, integer or f16 zero) onto ``Q4_1`` (``q4 * d + m``) with ``d = scale``
  and ``m = -zero*scale`` rounded to f16: exact where that product is an f16 number, otherwise off
  by half an f16 ulp of ``m`` at most;
* 16-bit tensors as ``BF16`` / ``F16``, 1-D tensors (norms, biases) as ``F32`` (exact).

Rows padded to whole groups (576 with groups of 128) are written unpadded (18 blocks of 32).
A format with no faithful ggml type (``w8a8``: its activations are quantized per token at run
time) is refused with a one-line reason.

Metadata: a variant of a GGUF-derived source (the default model, ``gemma3-270m``, a ``.gguf`` file)
gets its source GGUF's own key/values (architecture, tokenizer, chat template: what llama.cpp's
converter wrote) with ``general.file_type`` set for the new weights and ``qtui.*`` provenance keys
added; a variant of a Hugging Face model of the llama family gets them from its own config.json and
tokenizer.json (:func:`hf_metadata`). Tensor names come from gguf-py's tensor map; the transforms transformers undid when it read
the source GGUF are redone (llama's q/k row permutation, Gemma's ``norm + 1``).

After writing, the file is read back with gguf-py, every tensor de-quantized with gguf-py's own
``dequantize`` and compared with qtui's de-quantized weight: the max |dW| per tensor is in the
result, the log and ``FILE.export.json``. The file is written to a temporary name beside the
destination and renamed into place only when complete and checked.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engine
from engine import paths, sources, store
from engine.errors import Cancelled, QtuiError
from engine.manifest import Manifest
from engine.progress import ProgressFn, no_progress
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format

QK = 32  # weights per ggml block (Q4_0, Q4_1, Q8_0)
_FLOAT_TYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
# formats that store weights a GGUF type could hold but that do not run as stored in llama.cpp
REFUSED = {
    "w8a8": (
        "w8a8 quantizes activations per token (int8 x int8 matmul); no GGUF type reproduces that "
        "(llama.cpp's Q8_0 quantizes activations per block of 32): export int8 instead"
    ),
}
# keys of the source GGUF that describe its own tensors, not the model: set anew
_OWN_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")
# arches whose q/k rows llama.cpp's converter permutes (and transformers un-permutes on reading)
_PERMUTED_QK = ("llama",)
# arches whose RMS norms llama.cpp stores as (1 + w) (Gemma's convention; transformers subtracts 1)
_NORM_PLUS_ONE = ("gemma2", "gemma3")  # as transformers.modeling_gguf_pytorch_utils undoes it


class ExportError(QtuiError):
    """A variant cannot be exported (unmappable format, no metadata, unwritable destination)."""


@dataclass(frozen=True)
class TensorExport:
    """One tensor as written: its GGUF name and type, shape, and the read-back check."""

    name: str  # the GGUF name
    source: str  # the variant's tensor name
    ggml_type: str
    shape: list[int]
    max_abs_dw: float  # max |dequantize(GGUF) - qtui's dequantized weight|
    exact: bool
    note: str = ""


@dataclass
class ExportResult:
    path: Path
    variant: Path
    format: str
    method: str
    bytes: int
    seconds: float
    tensors: list[TensorExport] = field(default_factory=list)
    file_type: str = ""
    metadata_from: str = ""

    @property
    def max_abs_dw(self) -> float:
        return max((t.max_abs_dw for t in self.tensors), default=0.0)

    def by_kind(self) -> dict[str, tuple[str, float, int]]:
        """Per tensor kind (``attn_q``, ``ffn_down``, ``token_embd``...): (ggml type(s), max |dW|, count)."""
        kinds: dict[str, tuple[set[str], float, int]] = {}
        for t in self.tensors:
            kind = tensor_kind(t.name)
            types, worst, n = kinds.get(kind, (set(), 0.0, 0))
            kinds[kind] = (types | {t.ggml_type}, max(worst, t.max_abs_dw), n + 1)
        return {k: ("/".join(sorted(v[0])), v[1], v[2]) for k, v in kinds.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "qtui_export": 1,
            "engine_version": engine.__version__,
            "to": "gguf",
            "path": str(self.path),
            "variant": str(self.variant),
            "format": self.format,
            "method": self.method,
            "file_type": self.file_type,
            "metadata_from": self.metadata_from,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "max_abs_dw": self.max_abs_dw,
            "by_kind": {
                k: {"type": t, "max_abs_dw": d, "tensors": n} for k, (t, d, n) in self.by_kind().items()
            },
            "tensors": [asdict(t) for t in self.tensors],
        }

    def log_lines(self) -> list[str]:
        """The export log: one line per tensor kind, then the total."""
        lines = [f"{'tensor kind':<18} {'type':<10} {'n':>4}  max |dW|"]
        for kind, (types, worst, n) in sorted(self.by_kind().items()):
            lines.append(f"{kind:<18} {types:<10} {n:>4}  {worst:.3g}")
        exact = sum(t.exact for t in self.tensors)
        lines.append(
            f"{len(self.tensors)} tensors ({exact} exact), max |dW| {self.max_abs_dw:.3g}, "
            f"{self.bytes / 2**20:.1f} MiB -> {self.path}"
        )
        return lines


def tensor_kind(gguf_name: str) -> str:
    """``blk.3.attn_q.weight`` -> ``attn_q``; ``token_embd.weight`` -> ``token_embd``."""
    return re.sub(r"^blk\.\d+\.", "", gguf_name).removesuffix(".weight").removesuffix(".bias")


# ------------------------------------------------------------------------------ block mapping
@dataclass(frozen=True)
class BlockMap:
    """How one qtui format's codes become ggml blocks: the ggml type, the code offset and scale divisor."""

    ggml_type: str  # "Q4_0" | "Q4_1" | "Q8_0"
    k: int = 1  # d = scale / k; code = k * (mult*q - zero) (+ 8 for Q4_0)
    note: str = ""


def block_map(fmt: FormatSpec) -> BlockMap:
    """The ggml block type that holds ``fmt``'s codes exactly, or :class:`ExportError` with the reason."""
    if fmt.family in REFUSED:
        raise ExportError(f"cannot export {fmt.name} to GGUF: {REFUSED[fmt.family]}")
    if fmt.is_float:
        raise ExportError(f"{fmt.name} is a float format; it is written as is, not as blocks")
    if not fmt.symmetric:  # w = mult*q*s - zero*s
        if fmt.mult != 1 or fmt.bits > 4:
            raise ExportError(
                f"cannot export {fmt.name} to GGUF: no ggml type holds {fmt.bits}-bit codes with a zero"
            )
        exact = "f16 zero: m = -zero*scale rounded to f16" if fmt.zero_dtype == "float16" else ""
        return BlockMap("Q4_1", 1, exact)
    for k in (1, 2):
        if float(k * fmt.zero_const).is_integer():
            lo = -k * fmt.zero_const
            hi = k * (fmt.mult * (fmt.levels - 1) - fmt.zero_const)
            if -8 <= lo and hi <= 7:
                return BlockMap("Q4_0", k)
            if -128 <= lo and hi <= 127:
                return BlockMap("Q8_0", k)
    raise ExportError(f"cannot export {fmt.name} to GGUF: its grid fits no ggml block type exactly")


def _f16_bytes(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out: np.ndarray[Any, Any] = np.ascontiguousarray(x.astype(np.float16)).view(np.uint8)
    return out.reshape(*x.shape, 2)


def encode_blocks(
    qw: QuantizedWeight, codes_t: torch.Tensor | None = None
) -> tuple[np.ndarray[Any, Any], str]:
    """``qw`` as ggml blocks ``uint8 [rows, n_blocks * block_bytes]`` and the ggml type name
    (``codes_t``: ``qw.codes()`` when the caller has them already)."""
    fmt = qw.fmt
    bmap = block_map(fmt)
    rows, cols = qw.shape
    if cols % QK:
        raise ExportError(f"rows of {cols} weights are not whole ggml blocks of {QK}")
    group = fmt.group_for(cols)
    nb = cols // QK
    codes_t = qw.codes() if codes_t is None else codes_t
    codes = codes_t[:, :cols].to(torch.int32).numpy()  # unpadded
    first: np.ndarray[Any, Any] = (np.arange(nb) * QK) // group  # the group of each block
    scales = qw.scales.float().numpy()[:, first]  # [rows, nb]
    blocks: list[np.ndarray[Any, Any]]
    d: np.ndarray[Any, Any]
    if bmap.ggml_type == "Q4_1":
        zeros = qw.zero_points().float().numpy()[:, first]
        d = scales * fmt.mult
        m = -zeros * scales
        q = codes.reshape(rows, nb, QK)
        blocks = [_f16_bytes(d), _f16_bytes(m), _nibbles(q)]
    else:
        code = bmap.k * (fmt.mult * codes - fmt.zero_const)  # in [-8, 7] or [-128, 127]
        d = scales / bmap.k
        q = np.rint(code).astype(np.int32).reshape(rows, nb, QK)
        if bmap.ggml_type == "Q4_0":
            blocks = [_f16_bytes(d), _nibbles(q + 8)]
        else:
            blocks = [_f16_bytes(d), q.astype(np.int8).view(np.uint8)]
    out = np.concatenate(blocks, axis=-1).reshape(rows, -1)
    return np.ascontiguousarray(out), bmap.ggml_type


def _nibbles(q: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ggml's 4-bit block layout: byte j holds weight j (low nibble) and weight j + 16 (high)."""
    q = q.astype(np.uint8)
    out: np.ndarray[Any, Any] = q[..., : QK // 2] | (q[..., QK // 2 :] << 4)
    return out


# ------------------------------------------------------------------------------ names, transforms
def llama_permute(rows: int, n_head: int, n_head_kv: int | None = None) -> np.ndarray[Any, Any]:
    """Row order llama.cpp's converter gives q/k (``LlamaModel.permute``): out[i] = in[perm[i]]."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    idx = np.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


@functools.lru_cache(maxsize=8)
def _name_map(arch: str, n_blocks: int) -> Any:
    """gguf-py's HF -> GGUF tensor name map for ``arch`` (slow to build: once per arch)."""
    import gguf

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise ExportError(f"gguf-py knows no architecture {arch!r}")
    return gguf.get_tensor_name_map(arch_enum, n_blocks)


@dataclass(frozen=True)
class Layout:
    """How the variant's tensor names and row orders become the GGUF's, for one architecture."""

    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int

    def name(self, hf_name: str) -> str:
        name = _name_map(self.arch, self.n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name} ({self.arch})")
        return str(name)

    def row_order(self, gguf_name: str, rows: int) -> np.ndarray[Any, Any] | None:
        if self.arch not in _PERMUTED_QK:
            return None
        kind = tensor_kind(gguf_name)
        if kind == "attn_q":
            return llama_permute(rows, self.n_head, self.n_head)
        if kind == "attn_k":
            return llama_permute(rows, self.n_head, self.n_head_kv)
        return None

    def value_shift(self, gguf_name: str) -> float:
        """What llama.cpp adds to a float tensor (Gemma's norms are stored as 1 + w)."""
        return 1.0 if self.arch in _NORM_PLUS_ONE and gguf_name.endswith("norm.weight") else 0.0


# ------------------------------------------------------------------------------ metadata
@dataclass(frozen=True)
class SourceGGUF:
    """The GGUF a variant's source came from: its path and key/values (read with gguf-py)."""

    path: Path
    arch: str
    fields: list[tuple[str, Any, Any, Any]]  # (key, value, type, sub_type)
    ints: dict[str, int]


def source_gguf(manifest: Manifest) -> SourceGGUF:
    """The source GGUF of a variant whose source came from one; :class:`ExportError` otherwise."""
    kind, ref = manifest.source.kind, manifest.source.id
    try:
        if kind == "default":
            path = sources.fetch_default_gguf()
        elif kind == "builtin":
            from engine import reference

            path = reference.fetch_gguf()
        elif kind == "gguf":
            path = Path(ref)
            if not path.exists():
                raise ExportError(
                    f"the variant's source GGUF {path} is gone; its metadata is needed for the export"
                )
            if manifest.source.hash and sources.content_hash(path) != manifest.source.hash:
                raise ExportError(f"{path} changed since the variant was made (hash differs); re-quantize it")
        else:
            raise ExportError(
                f"the variant's source {ref} ({kind or 'unknown'}) has no GGUF; use hf_metadata"
            )
    except QtuiError as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"cannot read the source GGUF: {exc}") from exc
    return read_metadata(path)


_HF_ARCH = {"llama": "llama", "mistral": "llama"}  # HF model_type -> GGUF arch written from a config


def hf_metadata(folder: Path) -> SourceGGUF:
    """Metadata for a variant of a Hugging Face model (no source GGUF), from the variant's own
    config.json and tokenizer.json, as llama.cpp's converter writes it for the llama family:
    architecture keys, the byte-level BPE vocabulary (tokens, types, merges), special token ids and
    the chat template. The pre-tokenizer is written as ``default`` (llama.cpp's converter picks a
    named one by hashing the tokenizer's output on a test text, which this does not do): llama.cpp
    and qtui's llama.cpp column detokenize exactly, but a tool that tokenizes text with llama.cpp
    may split some texts differently from the Hugging Face tokenizer."""
    from gguf import GGUFWriter, TokenType
    from gguf.vocab import SpecialVocab
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(folder)
    arch = _HF_ARCH.get(cfg.model_type)
    if arch is None:
        raise ExportError(
            f"GGUF export of a {cfg.model_type} model without a source GGUF is not supported (its metadata "
            f"would be written from config.json: done for {', '.join(sorted(_HF_ARCH))}); variants of the "
            "default model, gemma3-270m and .gguf files carry their source's metadata"
        )
    try:
        tok = json.loads((folder / "tokenizer.json").read_text())
        model = tok["model"]
        if (
            model["type"] != "BPE"
            or model.get("byte_fallback")
            or (tok.get("decoder") or {}).get("type") != "ByteLevel"
        ):
            raise ExportError(
                "only byte-level BPE tokenizers (GPT-2 / Llama-3 / Qwen style) are exported from a folder"
            )
        vocab: dict[str, int] = dict(model["vocab"])
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from None
    special = {t["content"]: int(t["id"]) for t in tok.get("added_tokens") or [] if t.get("special")}
    for text, idx in {t["content"]: int(t["id"]) for t in tok.get("added_tokens") or []}.items():
        vocab.setdefault(text, idx)
    n_vocab = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [TokenType.UNUSED] * n_vocab
    for text, idx in vocab.items():
        tokens[idx] = text
        types[idx] = TokenType.CONTROL if text in special else TokenType.NORMAL
    rope = getattr(cfg, "rope_parameters", None) or {}
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = GGUFWriter(None, arch)
    w.add_name(folder.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    fields = [
        (k, v.value, v.type, v.sub_type) for k, v in w.kv_data[0].items() if not k.startswith(_OWN_KEYS)
    ]
    ints = {
        k: int(v.value)
        for k, v in w.kv_data[0].items()
        if isinstance(v.value, int) and not isinstance(v.value, bool)
    }
    return SourceGGUF(folder / "config.json", arch, fields, ints)


def read_metadata(path: Path) -> SourceGGUF:
    """The GGUF's key/values (parsing a tokenizer's arrays takes seconds: kept per file version)."""
    st = path.stat()
    return _read_metadata(path.resolve(), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_metadata(path: Path, size: int, mtime_ns: int) -> SourceGGUF:
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    fields: list[tuple[str, Any, Any, Any]] = []
    ints: dict[str, int] = {}
    arch = ""
    for key, f in reader.fields.items():
        value = f.contents()
        if key == "general.architecture":
            arch = str(value)
        if key.startswith(_OWN_KEYS):
            continue
        main = f.types[0]
        sub = f.types[-1] if main == GGUFValueType.ARRAY else None
        if main == GGUFValueType.ARRAY and sub != GGUFValueType.STRING:
            value = [v.item() if hasattr(v, "item") else v for v in value]
        fields.append((key, value, main, sub))
        if isinstance(value, int) and not isinstance(value, bool):
            ints[key] = value
    if not arch:
        raise ExportError(f"{path} has no general.architecture")
    return SourceGGUF(path, arch, fields, ints)


def layout_for(meta: SourceGGUF) -> Layout:
    a = meta.arch
    try:
        return Layout(
            a,
            meta.ints[f"{a}.block_count"],
            meta.ints[f"{a}.attention.head_count"],
            meta.ints.get(f"{a}.attention.head_count_kv", meta.ints[f"{a}.attention.head_count"]),
        )
    except KeyError as exc:
        raise ExportError(f"{meta.path} lacks {exc.args[0]}") from None


# ------------------------------------------------------------------------------ export
@dataclass
class _Planned:
    gguf_name: str
    source: str
    data: np.ndarray[Any, Any]
    ggml_type: str
    reference: torch.Tensor  # what qtui computes with, in the GGUF's row order and values (float32)
    note: str = ""


def _plan(
    manifest: Manifest, tensors: dict[str, torch.Tensor], layout: Layout, cancel: threading.Event | None
) -> Iterator[_Planned]:
    found = store.run_time_only(tensors)
    if found is not None:
        key, what, hint = found
        raise ExportError(f"cannot export to GGUF: {key} is {what}; llama.cpp has no place for it{hint}")
    for key, desc in manifest.tensors.items():
        if cancel is not None and cancel.is_set():
            raise Cancelled("export cancelled; nothing was written")
        if key in manifest.tied:
            continue  # llama.cpp falls back to the tied tensor (token_embd for a missing output)
        gguf_name = layout.name(key)
        fmt_name = str(desc["format"])
        if fmt_name in _FLOAT_TYPES:
            t = tensors[key]
            ref = t.float()
            shift = layout.value_shift(gguf_name)
            if shift:
                ref = ref + shift
            order = layout.row_order(gguf_name, t.shape[0])
            if order is not None:
                ref = ref[torch.from_numpy(order)]
            data: np.ndarray[Any, Any]
            if t.dim() == 1 or shift or fmt_name == "f32":
                data, gtype = ref.numpy().astype(np.float32), "F32"
            elif t.dtype == torch.bfloat16:
                data, gtype = ref.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8), "BF16"
                data = data.reshape(t.shape[0], -1)
            else:
                data, gtype = ref.numpy().astype(np.float16), "F16"
            yield _Planned(gguf_name, key, np.ascontiguousarray(data), gtype, ref)
            continue
        name = key.removesuffix(".weight")
        qw = store.quantized_weight(tensors, name, get_format(fmt_name), list(desc["shape"]))
        codes = qw.codes()
        rows, cols = qw.shape
        grouped = codes.float().reshape(rows, -1, qw.fmt.group_for(cols))
        ref = qw.fmt.decode(grouped, qw.scales, qw.qzeros).reshape(rows, -1)[:, :cols]  # = qw.dequantize()
        note = ""
        try:
            data, gtype = encode_blocks(qw, codes)
            note = block_map(qw.fmt).note
        except ExportError as exc:
            if "whole ggml blocks" not in str(exc):
                raise
            # a row length no block type divides: the exact de-quantized values, in F32
            data, gtype, note = ref.numpy().astype(np.float32), "F32", f"{exc}: stored F32 (exact values)"
        order = layout.row_order(gguf_name, ref.shape[0])
        if order is not None:
            data, ref = data[order], ref[torch.from_numpy(order)]
        yield _Planned(gguf_name, key, np.ascontiguousarray(data), gtype, ref, note)


def _file_type(types: list[str]) -> str:
    """``general.file_type``: the type most of the 2-D weights have (as llama.cpp's quantizer says)."""
    counted = [t for t in types if t in ("Q4_0", "Q4_1", "Q8_0", "BF16", "F16")]
    return max(sorted(set(counted)), key=counted.count) if counted else "F32"


def _file_type_id(name: str) -> int:
    from gguf import LlamaFileType

    return int(LlamaFileType.ALL_F32 if name == "F32" else getattr(LlamaFileType, f"MOSTLY_{name}"))


def default_out(folder: Path, manifest: Manifest) -> Path:
    """``$XDG_DATA_HOME/qtui/exports/<source>-<variant>.gguf``."""
    source = folder.parent.name or "model"
    return paths.data_dir() / "exports" / f"{source}-{folder.name}.gguf"


def export_gguf(
    variant: Path,
    out: Path | None = None,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    overwrite: bool = True,
) -> ExportResult:
    """Write the saved variant at ``variant`` as a GGUF file (see the module doc); returns what was
    written with the per-tensor read-back check. Nothing is left behind on any failure."""
    from gguf import GGMLQuantizationType, GGUFWriter

    t0 = time.perf_counter()
    variant = Path(variant)
    manifest = store.read_manifest(variant)
    fmt = manifest.fmt
    if fmt.family in REFUSED:
        raise ExportError(f"cannot export {fmt.name} to GGUF: {REFUSED[fmt.family]}")
    out = Path(out) if out is not None else default_out(variant, manifest)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; remove it or pass --force")
    progress(0, 3, f"checking {variant.name}")
    tensors = store.load_tensors(variant, manifest, verify=True)  # a failed hash check stops here
    meta = (
        source_gguf(manifest)
        if manifest.source.kind in ("default", "builtin", "gguf")
        else hf_metadata(variant)
    )
    layout = layout_for(meta)
    tmp = _temp_beside(out)
    try:
        writer = GGUFWriter(str(tmp), meta.arch)
        for key, value, vtype, sub in meta.fields:
            writer.add_key_value(key, value, vtype, sub_type=sub)
        planned = list(_plan(manifest, tensors, layout, cancel))
        file_type = _file_type([p.ggml_type for p in planned if p.data.ndim == 2])
        writer.add_uint32("general.file_type", _file_type_id(file_type))
        writer.add_uint32("general.quantization_version", 2)
        writer.add_string("general.quantized_by", "qtui")
        writer.add_string("qtui.variant.format", fmt.name)
        writer.add_string("qtui.variant.method", manifest.method)
        writer.add_string("qtui.variant.params", json.dumps(manifest.method_params, sort_keys=True))
        writer.add_string("qtui.source.id", manifest.source.id)
        if manifest.source.hash:
            writer.add_string("qtui.source.hash", manifest.source.hash)
        writer.add_string("qtui.engine_version", engine.__version__)
        for p in planned:
            raw = None if p.ggml_type in ("F32", "F16") else GGMLQuantizationType[p.ggml_type]
            writer.add_tensor(p.gguf_name, p.data, raw_dtype=raw)
        progress(1, 3, f"writing {out.name}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if cancel is not None and cancel.is_set():
            raise Cancelled("export cancelled; nothing was written")
        progress(2, 3, "reading the GGUF back and comparing")
        checked = _check(tmp, planned)
        del planned
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        raise _write_error(exc, out) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    result = ExportResult(
        out, variant, fmt.name, manifest.method, out.stat().st_size, time.perf_counter() - t0,
        checked, file_type=file_type, metadata_from=str(meta.path),
    )  # fmt: skip
    try:
        sidecar = out.with_name(out.name + ".export.json")
        sidecar.write_text(json.dumps(result.to_json(), indent=1))
    except OSError as exc:
        raise _write_error(exc, out) from exc
    progress(3, 3, "exported")
    return result


def _check(path: Path, planned: list[_Planned]) -> list[TensorExport]:
    """Read ``path`` back with gguf-py, de-quantize each tensor, compare with qtui's weights."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    out: list[TensorExport] = []
    for p in planned:
        t = by_name.get(p.gguf_name)
        if t is None:
            raise ExportError(f"{p.gguf_name} is missing from the written file")
        back = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        ref = p.reference.float()
        back = back.reshape(ref.shape)
        dw = float((back - ref).abs().max()) if ref.numel() else 0.0
        out.append(
            TensorExport(p.gguf_name, p.source, t.tensor_type.name, list(ref.shape), dw, dw == 0.0, p.note)
        )
    return out


def _temp_beside(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise _write_error(exc, out) from exc
    return Path(name)


def _write_error(exc: OSError, out: Path) -> ExportError:
    if exc.errno == errno.ENOSPC:
        return ExportError(f"disk full while writing {out}; nothing was written")
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return ExportError(f"cannot write to {out.parent} (read-only or no permission); nothing was written")
    return ExportError(f"could not write {out}: {exc.strerror or exc}; nothing was written")


# ------------------------------------------------------------------------------ cache
def cached_gguf(
    variant: Path, progress: ProgressFn = no_progress, cancel: threading.Event | None = None
) -> tuple[Path, ExportResult | None]:
    """The variant's GGUF in the cache (exported once per variant content), and the export result
    when it was made now. Keyed by the sha256 of the variant's manifest."""
    manifest_bytes = (Path(variant) / paths.MANIFEST).read_bytes()
    key = hashlib.sha256(manifest_bytes).hexdigest()[:16]
    dest = paths.cache_dir() / "gguf" / f"{Path(variant).parent.name}-{Path(variant).name}-{key}.gguf"
    if dest.exists():
        return dest, None
    return dest, export_gguf(variant, dest, progress, cancel)


def saved_variant(
    spec: str, method: str = "rtn", progress: ProgressFn = no_progress, cancel: threading.Event | None = None
) -> Path:
    """The folder of the saved variant ``spec`` names (a folder, ``MODEL:FORMAT`` or ``MODEL`` for its
    bf16 copy), quantizing and saving it first when it is not saved yet (as ``qtui chat`` does)."""
    from engine import specs, variants
    from engine.request import QuantRequest

    parsed = specs.parse_model_spec(spec, method)
    if parsed.folder is not None:
        return parsed.folder
    assert parsed.source is not None
    request = QuantRequest.build(parsed.source, parsed.fmt or get_format("bf16"), parsed.method)
    if (request.dest / paths.MANIFEST).exists():
        return request.dest
    return variants.quantize_and_save(request, progress, cancel).path
