"""What the soak (bench/soak.py) found, one test each: screen tours kept every footer key ever
shown (Textual's Footer), every quantization job pinned the UI's transient objects for good (a
gc.freeze after each job), the Quantize screen kept a row per job for the whole session, and the
Dashboard drew its charts on the event loop every second."""

from __future__ import annotations

import gc
import weakref

from textual.widgets._footer import FooterKey

from qtui.app import QtuiApp
from qtui.config import Settings
from qtui.heap import Freezer
from qtui.screens.chat import ChatScreen
from qtui.widgets import quant_queue
from qtui.widgets.quant_queue import QuantRow
from tests.helpers import until
from tests.ui.fake_engine import FakeService

SIZE = (140, 40)


async def _ready(app, pilot) -> None:
    await until(pilot, lambda: len(app.loaded) == 2 and not app.loading, timeout=30)
    await until(pilot, lambda: not any(j.status in ("queued", "running") for j in app.jobs.values()))
    await until(pilot, lambda: isinstance(app.screen, ChatScreen) and len(app.screen.columns) == 2)


async def _tour(app, pilot) -> None:
    for name in ("dashboard", "quantize", "chat"):
        app.switch_to(name)
        await pilot.pause(0.05)


async def test_screen_tours_do_not_keep_the_footer_keys_they_showed(tmp_path, monkeypatch):
    live: weakref.WeakSet[FooterKey] = weakref.WeakSet()  # frozen or not, alive is alive
    init = FooterKey.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        live.add(self)

    monkeypatch.setattr(FooterKey, "__init__", tracked)
    app = QtuiApp(service=FakeService(tmp_path), settings=Settings(formats=["int4-g64"]))
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        for _ in range(2):  # every screen composed once
            await _tour(app, pilot)
        await pilot.pause(0.2)
        gc.collect()
        before = len(live)
        for _ in range(8):
            await _tour(app, pilot)
        await pilot.pause(0.2)
        gc.collect()
        # before the fix: ~20 more keys a tour at this size (all of them stayed)
        assert len(live) - before <= 10, (before, len(live))


async def test_quantization_jobs_pin_nothing_and_keep_a_bounded_list(tmp_path, monkeypatch):
    monkeypatch.setattr(quant_queue, "KEEP_FINISHED", 3)
    service = FakeService(tmp_path, layers=3)
    app = QtuiApp(service=service, settings=Settings(formats=["int4-g64"]))
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        app.switch_to("quantize")

        async def job(fmt: str) -> None:
            done = app.enqueue_quantize(service.quantize_request("default", fmt, "rtn"))
            await until(pilot, lambda: done.status == "done" and done.finished)
            await pilot.pause(0.3)  # the queue's sync (every 0.25 s) shows it

        await job("int8")  # the first job may import what it needs (frozen then, once)
        frozen = gc.get_freeze_count()
        for fmt in ("int4-g32", "int2-g64", "int8", "int4-g128", "int4-g32"):
            await job(fmt)
        # before the fix every job ended in a gc.freeze(): hundreds of objects pinned a job, those
        # of the UI that died later in a reference cycle never freed
        assert gc.get_freeze_count() <= frozen
        rows = list(app.screen.query(QuantRow))
        assert len(app.jobs) == 7 and len(rows) == 3  # the newest finished jobs keep a row
        assert [r.job.id for r in rows] == sorted(app.jobs)[-3:]


def test_the_freezer_freezes_only_when_something_long_lived_came(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    freezer = Freezer()
    model_a, model_b = object(), object()
    assert freezer.settle([model_a])  # the first time: everything loaded so far
    assert not freezer.settle([model_a]) and not freezer.settle()  # nothing new: nothing pinned
    assert freezer.settle([model_a, model_b])  # a model loaded
    import sys

    monkeypatch.setitem(sys.modules, "qtui_test_imported_module", object())
    assert freezer.settle()  # modules imported (what a first quantization job brings)
    assert not freezer.settle([model_b])
    assert len(calls) == 3


async def test_dashboard_charts_draw_off_the_event_loop_and_only_when_something_changed(
    tmp_path, monkeypatch
):
    """plotext took 220-520 ms a chart on the build machine, all on the event loop (the soak's
    stalls while visiting the Dashboard): now a thread draws, and only new data draws again."""
    import threading

    from textual_plotext.plot import Plot

    from qtui.widgets.charts import Chart

    threads: list[str] = []
    build = Plot.build

    def recorded(self):
        threads.append(threading.current_thread().name)
        return build(self)

    monkeypatch.setattr(Plot, "build", recorded)
    app = QtuiApp(service=FakeService(tmp_path), autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        app.metrics.rss.append(1000.0, 0.0)
        app.switch_to("dashboard")
        await until(pilot, lambda: len(app.screen.query(Chart)) == 7, timeout=30)  # composed
        charts = list(app.screen.query(Chart))
        await until(pilot, lambda: all(c.drawn for c in charts), timeout=30)
        assert len(threads) >= len(charts) and threading.main_thread().name not in threads
        drawn = len(threads)
        for _ in range(3):  # the Dashboard's timer: nothing new, nothing drawn
            app.screen.redraw()
            await pilot.pause(0.1)
        assert len(threads) == drawn
        app.metrics.rss.append(1100.0, 1.0)  # new data: the memory chart alone draws again
        app.screen.redraw()
        await until(pilot, lambda: all(c.drawn for c in charts) and len(threads) > drawn, timeout=30)
        assert len(threads) == drawn + 1


async def test_resources_are_sampled_off_the_ui_thread_and_the_sampler_stops(tmp_path, monkeypatch):
    """psutil's read of /proc showed inside the soak's UI stalls: the app samples RSS in a thread."""
    import threading

    threads: list[str] = []
    app = QtuiApp(service=FakeService(tmp_path), settings=Settings(formats=["int4-g64"]), autoload=False)
    sample = app.sample_resources

    def recorded() -> None:
        threads.append(threading.current_thread().name)
        sample()

    monkeypatch.setattr(app, "sample_resources", recorded)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.metrics.rss) >= 2, timeout=10)
        ui_thread = threading.current_thread().name
    assert threads and set(threads) == {"qtui-resources"} != {ui_thread}
    assert not any(t.name == "qtui-resources" for t in threading.enumerate())  # stopped with the app


async def test_the_app_raises_the_young_generation_threshold(tmp_path):
    """Full collections were inside most of the soak's stalls: the app collects the young generation
    less often, so short-lived UI objects die young instead of filling the oldest generation."""
    from qtui.heap import GEN0_THRESHOLD

    before = gc.get_threshold()
    try:
        app = QtuiApp(service=FakeService(tmp_path), settings=Settings(formats=["int4-g64"]), autoload=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert gc.get_threshold() == (GEN0_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
