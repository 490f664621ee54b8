"""Evaluation benchmark: bf16 vs int8 vs int4-g64 vs int2-g64 vs q1_0_g128 on the default model.

Loglik ARC-Easy and BoolQ, generative ARC-Easy and GSM8K, fidelity on the WikiText sample; the
time of loglik ARC-Easy over 200 questions; batched vs one-at-a-time generation speed. Prints
Markdown tables measured in this run (results are cached under QTUI_HOME, so a rerun is free;
--fresh recomputes).

QTUI_CACHE_DIR=/tmp/qh/cache QTUI_HOME=/tmp/me nice -n 10 python bench/evals.py [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import report  # noqa: E402
from engine.evals import api  # noqa: E402
from engine.machine import machine_text  # noqa: E402
from engine.runtime import GenSettings, generate  # noqa: E402

SPECS = ["default", "default:int8", "default:int4-g64", "default:int2-g64", "default:q1_0_g128"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--specs", nargs="*", default=SPECS)
    p.add_argument("--loglik-limit", type=int, default=200)
    p.add_argument("--boolq-limit", type=int, default=100)
    p.add_argument("--arc-gen-limit", type=int, default=100)
    p.add_argument("--arc-gen-tokens", type=int, default=48)
    p.add_argument("--gsm-limit", type=int, default=30)
    p.add_argument("--gsm-tokens", type=int, default=160)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--fidelity-tokens", type=int, default=4096)
    p.add_argument("--fresh", action="store_true", help="ignore cached results")
    p.add_argument("--out", default=None, help="also write the Markdown here")
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="only the speed checks: loglik ARC-Easy over --loglik-limit items per variant "
        "(recomputed, not cached) and batched vs one-at-a-time generation",
    )
    a = p.parse_args(argv)
    if a.timing_only:
        print(timing(a))
        return 0
    use_cache = not a.fresh
    arc_gen = api.EvalSettings(max_new_tokens=a.arc_gen_tokens, batch_size=a.batch)
    gsm = api.EvalSettings(max_new_tokens=a.gsm_tokens, batch_size=a.batch)
    jobs = [
        ("arc_easy", "loglik", a.loglik_limit, api.EvalSettings()),
        ("boolq", "loglik", a.boolq_limit, api.EvalSettings()),
        ("wikitext", "fidelity", a.fidelity_tokens, api.EvalSettings()),
        ("arc_easy", "generate", a.arc_gen_limit, arc_gen),
        ("gsm8k", "generate", a.gsm_limit, gsm),
    ]
    results: dict[str, list] = {}
    infos, timings, cache, subjects = [], [], {}, []
    for spec in a.specs:  # open (quantize and save when needed) every variant first
        t0 = time.perf_counter()
        subject = api.open_subject(spec, device="cpu", loaded_cache=cache)
        info = report.variant_info(subject.variant, subject.key)
        report.measure_prompts(info, subject.variant)
        infos.append(info)
        subjects.append(subject)
        results[subject.name] = []
        log(f"{subject.name}: opened and measured in {time.perf_counter() - t0:.1f}s")
    # job-major: the most important measurement is complete for every variant before the next one
    speed_lines: list[str] = []
    for task, mode, limit, settings in jobs:
        for subject in subjects:
            r = api.run(subject, task, mode, limit, settings=settings, use_cache=use_cache)
            results[subject.name].append(r)
            timings.append((subject.name, task, mode, r.n, r.seconds, r.cached))
            log(f"{subject.name:18} {task:9} {mode:8} {r.accuracy.text():30} {r.seconds:7.1f}s"
                f"{' (cached)' if r.cached else ''}")  # fmt: skip
        write(a, results, infos, timings, speed_lines)
    speed_lines = batched_vs_sequential(subjects[0].variant, a.batch, a.arc_gen_tokens)
    print(write(a, results, infos, timings, speed_lines))
    return 0


def timing(a) -> str:
    """Loglik ARC-Easy wall time per variant (not cached) and batched vs one-at-a-time generation."""
    rows, cache, first = [], {}, None
    for spec in a.specs:
        subject = api.open_subject(spec, device="cpu", loaded_cache=cache)
        first = first or subject
        r = api.run(subject, "arc_easy", "loglik", a.loglik_limit, use_cache=False)
        rows.append([subject.name, str(r.n), r.accuracy.text(), f"{r.seconds:.1f}"])
        log(f"{subject.name}: {r.seconds:.1f}s")
    lines = [
        f"Machine: {machine_text()}",
        "",
        report._md(["variant", "n", "loglik ARC-Easy accuracy", "seconds"], rows),
        "",
    ]
    return "\n".join(lines + batched_vs_sequential(first.variant, a.batch, a.arc_gen_tokens))


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write(a, results, infos, timings, speed_lines) -> str:
    base = infos[0].name
    md = [
        "# Evaluation benchmark (default model: SmolLM2-135M-Instruct)\n",
        f"Machine: {machine_text()}\n",
        f"Samples: /work/shared/datasets (first N records). Loglik ARC-Easy {a.loglik_limit} items, BoolQ "
        f"{a.boolq_limit}; generative ARC-Easy {a.arc_gen_limit} items, max_new_tokens {a.arc_gen_tokens}; GSM8K "
        f"{a.gsm_limit} items, max_new_tokens {a.gsm_tokens}; generation batch {a.batch}, greedy; fidelity: "
        f"{a.fidelity_tokens} WikiText tokens, ctx 512, reference top-4096 + rest bucket.\n",
        "## Accuracy (95% Wilson intervals)\n", report.accuracy_table(results, base) + "\n",
        "## Generative: compliance and degenerate answers\n", report.generation_table(results) + "\n",
        "## Fidelity to bf16 (WikiText sample)\n", report.fidelity_table(results) + "\n",
        "## Variants and speed (3 fixed prompts, 48 new tokens, one at a time)\n",
        report.variants_table(infos, base) + "\n",
        "## Run times\n",
        report._md(["variant", "task", "mode", "n", "seconds", "from cache"],
                   [[v, t, m, str(n), f"{s:.1f}", str(c)] for v, t, m, n, s, c in timings]) + "\n",  # fmt: skip
        "## Batched vs one-at-a-time generation (bf16)\n", "\n".join(speed_lines) + "\n",
    ]  # fmt: skip
    text = "\n".join(md)
    if a.out:
        Path(a.out).write_text(text)
    return text


def batched_vs_sequential(variant, batch: int, tokens: int) -> list[str]:
    """Same prompts, same max tokens: tokens/s of batched greedy decoding vs runtime.generate."""
    from engine.evals.batchgen import generate_batch
    from engine.evals.tasks import get_task

    task = get_task("arc_easy")
    items, _ = task.load(limit=batch)
    prompts = [task.gen_prompt(i) for i in items]
    t0 = time.perf_counter()
    gens = generate_batch(variant, prompts, tokens, stop_on_loop=False)
    bt = time.perf_counter() - t0
    btok = sum(len(g.token_ids) for g in gens)
    t0 = time.perf_counter()
    stok = sum(generate(variant, pr, GenSettings(max_new_tokens=tokens)).new_tokens for pr in prompts)
    st = time.perf_counter() - t0
    return [
        f"{batch} ARC-Easy prompts, up to {tokens} new tokens each, {torch.get_num_threads()} threads:",
        "",
        report._md(
            ["mode", "new tokens", "seconds (incl. prefill)", "tokens/s"],
            [
                [f"batched (batch {batch})", str(btok), f"{bt:.1f}", f"{btok / bt:.1f}"],
                ["one at a time (runtime.generate)", str(stok), f"{st:.1f}", f"{stok / st:.1f}"],
            ],
        ),
        "",
        f"Batched throughput = {btok / bt / (stok / st):.2f}x one-at-a-time.",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
