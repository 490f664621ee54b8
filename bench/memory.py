"""Peak memory of GPTQ, block by block, on a random-weight model of a real model's shape.

python bench/memory.py [--shape qwen3-4b|qwen3-8b|... (engine/shapes.py)] [--samples 4] [--seq-len 128]
                       [--device cpu|cuda] [--cap-gb 24] [--layers N] [--format int4-g128]

The model is built in bf16 directly (meta tensors, then one block at a time materialised and
randomly initialised), so the float32 model never exists. Reported: the model's bf16 size, peak
process RSS (ru_maxrss) and its ratio to the bf16 size, and on CUDA the peak allocated device
memory (optionally under a cap set with torch.cuda.set_per_process_memory_fraction).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.shapes import SHAPES  # noqa: E402


def rss_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


@torch.no_grad()
def random_model(shape: str, layers: int | None):
    from transformers import AutoModelForCausalLM

    overrides = {"num_hidden_layers": layers} if layers else {}
    config = SHAPES[shape].config(max_position_embeddings=4096, **overrides)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    # materialise one module at a time, in bf16: peak stays at the model's bf16 size
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            t = torch.empty(p.shape, dtype=torch.bfloat16)
            if "norm" in name or p.dim() == 1 and "bias" not in name:
                t.fill_(1.0)
            else:
                t.normal_(0.0, 0.02, generator=g)
            setattr(module, name, torch.nn.Parameter(t, requires_grad=False))
    if config.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval(), config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-4b", choices=sorted(SHAPES))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cap-gb", type=float, default=None)
    ap.add_argument("--layers", type=int, default=None, help="build fewer layers (quick check)")
    ap.add_argument(
        "--blocks",
        type=int,
        default=None,
        help="quantize only the first N blocks of the full-size model (all blocks have one shape, so "
        "the pipeline's per-block peak is the same; the rest of the model stays in memory)",
    )
    ap.add_argument("--format", default="int4-g128")
    args = ap.parse_args(argv)
    from engine.quant.calibration import Calibration, CalibrationSpec
    from engine.quant.formats import get_format
    from engine.quant.methods import get_method
    from engine.quant.pipeline import quantize_model

    device = torch.device(args.device)
    if device.type == "cuda" and args.cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 1024**3 / total), device)
    t0 = time.perf_counter()
    model, config = random_model(args.shape, args.layers)
    bf16_gb = sum(p.numel() * 2 for p in {id(p): p for p in model.parameters()}.values()) / 1024**3
    build_s = time.perf_counter() - t0
    rss_after_build = rss_peak_gb()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seq_len), generator=g)
    cal = Calibration(CalibrationSpec("random-ids", args.samples, args.seq_len), ids, ids.numel(), 0, "-")
    rest = []
    if args.blocks:
        layers = model.model.layers
        rest = list(layers[args.blocks :])  # still referenced: their memory counts in RSS
        model.model.layers = torch.nn.ModuleList(list(layers[: args.blocks]))
        config.num_hidden_layers = args.blocks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done = []
    t0 = time.perf_counter()
    quantize_model(
        model, get_format(args.format), get_method("gptq"), calibration=cal, device=device,
        progress=lambda d, t, s: done.append(d),
    )  # fmt: skip
    quant_s = time.perf_counter() - t0
    peak = rss_peak_gb()
    n_all = config.num_hidden_layers + len(rest)
    print(f"# GPTQ {args.format} on random {args.shape} ({n_all} layers, {config.num_hidden_layers} quantized), "
          f"calibration {args.samples}x{args.seq_len}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {device}")  # fmt: skip
    print(
        "| shape | bf16 size GB | RSS after build GB | peak RSS GB | peak RSS / bf16 | device peak GB | build s | GPTQ s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    dev_peak = f"{torch.cuda.max_memory_allocated(device) / 1024**3:.2f}" if device.type == "cuda" else "-"
    print(f"| {args.shape} | {bf16_gb:.2f} | {rss_after_build:.2f} | {peak:.2f} | {peak / bf16_gb:.2f} | {dev_peak} "
          f"| {build_s:.0f} | {quant_s:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
