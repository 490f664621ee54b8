"""Decode speed of every qtui format on this CPU, in one run, on one prompt (``qtui bench``).

    qtui bench / python bench/decode.py [--model default|shape:qwen3-0.6b] [--tokens 128] [--threads 2]
                           [--repeats 3] [--formats bf16 int4-g64 int4-g64@naive ...]
                           [--json OUT] [--llama-cpp]

Both entry points parse their flags into one :class:`BenchOptions` and call :func:`run` with it.

Each variant is quantized in memory (RTN) from the same float model, laid out for the kernel qtui
picks (``FMT@BACKEND`` forces one, e.g. ``int4-g64@naive``; the older ``FMT:BACKEND`` still works),
warmed up once, then timed over ``--repeats`` greedy generations of exactly ``--tokens`` tokens:
the loop is the app's own CPU decode loop (``engine.runtime.decode_token_ids``) with EOS ignored, so
every row decodes the same count.
``decode tok/s`` = (tokens - 1) / time after the first token (as ``GenResult.decode_tps``); TTFT =
prefill + first token. Medians over repeats.

``shape:NAME`` is a seeded random-weight model of a shape in ``engine.shapes`` (e.g. qwen3-0.6b;
speed only: its output is noise) fed seeded random prompt ids. ``--llama-cpp`` (default model
only) adds a row for llama.cpp decoding the same GGUF file with the same prompt ids, token count
and threads, built into a throw-away venv (never a qtui dependency).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from engine import sources
from engine.errors import FormatError, QtuiError
from engine.machine import machine
from engine.quant.layers import BACKENDS
from engine.quant.methods import get_method
from engine.quant.pipeline import quantize_model
from engine.runtime import GenSettings, Variant, chat_ids, decode_token_ids, variant_from_model
from engine.shapes import SHAPES
from engine.specs import parse_format_backend

if TYPE_CHECKING:  # transformers is not analysed by mypy (follow_imports=skip): Any to it
    from transformers import PreTrainedTokenizerBase

FORMATS = ("bf16", "int8", "int4-g32", "int4-g64", "int4-g128", "int2-g64", "q1_0_g128", "int4-g64@naive")
PROMPT = "Write a long, detailed story about an old lighthouse keeper who finds a message in a bottle."
SHAPE_PROMPT_TOKENS = 40
WARMUP_TOKENS = 8
LLAMA_VENV = Path("/tmp/qtui-llamacpp-venv")


class BenchError(QtuiError):
    """Benchmark options that cannot run (checked before any model is loaded)."""


@dataclass(frozen=True)
class BenchOptions:
    """One decode benchmark run, built once at the edge (``qtui bench`` or bench/decode.py)."""

    model: str = "default"  # default | shape:NAME (engine.shapes) | any qtui model source
    tokens: int = 128  # tokens decoded per run (>= 2)
    threads: int = 2
    repeats: int = 3
    formats: tuple[str, ...] = FORMATS  # FMT or FMT@BACKEND
    seed: int = 0  # for shape:* models
    json_out: Path | None = None  # also write the results here
    llama_cpp: bool = False  # add llama.cpp on the same GGUF (default model only)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        """From either parser's namespace (``qtui bench`` has no ``--seed``; its ``--formats`` may be empty)."""
        return cls(
            model=args.model,
            tokens=args.tokens,
            threads=args.threads,
            repeats=args.repeats,
            formats=tuple(args.formats or FORMATS),
            seed=getattr(args, "seed", 0),
            json_out=Path(args.json_out) if args.json_out else None,
            llama_cpp=bool(args.llama_cpp),
        )

    def check(self) -> None:
        """Raise :class:`BenchError` for anything that would fail after the model is loaded."""
        if self.tokens < 2 or self.repeats < 1 or self.threads < 1:
            raise BenchError("--tokens must be >= 2, --repeats and --threads >= 1")
        if self.model.startswith("shape:") and self.model[6:] not in SHAPES:
            raise BenchError(f"{self.model}: unknown shape; known: {', '.join(SHAPES)}")
        for entry in self.formats:
            try:
                fmt, backend = parse_format_backend(entry)
            except FormatError as exc:
                raise BenchError(str(exc)) from None
            if backend and backend not in BACKENDS:
                raise BenchError(f"{entry}: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
            if backend and not BACKENDS[backend].supports(fmt, torch.device("cpu")):
                raise BenchError(f"{entry}: the {backend} backend cannot run {fmt.name} on this CPU")
        if self.llama_cpp and self.model != "default":
            raise BenchError("--llama-cpp needs --model default (the only model with a GGUF file)")


@dataclass
class Row:
    format: str
    backend: str
    decode_tps: float
    ttft_s: float
    weight_bytes: int
    tokens: int
    vs_bf16: float | None = None


@dataclass
class Source:
    name: str
    model: torch.nn.Module  # float32, never run itself: each variant quantizes a copy
    tokenizer: PreTrainedTokenizerBase | None
    prompt_ids: torch.Tensor


# ------------------------------------------------------------------------------ models
def shape_model(shape: str, seed: int = 0) -> torch.nn.Module:
    """Random weights (bf16-exact float32) in the shape ``engine.shapes.SHAPES[shape]``."""
    from transformers import Qwen3ForCausalLM

    config = SHAPES[shape].config()
    torch.manual_seed(seed)
    model: torch.nn.Module = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model.eval()


def load_source(name: str, seed: int = 0) -> Source:
    if name.startswith("shape:"):
        shape = name.removeprefix("shape:")
        model = shape_model(shape, seed)
        gen = torch.Generator().manual_seed(seed)
        vocab_size = SHAPES[shape].vocab_size  # the model's config.vocab_size
        ids = torch.randint(0, vocab_size, (1, SHAPE_PROMPT_TOKENS), generator=gen)
        label = shape.replace("qwen3-", "Qwen3-").replace("b", "B")  # qwen3-0.6b -> Qwen3-0.6B
        return Source(f"random weights, {label} shape", model, None, ids)
    loaded = sources.load(name)
    return Source(loaded.source.label, loaded.model, loaded.tokenizer, chat_ids(loaded.tokenizer, PROMPT))


def make_variant(src: Source, entry: str) -> Variant:
    """``FMT`` or ``FMT@BACKEND`` quantized (RTN) from a copy of the float model, on CPU."""
    fmt, backend = parse_format_backend(entry)
    model = copy.deepcopy(src.model)
    if not fmt.is_float:
        quantize_model(model, fmt, get_method("rtn"))
    label = f"{fmt.name} {backend}" if backend else fmt.name
    return variant_from_model(label, model, src.tokenizer, fmt, "cpu", backend)


# ------------------------------------------------------------------------------ timing
def time_decode(variant: Variant, prompt_ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """(TTFT s, decode tok/s) of greedy decoding of exactly ``tokens`` tokens, EOS ignored."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        steps = decode_token_ids(variant, prompt_ids, GenSettings(max_new_tokens=tokens), None, None)
        try:
            next(steps)
            t_first = time.perf_counter()
            for _ in range(tokens - 1):
                next(steps)
            end = time.perf_counter()
        finally:
            steps.close()
    return t_first - t0, (tokens - 1) / (end - t_first)


def measure(variant: Variant, prompt_ids: torch.Tensor, tokens: int, repeats: int) -> Row:
    time_decode(variant, prompt_ids, min(tokens, WARMUP_TOKENS))
    runs = [time_decode(variant, prompt_ids, tokens) for _ in range(repeats)]
    ttft, tps = (statistics.median(r[i] for r in runs) for i in (0, 1))
    return Row(variant.name, variant.backend, tps, ttft, variant.weight_bytes(), tokens)


def bench_formats(src: Source, formats: tuple[str, ...], tokens: int, repeats: int) -> list[Row]:
    rows: list[Row] = []
    variant: Variant | None = None
    for entry in formats:
        print(f"  {entry} ...", file=sys.stderr, flush=True)
        try:
            variant = make_variant(src, entry)
            rows.append(measure(variant, src.prompt_ids, tokens, repeats))
        except Exception as exc:  # one broken row (e.g. a forced backend that cannot run it) is reported
            print(f"{entry} skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        variant = None
        gc.collect()
    return rows


# ------------------------------------------------------------------------------ llama.cpp
LLAMA_SCRIPT = r"""
import json, statistics, sys, time
import llama_cpp
a = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=a["gguf"], n_ctx=len(a["prompt"]) + a["tokens"] + 16,
                      n_threads=a["threads"], n_threads_batch=a["threads"], verbose=False)
def run(n):
    llm.reset()  # no prompt-prefix reuse: every run pays its prefill
    t0 = time.perf_counter()
    count = 0
    for _ in llm.generate(a["prompt"], top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        count += 1
        if count == 1:
            t_first = time.perf_counter()
        if count >= n:
            break
    end = time.perf_counter()
    return t_first - t0, (n - 1) / (end - t_first)
run(min(a["tokens"], a["warmup"]))
runs = [run(a["tokens"]) for _ in range(a["repeats"])]
print(json.dumps({"ttft_s": statistics.median(r[0] for r in runs),
                  "decode_tps": statistics.median(r[1] for r in runs),
                  "version": getattr(llama_cpp, "__version__", "?")}))
"""


def llama_python(venv: Path) -> Path:
    """The venv's python with llama-cpp-python importable, building it (~8 min on 2 cores) if needed."""
    python = venv / "bin" / "python"
    if (
        python.exists()
        and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    ):
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    print(f"  building llama-cpp-python into {venv} (several minutes) ...", file=sys.stderr, flush=True)
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=ON"}
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "llama-cpp-python"], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = " / ".join((done.stdout + done.stderr).strip().splitlines()[-3:])
        raise RuntimeError(f"pip install llama-cpp-python failed: {tail}")
    return python


def llama_cpp_row(
    python: Path, gguf: Path, prompt_ids: list[int], tokens: int, threads: int, repeats: int
) -> Row:
    args = {
        "gguf": str(gguf),
        "prompt": prompt_ids,
        "tokens": tokens,
        "threads": threads,
        "repeats": repeats,
        "warmup": WARMUP_TOKENS,
    }
    done = subprocess.run(
        [python, "-c", LLAMA_SCRIPT], input=json.dumps(args), capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        tail = " / ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"llama.cpp run failed (exit {done.returncode}): {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    backend = f"llama.cpp via llama-cpp-python {result['version']} (GGML_NATIVE)"
    tps, ttft = float(result["decode_tps"]), float(result["ttft_s"])
    return Row("Q4_1 GGUF (llama.cpp)", backend, tps, ttft, gguf_tensor_bytes(gguf), tokens)


def gguf_tensor_bytes(path: Path) -> int:
    """Bytes of the GGUF's tensors (its weights as llama.cpp holds them, without the metadata)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def try_llama_cpp(src: Source, tokens: int, threads: int, repeats: int) -> Row | None:
    print("  llama.cpp ...", file=sys.stderr, flush=True)
    try:
        python = llama_python(LLAMA_VENV)
        gguf = sources.fetch_default_gguf()
        return llama_cpp_row(python, gguf, src.prompt_ids[0].tolist(), tokens, threads, repeats)
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as exc:
        print(f"llama.cpp row skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


# ------------------------------------------------------------------------------ report
def markdown(info: dict[str, object], src: Source, rows: list[Row], repeats: int) -> str:
    m = cast(dict[str, object], info["machine"])  # engine.machine.machine()
    lines = [
        f"**Machine:** {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"torch {m['torch']}, transformers {m['transformers']}, {m['threads']} threads",
        f"**Model:** {src.name}; prompt {src.prompt_ids.shape[1]} tokens, {rows[0].tokens if rows else 0} "
        f"tokens decoded greedily (EOS ignored), median of {repeats} after a warm-up",
        "",
        "| format | backend | decode tok/s | TTFT ms | weights MiB | vs bf16 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r.vs_bf16:.2f}x" if r.vs_bf16 is not None else "-"
        lines.append(
            f"| {r.format} | {r.backend} | {r.decode_tps:.1f} | {r.ttft_s * 1000:.0f} | "
            f"{r.weight_bytes / 2**20:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> BenchOptions:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="default",
        help=f"default | shape:NAME ({', '.join(SHAPES)}) | any qtui model source",
    )
    p.add_argument("--tokens", type=int, default=128, help="tokens decoded per run (>= 2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--formats", nargs="+", default=FORMATS, help="FMT or FMT@BACKEND, e.g. int4-g64@naive")
    p.add_argument("--seed", type=int, default=0, help="for shape:* models")
    p.add_argument("--json", dest="json_out", type=Path, help="also write the results here")
    p.add_argument("--llama-cpp", action="store_true", help="add llama.cpp on the same GGUF (default model)")
    options = BenchOptions.from_args(p.parse_args(argv))
    try:
        options.check()  # fail before any model is loaded
    except BenchError as exc:
        p.error(str(exc))
    return options


def run(opts: BenchOptions) -> dict[str, object]:
    """Measure every format in ``opts``, print the Markdown table, write ``opts.json_out`` if set;
    returns what the JSON holds."""
    opts.check()
    torch.set_num_threads(opts.threads)
    src = load_source(opts.model, opts.seed)
    rows = bench_formats(src, opts.formats, opts.tokens, opts.repeats)
    if opts.llama_cpp and (row := try_llama_cpp(src, opts.tokens, opts.threads, opts.repeats)):
        rows.append(row)
    base = next((r.decode_tps for r in rows if r.format == "bf16"), None)
    for r in rows:
        r.vs_bf16 = r.decode_tps / base if base else None
    info = {
        "machine": machine(opts.threads),
        "model": opts.model,
        "model_label": src.name,
        "prompt_tokens": int(src.prompt_ids.shape[1]),
        "tokens": opts.tokens,
        "repeats": opts.repeats,
        "rows": [asdict(r) for r in rows],
    }
    print(markdown(info, src, rows, opts.repeats))
    if opts.json_out:
        opts.json_out.write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
