"""``qtui eval`` and ``qtui report``: accuracy, compliance and fidelity tables over variants."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qtui.cli_common import EXIT_OK, ProgressLine


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=None, help="first N items (fidelity: N tokens, default 4096)")
    p.add_argument("--data", default=None, help="a JSONL/JSON/parquet file or folder (fidelity: a text file)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generate mode: token limit per answer")
    p.add_argument("--batch-size", type=int, default=8, help="generate mode: prompts decoded together")
    p.add_argument("--system", default=None, help="generate mode: system prompt")
    p.add_argument("--ctx", type=int, default=512, help="fidelity: window length in tokens")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a stored result exists")


def _settings(args):
    """Evaluation settings, each value checked against EvalSettings' bounds (named by its flag)."""
    from engine.errors import QtuiError
    from engine.evals.api import EvalSettings
    from engine.typed import check_value

    if args.limit is not None and args.limit < 1:
        raise QtuiError(f"--limit must be 1 or more, got {args.limit}")
    flags = {"max_new_tokens": "--max-new-tokens", "batch_size": "--batch-size", "ctx": "--ctx"}
    values = {
        name: check_value(EvalSettings, name, getattr(args, name), flag) for name, flag in flags.items()
    }
    return EvalSettings(system=args.system, **values)


def _tasks(values: list[str]) -> list[str]:
    return [t for v in values for t in v.split(",") if t]


def _extra(r) -> str:
    m = r.metrics
    if r.mode == "loglik":
        return f"acc_norm {r.acc_norm.text()}"
    if r.mode == "fidelity":
        return (
            f"KLD {m['kld_mean']:.4f} (p99 {m['kld_p99']:.3f}), PPL {m['ppl']:.2f} vs {m['ppl_ref']:.2f} "
            f"(ratio {m['ppl_ratio']:.3f})"
        )
    extra = (
        f"boxed {m['boxed']}/{r.n}, fallback {m['fallback']}, degenerate {m['degenerate']} "
        f"(loop {m['looped']}, limit {m['hit_limit']}, empty {m['empty']}), {m['tokens_mean']:.0f} tok/answer"
    )
    if "f1_mean" in m:
        extra += f", EM {m['em_mean']:.3f} F1 {m['f1_mean']:.3f}"
    return extra


def print_table(rows, stream=None) -> None:
    from engine.evals.stats import compare_text

    stream = stream or sys.stdout
    first: dict = {}
    print(
        f"{'variant':18} {'task':14} {'mode':9} {'accuracy [95% CI]':32} {'vs first':28} details", file=stream
    )
    for r in rows:
        key = (r.task, r.mode)
        base = first.setdefault(key, r)
        label = "top-1 " + r.accuracy.text() if r.mode == "fidelity" else r.accuracy.text()
        vs = "-" if base is r else compare_text(r.accuracy, base.accuracy)
        cached = " (cached)" if r.cached else f" ({r.seconds:.1f}s)"
        print(f"{r.variant:18} {r.task:14} {r.mode:9} {label:32} {vs:28} {_extra(r)}{cached}", file=stream)


def cmd_eval(args) -> int:
    from engine.evals import api

    settings = _settings(args)
    rows, loaded = [], {}
    for spec in args.specs:
        bar = ProgressLine()
        try:
            subject = api.open_subject(spec, args.device, bar, loaded_cache=loaded)
            for task in _tasks(args.task):
                rows.append(
                    api.run(subject, task, args.mode, args.limit, args.data, settings, bar,
                            use_cache=not args.no_cache)
                )  # fmt: skip
        finally:
            bar.close()
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_json() for r in rows], indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return EXIT_OK


def _default_specs() -> list[str]:
    from engine import store

    return ["default", *[str(path) for path, _ in store.list_variants()]]


def cmd_report(args) -> int:
    from engine import report, specs
    from engine.evals import api, results

    settings = _settings(args)
    variant_specs = args.specs or _default_specs()
    infos, by_variant, loaded = [], {}, {}
    for spec in variant_specs:
        bar = ProgressLine()
        try:
            subject = api.open_subject(spec, args.device, bar, loaded_cache=loaded)
            for item in args.eval or []:
                task, mode = specs.parse_task_mode(item)
                api.run(subject, task, mode, args.limit, args.data, settings, bar)
        finally:
            bar.close()
        info = report.variant_info(subject.variant, subject.key)
        if not args.no_prompts:
            report.measure_prompts(info, subject.variant)
        infos.append(info)
        newest: dict = {}
        for r in results.cached_results(subject.key):  # newest first: keep one per (task, mode)
            newest.setdefault((r.task, r.mode), r)
        by_variant[info.name] = list(newest.values())
    baseline = infos[0].name if infos else None
    md, js = report.write_report(Path(args.out), infos, by_variant, baseline)
    print(md.read_text())
    print(f"wrote {md} and {js}", file=sys.stderr)
    return EXIT_OK


def register(sub) -> None:
    e = sub.add_parser("eval", help="evaluate variants: log-likelihood, generative or fidelity")
    e.add_argument("specs", nargs="+", help="default, default:int4-g64, a saved variant folder...")
    e.add_argument(
        "--task", "-t", action="append", default=None, help="task name(s), comma-separated or repeated"
    )
    e.add_argument("--mode", "-m", default="loglik", choices=["loglik", "generate", "fidelity"])
    e.add_argument("--json", default=None, help="also write the results as JSON to this file")
    _add_common(e)
    e.set_defaults(func=_with_tasks(cmd_eval))

    r = sub.add_parser("report", help="write a Markdown + JSON comparison report of variants")
    r.add_argument("specs", nargs="*", help="variants (default: 'default' and every saved variant)")
    r.add_argument("--out", default="qtui-report", help="output folder (report.md, report.json)")
    r.add_argument("--eval", action="append", help="TASK:MODE to evaluate first (e.g. arc_easy:loglik)")
    r.add_argument("--no-prompts", action="store_true", help="skip the fixed prompts (speed, answers)")
    _add_common(r)
    r.set_defaults(func=cmd_report)


def _with_tasks(func):
    def run(args) -> int:
        if not args.task:
            from engine.evals.tasks import TASKS

            args.task = ["wikitext" if args.mode == "fidelity" else "knowledge"]
            print(
                f"(no --task: using {args.task[0]}; known tasks: {', '.join(sorted(TASKS))})", file=sys.stderr
            )
        return func(args)

    return run
