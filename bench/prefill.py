"""Prefill (many rows at once): torch's CPU int4/int8 kernels vs dequantize-once + bf16 matmul.

python bench/prefill.py [--model default|shape:qwen3-0.6b] [--rows 1,8,16,32,64,128,256,512]
                        [--repeats 5] [--threads 2]

One full forward of the model over ROWS tokens (batch 1), best of --repeats after a warm-up, for
bf16 and for int8 / int4-g64 (RTN) with each path forced: "kernel" (torch's weight-only kernel for
every call) and "dequant" (the layer's weight dequantized to bf16 for the call, then the dense
matmul). engine.quant.layers.MANY_ROWS holds, per backend, the row count from which QLinear
switches to the second path; this prints where the switch pays, measured in one run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.quant import layers  # noqa: E402
from engine.quant.formats import get_format  # noqa: E402
from engine.quant.methods import get_method  # noqa: E402
from engine.quant.pipeline import prepare_model, quantize_model  # noqa: E402


def load(spec: str):
    if spec.startswith("shape:"):  # any shape in engine/shapes.py
        from engine.benchmark import shape_model

        return shape_model(spec.removeprefix("shape:"))
    from engine import sources

    return sources.load(sources.resolve(spec)).model


@torch.inference_mode()
def forward_ms(model, rows: int, repeats: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (1, rows), generator=torch.Generator().manual_seed(rows))
    model(input_ids=ids, logits_to_keep=1)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--rows", default="1,8,16,32,64,128,256,512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = [int(r) for r in a.rows.split(",")]
    base = load(a.model)
    models = {"bf16": copy.deepcopy(base).to(torch.bfloat16).eval()}
    for name in ("int8", "int4-g64"):
        m = copy.deepcopy(base)
        quantize_model(m, get_format(name), get_method("rtn"))
        prepare_model(m, "cpu", torch.bfloat16)
        models[name] = m.eval()
    del base
    print(f"# {a.model}: one forward over N tokens, ms (best of {a.repeats}), {a.threads} threads, "
          f"torch {torch.__version__}; MANY_ROWS = {layers.MANY_ROWS}")  # fmt: skip
    print(
        "| rows | bf16 | int8 kernel | int8 dequant | int4 kernel | int4 dequant | int8 best vs bf16 | int4 best vs bf16 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    saved = dict(layers.MANY_ROWS)
    try:
        for n in rows:
            t = {"bf16": forward_ms(models["bf16"], n, a.repeats)}
            for name in ("int8", "int4-g64"):
                layers.MANY_ROWS.update({k: 10**9 for k in saved})
                t[name + " kernel"] = forward_ms(models[name], n, a.repeats)
                layers.MANY_ROWS.update({k: 1 for k in saved})
                t[name + " dequant"] = forward_ms(models[name], n, a.repeats)
            b8 = min(t["int8 kernel"], t["int8 dequant"])
            b4 = min(t["int4-g64 kernel"], t["int4-g64 dequant"])
            print(f"| {n} | {t['bf16']:.1f} | {t['int8 kernel']:.1f} | {t['int8 dequant']:.1f} | "
                  f"{t['int4-g64 kernel']:.1f} | {t['int4-g64 dequant']:.1f} | {t['bf16'] / b8:.2f}x | "
                  f"{t['bf16'] / b4:.2f}x |", flush=True)  # fmt: skip
    finally:
        layers.MANY_ROWS.update(saved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
