"""Every quantization method x format on a model (the default one unless --model): KLD vs bf16,
top-1 agreement, time.

python bench/methods.py [--model default|gemma3-270m|SOURCE] [--tokens 2048] [--samples 32]
                        [--seq-len 256] [--rows rtn:int4-g64,...] [--threads 2] [--json OUT]

A row is METHOD[+ROTATION]:FORMAT[@BITS], e.g. gptq+hadamard:int2-g64 (GPTQ on the rotated model);
@BITS is a bit budget over FORMAT and wider formats (gptq:mixed@2.5: every format, 2.5 bits/weight on
average; engine/quant/allocation.py), the format column then shows the formats chosen.

Run with QTUI_CACHE_DIR pointing at a cache that holds the model (the built-in ones are fetched and
converted on first use otherwise).
Fidelity: engine.evals.fidelity over the first --tokens tokens of WikiText-2 test (windows of 512),
reference = the same model in bf16; quantized models run on their real kernels (prepare_model).
Calibration: qtui's built-in set (assets/calibration), --samples x --seq-len tokens.
Times: wall seconds and process CPU seconds (all threads) of quantize_model; on a shared machine the
CPU seconds are the fairer number (wall on an idle 2-core machine lies between CPU/2 and CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import sources  # noqa: E402
from engine.evals import fidelity  # noqa: E402
from engine.evals.data import SHARED_SAMPLES  # noqa: E402
from engine.machine import cpu_name  # noqa: E402
from engine.quant import allocation  # noqa: E402
from engine.quant import calibration as C  # noqa: E402
from engine.quant.methods import get_method  # noqa: E402
from engine.quant.pipeline import QuantOptions, prepare_model, quantize_model  # noqa: E402

WIKI = SHARED_SAMPLES / "wikitext2_test_head.txt"
DEFAULT_ROWS = (
    "rtn:int4-g64,hqq:int4-g64,gptq:int4-g64,awq:int4-g64,"
    "rtn:int2-g64,hqq:int2-g64,gptq:int2-g64,awq:int2-g64,rtn:w8a8,smoothquant:w8a8"
)


def measure_method(loaded, ref, cal, meth_name: str, fmt_name: str, options: QuantOptions = QuantOptions()):
    """Quantize a copy of ``loaded.model`` with one method x format, run it on its kernels and
    compare it with ``ref``. Returns (row, model): ``seconds`` / ``cpu_seconds`` time
    quantize_model alone, ``ready_seconds`` also the kernel layout (prepare_model)."""
    fmt, meth = allocation.floor_format(fmt_name), get_method(meth_name)
    model = copy.deepcopy(loaded.model)
    t0, c0 = time.perf_counter(), time.process_time()
    use_cal = meth.needs_calibration or options.needs_calibration
    report = quantize_model(model, fmt, meth, options=options, calibration=cal if use_cal else None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    labels = prepare_model(model, "cpu", torch.bfloat16)
    ready = time.perf_counter() - t0
    fid = fidelity.compare(model.eval(), ref)
    row = dict(
        method=meth_name,
        format=fmt.name,
        bit_budget=report.allocation,
        kld_mean=fid.kld_mean,
        kld_p99=fid.kld_p99,
        top1=fid.top1_agreement,
        ppl_ratio=fid.ppl_ratio,
        seconds=seconds,
        ready_seconds=ready,
        cpu_seconds=cpu,
        kernel=max(labels, key=labels.get).split(" ")[0] if labels else "-",
    )
    return row, model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default", help="default, gemma3-270m or any qtui model source")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", default=DEFAULT_ROWS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-sensitive", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = sources.load(sources.resolve(args.model))
    tok = loaded.tokenizer
    windows = fidelity.token_windows(tok, WIKI.read_text(), ctx=512, max_tokens=args.tokens)
    base = copy.deepcopy(loaded.model).to(torch.bfloat16).eval()
    ref = fidelity.reference(base, windows)
    del base
    cal = C.build(C.CalibrationSpec(samples=args.samples, seq_len=args.seq_len), tok)
    print(
        f"# qtui methods on {loaded.source.label}: {cpu_name()}, {args.threads} threads, torch {torch.__version__}"
    )
    print(f"# fidelity: {ref.top_ids.shape[0]} tokens of {WIKI.name} vs bf16; calibration: {cal.describe()}")
    print("| method | format | KLD mean | KLD p99 | top-1 agree | PPL ratio | quantize s | CPU s | kernel |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for item in args.rows.split(","):
        meth_part, fmt_part = item.split(":")
        meth_name, _, rotate = meth_part.partition("+")  # gptq+hadamard: GPTQ on the rotated model
        fmt_name, _, bits = fmt_part.partition("@")  # mixed@2.5: a bit budget
        budget = float(bits) if bits else None
        options = QuantOptions(
            keep_sensitive=args.keep_sensitive, rotate=rotate or "none", bits_per_weight=budget
        )
        row, model = measure_method(loaded, ref, cal, meth_name, fmt_name, options)
        meth_name = meth_part
        del model
        rows.append(row)
        shown = row["format"]
        if row["bit_budget"]:
            chosen = row["bit_budget"]
            counts = " ".join(f"{f}x{n}" for f, n in chosen["counts"].items())
            shown = f"{fmt_part} ({chosen['achieved']:.3f} b/w: {counts})"
        print(
            f"| {meth_name} | {shown} | {row['kld_mean']:.4f} | {row['kld_p99']:.3f} | {row['top1']:.3f} "
            f"| {row['ppl_ratio']:.3f} | {row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['kernel']} |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"calibration": cal.describe(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
