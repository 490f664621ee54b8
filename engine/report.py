"""The comparison report: Markdown + JSON over variants, from evaluation results.

Tables: accuracy with 95% Wilson intervals per task and mode (and the difference to the 16-bit
baseline, marked significant only when the intervals do not overlap), retention with its inputs,
generative format compliance and degenerate answers, fidelity (KLD / top-1 / PPL ratio), size and
bits per weight, method and parameters, speed (TTFT, tokens/s, speed-up with both times), peak
memory, the worst layers by weight error, and every variant's answers to fixed prompts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.evals.results import TaskResult
from engine.evals.stats import compare_text, retention, speedup
from engine.machine import machine_text

if TYPE_CHECKING:
    from engine.runtime import Variant

FIXED_PROMPTS = (
    "What is the capital of France?",
    "What is 12 + 30? Put the final answer in \\boxed{}.",
    "Write one sentence about the ocean.",
)


@dataclass
class ReportedVariant:
    name: str
    key: str
    format: str = ""
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    bytes_on_disk: int | None = None
    weight_bytes: int | None = None
    bits_per_weight: float | None = None
    backend: str = ""
    worst_layers: list[dict[str, Any]] = field(default_factory=list)
    ttft_s: float | None = None
    decode_tps: float | None = None
    tokens_per_answer: float | None = None
    peak_rss: int | None = None
    answers: list[str] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    folder: str | None = None  # a saved variant's folder (its per-Linear heatmap is drawn from it)
    formats: dict[str, int] = field(default_factory=dict)  # format -> block Linears stored in it
    bit_budget: str = ""  # a bit budget's one-line summary (engine/quant/allocation.py)
    distilled: str = ""  # a distillation's one-line summary (engine/quant/distill.py)


def linear_formats(tensors: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many decoder-block Linears a manifest stores in each format (``tensors`` entries)."""
    out: dict[str, int] = {}
    for key, desc in tensors.items():
        if ".layers." in key and key.endswith(".weight") and len(desc.get("shape", ())) == 2:
            out[str(desc["format"])] = out.get(str(desc["format"]), 0) + 1
    return out


def variant_info(variant: Variant, key: str, n_layers: int = 5) -> ReportedVariant:
    from engine.quant import distill
    from engine.quant.allocation import summary

    m = variant.manifest  # None for a baseline made in memory
    layers = sorted(m.layers if m else [], key=lambda r: -(r.get("rel_error") or 0))[:n_layers]
    return ReportedVariant(
        name=variant.name,
        key=key,
        format=variant.fmt.name,
        method=m.method if m else "-",
        params=m.method_params if m else {},
        bytes_on_disk=m.bytes_on_disk if m else None,
        weight_bytes=variant.weight_bytes(),
        bits_per_weight=m.bits_per_weight if m else float(variant.fmt.bits),
        backend=variant.backend,
        worst_layers=layers,
        folder=str(variant.folder) if variant.folder is not None and m is not None else None,
        formats=linear_formats(m.tensors) if m else {},
        bit_budget=summary(m.raw.get("bit_budget")) if m else "",
        distilled=distill.summary(m.raw.get("distill")) if m else "",
    )


def measure_prompts(
    info: ReportedVariant,
    variant: Variant,
    prompts: Sequence[str] = FIXED_PROMPTS,
    max_new_tokens: int = 48,
    cancel: threading.Event | None = None,
) -> None:
    """Answers to the fixed prompts with TTFT, decode tokens/s, tokens per answer, peak RSS."""
    from engine.runtime import GenSettings, generate

    results = [
        generate(variant, p, GenSettings(max_new_tokens=max_new_tokens), cancel=cancel) for p in prompts
    ]
    info.answers = [r.text for r in results]
    info.flags = [r.flags for r in results]
    info.ttft_s = sum(r.ttft_s for r in results) / len(results)
    rates = [r.decode_tps for r in results if r.decode_tps > 0]
    info.decode_tps = sum(rates) / len(rates) if rates else None
    info.tokens_per_answer = sum(r.new_tokens for r in results) / len(results)
    info.peak_rss = max(r.peak_rss for r in results)


# ------------------------------------------------------------------------------ tables
def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def accuracy_table(results: dict[str, list[TaskResult]], baseline: str | None) -> str:
    """Variants x (task, mode) accuracies with intervals; loglik also shows acc_norm."""
    rows = []
    base = {(r.task, r.mode): r for r in results.get(baseline, [])} if baseline else {}
    for name, rs in results.items():
        for r in sorted(rs, key=lambda r: (r.task, r.mode)):
            if r.mode == "fidelity":
                continue
            b = base.get((r.task, r.mode))
            extra = r.acc_norm.text() if r.mode == "loglik" else r.strict.text()
            vs = compare_text(r.accuracy, b.accuracy) if b and name != baseline else "-"
            ret = retention(r.accuracy.value, b.accuracy.value) if b and name != baseline else "-"
            chance = r.metrics.get("chance")
            rows.append([name, r.task, r.mode, r.accuracy.text(), extra,
                         f"{100 * chance:.0f}%" if chance else "-", vs, ret])  # fmt: skip
    header = ["variant", "task", "mode", "accuracy [95% CI]", "acc_norm (loglik) / boxed-only (generate)",
              "chance", "vs baseline", "retention"]  # fmt: skip
    return _md(header, rows)


def generation_table(results: dict[str, list[TaskResult]]) -> str:
    rows = []
    for name, rs in results.items():
        for r in sorted(rs, key=lambda r: r.task):
            if r.mode != "generate":
                continue
            m = r.metrics
            extra = ""
            if "f1_mean" in m:
                extra = f"EM {m['em_mean']:.3f} F1 {m['f1_mean']:.3f}"
            elif "abs_diff_median" in m:
                extra = f"median abs diff {m['abs_diff_median']:.3g}"
            rows.append([
                name, r.task, r.accuracy.text(), r.compliance.text(), f"{m['fallback']}/{r.n}",
                f"{m['degenerate']}/{r.n} (loop {m['looped']}, limit {m['hit_limit']}, empty {m['empty']})",
                f"{m['tokens_mean']:.0f}", f"{m['tokens_per_s']:.1f}", extra,
            ])  # fmt: skip
    header = ["variant", "task", "accuracy (incl. fallback)", "format compliance (boxed)", "fallback answers",
              "degenerate", "tokens/answer", "tokens/s", "task metric"]  # fmt: skip
    return _md(header, rows)


def fidelity_table(results: dict[str, list[TaskResult]]) -> str:
    rows = []
    for name, rs in results.items():
        for r in rs:
            if r.mode != "fidelity":
                continue
            m = r.metrics
            rows.append([name, r.task, str(r.n), f"{m['kld_mean']:.4f}", f"{m['kld_p99']:.3f}",
                         f"{100 * m['top1_agreement']:.1f}%", f"{m['ppl']:.2f}", f"{m['ppl_ref']:.2f}",
                         f"{m['ppl_ratio']:.3f}"])  # fmt: skip
    header = ["variant", "text", "tokens", "KLD mean", "KLD p99", "top-1 agreement", "PPL", "PPL (f16)",
              "PPL ratio"]  # fmt: skip
    return _md(header, rows)


def variants_table(infos: list[ReportedVariant], baseline: str | None) -> str:
    base = next((i for i in infos if i.name == baseline), None)
    rows = []
    for i in infos:
        speed = "-"
        if base and i is not base and base.decode_tps and i.decode_tps:
            speed = speedup(1 / base.decode_tps, 1 / i.decode_tps)
        params = ", ".join(f"{k}={v}" for k, v in i.params.items()) or "-"
        rows.append([
            i.name, i.format if len(i.formats) <= 1 else f"mixed, at least {i.format}", f"{i.method} ({params})", _mb(i.bytes_on_disk), _mb(i.weight_bytes),
            f"{i.bits_per_weight:.2f}" if i.bits_per_weight else "-", i.backend,
            f"{1000 * i.ttft_s:.0f} ms" if i.ttft_s is not None else "-",
            f"{i.decode_tps:.1f}" if i.decode_tps else "-",
            f"{i.tokens_per_answer:.0f}" if i.tokens_per_answer is not None else "-",
            _mb(i.peak_rss), speed,
        ])  # fmt: skip
    header = ["variant", "format", "method (params)", "on disk", "weights in memory", "bits/weight (quantized)",
              "kernel", "TTFT", "decode tok/s", "tokens/answer", "peak RSS", "decode time per token vs f16"]  # fmt: skip
    return _md(header, rows)


def answers_section(infos: list[ReportedVariant], prompts: Sequence[str] = FIXED_PROMPTS) -> str:
    out = []
    for j, prompt in enumerate(prompts):
        out.append(f"**{prompt}**\n")
        rows = []
        for i in infos:
            if j < len(i.answers):
                text = " ".join(i.answers[j].split())[:300].replace("|", "\\|") or "(empty)"
                flags = f" [{', '.join(i.flags[j])}]" if i.flags[j] else ""
                rows.append([i.name, text + flags])
        out.append(_md(["variant", "answer (greedy)"], rows) + "\n")
    return "\n".join(out)


def formats_section(infos: list[ReportedVariant]) -> str:
    """The variants whose Linears are in several formats (a bit budget, --keep-sensitive): how many
    in each, and the budget asked and reached."""
    rows = [
        [i.name, i.bit_budget or "-", ", ".join(f"{f} x{n}" for f, n in i.formats.items())]
        for i in infos
        if len(i.formats) > 1
    ]
    if not rows:
        return "(every variant stores its Linears in one format)"
    return _md(["variant", "bit budget", "block Linears per format"], rows)


def distill_section(infos: list[ReportedVariant]) -> str:
    """The distilled variants: held-out KL before and after, steps, tokens, why training stopped."""
    rows = [[i.name, i.distilled] for i in infos if i.distilled]
    if not rows:
        return "(no variant was distilled)"
    return _md(["variant", "distillation"], rows)


def worst_layers_section(infos: list[ReportedVariant]) -> str:
    rows = []
    for i in infos:
        for layer in i.worst_layers:
            rows.append([i.name, layer["name"], f"{layer['rel_error']:.4f}", f"{layer['sqnr_db']:.1f}"])
    if not rows:
        return "(no quantized layers)"
    return _md(["variant", "layer", "relative weight error", "SQNR dB"], rows)


def write_charts(
    out: Path, infos: list[ReportedVariant], results: dict[str, list[TaskResult]]
) -> list[tuple[str, str]]:
    """SVG charts into ``out/charts``: accuracy with Wilson whiskers per (task, mode), KLD per
    variant, decode tokens/s and size per variant. Returns (title, relative path) pairs."""
    from engine.charts import Bar, bar_chart

    folder = out / "charts"
    folder.mkdir(parents=True, exist_ok=True)
    charts: list[tuple[str, str, str]] = []  # (title, file name, svg)
    keys = sorted({(r.task, r.mode) for rs in results.values() for r in rs if r.mode != "fidelity"})
    for task, mode in keys:
        bars, chance = [], None
        for name, rs in results.items():
            r = next((r for r in rs if (r.task, r.mode) == (task, mode)), None)
            if r is None or not r.n:
                continue
            lo, hi = r.accuracy.interval
            bars.append(
                Bar(name, 100 * r.accuracy.value, 100 * lo, 100 * hi, f"{100 * r.accuracy.value:.1f}%")
            )
            chance = r.metrics.get("chance") or chance
        if bars:
            n = max(r.n for rs in results.values() for r in rs if (r.task, r.mode) == (task, mode))
            title = f"{task} ({mode}): accuracy, 95% interval, n={n}"
            svg = bar_chart(title, bars, "%", 100 * chance if chance else None, "chance" if chance else "")
            charts.append((title, f"accuracy-{task}-{mode}.svg", svg))
    kld = [
        Bar(name, r.metrics["kld_mean"], text=f"{r.metrics['kld_mean']:.3f}")
        for name, rs in results.items()
        for r in rs
        if r.mode == "fidelity" and r.metrics.get("kld_mean") is not None
    ]
    if kld:
        charts.append(("KL divergence to the 16-bit model (mean; lower is closer)", "kld.svg",
                       bar_chart("KL divergence to the 16-bit model (mean)", kld)))  # fmt: skip
    speed = [Bar(i.name, i.decode_tps) for i in infos if i.decode_tps]
    if speed:
        charts.append(
            ("Decode tokens/s", "decode-speed.svg", bar_chart("Decode tokens/s (fixed prompts)", speed))
        )
    size = [Bar(i.name, i.weight_bytes / 2**20, text=_mb(i.weight_bytes)) for i in infos if i.weight_bytes]
    if size:
        charts.append(
            ("Weights in memory (MiB)", "weights.svg", bar_chart("Weights in memory", size, " MiB"))
        )
    charts += heatmaps(infos)
    for _, file, svg in charts:
        (folder / file).write_text(svg)
    return [(title, f"charts/{file}") for title, file, _ in charts]


def heatmaps(infos: list[ReportedVariant]) -> list[tuple[str, str, str]]:
    """Per saved quantized variant, its per-Linear heatmap (engine.inspection, cached): output
    error where the run recorded it, else weight error."""
    from engine.errors import QtuiError
    from engine.heatmap import heatmap_svg
    from engine.inspection import METRICS, inspect_variant

    out = []
    for info in infos:
        if info.folder is None:
            continue
        try:
            table = inspect_variant(Path(info.folder))
        except QtuiError:
            continue
        if not table.linears:
            continue
        metric = "output" if table.has("output") else "weight"
        title = f"{info.name}: {METRICS[metric].label} per Linear (blocks down, kinds across)"
        out.append((title, f"heatmap-{info.name}.svg", heatmap_svg(table, metric)))
    return out


def write_report(
    out: Path, infos: list[ReportedVariant], results: dict[str, list[TaskResult]], baseline: str | None
) -> tuple[Path, Path]:
    """Write report.md and report.json into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(out, infos, results)
    sizes = sorted({f"{r.task}/{r.mode}: n={r.n}" for rs in results.values() for r in rs})
    md = [
        "# qtui comparison report\n",
        f"Machine: {machine_text()}\n",
        f"Baseline: {baseline or '(none)'}. Accuracies show k/n with a 95% Wilson interval; a difference is "
        "'significant' only when the two intervals do not overlap. Retention = variant / baseline with "
        "both inputs; 'n/a' when the baseline is 0.\n",
        "Sample sizes: " + ("; ".join(sizes) if sizes else "(no evaluation results yet: run `qtui eval`)") + "\n",
        "## Variants\n", variants_table(infos, baseline) + "\n",
        "## Accuracy\n", accuracy_table(results, baseline) + "\n",
        "## Generative answers: format compliance and degenerate outputs\n", generation_table(results) + "\n",
        "## Fidelity to the 16-bit model\n", fidelity_table(results) + "\n",
        "## Formats per Linear (mixed precision)\n", formats_section(infos) + "\n",
        "## Distillation\n", distill_section(infos) + "\n",
        "## Worst layers by weight error\n", worst_layers_section(infos) + "\n",
        "## Answers to fixed prompts\n", answers_section(infos),
        "## Charts\n", "\n\n".join(f"![{title}]({path})" for title, path in charts) or "(nothing to chart)",
    ]  # fmt: skip
    md_path, json_path = out / "report.md", out / "report.json"
    md_path.write_text("\n".join(md))
    data = {
        "machine": machine_text(),
        "baseline": baseline,
        "variants": [i.__dict__ for i in infos],
        "results": {name: [r.to_json() for r in rs] for name, rs in results.items()},
        "prompts": list(FIXED_PROMPTS),
        "charts": [path for _, path in charts],
    }
    json_path.write_text(json.dumps(data, indent=1, default=str))
    return md_path, json_path
