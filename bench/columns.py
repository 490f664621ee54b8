"""How chat columns should share the CPU: round-robin on one thread vs one thread per column.

Runs the same prompt through N variants of the default model at once with each scheduler in
``engine.multichat`` and prints total tokens/s (all columns together), each column's own
tokens/s, and the wall time, so the choice the app makes (round-robin) is a measured one.

    python bench/columns.py [--specs default default:int8 default:int4 default:int2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from engine import multichat, runtime, sources, variants


def run(scheduler: str, loaded: list[runtime.Variant], prompt: str, tokens: int) -> dict:
    settings = runtime.GenSettings(max_new_tokens=tokens)
    streams = {v.name: runtime.stream(v, prompt, settings, threading.Event()) for v in loaded}
    results: dict[str, runtime.GenResult] = {}
    counts = dict.fromkeys(streams, 0)

    def on_token(key, token):
        counts[key] += 1

    t0 = time.perf_counter()
    multichat.SCHEDULERS[scheduler](streams, on_token, lambda k, r: results.__setitem__(k, r))
    wall = time.perf_counter() - t0
    return {"wall": wall, "total_tok_s": sum(counts.values()) / wall, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--specs", nargs="+", default=["default", "default:int8", "default:int4", "default:int2"])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    cache = {"default": sources.load("default")}
    loaded = [variants.open_spec(s, "cpu", loaded_cache=cache) for s in args.specs]
    cache.clear()
    run("round-robin", loaded, "Hi", 4)  # warm-up
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(loaded)} columns, "
        f"{args.tokens} tokens each (min of {args.repeats} runs by wall time)\n"
    )
    print("| scheduler | wall s | total tok/s | per-column decode tok/s (own clock) |")
    print("|---|---|---|---|")
    for name in multichat.SCHEDULERS:
        best = min(
            (run(name, loaded, args.prompt, args.tokens) for _ in range(args.repeats)),
            key=lambda r: r["wall"],
        )
        per = ", ".join(f"{k} {r.decode_tps:.1f}" for k, r in best["results"].items())
        print(f"| {name} | {best['wall']:.2f} | {best['total_tok_s']:.1f} | {per} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
