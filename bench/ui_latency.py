"""UI responsiveness under load: key press -> screen updated, while 4 columns stream and a
variant quantizes, on the real engine and the default model.

    python bench/ui_latency.py [--columns default default:int8 default:int4 default:int2]
                               [--quantize int4-g32] [--tokens 128] [--presses 40]

Variants are made and loaded before the clock starts. Then one prompt goes to every column and
a quantization job starts; every ``--interval`` seconds a key is typed into the prompt box and
the time from posting the key event (as the terminal driver does) until the prompt box holds
the new character and the loop has turned once (when the repaint is scheduled) is recorded.
Pilot's ``press`` is not used: it waits for the whole message queue to drain, which under a
stream of tokens measures the stream, not the key. The event-loop lag (how late a 10 ms timer fires) is recorded too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import paths  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(args) -> dict:
    from textual import events

    from qtui.app import QtuiApp
    from qtui.config import Settings
    from qtui.services import EngineService

    settings = Settings(max_new_tokens=args.tokens)
    app = QtuiApp(service=EngineService(), autoload=False, settings=settings)
    lags: list[float] = []
    presses: list[float] = []
    async with app.run_test(size=(200, 50)) as pilot:
        for spec in args.columns:
            await asyncio.to_thread(app._load_now, spec)
        app.switch_to("chat")
        chat = app.screen
        for _ in range(200):
            await pilot.pause(0.05)
            if len(chat.columns) == len(args.columns):
                break
        assert len(chat.columns) == len(args.columns), [n.message for n in app._notifications]

        stop = asyncio.Event()

        async def lag_probe():
            while not stop.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t0 - 0.01)
                if lags[-1] > 0.05:
                    spikes.append((t0 - t_origin, lags[-1], job.status, chat.generating))

        spikes: list[tuple] = []
        t_origin = time.perf_counter()
        job = app.enqueue_quantize("default", args.quantize, "rtn", "cpu")
        probe = asyncio.create_task(lag_probe())

        t_start = time.perf_counter()
        await chat.send(args.prompt)
        prompt_box = chat.query_one("#prompt")
        prompt_box.focus()
        while chat.generating and len(presses) < args.presses:
            await asyncio.sleep(args.interval)
            before = prompt_box.value
            t0 = time.perf_counter()
            app.post_message(events.Key("x", "x"))  # as the terminal driver delivers a key
            while prompt_box.value == before:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)  # the repaint is scheduled on the next loop turn
            presses.append(time.perf_counter() - t0)
        while chat.generating:
            await pilot.pause(0.1)
        wall = time.perf_counter() - t_start
        while job.status in ("queued", "running"):
            await pilot.pause(0.1)
        stop.set()
        await probe
        tokens = sum(c.result.new_tokens for c in chat.columns if c.result)
        per_column = {c.title: round(c.result.decode_tps, 1) for c in chat.columns if c.result}
    for at, lag, status, generating in spikes:
        print(f"  stall {lag * 1000:.0f} ms at +{at:.2f} s (quantization {status}, generating={generating})")
    return {
        "presses": presses,
        "lags": lags,
        "wall": wall,
        "tokens": tokens,
        "per_column": per_column,
        "quant_status": job.status,
        "quant_s": job.elapsed,
    }


async def measure_inspect(args) -> dict:
    """The Inspect screen on real saved variants: key press -> screen updated while the whole
    table is computed (cache removed first), then the time to open it again from the cache."""
    import shutil

    from textual import events

    from engine import inspection
    from qtui.app import QtuiApp
    from qtui.services import EngineService

    folders = [inspection.find_variant(v, args.method) for v in args.inspect]
    for folder in folders:  # computed from scratch: the first look at a variant
        for entry in (paths.cache_dir() / "inspect").glob(f"{inspection.variant_key(folder)}*"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    app = QtuiApp(service=EngineService(), autoload=False, sample_resources=False)
    presses: list[float] = []
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.press("f7")
        screen = app.screen
        t0 = time.perf_counter()
        screen.inspect(*map(str, folders))
        while not screen.computing:
            await asyncio.sleep(0.01)
        while screen.computing and len(presses) < args.presses:
            await asyncio.sleep(args.interval)
            before = screen.metric
            t1 = time.perf_counter()
            app.post_message(events.Key("m", "m"))  # as the terminal driver delivers a key
            while screen.metric == before:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0)  # the repaint is scheduled on the next loop turn
            presses.append(time.perf_counter() - t1)
        while screen.computing:
            await asyncio.sleep(0.05)
        first = time.perf_counter() - t0
        opens = []
        for _ in range(3):
            screen.tables = []
            t0 = time.perf_counter()
            screen.start()
            while screen.computing or not screen.tables:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)
            opens.append(time.perf_counter() - t0)
        n = len(screen.tables[0].linears)
    return {
        "presses": presses,
        "first": first,
        "opens": opens,
        "linears": n,
        "variants": [f.name for f in folders],
    }


def main_inspect(args) -> int:
    r = asyncio.run(measure_inspect(args))
    ms = [x * 1000 for x in r["presses"]]
    print(f"Inspect {' vs '.join(r['variants'])}: {r['linears']} Linears each")
    print(f"first computation (no cache): {r['first']:.1f} s")
    print(
        f"open from the cache: best {min(r['opens']):.2f} s, worst {max(r['opens']):.2f} s (n={len(r['opens'])})"
    )
    if ms:
        print(
            f"key press -> screen updated while computing: n={len(ms)} median {statistics.median(ms):.1f} ms, "
            f"p95 {pct(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--columns", nargs="+", default=["default", "default:int8", "default:int4", "default:int2"]
    )
    p.add_argument("--quantize", default="int4-g32")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--presses", type=int, default=40)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--prompt", default="Write a long story about a lighthouse keeper and a storm.")
    p.add_argument(
        "--inspect", nargs="+", metavar="VARIANT",
        help="instead: the Inspect screen on these saved variants (e.g. default:int4-g64 int4-g64-gptq)",
    )  # fmt: skip
    p.add_argument("--method", default="rtn", help="with --inspect MODEL:FORMAT: the variant's method")
    args = p.parse_args(argv)
    if args.inspect:  # the user's own saved variants and cache: nothing is made here
        return main_inspect(args)
    os.environ.setdefault("QTUI_CACHE_DIR", str(paths.cache_dir()))
    os.environ["QTUI_HOME"] = tempfile.mkdtemp(prefix="qtui-uibench-")
    r = asyncio.run(measure(args))
    ms = [x * 1000 for x in r["presses"]]
    lag = [x * 1000 for x in r["lags"]]
    print(
        f"{len(args.columns)} columns streaming {args.tokens} tokens + quantizing {args.quantize} "
        f"({r['quant_status']}, {r['quant_s']:.1f} s)"
    )
    print(
        f"key press -> screen updated: n={len(ms)} median {statistics.median(ms):.1f} ms, "
        f"p95 {pct(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"
    )
    print(
        f"event-loop lag (10 ms timer): median {statistics.median(lag):.1f} ms, p95 {pct(lag, 0.95):.1f} ms, "
        f"max {max(lag):.1f} ms"
    )
    print(
        f"generation: {r['tokens']} tokens in {r['wall']:.1f} s wall "
        f"({r['tokens'] / r['wall']:.1f} tok/s all columns); per column (own clock): {r['per_column']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
