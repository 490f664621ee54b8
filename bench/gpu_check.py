"""One-call GPU check: kernels correct on CUDA, and decode speed with the static compiled step.

    python bench/gpu_check.py [--device cuda] [--out DIR] [--shape qwen3-4b] [--tokens 128]

1. Every format's QLinear on the device vs a float64 dequantize-then-matmul reference (relative
   error), with the backend each one picked (int4pack / int8pack / dense).
2. Decode tok/s and time to first token on the default model for bf16, int8, int4-g64, int2-g64
   through ``engine.runtime`` (on CUDA: transformers' static KV cache with its compiled decode
   step; the one-off compile time is reported separately as warm-up).
3. Random weights of a larger shape (default Qwen3-4B) in bf16 and int4-g64: decode tok/s.

Runs on CPU too (``--device cpu --shape tiny``) so the script itself is tested where no GPU is.
Writes ``gpu_check.md`` and ``gpu_check.json`` into ``--out`` (default: $OUT or .).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import runtime, sources  # noqa: E402
from engine.quant.formats import get_format  # noqa: E402
from engine.quant.layers import QLinear  # noqa: E402
from engine.quant.methods import get_method  # noqa: E402
from engine.quant.pipeline import quantize_model  # noqa: E402
from engine.shapes import SHAPES  # noqa: E402

FORMATS = ["int8", "int4-g32", "int4-g64", "int4-g128", "int2-g64", "q1_0_g128"]


def kernel_rows(device: torch.device) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for name in FORMATS:
        fmt = get_format(name)
        w = torch.randn(1536, 576) * 0.05
        qw = fmt.quantize(w)
        layer = QLinear(qw, None)
        layer.prepare(device, torch.bfloat16)
        x = torch.randn(5, 576, dtype=torch.float64)
        ref = x @ qw.dequantize(torch.float64).t()
        y = layer(x.to(device=device, dtype=torch.bfloat16)).double().cpu()
        rows.append(
            {
                "format": name,
                "backend": layer.backend_label,
                "rel_error": float((y - ref).norm() / ref.norm()),
            }
        )
    return rows


def decode_row(variant: runtime.Variant, tokens: int) -> dict:
    t0 = time.perf_counter()
    variant.warm_up()
    warm = time.perf_counter() - t0
    settings = runtime.GenSettings(max_new_tokens=tokens)
    prompt = "Write a long story about a lighthouse keeper."
    results = [runtime.generate(variant, prompt, settings) for _ in range(3)]
    best = max(results, key=lambda r: r.decode_tps)
    return {
        "variant": variant.name,
        "backend": variant.backend,
        "warm_up_s": round(warm, 1),
        "decode_tok_s": round(best.decode_tps, 1),
        "ttft_ms": round(best.ttft_s * 1000, 1),
        "tokens": best.new_tokens,
        "peak_cuda_mb": round(best.peak_cuda / 1e6, 1),
    }


def shape_rows(shape: str, device: torch.device, tokens: int, tokenizer) -> list[dict]:
    from transformers import Qwen3ForCausalLM

    config = SHAPES[shape].config(max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model.to_empty(device="cpu")  # no slow init of billions of weights: fill them directly
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers were never set

    model.to(torch.bfloat16)
    rows = []
    for name in ("bf16", "int4-g64"):
        m = copy.deepcopy(model)
        fmt = get_format(name)
        if not fmt.is_float:
            quantize_model(m, fmt, get_method("rtn"))
        v = runtime.variant_from_model(f"{shape} {name}", m, tokenizer, fmt, device)
        rows.append(decode_row(v, tokens))
        del m, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--shape", default="qwen3-4b", choices=sorted(SHAPES))
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--formats", nargs="*", default=["bf16", "int8", "int4-g64", "int2-g64"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    report["kernels"] = kernel_rows(device)
    loaded = sources.load("default")
    report["default_model"] = []
    for name in args.formats:
        fmt = get_format(name)
        m = copy.deepcopy(loaded.model)
        if not fmt.is_float:
            quantize_model(m, fmt, get_method("rtn"))
        v = runtime.variant_from_model(name, m, loaded.tokenizer, fmt, device)
        report["default_model"].append(decode_row(v, args.tokens))
    report["shape"] = shape_rows(args.shape, device, args.tokens, loaded.tokenizer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    lines = [
        f"device: {report['device']}, torch {report['torch']}",
        "",
        "| format | backend | rel error |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['format']} | {r['backend']} | {r['rel_error']:.4f} |" for r in report["kernels"]]
    lines += [
        "",
        "| variant | backend | warm-up s | decode tok/s | ttft ms | peak CUDA MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["default_model"] + report["shape"]:
        lines.append(
            f"| {r['variant']} | {r['backend']} | {r['warm_up_s']} | {r['decode_tok_s']} | "
            f"{r['ttft_ms']} | {r['peak_cuda_mb']} |"
        )
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
