"""The ``qtui`` command line: models, quantize, variants, chat, bench (and the app by default)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

from engine.errors import QtuiError
from qtui import cli_eval, cli_export, cli_inspect
from qtui.cli_common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, ProgressLine
from qtui.textsafe import visible

DEMO_PROMPT = "What is the capital of France?"


def _human(n: float) -> str:
    from engine.units import human_bytes

    return human_bytes(n)


# ------------------------------------------------------------------------------ commands
def cmd_models(args) -> int:
    from engine import reference, sources

    rows = sources.list_sources()
    print(f"{'kind':9} {'name':45} path")
    for s in rows:
        builtin = s.kind in ("default", "builtin")
        note = "" if not builtin or (s.path / "qtui-source.json").exists() else " (fetched on first use)"
        print(f"{s.kind:9} {s.ref:45} {s.path}{note}")
        if builtin:
            print(f"{'':9} {s.label}")
    print(
        f"\nAlso accepted: a local HF folder, a .gguf file, or a hub id (org/name).\n{sources.DEFAULT_NOTE}"
        f"\n{reference.REFERENCE_NOTE}"
    )
    return EXIT_OK


def quantize_request(args):
    """The one typed request for ``qtui quantize``, built from the flags and checked before any load."""
    from engine import specs, typed
    from engine.quant import allocation
    from engine.quant.calibration import CalibrationSpec
    from engine.quant.pipeline import QuantOptions
    from engine.request import QuantRequest

    calib = None
    if args.calib is not None or args.samples is not None or args.seq_len is not None:
        d = CalibrationSpec()  # 0 is a value to check, not "the default"
        calib = specs.calibration_spec(
            {
                "source": args.calib or d.source,
                "samples": d.samples if args.samples is None else args.samples,
                "seq_len": d.seq_len if args.seq_len is None else args.seq_len,
            }
        )
    if args.keep_sensitive < 0:
        raise QtuiError(f"--keep-sensitive must be 0 or more, got {args.keep_sensitive}")
    budget = None if args.bits_per_weight is None else allocation.parse_budget(args.bits_per_weight)
    options = QuantOptions(
        args.quantize_embeddings,
        args.quantize_head,
        keep_sensitive=args.keep_sensitive,
        sensitive_bits=args.sensitive_bits,
        rotate=args.rotate,
        rotate_seed=args.rotate_seed,
        bits_per_weight=budget,
        distill=distill_config(args),
    )
    if args.format.strip().lower() == allocation.MIXED and args.bits_per_weight is None:
        raise QtuiError("--format mixed chooses a format per Linear: give --bits-per-weight (e.g. 2.5)")
    return QuantRequest.build(
        args.model,
        allocation.floor_format(args.format, args.group_size, args.sym),
        args.method,
        typed.parse_assignments(args.method_param, "method parameter"),
        calib,
        options,
        args.device,
        args.out,
        overwrite=args.force,
        max_memory=args.max_memory,
    )


def distill_config(args):
    """``--distill STEPS --adapter-rank R --distill-param K=V`` as the typed config (None: no --distill)."""
    from engine import typed
    from engine.quant.distill import DistillConfig

    if args.distill is None:
        if args.adapter_rank or args.distill_param:
            raise QtuiError("--adapter-rank and --distill-param need --distill STEPS")
        return None
    values = typed.parse_assignments(args.distill_param, "distillation parameter")
    if "steps" in values or "adapter_rank" in values:
        raise QtuiError("give the steps with --distill STEPS and the adapter rank with --adapter-rank R")
    values.update(steps=str(args.distill), adapter_rank=str(args.adapter_rank))
    return typed.build(DistillConfig, values, "distillation")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (the kernel's count, ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cmd_quantize(args) -> int:
    from engine import budget, sources, store, typed, variants
    from engine.quant import allocation

    request = quantize_request(args)
    if (request.dest / store.MANIFEST).exists() and not args.force:
        print(f"already saved: {request.dest} (use --force to redo)")
        return EXIT_OK
    bar = ProgressLine()
    cancel = threading.Event()
    t0 = time.monotonic()
    try:
        loaded = sources.load(request.source, progress=bar, cancel=cancel, eager=False)
        est = variants.estimate_memory(
            request, loaded, loaded.lazy() if variants.streamable(request) else None
        )
        limit = request.max_memory or budget.default_budget()
        print(f"memory: {est.describe()}; budget {_human(limit)}", file=sys.stderr)
        saved = variants.quantize_and_save(request, bar, cancel, loaded=loaded)
    finally:
        bar.close()
    m, report = saved.manifest, saved.report
    params = " ".join(f"{k}={v}" for k, v in typed.values(report.config).items()) if report else ""
    print(f"saved {request.fmt.name} ({request.method.name}{' ' + params if params else ''}) to {saved.path}")
    print(
        f"  {_human(m.bytes_on_disk)} on disk, {m.bits_per_weight} bits/weight "
        f"in quantized tensors, {time.monotonic() - t0:.1f} s on {request.device}"
    )
    print(f"  peak RSS {_human(peak_rss_bytes())} (estimated {_human(est.total)})")
    if report and report.allocation:  # a bit budget: what it chose
        print(f"  {allocation.summary(report.allocation)}")
    if report and report.layers:
        worst = max(report.layers, key=lambda r: r.weight_rel_error)
        print(
            f"  worst layer by weight error: {worst.name} ({worst.weight_rel_error:.3f}, {worst.sqnr_db:.1f} dB)"
        )
    return EXIT_OK


def cmd_variants(args) -> int:
    from engine import store
    from engine.quant.layers import pick_backend
    from engine.runtime import compute_dtype, default_device

    found = store.list_variants(Path(args.root) if args.root else None)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "path": str(p),
                        **{
                            k: m.raw[k]
                            for k in (
                                "format",
                                "method",
                                "source",
                                "bytes_on_disk",
                                "bits_per_weight",
                                "created",
                            )
                        },
                    }
                    for p, m in found
                ],
                indent=1,
            )
        )
        return EXIT_OK
    if not found:
        print("no saved variants yet; make one with: qtui quantize default --format int4")
        return EXIT_OK
    device = default_device()
    print(f"{'source':12} {'variant':22} {'bits/w':>7} {'size':>9}  backend ({device.type})  path")
    for path, m in found:
        fmt = m.fmt
        backend = (
            "dense 16-bit" if fmt.is_float else pick_backend(fmt, device, compute_dtype(fmt, device)).name
        )
        print(
            f"{(m.source.id or '?')[:12]:12} {path.name:22} {m.bits_per_weight:7.2f} "
            f"{_human(m.bytes_on_disk):>9}  {backend:14} {path}"
        )
    return EXIT_OK


def _settings(args):
    """The generation settings, each value checked against GenSettings' bounds (named by its flag)."""
    from engine.runtime import GenSettings
    from engine.typed import check_value

    return GenSettings(
        max_new_tokens=check_value(GenSettings, "max_new_tokens", args.max_tokens, "--max-tokens"),
        temperature=check_value(GenSettings, "temperature", args.temperature, "--temperature"),
        top_p=check_value(GenSettings, "top_p", args.top_p, "--top-p"),
        seed=check_value(GenSettings, "seed", args.seed, "--seed"),
        system=args.system,
    )


def cmd_chat(args) -> int:
    from engine import columns, limits, runtime

    settings = _settings(args)
    if not args.prompt.strip():
        raise QtuiError("the prompt is empty; give some text with --prompt")
    specs = list(args.specs) + [f"remote:{url}" for url in args.remote or []]
    if not specs:
        raise QtuiError("give at least one SPEC or --remote URL")
    cache: dict = {}
    bar = ProgressLine()
    loaded = []
    try:
        for spec in specs:  # SPEC (torch), SPEC@llama.cpp, remote:URL: engine.columns
            loaded.append(columns.open_column(spec, args.device, bar, loaded_cache=cache, method=args.method))
    finally:
        bar.close()
    cache.clear()
    for variant in loaded:  # before any answer: a prompt + limit no variant can hold is refused
        if isinstance(variant, runtime.Variant):
            limits.check_prompt(variant, args.prompt, settings)
    results = []
    for variant in loaded:  # a llama.cpp or remote column that fails ends with its error; the others go on
        if args.stream and len(loaded) == 1:
            print(f"== {variant.name} ==")
            result = columns.generate(
                variant, args.prompt, settings, on_token=lambda t: print(visible(t.text), end="", flush=True)
            )
            print()
        else:
            result = columns.generate(variant, args.prompt, settings)
        results.append((variant, result))
    for variant in loaded:
        columns.close(variant)
    if args.json:
        print(json.dumps([_result_json(v, r, settings) for v, r in results], indent=1))
    else:
        print_side_by_side(results, args.prompt)
    return EXIT_OK


def _result_json(variant, result, settings) -> dict:
    return {
        "variant": variant.name,
        "backend": variant.backend,
        "device": str(variant.device),
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "new_tokens": result.new_tokens,
        "ttft_s": round(result.ttft_s, 4),
        "decode_tok_s": round(result.decode_tps, 2),
        "prefill_tok_s": round(result.prefill_tps, 1),
        "finish": result.finish,
        "flags": result.flags,
        "error": getattr(result, "error", ""),
        "peak_rss_bytes": result.peak_rss,
        "peak_cuda_bytes": result.peak_cuda,
        "weight_bytes": variant.weight_bytes(),
        "settings": settings.__dict__,
    }


def _stats(variant, result) -> list[str]:
    flags = f"  [{', '.join(result.flags)}]" if result.flags else ""
    error = getattr(result, "error", "")  # engine.columns.ColumnResult: a column whose engine failed
    return [
        *([f"error: {visible(error)}"] if error else []),
        f"{result.new_tokens} tok, {result.decode_tps:.1f} tok/s, ttft {result.ttft_s * 1000:.0f} ms{flags}",
        f"{variant.backend}",
        f"weights {_human(variant.weight_bytes())}, peak RSS {_human(result.peak_rss)}",
    ]


def print_side_by_side(results, prompt: str, width: int | None = None) -> None:
    """Answers next to each other; what the prompt and the models wrote is shown, never obeyed
    by the terminal (escape sequences and control characters are printed visibly)."""
    width = width or shutil.get_terminal_size((120, 40)).columns
    print(f"> {visible(prompt)}\n")
    n = len(results)
    col = (width - 3 * (n - 1)) // max(n, 1)
    if n == 1 or col < 28:
        for variant, result in results:
            print(f"== {variant.name} ==")
            print(textwrap.fill(visible(result.text), width=width, replace_whitespace=False) or "(empty)")
            for line in _stats(variant, result):
                print(f"   {line}")
            print()
        return
    blocks = []
    for variant, result in results:
        lines = [variant.name.center(col, "="), ""]
        for para in (visible(result.text) or "(empty)").splitlines() or [""]:
            lines += textwrap.wrap(para, col) or [""]
        lines.append("-" * col)
        for stat in _stats(variant, result):
            lines += textwrap.wrap(stat, col)
        blocks.append(lines)
    height = max(len(b) for b in blocks)
    for i in range(height):
        print(" | ".join((b[i] if i < len(b) else "").ljust(col) for b in blocks).rstrip())


def cmd_bench(args) -> int:
    from engine import benchmark

    benchmark.run(benchmark.BenchOptions.from_args(args))
    return 0


def cmd_app(args) -> int:
    """The Textual app (``--headless``: the side-by-side comparison printed instead)."""
    if args.headless:
        from engine import sources

        print(sources.DEFAULT_NOTE, file=sys.stderr)
        args.specs = ["default", "default:int4-g64"]
        args.prompt = args.prompt or DEMO_PROMPT
        return cmd_chat(args)
    from qtui.app import run

    return run(autoload=not args.no_autoload)


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qtui", description="Quantize a language model and see what it costs.")
    sub = p.add_subparsers(dest="command")

    sub.add_parser("models", help="list the model sources qtui can see").set_defaults(func=cmd_models)

    q = sub.add_parser("quantize", help="quantize a model into a saved variant")
    q.add_argument("model", help="default | a HF folder | a .gguf file | a hub id")
    q.add_argument(
        "--format",
        "-f",
        required=True,
        help="bf16 f16 int8 int4 int3 int2 q1_0_g128 w8a8 int4fz int2fz (or int4-g128...); "
        "with --bits-per-weight: the narrowest format allowed, or mixed",
    )
    q.add_argument("--group-size", "-g", type=int, default=None, help="32, 64, 128 or 256 (int4/int2)")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=None, help="symmetric grid")
    sym.add_argument("--asym", dest="sym", action="store_false", help="asymmetric (integer zero point)")
    q.add_argument(
        "--method", default="rtn", help="rtn | gptq | awq | hqq | smoothquant (with --format w8a8)"
    )
    q.add_argument(
        "--method-param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, repeatable; unknown keys are refused (gptq: blocksize percdamp act_order "
        "mse; awq: n_grid; hqq: lp_norm beta kappa iters refit; smoothquant: alpha); see docs/methods.md",
    )
    q.add_argument(
        "--calib", help="calibration data: builtin (default) or a .txt / .jsonl file (calibrated methods)"
    )
    q.add_argument("--samples", type=int, default=None, help="calibration windows (default 16)")
    q.add_argument("--seq-len", type=int, default=None, help="tokens per calibration window (default 256)")
    q.add_argument(
        "--keep-sensitive",
        type=int,
        default=0,
        metavar="K",
        help="keep the K Linears with the largest output error at --sensitive-bits",
    )
    q.add_argument("--sensitive-bits", type=int, choices=(8, 16), default=8, help="8 (int8) or 16 (bf16)")
    q.add_argument(
        "--rotate",
        choices=("none", "hadamard", "random"),
        default="none",
        help="rotate the residual stream and attention heads first (QuaRot/SpinQuant incoherence "
        "processing; any method): hadamard (random-signed) or random orthogonal; see docs/methods.md",
    )
    q.add_argument("--rotate-seed", type=int, default=0, metavar="N", help="seed of the rotation (default 0)")
    q.add_argument(
        "--bits-per-weight",
        metavar="B",
        help="a bit budget: a format per Linear (1 to 16 bits) for the least output error at B bits/weight "
        "on average (2.5, or a recipe: mixed-2.5 mixed-3.5 mixed-4.5); --format is the narrowest "
        "allowed (--format mixed: any); see docs/methods.md",
    )
    q.add_argument(
        "--distill",
        type=int,
        metavar="STEPS",
        help="after the method, train the group scales (and float zeros) for STEPS batches against the "
        "16-bit model's logits on the calibration text (KL; a held-out part scores it and stops it "
        "early); give more text with --calib FILE --samples N; see docs/methods.md",
    )
    q.add_argument(
        "--adapter-rank",
        type=int,
        default=0,
        metavar="R",
        help="with --distill: also train a rank-R adapter beside each Linear (saved with the variant)",
    )
    q.add_argument(
        "--distill-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="distillation parameter, repeatable: lr batch heldout eval_every patience seed",
    )
    q.add_argument("--device", default="cpu", help="where to quantize: cpu (default), cuda, cuda:N or auto")
    q.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory the run may use, e.g. 6GB (default: what is free now, less 10%%); "
        "qtui estimates the peak first and refuses a run that cannot fit",
    )
    q.add_argument("--out", help="variant folder (default: the data folder)")
    q.add_argument("--quantize-embeddings", action="store_true", help="also quantize the token embeddings")
    q.add_argument("--quantize-head", action="store_true", help="also quantize the LM head")
    q.add_argument("--force", action="store_true", help="redo and replace an existing variant")
    q.set_defaults(func=cmd_quantize)

    v = sub.add_parser("variants", help="list saved variants")
    v.add_argument("--json", action="store_true")
    v.add_argument("--root", help="variants folder (default: the data folder)")
    v.set_defaults(func=cmd_variants)

    def gen_args(c):
        c.add_argument("--prompt", "-p", default=None)
        c.add_argument("--max-tokens", type=int, default=128)
        c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        c.add_argument("--top-p", type=float, default=1.0)
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--system", default=None, help="system prompt")
        c.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
        c.add_argument("--method", default="rtn")
        c.add_argument("--json", action="store_true", help="print results as JSON")
        c.add_argument("--stream", action="store_true", help="stream tokens (single variant)")

    c = sub.add_parser("chat", help="run one prompt through several variants, side by side")
    c.add_argument(
        "specs", nargs="*", help="default, default:int4, a folder...; SPEC@llama.cpp runs it on llama.cpp"
    )
    c.add_argument(
        "--remote",
        action="append",
        metavar="URL",
        help="a column on an OpenAI-compatible server (repeatable)",
    )
    gen_args(c)
    c.set_defaults(func=cmd_chat)

    b = sub.add_parser("bench", help="decode speed of every format vs bf16")
    b.add_argument("--model", default="default", help="default or shape:qwen3-0.6b")
    b.add_argument("--tokens", type=int, default=128)
    b.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument(
        "--formats", nargs="*", help="e.g. bf16 int8 int4-g64 int4-g64@naive (FMT@BACKEND forces one kernel)"
    )
    b.add_argument("--json", dest="json_out", help="also write the rows as JSON to this file")
    b.add_argument(
        "--llama-cpp",
        action="store_true",
        help="add llama.cpp on the same GGUF (builds llama-cpp-python in a throw-away venv, ~8 min)",
    )
    b.set_defaults(func=cmd_bench)

    a = sub.add_parser("app", help="open the app (default when no command is given)")
    gen_args(a)
    a.add_argument("--headless", action="store_true", help="print the bf16 vs int4 comparison instead")
    a.add_argument(
        "--no-autoload",
        action="store_true",
        help="start on the Models screen without loading the default variants",
    )
    a.set_defaults(func=cmd_app)
    cli_eval.register(sub)
    cli_export.register(sub)
    cli_inspect.register(sub)
    debug_help = "show Python tracebacks instead of one-line errors"
    p.add_argument("--debug", action="store_true", help=debug_help)
    for command in sub.choices.values():  # also accepted after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake or a fault (a full disk, a read-only folder, a corrupt
    file) is one line on stderr and exit 1; a traceback is shown only with ``--debug``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["app", *(argv or [])])
    if getattr(args, "command", None) == "chat" and args.prompt is None:
        parser.error("chat needs --prompt")
    debug = bool(getattr(args, "debug", False))
    interrupted = threading.Event()
    previous = _on_sigint(interrupted)
    try:
        clean_stale_writes()
        return args.func(args)
    except KeyboardInterrupt:
        print("\nqtui: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if interrupted.is_set():  # Ctrl-C inside a library can surface as its own error
            print("\nqtui: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if debug:
            raise
        print(f"qtui: error: {visible(error_line(exc))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _on_sigint(interrupted: threading.Event):
    """Ctrl-C raises KeyboardInterrupt as usual and is remembered; returns the handler it replaced
    (None when not on the main thread, where handlers cannot be set)."""

    def handler(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, handler)


def error_line(exc: BaseException) -> str:
    """One line for any exception: a QtuiError's own message; an OSError as what and where; anything
    else (a bug in qtui or a library) with its type and a pointer to ``--debug``."""
    import errno

    if isinstance(exc, QtuiError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        text = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
        text = f"{text}{where}"
    elif isinstance(exc, MemoryError):
        text = "out of memory; try a smaller model, fewer --samples or a shorter --seq-len"
    else:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        text = f"{type(exc).__name__}: {first} (unexpected; run again with --debug for the traceback)"
    return " ".join(text.splitlines())


def clean_stale_writes() -> list[Path]:
    """Remove what a killed qtui left half-written (hidden temporary folders no live process
    holds) in the variants folder and the converted-models cache; see engine.locks."""
    from engine import locks, paths

    removed = locks.clean_stale(paths.variants_dir(), depth=2)
    removed += locks.clean_stale(paths.cache_dir() / "models", depth=1)
    for path in removed:
        print(f"qtui: removed {path} (left by an interrupted save)", file=sys.stderr)
    return removed


if __name__ == "__main__":
    sys.exit(main())
