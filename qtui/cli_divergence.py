"""``qtui chat --divergence``: per-token KLD of each variant from the first (the baseline),
teacher-forced on the baseline's answer (engine.divergence), printed after the answers.

Registered onto the existing ``chat`` subcommand (the flag wraps its function), so ``qtui chat``
without the flag is unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from qtui.cli_common import EXIT_OK, ProgressLine


def extend_chat(sub) -> None:
    chat = sub.choices.get("chat")
    if chat is None:
        return
    chat.add_argument(
        "--divergence",
        action="store_true",
        help="after the answers: per-token KLD of each variant from the first, on the first's answer",
    )
    chat.add_argument(
        "--kld-threshold", type=float, default=None, help="KLD (nats) that marks a departure (0.5)"
    )
    original = chat.get_default("func")

    def run(args: argparse.Namespace) -> int:
        if not args.divergence:
            return int(original(args))
        return cmd_chat_divergence(args)

    chat.set_defaults(func=run)


def cmd_chat_divergence(args: argparse.Namespace) -> int:
    from engine import divergence, runtime, specs, variants
    from qtui.cli import _result_json, _settings, print_side_by_side

    if len(args.specs) < 2:
        raise SystemExit("qtui chat --divergence needs two variants or more: the first is the baseline")
    settings = _settings(args)
    threshold = divergence.THRESHOLD if args.kld_threshold is None else args.kld_threshold
    cache: dict = {}
    bar = ProgressLine()
    loaded = []
    try:
        for spec in args.specs:
            loaded.append(variants.open_spec(specs.parse_model_spec(spec, args.method), args.device, bar,
                                             loaded_cache=cache))  # fmt: skip
            loaded[-1].warm_up(bar)
    finally:
        bar.close()
    cache.clear()
    results = [(v, runtime.generate(v, args.prompt, settings)) for v in loaded]
    base, base_result = results[0]
    messages = [{"role": "user", "content": args.prompt}]
    found = [
        divergence.divergence(base, v, messages, base_result.token_ids, settings.system, threshold)
        for v, _ in results[1:]
    ]
    if args.json:
        out = [_result_json(v, r, settings) for v, r in results]
        for entry, d in zip(out[1:], found, strict=True):
            entry["divergence"] = divergence_json(d)
        print(json.dumps(out, indent=1))
        return EXIT_OK
    print_side_by_side(results, args.prompt)
    for d in found:
        print_divergence(d)
    return EXIT_OK


def divergence_json(d) -> dict:
    return {
        "baseline": d.baseline,
        "threshold": d.threshold,
        "first_over": d.first_over,
        "mean_kld": round(d.mean_kld, 5),
        "max_kld": round(d.max_kld, 5),
        "top1_agreement": round(d.top1_agreement, 4),
        "tokens": [
            {"index": t.index, "token_id": t.token_id, "text": t.text, "kld": t.kld, "p_variant": t.p_variant,
             "p_baseline": t.p_baseline, "variant_top1": t.variant_top}
            for t in d.tokens
        ],
    }  # fmt: skip


def print_divergence(d, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    where = (
        f"first over {d.threshold:g} at token {d.first_over + 1}" if d.first_over is not None else "none over"
    )
    print(f"\n== {d.variant} vs {d.baseline}: per-token KLD on {d.baseline}'s answer ({where}) ==", file=out)
    print(f"{'#':>4} {'token':18} {'KLD':>8} {'p(variant)':>10} {'p(base)':>8} top-1", file=out)
    for t in d.tokens:
        mark = f"  <- first over {d.threshold:g}" if t.index == d.first_over else ""
        print(
            f"{t.index + 1:4} {t.text!r:18.18} {t.kld:8.4f} {t.p_variant:10.4f} {t.p_baseline:8.4f} "
            f"{'same' if t.variant_top else 'other':5}{mark}",
            file=out,
        )
    print(
        f"mean KLD {d.mean_kld:.4f}, max {d.max_kld:.3f}, top-1 agreement {100 * d.top1_agreement:.0f}% "
        f"over {len(d.tokens)} tokens",
        file=out,
    )
