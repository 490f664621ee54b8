"""Where a variant's quantization hurts: a per-Linear table and one Linear up close.

:func:`inspect_variant` gives a :class:`VariantTable`: every quantized Linear (decoder blocks down,
Linear kinds ``q k v o gate up down`` across) with the errors the quantizer recorded in the
manifest (relative weight error, SQNR, relative output error on the calibration sample) and what
is computed here from the stored codes and, when the source model is on disk, its float weights:
the share of weights *clipped* (outside their group's grid by more than half a step) and the share
*collapsed* (in groups whose codes all take one level). :func:`inspect_linear` gives a
:class:`LinearView` of one Linear: a histogram of its weights, the quantization levels of a
typical and of the worst group, code usage, scales, and the input channels with the largest
activations when the (calibrated) method recorded them.

Without the source only the variant is read (codes, scales, dequantized weights) and every
result says what would need the source. Results are cached on disk under the variant's hash
(the sha256 of its manifest, which lists every tensor's sha256) and the source's hash; both
functions take ``progress`` and a cancel event and never print.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import paths
from engine.errors import Cancelled, QtuiError, StoreError
from engine.lazy import WeightIndex
from engine.manifest import Manifest
from engine.progress import ProgressFn, no_progress
from engine.quant import distill
from engine.quant import primitives as P
from engine.quant.allocation import summary
from engine.quant.formats import FormatSpec, QuantizedWeight, get_format

CACHE_VERSION = 1
KIND_ORDER = ("q", "k", "v", "o", "gate", "up", "down")
HIST_BINS = 61
FLOAT_FORMATS = ("bf16", "f16", "f32")
_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Metric:
    key: str  # the LinearStat field
    label: str
    higher_is_worse: bool
    unit: str = ""


METRICS: dict[str, Metric] = {
    "weight": Metric("rel_error", "weight error ||W-Wq||/||W||", True),
    "sqnr": Metric("sqnr_db", "SQNR", False, " dB"),
    # the format each Linear got (a bit budget chooses one per Linear): the wider, the darker
    "bits": Metric("bits_per_weight", "bits/weight of its format", True),
    "output": Metric("out_rel_error", "output error ||WX-WqX||/||WX||", True),
    "clipped": Metric("clipped", "clipped weights", True, " %"),
    "collapsed": Metric("collapsed", "collapsed to one level", True, " %"),
}


@dataclass(frozen=True)
class LinearStat:
    """One quantized Linear's figures (None: not known for this variant; see the table's notes)."""

    name: str
    block: int  # -1 outside the decoder blocks (an LM head, embeddings)
    kind: str  # q k v o gate up down, or the module's own name
    fmt: str
    shape: tuple[int, int]
    rel_error: float | None
    sqnr_db: float | None
    out_rel_error: float | None
    clipped: float | None  # % of weights beyond their group's grid (needs the source)
    collapsed: float  # % of weights in groups whose codes all take one level

    def value(self, metric: str) -> float | None:
        v = getattr(self, METRICS[metric].key)
        return None if v is None else float(v)

    @property
    def bits_per_weight(self) -> float | None:
        """Storage bits per weight of this Linear's format (``FormatSpec.storage_bytes``)."""
        try:
            return get_format(self.fmt).storage_bytes(self.shape) * 8 / max(self.shape[0] * self.shape[1], 1)
        except QtuiError:
            return None


@dataclass(frozen=True)
class VariantTable:
    variant: str
    path: str
    key: str  # the variant's hash (cache key)
    fmt: str
    method: str
    source: str
    has_source: bool
    notes: tuple[str, ...]  # what is missing and why (no source, output error not recorded...)
    kinds: tuple[str, ...]
    blocks: int
    linears: tuple[LinearStat, ...]

    def cell(self, block: int, kind: str) -> LinearStat | None:
        for s in self.linears:
            if s.block == block and s.kind == kind:
                return s
        return None

    def get(self, name: str) -> LinearStat | None:
        return next((s for s in self.linears if s.name == name), None)

    def find(self, text: str) -> LinearStat:
        """A Linear by its name (``model.layers.3.self_attn.q_proj``) or ``BLOCK.KIND`` (``3.q``)."""
        text = text.strip().removesuffix(".weight")
        found = self.get(text)
        block, _, kind = text.partition(".")
        if found is None and block.isdigit():
            found = self.cell(int(block), kind.removesuffix("_proj"))
        if found is None:
            example = self.linears[0].name if self.linears else "none"
            raise StoreError(f"{self.variant} has no quantized Linear {text!r} (e.g. {example} or 0.q)")
        return found

    def has(self, metric: str) -> bool:
        return any(s.value(metric) is not None for s in self.linears)

    def worst(self, metric: str, n: int = 10) -> list[LinearStat]:
        """The ``n`` Linears that ``metric`` says are worst (unknown values left out)."""
        m = METRICS[metric]
        known = [s for s in self.linears if s.value(metric) is not None]
        return sorted(known, key=lambda s: s.value(metric) or 0.0, reverse=m.higher_is_worse)[:n]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VariantTable:
        linears = tuple(LinearStat(**{**s, "shape": tuple(s["shape"])}) for s in data["linears"])
        fields = {**data, "linears": linears, "notes": tuple(data["notes"]), "kinds": tuple(data["kinds"])}
        return cls(**fields)


@dataclass(frozen=True)
class GroupView:
    """One group of one output row: its weights and the levels its codes can take."""

    label: str  # "typical (median error)", "worst (largest error)", "widest (largest scale)"
    row: int
    group: int
    error: float | None  # relative error ||w - wq|| / ||w|| of the group (needs the source)
    rms_error: float | None  # root-mean-square error of its weights (the order "worst" goes by)
    scale: float
    levels: tuple[float, ...]
    weights: tuple[float, ...]  # the source's weights, or the dequantized ones without it
    dequantized: tuple[float, ...]


@dataclass(frozen=True)
class LinearView:
    variant: str
    name: str
    fmt: str
    method: str
    stat: LinearStat
    group_size: int
    bins: tuple[float, ...]  # histogram edges (len = counts + 1)
    counts_source: tuple[int, ...] | None  # the source's weights (None without the source)
    counts_dequant: tuple[int, ...]  # the dequantized weights
    code_counts: tuple[int, ...]  # how many weights use each code
    scales: tuple[float, float, float]  # min, median, max of the group scales
    typical: GroupView
    worst: GroupView
    act_top: tuple[tuple[int, float, float], ...] | None  # (channel, max |x|, mean |x|)
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LinearView:
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        def group(g: dict[str, Any]) -> GroupView:
            return GroupView(**{k: tup(v) for k, v in g.items()})

        stat = data["stat"]
        fields = {k: tup(v) for k, v in data.items()}
        fields.update(
            stat=LinearStat(**{**stat, "shape": tuple(stat["shape"])}),
            typical=group(data["typical"]),
            worst=group(data["worst"]),
        )
        return cls(**fields)


def compare_cells(a: VariantTable, b: VariantTable, metric: str) -> tuple[int, int]:
    """(cells where ``b`` is better than ``a`` on ``metric``, cells both know) over the Linears
    the two variants share (e.g. GPTQ vs RTN of one source)."""
    m = METRICS[metric]
    better = total = 0
    for s in a.linears:
        other = b.get(s.name)
        va, vb = s.value(metric), other.value(metric) if other else None
        if va is None or vb is None:
            continue
        total += 1
        better += (vb < va) if m.higher_is_worse else (vb > va)
    return better, total


# ------------------------------------------------------------------------------ finding things
def find_variant(text: str, method: str = "rtn") -> Path:
    """A saved variant's folder from a folder path, ``MODEL:FORMAT`` (with ``method``) or a
    variant's folder name under the data folder (``int4-g64-gptq``); never quantizes."""
    from engine import sources, store

    path = Path(text).expanduser()
    if (path / paths.MANIFEST).exists():
        return path
    if path.exists():
        raise StoreError(f"{path} is not a qtui variant (no {paths.MANIFEST})")
    if ":" in text:
        model, _, fmt_name = text.rpartition(":")
        fmt = get_format(fmt_name)
        folder = store.default_variant_dir(sources.resolve(model or "default").slug, fmt, method)
        if (folder / paths.MANIFEST).exists():
            return folder
        raise StoreError(
            f"{text} ({method}) is not saved yet; make it with: qtui quantize {model or 'default'} "
            f"--format {fmt.name} --method {method}"
        )
    found = [p for p, _ in store.list_variants() if p.name == text]
    if len(found) == 1:
        return found[0]
    if found:
        raise StoreError(
            f"{text} names {len(found)} saved variants; give a folder: {', '.join(map(str, found))}"
        )
    raise StoreError(f"{text}: no such variant folder or saved variant (see: qtui variants)")


def variant_key(folder: Path) -> str:
    """The variant's hash: sha256 of its folder and its manifest (which holds the sha256 of every
    tensor). The folder counts: the cached tables name it, and two saves of the same weights (the
    same manifest, written within one second) must not share an entry."""
    folder = Path(folder)
    data = str(folder.resolve()).encode() + b"\0" + (folder / paths.MANIFEST).read_bytes()
    return hashlib.sha256(data).hexdigest()[:20]


@dataclass(frozen=True)
class SourceAccess:
    index: WeightIndex | None  # the source's float weights, or None
    note: str  # why there is no source ("" when there is)
    key: str  # its content hash ("none" without it)


def open_source(manifest: Manifest) -> SourceAccess:
    """The variant's source weights when they are on disk and unchanged (never fetched here)."""
    from engine import sources
    from engine.quant.methods import get_method

    rec = manifest.source
    if not rec.id:
        return SourceAccess(None, "the manifest names no source model", "none")
    try:
        spec = get_method(manifest.method)
        if spec.prepare_block is not None or spec.prepare_model is not None:
            return SourceAccess(
                None,
                f"{manifest.method} rescales or rotates weights before quantizing, so the source's "
                "weights are not what was quantized: figures from the variant alone",
                "none",
            )
    except QtuiError:
        pass
    try:
        src = sources.resolve(rec.id)
        folder = _present_folder(src)
    except QtuiError as exc:
        return SourceAccess(None, f"source {rec.id!r} is not available ({exc})", "none")
    if folder is None:
        return SourceAccess(
            None, f"source {rec.id!r} is not on this machine (fetch it by loading it once)", "none"
        )
    try:
        digest = sources.source_hash(src, folder)
        if rec.hash and digest != rec.hash:
            return SourceAccess(None, f"source {rec.id!r} changed since this variant was made", "none")
        return SourceAccess(WeightIndex(folder), "", (digest or "nohash").replace("sha256:", "")[:20])
    except (QtuiError, OSError, ValueError, KeyError) as exc:
        return SourceAccess(None, f"source {rec.id!r} cannot be read ({exc})", "none")


def _present_folder(src: Any) -> Path | None:
    from engine import sources

    if src.kind in ("default", "builtin"):
        folder = sources.default_model_dir() if src.kind == "default" else src.path
        return folder if folder is not None and (folder / "qtui-source.json").exists() else None
    if src.kind == "gguf":
        digest = sources.content_hash(src.path)
        folder = paths.cache_dir() / "models" / f"gguf-{digest.split(':')[1][:16]}"
        return folder if (folder / "qtui-source.json").exists() else None
    if src.kind == "hub" or src.path is None or not any(Path(src.path).glob("*.safetensors")):
        return None
    return Path(src.path)


def block_and_kind(name: str) -> tuple[int, str]:
    """``model.layers.3.self_attn.q_proj`` -> (3, "q"); outside the blocks: (-1, name)."""
    m = _BLOCK.search(name)
    if m is None:
        return -1, name
    leaf = m.group(2).rsplit(".", 1)[-1]
    return int(m.group(1)), leaf.removesuffix("_proj")


def _quantized_names(manifest: Manifest) -> list[tuple[str, str, tuple[int, int]]]:
    out = []
    for key, desc in manifest.tensors.items():
        if desc["format"] in FLOAT_FORMATS or len(desc["shape"]) != 2 or "embed" in key:
            continue
        out.append(
            (key.removesuffix(".weight"), str(desc["format"]), (int(desc["shape"][0]), int(desc["shape"][1])))
        )
    return out


def activation_top(manifest: Manifest) -> dict[str, tuple[tuple[int, float, float], ...]]:
    """Full Linear name -> its largest input channels, as a calibrated run recorded them."""
    out: dict[str, tuple[tuple[int, float, float], ...]] = {}
    for entry in manifest.raw.get("method_info") or []:
        if isinstance(entry, dict) and "act_top" in entry and "block" in entry:
            for name, rows in (entry["act_top"] or {}).items():
                out[f"model.layers.{entry['block']}.{name}"] = tuple(
                    (int(c), float(mx), float(mean)) for c, mx, mean in rows
                )
    return out


# ------------------------------------------------------------------------------ computing
@dataclass
class _Groups:
    """One Linear's codes and (with the source) float weights, in groups ``[out, g, group]``. Only
    the last group of a row can be padded (``real`` weights of it are real); padding never counts."""

    qw: QuantizedWeight
    codes: torch.Tensor  # [out, g, group] uint8
    w: torch.Tensor | None  # [out, g, group] float32, zero-padded
    real: int  # real weights in the last group of a row

    @property
    def fmt(self) -> FormatSpec:
        return self.qw.fmt

    @property
    def n_weights(self) -> int:
        out_f, n_groups, group = self.codes.shape
        return out_f * ((n_groups - 1) * group + self.real)

    def count(self, flags: torch.Tensor) -> int:
        """True entries of ``[out, g, group]`` flags, padding left out."""
        return int(flags.count_nonzero()) - int(flags[:, -1, self.real :].count_nonzero())

    def unpad(self, t: torch.Tensor) -> torch.Tensor:
        """``[..., g, group]`` values of the real weights, flattened."""
        if self.real == t.shape[-1]:
            return t.flatten()
        return torch.cat([t[:, :-1].flatten(), t[:, -1, : self.real].flatten()])

    def levels(self, codes: torch.Tensor | None = None) -> torch.Tensor:
        """The levels each group's codes can take (or just ``codes``): [out, g, levels]."""
        q = torch.arange(self.fmt.levels, dtype=torch.float32) if codes is None else codes.float()
        q = q.view(1, 1, -1).expand(*self.codes.shape[:2], -1)
        return self.fmt.decode(q, self.qw.scales, self.qw.qzeros)

    def dequantized(self) -> torch.Tensor:
        return self.fmt.decode(self.codes.float(), self.qw.scales, self.qw.qzeros)

    def collapsed(self) -> torch.Tensor:
        """[out, g] True where every real weight of the group has the same code."""
        codes = self.codes
        if self.real != codes.shape[-1]:  # padding takes the group's first code: no effect
            codes = codes.clone()
            codes[:, -1, self.real :] = codes[:, -1, :1]
        return codes.amin(-1) == codes.amax(-1)

    def collapsed_count(self) -> int:
        flags = self.collapsed()
        group = self.codes.shape[-1]
        return int(flags[:, :-1].count_nonzero()) * group + int(flags[:, -1].count_nonzero()) * self.real

    def clipped(self) -> torch.Tensor | None:
        """[out, g, group] True where a source weight lies beyond its grid by more than half a step."""
        if self.w is None:
            return None
        ends = self.levels(torch.tensor([0, self.fmt.levels - 1]))
        lo, hi = ends.amin(-1, keepdim=True), ends.amax(-1, keepdim=True)
        # half a step, plus what rounding the scale to f16 can shift the far end of the grid by
        steps = max(self.fmt.levels - 1, 1)
        margin = (hi - lo) / steps * (0.5 + steps * 2.0**-10)
        return (self.w < lo - margin) | (self.w > hi + margin)

    def group_error(self) -> torch.Tensor | None:
        """[out, g] squared error of each group (needs the source)."""
        if self.w is None:
            return None
        diff = self.w - self.dequantized()
        diff[:, -1, self.real :] = 0.0
        return diff.pow(2).sum(-1)


def _groups(
    variant: WeightIndex, source: WeightIndex | None, name: str, fmt_name: str, shape: tuple[int, int]
) -> _Groups:
    fmt = get_format(fmt_name)
    qzeros = f"{name}.qzeros"
    qw = QuantizedWeight(
        fmt,
        shape,
        variant.get(f"{name}.qweight"),
        variant.get(f"{name}.scales"),
        variant.get(qzeros) if qzeros in variant else None,
    )
    group = fmt.group_for(shape[1])
    codes = qw.codes().reshape(shape[0], -1, group)
    real = shape[1] - (codes.shape[1] - 1) * group
    w = None
    if source is not None and f"{name}.weight" in source:
        w, _ = P.grouped(source.get(f"{name}.weight", torch.float32), group)
    return _Groups(qw, codes, w, real)


def _stat(name: str, fmt: str, shape: tuple[int, int], g: _Groups, recorded: dict[str, Any]) -> LinearStat:
    block, kind = block_and_kind(name)
    n = g.n_weights
    collapsed = g.collapsed_count() / n * 100
    clipped_flags = g.clipped()
    clipped = None if clipped_flags is None else g.count(clipped_flags) / n * 100
    rel, sqnr = recorded.get("rel_error"), recorded.get("sqnr_db")
    err = g.group_error() if g.w is not None and rel is None else None
    if err is not None and g.w is not None:
        total, power = float(err.sum()), float(g.w.pow(2).sum())  # padding is zero
        rel = (total / max(power, 1e-30)) ** 0.5
        sqnr = 10 * math.log10(max(power, 1e-30) / max(total, 1e-30))
    return LinearStat(
        name, block, kind, fmt, shape,
        _num(rel), _num(sqnr), _num(recorded.get("out_rel_error")),
        None if clipped is None else round(clipped, 4), round(collapsed, 4),
    )  # fmt: skip


def _num(v: Any) -> float | None:
    return None if v is None else round(float(v), 6)


def _context(folder: Path) -> tuple[Manifest, str, SourceAccess, WeightIndex]:
    from engine import store

    folder = Path(folder)
    manifest = store.read_manifest(folder)
    store.verify_files(folder, manifest)
    return manifest, variant_key(folder), open_source(manifest), WeightIndex(folder)


def _cache_path(*parts: str) -> Path:
    return paths.cache_dir() / "inspect" / Path(*parts)


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("cache_version") == CACHE_VERSION else None


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**data, "cache_version": CACHE_VERSION}))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def inspect_variant(
    folder: Path | str,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
) -> VariantTable:
    """The per-Linear table of a saved variant (cached by variant and source hash)."""
    folder = Path(folder)
    manifest, key, access, index = _context(folder)
    cache = _cache_path(f"{key}-{access.key}.json")
    if use_cache and (data := _read_cache(cache)) is not None:
        return VariantTable.from_json({k: v for k, v in data.items() if k != "cache_version"})
    recorded = {e["name"]: e for e in manifest.layers if isinstance(e, dict) and "name" in e}
    names = _quantized_names(manifest)
    stats: list[LinearStat] = []
    for i, (name, fmt, shape) in enumerate(names):
        if cancel is not None and cancel.is_set():
            raise Cancelled("inspect cancelled")
        progress(i, len(names), f"inspecting: {name}")
        stats.append(
            _stat(name, fmt, shape, _groups(index, access.index, name, fmt, shape), recorded.get(name, {}))
        )
    progress(len(names), len(names), "inspected")
    found_kinds = [s.kind for s in stats if s.block >= 0]
    kinds = tuple(k for k in KIND_ORDER if k in found_kinds) + tuple(
        dict.fromkeys(k for k in found_kinds if k not in KIND_ORDER)
    )
    notes = []
    budget = manifest.raw.get("bit_budget")
    if budget:  # the format chosen per Linear: the "bits" metric draws it
        kept = sum(1 for f in dict(budget.get("choice") or {}).values() if f in FLOAT_FORMATS)
        notes.append(summary(budget) + (f"; {kept} Linears kept 16-bit (not listed)" if kept else ""))
    if manifest.raw.get("distill"):  # trained scales (and adapters): the errors include what training moved
        notes.append("distilled: " + distill.summary(manifest.raw["distill"]))
    if not names:
        notes.append(
            f"{manifest.format_name} has no quantized Linears (a 16-bit variant): nothing to inspect"
        )
    if access.index is None:
        notes.append(f"without the source: {access.note}; clipped weights and group errors need it")
    if names and not any(s.out_rel_error is not None for s in stats):
        notes.append(
            f"output error: not recorded ({manifest.method} ran without calibration data; "
            "quantize with --calib builtin to record it)"
        )
    table = VariantTable(
        variant=folder.name,
        path=str(folder),
        key=key,
        fmt=manifest.format_name,
        method=manifest.method,
        source=manifest.source.label or manifest.source.id,
        has_source=access.index is not None,
        notes=tuple(notes),
        kinds=kinds,
        blocks=max((s.block for s in stats), default=-1) + 1,
        linears=tuple(stats),
    )
    _write_cache(cache, table.to_json())
    return table


def inspect_linear(
    folder: Path | str,
    name: str,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
) -> LinearView:
    """One Linear up close: histogram, grids of a typical and the worst group, codes, scales."""
    folder = Path(folder)
    manifest, key, access, index = _context(folder)
    name = name.removesuffix(".weight")
    cache = _cache_path(f"{key}-{access.key}", f"{name}.json")
    if use_cache and (data := _read_cache(cache)) is not None:
        return LinearView.from_json({k: v for k, v in data.items() if k != "cache_version"})
    entry = next(((n, f, s) for n, f, s in _quantized_names(manifest) if n == name), None)
    if entry is None:
        known = [n for n, _, _ in _quantized_names(manifest)]
        hint = f" (e.g. {known[0]})" if known else " (it has none)"
        raise StoreError(f"{folder.name} has no quantized Linear {name!r}{hint}")
    if cancel is not None and cancel.is_set():
        raise Cancelled("inspect cancelled")
    progress(0, 1, f"reading {name}")
    _, fmt, shape = entry
    recorded = {e["name"]: e for e in manifest.layers if isinstance(e, dict) and "name" in e}
    g = _groups(index, access.index, name, fmt, shape)
    stat = _stat(name, fmt, shape, g, recorded.get(name, {}))
    deq = g.dequantized()
    real = g.unpad(deq)
    source_w = g.unpad(g.w) if g.w is not None else None
    span_of = source_w if source_w is not None else real
    lo, hi = float(span_of.min()), float(span_of.max())
    hi = hi if hi > lo else lo + 1e-6
    edges = torch.linspace(lo, hi, HIST_BINS + 1)
    counts_dq = torch.histc(real.clamp(lo, hi), HIST_BINS, lo, hi)
    counts_src = None if source_w is None else torch.histc(source_w, HIST_BINS, lo, hi)
    codes = g.unpad(g.codes).long()
    code_counts = torch.bincount(codes, minlength=g.fmt.levels)
    scales = g.qw.scales.float().flatten()
    err = g.group_error()
    notes = []
    if err is not None:
        power = g.w.pow(2).sum(-1).clamp(min=1e-30)  # type: ignore[union-attr]  # padding is zero
        flat = err.flatten()
        order = flat.argsort()
        typical_i, worst_i = int(order[len(order) // 2]), int(order[-1])
        typical = _group_view("typical (median error)", g, deq, typical_i, err, power)
        worst = _group_view("worst (largest error)", g, deq, worst_i, err, power)
    else:
        order = g.qw.scales.float().flatten().argsort()
        typical = _group_view("typical (median scale)", g, deq, int(order[len(order) // 2]), None, None)
        worst = _group_view("widest (largest scale)", g, deq, int(order[-1]), None, None)
        notes.append(f"without the source: {access.note}; the histogram is of the dequantized weights")
    act = activation_top(manifest).get(name)
    if act is None:
        notes.append(
            f"activation channels: not recorded ({manifest.method} ran without calibration data, "
            "or the variant predates recording them)"
        )
    view = LinearView(
        variant=folder.name,
        name=name,
        fmt=fmt,
        method=manifest.method,
        stat=stat,
        group_size=g.fmt.group_for(shape[1]),
        bins=tuple(round(float(e), 7) for e in edges),
        counts_source=None if counts_src is None else tuple(int(c) for c in counts_src),
        counts_dequant=tuple(int(c) for c in counts_dq),
        code_counts=tuple(int(c) for c in code_counts),
        scales=(float(scales.min()), float(scales.median()), float(scales.max())),
        typical=typical,
        worst=worst,
        act_top=act,
        notes=tuple(notes),
    )
    progress(1, 1, f"read {name}")
    _write_cache(cache, view.to_json())
    return view


def _group_view(
    label: str,
    g: _Groups,
    dequantized: torch.Tensor,
    flat: int,
    err: torch.Tensor | None,
    power: torch.Tensor | None,
) -> GroupView:
    n_groups = g.codes.shape[1]
    row, grp = divmod(flat, n_groups)
    n = g.real if grp == n_groups - 1 else g.codes.shape[-1]
    levels = g.levels()[row, grp]
    source = g.w[row, grp][:n] if g.w is not None else None
    deq = dequantized[row, grp][:n]
    error = rms = None
    if err is not None and power is not None:
        error = round(float((err[row, grp] / power[row, grp]).sqrt()), 6)
        rms = round(float((err[row, grp] / n).sqrt()), 8)
    return GroupView(
        label=label,
        row=row,
        group=grp,
        error=error,
        rms_error=rms,
        scale=float(g.qw.scales[row, grp]),
        levels=tuple(round(float(v), 7) for v in torch.unique(levels)),
        weights=tuple(round(float(v), 7) for v in (source if source is not None else deq)),
        dequantized=tuple(round(float(v), 7) for v in deq),
    )
