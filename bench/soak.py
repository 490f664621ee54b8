"""Soak: the app driven by Pilot for N minutes while everything runs at once; prints what it measured.

    python bench/soak.py [--minutes 10] [--engine fake|real] [--json OUT]

Four chat columns answer prompt after prompt; every ``--quantize-every`` seconds a variant is
queued for quantization, every ``--eval-every`` seconds an evaluation runs on the Evaluate screen's
worker, and the view switches between Chat, Dashboard and Quantize now and then. Recorded:

* event-loop lag: how late a 10 ms ``asyncio.sleep`` wakes (a stall is a lag over 100 ms);
* RSS every second (growth measured from the end of the first minute, when caches are warm);
* errors: error notifications, workers that failed, and any exception the app raised.

``--stalls`` says what the event loop was doing during each stall: a thread samples the UI
thread's stack every 5 ms, and the samples that fall inside a stall are counted by the innermost
frame of qtui/engine, and of any library (the function holding the loop; a worker holding the GIL
shows as the UI thread waiting wherever it was).

``--engine fake`` (default) is tests/ui/fake_engine.py with a per-token delay (the UI under a
steady token stream, nothing else competing for the CPU); ``--engine real`` runs the default model
(its baseline and three RTN variants; needs the default model fetched once). Not part of
``make test``; results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPTS = [
    "What is the capital of France?",
    "Explain quantization in one paragraph.",
    "Write a haiku about memory bandwidth.",
    "List three prime numbers and say why they are prime.",
]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


class StallSampler(threading.Thread):
    """Samples one thread's stack every ``period`` seconds into a ring (time, frames)."""

    def __init__(self, ident: int, period: float = 0.005) -> None:
        super().__init__(daemon=True, name="stall-sampler")
        self.target, self.period = ident, period
        self.samples: collections.deque = collections.deque(maxlen=4000)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            frame = sys._current_frames().get(self.target)
            stack = []
            try:  # another thread's frames change under us: a torn read is dropped, not fatal
                while frame is not None and len(stack) < 60:
                    stack.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
                    frame = frame.f_back
            except (AttributeError, ValueError):
                continue
            self.samples.append((time.perf_counter(), stack))

    def within(self, start: float, end: float) -> list[list[tuple[str, int, str]]]:
        return [stack for t, stack in list(self.samples) if start <= t <= end]


def _where(stack: list[tuple[str, int, str]], ours: bool) -> str:
    """The innermost frame of the stack in qtui/engine (``ours``) or anywhere but asyncio."""
    root = str(Path(__file__).resolve().parents[1])
    for filename, line, name in stack:
        mine = filename.startswith(root) and "/.venv/" not in filename and "/bench/" not in filename
        if (ours and mine) or (not ours and "/asyncio/" not in filename and "selectors" not in filename):
            short = filename.split("site-packages/")[-1] if "site-packages/" in filename else filename
            return f"{short.replace(root + '/', '')}:{line} {name}"
    return "(none)"


def _gc_figures(pauses: list[tuple[float, float, int]], stalls: int) -> dict:
    """The garbage collector's pauses over the run (every collection is a pause of the UI thread)."""
    figures: dict = {"stalls_with_a_collection_over_50ms": stalls, "thresholds": gc.get_threshold()}
    for gen in (0, 1, 2):
        d = [p[1] for p in pauses if p[2] == gen]
        figures[f"gen{gen}"] = {
            "collections": len(d),
            "max_ms": round(max(d, default=0) * 1000, 1),
            "over_50ms": sum(1 for x in d if x >= 0.05),
        }
    return figures


def make_app(args):
    from qtui.app import QtuiApp
    from qtui.config import Settings

    if args.engine == "fake":
        from tests.ui.fake_engine import FakeService

        service = FakeService(Path(os.environ["QTUI_HOME"]) / "fake", token_delay=args.token_delay,
                              layers=40, layer_delay=0.05)  # fmt: skip
        formats = ["int8", "int4-g64", "int2-g64"]
    else:
        from qtui.services import EngineService

        service = EngineService()
        formats = ["int8", "int4-g64", "int2-g64"]
    settings = Settings(formats=formats, max_new_tokens=args.tokens)
    return QtuiApp(service=service, settings=settings), service


async def soak(args) -> dict:
    from engine.telemetry import rss_bytes

    app, service = make_app(args)
    errors: list[str] = []
    notify = app.notify

    def recording_notify(message, *a, severity="information", **kw):
        if severity == "error":
            errors.append(f"notification: {message}")
        return notify(message, *a, severity=severity, **kw)

    app.notify = recording_notify  # type: ignore[method-assign]
    lags: list[float] = []
    stall_ours: collections.Counter[str] = collections.Counter()  # samples inside stalls, by frame
    stall_any: collections.Counter[str] = collections.Counter()
    rss: list[tuple[float, int]] = []
    gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation) of every collection
    gc_started = [0.0]

    def gc_watch(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses.append((gc_started[0], time.perf_counter() - gc_started[0], int(info["generation"])))

    gc.callbacks.append(gc_watch)
    gc_stalls = [0]  # stalls with a collection of >= 50 ms inside them
    counts = {"prompts": 0, "tokens": 0, "quantized": 0, "evaluations": 0, "switches": 0}
    async with app.run_test(size=(200, 50)) as pilot:
        for _ in range(6000):  # the baseline and three variants loaded (quantized first if needed)
            await pilot.pause(0.1)
            chat = app.get_screen("chat")
            if len(app.loaded) == 4 and not app.loading and chat.is_mounted and len(chat.columns) == 4:
                break
        else:
            raise SystemExit(f"the 4 columns never came up: {[n.message for n in app._notifications]}")
        if args.gc_gen0:
            gc.set_threshold(args.gc_gen0, *gc.get_threshold()[1:])
        app.switch_to("evaluate")  # mounted once, so its worker can be driven below
        await pilot.pause(0.5)
        app.switch_to("chat")
        await pilot.pause(0.2)
        stop = asyncio.Event()
        t0 = time.perf_counter()

        touring = [False]  # a screen switch in progress (stalls are attributed to it or not)
        tour_stalls: list[float] = []
        sampler = StallSampler(threading.get_ident()) if args.stalls else None
        if sampler is not None:
            sampler.start()

        async def lag_probe():
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                end = time.perf_counter()
                lags.append(end - t - 0.01)
                if lags[-1] > 0.1 and touring[0]:
                    tour_stalls.append(lags[-1])
                if lags[-1] > 0.1 and any(t <= g < end and d >= 0.05 for g, d, _ in gc_pauses[-20:]):
                    gc_stalls[0] += 1
                if lags[-1] > 0.1 and sampler is not None:
                    for stack in sampler.within(t, end):
                        stall_ours[_where(stack, True)] += 1
                        stall_any[_where(stack, False)] += 1

        traced: list = []

        async def rss_probe():
            while not stop.is_set():
                rss.append((time.perf_counter() - t0, rss_bytes()))
                if args.trace and not traced and rss[-1][0] >= 60:
                    traced.append(tracemalloc.take_snapshot())
                await asyncio.sleep(1.0)

        probes = [asyncio.create_task(lag_probe()), asyncio.create_task(rss_probe())]
        end = t0 + args.minutes * 60
        next_quant, next_eval, next_switch = t0 + 5, t0 + 10, t0 + 15
        fmts = ["int4-g32", "int4-g128", "int8", "int2-g64"]
        evaluate = app.get_screen("evaluate")
        while time.perf_counter() < end:
            chat = app.get_screen("chat")
            if not chat.generating:
                for col in chat.columns:
                    if col.result is not None:
                        counts["tokens"] += col.result.new_tokens
                if counts["prompts"] % 8 == 7:
                    await chat.action_clear()  # a long session clears now and then, as a user does
                await chat.send(PROMPTS[counts["prompts"] % len(PROMPTS)])
                counts["prompts"] += 1
            now = time.perf_counter()
            if now >= next_quant:
                request = service.quantize_request("default", fmts[counts["quantized"] % len(fmts)], "rtn")
                app.enqueue_quantize(request)
                counts["quantized"] += 1
                next_quant = now + args.quantize_every
            if now >= next_eval and evaluate.cancel_event is None:
                evaluate.cancel_event = threading.Event()
                keys = list(app.loaded)[:2]
                evaluate.evaluate(keys, ["knowledge"], "loglik", args.eval_limit, evaluate.cancel_event)
                counts["evaluations"] += 1
                next_eval = now + args.eval_every
            if now >= next_switch:
                touring[0] = True
                for name in ("dashboard", "quantize", "chat"):
                    app.switch_to(name)
                    await pilot.pause(0.3)
                touring[0] = False
                counts["switches"] += 1
                next_switch = now + args.switch_every
            await pilot.pause(0.2)
        stop.set()
        await asyncio.gather(*probes)
        if sampler is not None:
            sampler.stop.set()
        if traced:  # where the memory that grew after the first minute was allocated
            grown = tracemalloc.take_snapshot().compare_to(traced[0], "traceback")
            for stat in grown[:8]:
                print(f"  grew {stat.size_diff / 1e6:+.2f} MB ({stat.count_diff:+d} blocks)")
                for line in stat.traceback.format()[-16:]:
                    print(f"    {line}")
        while app.get_screen("chat").generating or evaluate.cancel_event is not None:
            await pilot.pause(0.1)
        failed = [j for j in app.jobs.values() if j.status == "failed"]
        errors += [f"quantize job {j.label}: {j.error}" for j in failed]
        if app._exception is not None:
            errors.append(f"app exception: {app._exception!r}")
        done_jobs = sum(1 for j in app.jobs.values() if j.status == "done")
    minute = [b for t, b in rss if t >= 60] or [b for _, b in rss]
    return {
        "engine": args.engine,
        "minutes": args.minutes,
        "lag_ms": {
            "median": round(statistics.median(lags) * 1000, 2),
            "p99": round(pct(lags, 0.99) * 1000, 1),
            "max": round(max(lags) * 1000, 1),
            "samples": len(lags),
            "stalls_over_100ms": sum(1 for x in lags if x > 0.1),
            "stalls_during_screen_switches": len(tour_stalls),
        },
        "rss_mb": {
            "start": round(rss[0][1] / 1e6, 1),
            "after_1_min": round(minute[0] / 1e6, 1),
            "end": round(rss[-1][1] / 1e6, 1),
            "max": round(max(b for _, b in rss) / 1e6, 1),
            "growth_after_1_min_pct": round(100 * (rss[-1][1] - minute[0]) / minute[0], 2),
            "samples": len(rss),
        },
        "work": counts | {"quantize_jobs_done": done_jobs},
        "gc": _gc_figures(gc_pauses, gc_stalls[0]),
        "stall_samples": {
            "ours": stall_ours.most_common(15),
            "any": stall_any.most_common(15),
        },
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--engine", choices=["fake", "real"], default="fake")
    p.add_argument("--tokens", type=int, default=64, help="max tokens per answer")
    p.add_argument("--token-delay", type=float, default=0.02, help="fake engine: seconds per token")
    p.add_argument("--quantize-every", type=float, default=30.0)
    p.add_argument("--eval-every", type=float, default=45.0)
    p.add_argument("--eval-limit", type=int, default=20)
    p.add_argument("--switch-every", type=float, default=20.0)
    p.add_argument(
        "--gc-gen0",
        type=int,
        default=0,
        help="override the app's young-generation GC threshold (700: Python's)",
    )
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--stalls", action="store_true", help="sample the UI thread: what runs during stalls")
    p.add_argument("--trace", action="store_true", help="tracemalloc: where memory grew after minute 1")
    args = p.parse_args(argv)
    if args.engine == "real":
        from engine import paths

        os.environ.setdefault("QTUI_CACHE_DIR", str(paths.cache_dir()))  # the fetched default model
    os.environ["QTUI_HOME"] = tempfile.mkdtemp(prefix="qtui-soak-")
    if args.trace:
        tracemalloc.start(12)
    r = asyncio.run(soak(args))
    lag, mem, work = r["lag_ms"], r["rss_mb"], r["work"]
    print(f"soak: {args.minutes:g} min, {args.engine} engine, 4 columns")
    print(
        f"event-loop lag (10 ms timer, n={lag['samples']}): median {lag['median']} ms, p99 {lag['p99']} ms, "
        f"max {lag['max']} ms; stalls over 100 ms: {lag['stalls_over_100ms']} "
        f"({lag['stalls_during_screen_switches']} while switching screens)"
    )
    print(
        f"RSS (n={mem['samples']}, every second): start {mem['start']} MB, after 1 min {mem['after_1_min']} MB, "
        f"end {mem['end']} MB, max {mem['max']} MB; growth after the first minute {mem['growth_after_1_min_pct']}%"
    )
    print(
        f"work: {work['prompts']} prompts x 4 columns ({work['tokens']} tokens), {work['quantized']} quantize "
        f"jobs queued ({work['quantize_jobs_done']} done), {work['evaluations']} evaluations, "
        f"{work['switches']} screen tours"
    )
    if args.stalls:
        for kind in ("ours", "any"):
            print(f"UI-thread samples inside stalls (5 ms each), innermost frame ({kind}):")
            for where, n in r["stall_samples"][kind]:
                print(f"  {n:5d}  {where}")
    g = r["gc"]
    print(
        "garbage collector: "
        + "; ".join(
            f"gen{i} {g[f'gen{i}']['collections']} runs, max {g[f'gen{i}']['max_ms']} ms" for i in range(3)
        )
        + f"; stalls with a collection of >= 50 ms inside: {g['stalls_with_a_collection_over_50ms']}"
    )
    print(f"errors: {len(r['errors'])}" + "".join(f"\n  {e}" for e in r["errors"]))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0 if not r["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
