"""The evaluation API the CLI and the app call.

    subject = open_subject("default:int4-g64", progress=..., cancel=...)
    result = run(subject, "arc_easy", mode="loglik", limit=200, progress=..., cancel=...)
    result.accuracy.text()  -> '61.0% [54.1-67.5] n=200'

:func:`run` returns a :class:`~engine.evals.results.TaskResult`; identical requests (same
variant content, task content, mode and settings) are answered from the result cache.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine import limits
from engine.errors import QtuiError
from engine.evals import fidelity as fid
from engine.evals import results as res
from engine.evals.batchgen import generate_batch
from engine.evals.data import ASSETS, SHARED_SAMPLES, DataError, file_hash
from engine.evals.loglik import pick, score_pairs
from engine.evals.tasks import Item, Task, get_task
from engine.machine import machine_text
from engine.progress import ProgressFn
from engine.runtime import Variant
from engine.specs import EVAL_MODES, EvalMode
from engine.typed import check_value, option

if TYPE_CHECKING:
    from engine.sources import LoadedSource, ModelSource

ItemRecord = dict[str, Any]  # one item's outcome, as stored in TaskResult.items


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int = option(256, "generate: token limit per answer", min=1, max=32768)
    batch_size: int = option(8, "generate: prompts decoded together", min=1, max=1024)
    system: str | None = None  # generate: system prompt
    ctx: int = option(512, "fidelity: window length in tokens", min=2, max=1 << 20)
    k: int = option(4096, "fidelity: reference top-k kept", min=1)

    def __post_init__(self) -> None:  # a zero batch or window is a one-line error, not a crash
        for name in ("max_new_tokens", "batch_size", "ctx", "k"):
            check_value(EvalSettings, name, getattr(self, name), name)


@dataclass
class Subject:
    """A variant to evaluate, with its content hash and how to get its 16-bit baseline."""

    variant: Variant
    key: str  # content hash: manifest tensor hashes, or the source hash for the bf16 baseline
    baseline_key: str  # content hash of the baseline (fidelity reference cache key)
    baseline: Callable[[], Variant] | None = None

    @property
    def name(self) -> str:
        return self.variant.name


def variant_hash(variant: Variant) -> str:
    """A saved variant's manifest tensor hashes, else a hash of the loaded weights."""
    cached: str | None = getattr(variant, "_qtui_hash", None)
    if cached:
        return cached
    h = hashlib.sha256()
    if variant.manifest is not None and variant.manifest.tensor_sha256:
        h.update(json.dumps(variant.manifest.tensor_sha256, sort_keys=True).encode())
    else:
        for name, t in sorted(variant.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    value = f"sha256:{h.hexdigest()}"
    variant._qtui_hash = value  # type: ignore[attr-defined]
    return value


def subject_from_variant(variant: Variant, baseline: Variant | None = None) -> Subject:
    """Wrap already-loaded variants (tests, the app): keys are hashes of their weights."""
    base = baseline if baseline is not None else variant
    return Subject(variant, variant_hash(variant), variant_hash(base), lambda: base)


def open_subject(
    spec: str,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    loaded_cache: dict[str, LoadedSource] | None = None,
) -> Subject:
    """Open a SPEC as ``qtui chat`` does (``default``, ``default:int4-g64``, a variant folder)."""
    from engine import sources, specs, variants

    cache = loaded_cache if loaded_cache is not None else {}
    progress = progress or _noop
    parsed = specs.parse_model_spec(spec)
    variant = variants.open_spec(parsed, device, progress, cancel, loaded_cache=cache)
    manifest = variant.manifest  # None for a baseline made in memory
    source: ModelSource | None
    if parsed.source is not None:
        source = parsed.source
    else:
        try:
            source = sources.resolve(manifest.source.id if manifest else "")
        except QtuiError:
            source = None

    def baseline() -> Variant:
        if source is None:
            raise QtuiError(f"{spec}: its source model cannot be found, so fidelity has no baseline")
        return variants.open_spec(specs.ModelSpec(source.ref, source, None), device, progress, cancel, cache)

    src_hash = manifest.source.hash if manifest else None
    if src_hash is None and source is not None and source.ref in cache:
        src_hash = cache[source.ref].content_hash
    base_key = f"bf16-of:{src_hash}" if src_hash else None
    if manifest is not None:
        key = variant_hash(variant)
    else:  # a bf16 baseline opened from its source
        key = base_key or variant_hash(variant)
        variant._qtui_hash = key  # type: ignore[attr-defined]
    return Subject(variant, key, base_key or key, baseline)


def _noop(done: int, total: int, text: str) -> None:
    pass


# ------------------------------------------------------------------------------ running
def run(
    subject: Subject | Variant,
    task: str | Task,
    mode: EvalMode = "loglik",
    limit: int | None = None,
    data: Path | str | None = None,
    settings: EvalSettings = EvalSettings(),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    use_cache: bool = True,
) -> res.TaskResult:
    """Evaluate one variant on one task in one mode; cached by content."""
    if isinstance(subject, Variant):
        subject = subject_from_variant(subject)
    if mode not in EVAL_MODES:  # callers pass what a user typed
        raise QtuiError(f"unknown mode {mode!r}; use one of {', '.join(EVAL_MODES)}")
    if limit is not None and limit < 1:
        raise QtuiError(f"--limit must be 1 or more, got {limit}")
    if mode == "fidelity":
        return _fidelity(subject, task if isinstance(task, str) else task.name, limit, data, settings,
                         progress, cancel, use_cache)  # fmt: skip
    t = get_task(task) if isinstance(task, str) else task
    if mode not in t.modes:
        raise QtuiError(f"task {t.name} has no {mode} mode (it supports: {', '.join(t.modes)})")
    items, task_hash = t.load(data, limit)
    used: dict[str, object] = {"limit": limit, "n": len(items)}
    if mode == "generate":
        used |= {"max_new_tokens": settings.max_new_tokens, "batch_size": settings.batch_size,
                 "system": settings.system}  # fmt: skip
    key = res.cache_key(subject.key, task_hash, mode, used)
    if use_cache and (hit := res.load_cached(key)):
        return hit
    start = time.perf_counter()
    runner = _loglik if mode == "loglik" else _generate
    correct, metrics, records = runner(subject.variant, t, items, settings, progress, cancel)
    result = res.TaskResult(
        subject.name, subject.key, t.name, task_hash, mode, used, len(items), correct, metrics, records,
        round(time.perf_counter() - start, 3), res.now(), _machine(subject.variant),
    )  # fmt: skip
    res.store(key, result)
    return result


def _machine(variant: Variant) -> str:
    return f"{machine_text()}; device {variant.device}; backend {variant.backend}"


def _loglik(
    variant: Variant,
    task: Task,
    items: list[Item],
    settings: EvalSettings,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> tuple[int, dict[str, Any], list[ItemRecord]]:
    assert task.loglik is not None  # run() checked that the task has a loglik mode
    pairs: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for item in items:
        context, conts = task.loglik(item)
        spans.append((len(pairs), len(conts)))
        pairs += [(context, c) for c in conts]
    choices = score_pairs(variant.model, variant.tokenizer, pairs, progress=progress, cancel=cancel)
    correct = correct_norm = 0
    records: list[ItemRecord] = []
    for item, (first, count) in zip(items, spans, strict=True):
        scored = choices[first : first + count]
        acc, norm = pick(scored)
        correct += acc == item.gold
        correct_norm += norm == item.gold
        records.append({"id": item.id, "gold": item.gold, "pred": acc, "pred_norm": norm,
                        "logprobs": [round(c.logprob, 4) for c in scored]})  # fmt: skip
    metrics = {"correct_norm": correct_norm, "chance": task.chance, "pairs": len(pairs)}
    return correct, metrics, records


def _generate(
    variant: Variant,
    task: Task,
    items: list[Item],
    settings: EvalSettings,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> tuple[int, dict[str, Any], list[ItemRecord]]:
    prompts = [task.gen_prompt(item) for item in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    records: list[ItemRecord | None] = [None] * len(items)
    batch_times: list[tuple[float, int]] = []
    for start in range(0, len(order), settings.batch_size):
        batch = order[start : start + settings.batch_size]
        gens = generate_batch(variant, [prompts[i] for i in batch], settings.max_new_tokens, settings.system,
                              cancel=cancel)  # fmt: skip
        batch_times.append((gens[0].batch_seconds, sum(len(g.token_ids) for g in gens)))
        for i, g in zip(batch, gens, strict=True):
            s = task.scorer(items[i], g.text)
            records[i] = {
                "id": items[i].id, "answer": s.answer, "source": s.source, "correct": s.correct,
                "correct_strict": s.correct_strict, "em": s.em, "f1": s.f1, "abs_diff": s.abs_diff,
                "tokens": len(g.token_ids), "finish": g.finish, "looped": g.looped,
                "empty": not g.text.strip(), "seconds": round(g.seconds, 3), "text": g.text,
            }  # fmt: skip
        if progress:
            progress(min(start + len(batch), len(items)), len(items), f"generating (batch {len(batch)})")
    recs = [r for r in records if r is not None]
    metrics = _generation_metrics(recs, batch_times)
    return sum(r["correct"] for r in recs), metrics, recs


def _generation_metrics(recs: list[ItemRecord], batch_times: list[tuple[float, int]]) -> dict[str, float]:
    def count(key: str, value: object = True) -> int:
        return sum(1 for r in recs if r[key] == value)

    degenerate = sum(1 for r in recs if r["looped"] or r["finish"] == "length" or r["empty"])
    total_s, total_tok = sum(t for t, _ in batch_times), sum(n for _, n in batch_times)
    m: dict[str, float] = {
        "correct_strict": count("correct_strict"), "boxed": count("source", "boxed"),
        "fallback": count("source", "fallback"), "no_answer": count("source", "none"),
        "looped": count("looped"), "hit_limit": count("finish", "length"), "empty": count("empty"),
        "degenerate": degenerate, "tokens_mean": statistics.fmean(r["tokens"] for r in recs),
        "tokens_per_s": total_tok / total_s if total_s else 0.0, "generate_seconds": total_s,
    }  # fmt: skip
    if any(r["f1"] is not None for r in recs):
        m["em_mean"] = statistics.fmean(r["em"] for r in recs)
        m["f1_mean"] = statistics.fmean(r["f1"] for r in recs)
    diffs = [r["abs_diff"] for r in recs if r["abs_diff"] is not None]
    if diffs:
        m["abs_diff_median"] = statistics.median(diffs)
        m["abs_diff_mean"] = statistics.fmean(diffs)
    return m


# ------------------------------------------------------------------------------ fidelity
TEXTS = {"wikitext": "wikitext2_test_head.txt"}  # shared sample; "passages": built-in text


def text_path(name: str, data: Path | str | None) -> Path:
    if data is not None:
        path = Path(data).expanduser()
    elif name in TEXTS and (SHARED_SAMPLES / TEXTS[name]).exists():
        path = SHARED_SAMPLES / TEXTS[name]
    elif name in ("passages", "builtin") or name in TEXTS:
        path = ASSETS / "passages.txt"  # offline fallback: the built-in suites' passages
    else:
        raise DataError(
            f"fidelity needs a text: --task wikitext, --task passages or --data FILE (got {name!r})"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such text file")
    return path


def _fidelity(
    subject: Subject,
    name: str,
    limit: int | None,
    data: Path | str | None,
    settings: EvalSettings,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
    use_cache: bool,
) -> res.TaskResult:
    path = text_path(name, data)
    limits.check_text_file(path, "fidelity text")
    limits.check_seq_len(settings.ctx, subject.variant.model.config, "--ctx")
    max_tokens = limit or 4096
    text_hash = file_hash(path)
    used = {"ctx": settings.ctx, "k": settings.k, "max_tokens": max_tokens, "text": path.name}
    key = res.cache_key(subject.key, text_hash, "fidelity", used | {"baseline": subject.baseline_key})
    if use_cache and (hit := res.load_cached(key)):
        return hit
    start = time.perf_counter()
    ref = reference_for(subject, path, text_hash, settings, max_tokens, progress, cancel)
    f = fid.compare(subject.variant.model, ref, progress, cancel)
    agree = round(f.top1_agreement * f.n_tokens)
    metrics = asdict(f) | {"ppl_ratio": f.ppl_ratio, "baseline": subject.baseline_key}
    result = res.TaskResult(
        subject.name, subject.key, name, text_hash, "fidelity", used, f.n_tokens, agree, metrics, [],
        round(time.perf_counter() - start, 3), res.now(), _machine(subject.variant),
    )  # fmt: skip
    res.store(key, result)
    return result


def reference_for(subject: Subject, path: Path, text_hash: str, settings: EvalSettings, max_tokens: int,
                  progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> fid.Reference:  # fmt: skip
    """The baseline's reference for this text, from the disk cache or computed once and stored."""
    blob = f"{subject.baseline_key}|{text_hash}|{settings.ctx}|{settings.k}|{max_tokens}"
    cache = res.cache_dir() / "references" / f"{hashlib.sha256(blob.encode()).hexdigest()}.safetensors"
    ref = fid.load_reference(cache)
    if ref is not None:
        return ref
    if subject.baseline is None:
        raise QtuiError("fidelity needs the 16-bit baseline model and none is available")
    base = subject.baseline()
    text = path.read_text(encoding="utf-8")
    try:
        windows = fid.token_windows(base.tokenizer, text, settings.ctx, max_tokens)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc
    ref = fid.reference(base.model, windows, settings.k, progress, cancel)
    fid.save_reference(ref, cache)
    return ref
