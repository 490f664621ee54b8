"""Decode speed of a rotated variant vs the same variant unrotated (issue 10's cost check).

python bench/rotation_speed.py [--format int4-g64] [--tokens 128] [--rounds 3] [--threads 2]

Both variants are RTN of the default model on the same kernel; the rotated one adds the two
``d x d`` products per token of the residual rotation's entry/exit hooks. The two are measured
alternately (round 1: plain, rotated; round 2: plain, rotated; ...) so that a machine whose load
changes during the run slows both alike; the ratio of the medians is printed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import sources  # noqa: E402
from engine.benchmark import time_decode  # noqa: E402
from engine.machine import cpu_name  # noqa: E402
from engine.quant.formats import get_format  # noqa: E402
from engine.quant.methods import get_method  # noqa: E402
from engine.quant.pipeline import QuantOptions, quantize_model  # noqa: E402
from engine.runtime import chat_ids, variant_from_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="int4-g64")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = sources.load(sources.resolve("default"))
    fmt = get_format(args.format)
    variants = {}
    for kind in ("none", "hadamard"):
        model = copy.deepcopy(loaded.model)
        quantize_model(model, fmt, get_method("rtn"), options=QuantOptions(rotate=kind))
        variants[kind] = variant_from_model(f"{fmt.name}-{kind}", model, loaded.tokenizer, fmt, device="cpu")
    ids = chat_ids(loaded.tokenizer, "Write a short story about a lighthouse keeper.")
    tps: dict[str, list[float]] = {k: [] for k in variants}
    for v in variants.values():  # warm-up
        time_decode(v, ids, 16)
    for _ in range(args.rounds):
        for kind, v in variants.items():
            tps[kind].append(time_decode(v, ids, args.tokens)[1])
    med = {k: statistics.median(v) for k, v in tps.items()}
    print(f"# {cpu_name()}, {args.threads} threads, torch {torch.__version__}, {args.tokens} tokens, "
          f"{args.rounds} alternating rounds")  # fmt: skip
    for kind, values in tps.items():
        print(
            f"{fmt.name} rtn rotate={kind}: median {med[kind]:.1f} tok/s (runs {', '.join(f'{x:.1f}' for x in values)})"
        )
    print(f"rotated / plain = {med['hadamard'] / med['none']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
