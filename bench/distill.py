"""Distillation's ablation on a model (issue 10): each row quantized, measured, distilled, measured.

python bench/distill.py [--model default] [--rows gptq+hadamard:int2-g64,...] [--steps 60]
                        [--adapter-rank 0] [--batch 2] [--lr 3e-3] [--train-windows 128]
                        [--arc 100] [--gen 0] [--decode 64] [--threads 2] [--json OUT]

A row is METHOD[+ROTATION]:FORMAT. For each: the quantized model (GPTQ/AWQ calibrated on qtui's
built-in set, 16 x 256 tokens, as bench/methods.py), then the same model after distillation; both
measured in one run:

* KLD vs bf16 (mean), top-1 agreement, PPL ratio on the first --tokens tokens of WikiText-2 test
  (windows of 512), the quantized models on their real kernels (bf16);
* ARC-Easy loglik accuracy on the first --arc items of the shared sample, with its 95% interval;
* with --gen N: the generative ARC-Easy sample (N items, 64 new tokens): degenerate answers (loops,
  empty, or cut at the limit) of N;
* decode tok/s (greedy, --decode tokens after a chat prompt) and the adapters' bytes;
* the answer to "What is the capital of France?" (greedy, 16 tokens).

Distillation text: WikiText-2 test *after* its first 40,000 characters (the fidelity windows use the
first ~2,100 tokens, ~9,000 characters: the two never overlap; checked), cut into --train-windows
windows of 256 tokens, 4 of them held out for early stop. Evaluation text is never trained on.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine import sources  # noqa: E402
from engine.benchmark import time_decode  # noqa: E402
from engine.evals import api as evals  # noqa: E402
from engine.evals import fidelity  # noqa: E402
from engine.evals.data import SHARED_SAMPLES  # noqa: E402
from engine.machine import cpu_name  # noqa: E402
from engine.quant import calibration as C  # noqa: E402
from engine.quant.distill import DistillConfig, distill  # noqa: E402
from engine.quant.formats import get_format  # noqa: E402
from engine.quant.layers import QLinear  # noqa: E402
from engine.quant.methods import get_method  # noqa: E402
from engine.quant.pipeline import QuantOptions, quantize_model  # noqa: E402
from engine.runtime import GenSettings, chat_ids, generate, variant_from_model  # noqa: E402

WIKI = SHARED_SAMPLES / "wikitext2_test_head.txt"
TRAIN_FROM = 40_000  # characters of WikiText-2 test kept out of training (the fidelity windows)
QUESTION = "What is the capital of France?"


def measure(name, model, tok, fmt, ref, args) -> dict[str, object]:
    """Every figure of one model (a deep copy is laid out for its kernels; ``model`` is kept)."""
    variant = variant_from_model(name, copy.deepcopy(model), tok, fmt, device="cpu")
    fid = fidelity.compare(variant.model.eval(), ref)
    row: dict[str, object] = {
        "kld": fid.kld_mean,
        "top1": fid.top1_agreement,
        "ppl_ratio": fid.ppl_ratio,
    }
    if args.arc:
        acc = evals.run(variant, "arc_easy", "loglik", limit=args.arc, use_cache=False).accuracy
        row["arc"], row["arc_ci"] = acc.value, acc.interval
    if args.gen:
        settings = evals.EvalSettings(max_new_tokens=64, batch_size=8)
        res = evals.run(variant, "arc_easy", "generate", limit=args.gen, settings=settings, use_cache=False)
        row["degenerate"], row["gen_n"] = res.degenerate, res.n
    answer = generate(variant, QUESTION, GenSettings(max_new_tokens=16, temperature=0.0))
    row["france"] = answer.text.strip().replace("\n", " ")
    if args.decode:
        ids = chat_ids(tok, "Write a short story about a lighthouse keeper.")
        time_decode(variant, ids, 8)  # warm-up
        row["tok_s"] = max(time_decode(variant, ids, args.decode)[1] for _ in range(2))
    row["adapter_bytes"] = sum(
        (m.adapter_a.numel() + m.adapter_b.numel()) * 2
        for m in model.modules()
        if isinstance(m, QLinear) and m.adapter_a is not None and m.adapter_b is not None
    )
    return row


def training_text(tok, eval_tokens: int) -> Path:
    text = WIKI.read_text()
    cut = text.index("\n \n", TRAIN_FROM)
    used = len(tok(text[:cut], add_special_tokens=False)["input_ids"])
    assert used > eval_tokens + 512, "the distillation text would overlap the fidelity windows"
    path = Path(tempfile.mkdtemp()) / "wikitext2_train_part.txt"
    path.write_text(text[cut:])
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--rows", default="gptq+hadamard:int2-g64,gptq+hadamard:q1_0_g128,gptq+hadamard:int4-g64")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--adapter-rank", type=int, default=0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-windows", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--arc", type=int, default=100)
    ap.add_argument("--gen", type=int, default=0)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = sources.load(sources.resolve(args.model))
    tok = loaded.tokenizer
    windows = fidelity.token_windows(tok, WIKI.read_text(), ctx=512, max_tokens=args.tokens)
    base = copy.deepcopy(loaded.model).to(torch.bfloat16).eval()
    ref = fidelity.reference(base, windows)
    bf16 = measure("bf16", base, tok, get_format("bf16"), ref, args)
    del base
    cal = C.build(C.CalibrationSpec(samples=16, seq_len=256), tok)
    train = C.build(C.CalibrationSpec(str(training_text(tok, args.tokens)), args.train_windows, 256), tok)
    config = DistillConfig(steps=args.steps, adapter_rank=args.adapter_rank, lr=args.lr, batch=args.batch)
    print(
        f"# qtui distillation on {loaded.source.label}: {cpu_name()}, {args.threads} threads, torch {torch.__version__}"
    )
    print(
        f"# fidelity: {ref.top_ids.shape[0]} tokens of {WIKI.name} vs bf16; quantization calibration: {cal.describe()}"
    )
    print(f"# distillation: {config}; text {train.describe()}")
    print(
        f"# bf16: ARC-Easy {bf16.get('arc', float('nan')):.3f}, {bf16.get('tok_s', 0):.1f} tok/s, France: {bf16['france']!r}"
    )
    print(
        "| row | step | KLD | top-1 | PPL ratio | ARC-Easy loglik (95% CI) | degenerate | tok/s | seconds | France |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []

    def show(label: str, step: str, r: dict[str, object], seconds: float) -> None:
        arc = f"{r['arc']:.3f} ({r['arc_ci'][0]:.3f}-{r['arc_ci'][1]:.3f})" if "arc" in r else "-"
        gen = f"{r['degenerate']}/{r['gen_n']}" if "degenerate" in r else "-"
        print(
            f"| {label} | {step} | {r['kld']:.4f} | {r['top1']:.3f} | {r['ppl_ratio']:.3f} | {arc} | {gen} "
            f"| {r.get('tok_s', 0):.1f} | {seconds:.0f} | {str(r['france'])[:60]!r} |",
            flush=True,
        )
        rows.append({"row": label, "step": step, "seconds": seconds, **r})

    for item in args.rows.split(","):
        meth_part, fmt_name = item.split(":")
        meth_name, _, rotate = meth_part.partition("+")
        fmt, meth = get_format(fmt_name), get_method(meth_name)
        model = copy.deepcopy(loaded.model).float()
        t0 = time.perf_counter()
        quantize_model(model, fmt, meth, options=QuantOptions(rotate=rotate or "none"),
                       calibration=cal if meth.needs_calibration else None)  # fmt: skip
        seconds = time.perf_counter() - t0  # quantizing alone, not the measuring
        show(item, meth_part, measure(item, model, tok, fmt, ref, args), seconds)
        teacher = copy.deepcopy(loaded.model).float().eval()
        t0 = time.perf_counter()
        report = distill(model, teacher, train, config)
        seconds = time.perf_counter() - t0
        del teacher
        r = measure(item, model, tok, fmt, ref, args)
        r["distill"] = report.describe()
        step = f"+distill {report.steps_run}" + (f" r{args.adapter_rank}" if args.adapter_rank else "")
        show(item, step, r, seconds)
        print(f"#   {item}: held-out KL {report.heldout_before:.3f} -> {report.heldout_best:.3f} "
              f"(best step {report.best_step}; {report.stop}); {report.tokens_seen} training tokens seen, "
              f"{report.trained_params} values trained", flush=True)  # fmt: skip
        del model
    if args.json:
        Path(args.json).write_text(json.dumps({"bf16": bf16, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
