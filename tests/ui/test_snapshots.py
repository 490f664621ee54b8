"""Snapshot tests of each screen at a fixed size, with timings and resource samples fixed."""

from __future__ import annotations

import pytest

from engine.runtime import GenResult
from qtui.app import QtuiApp
from qtui.config import Settings
from qtui.services import Loaded
from qtui.state import QuantJob
from qtui.widgets.charts import Chart
from tests.helpers import formats_ready, until
from tests.ui.fake_engine import FakeService

SIZE = (120, 36)


@pytest.fixture
def app(tmp_path):
    return QtuiApp(
        service=FakeService(tmp_path), settings=Settings(formats=["int4-g64"]), sample_resources=False
    )


def test_chat_snapshot(snap_compare, app):
    async def run_before(pilot):
        await until(pilot, lambda: len(app.loaded) == 2 and len(app.screen.query("ChatColumn")) == 2)
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?", "enter")
        await until(pilot, lambda: not app.screen.generating and all(c.result for c in app.screen.columns))
        await until(pilot, lambda: app.screen.query(".col-diverged"))  # the divergence marker is mounted

        app.jobs.clear()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_models_snapshot(snap_compare, tmp_path):
    app = QtuiApp(
        service=FakeService(tmp_path),
        settings=Settings(formats=["int4-g64"]),
        autoload=False,
        sample_resources=False,
    )

    async def run_before(pilot):
        await until(pilot, lambda: formats_ready(app))

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_quantize_snapshot(snap_compare, tmp_path):
    app = QtuiApp(service=FakeService(tmp_path), autoload=False, sample_resources=False)

    async def run_before(pilot):
        service = app.service

        def job(fmt, **fields):
            made = QuantJob(service.quantize_request("default", fmt, "rtn"), status=fields.pop("status"))
            if "done" in fields:
                made.progress(fields.pop("done"), fields.pop("total"), fields.pop("text", ""))
            for key, value in fields.items():
                setattr(made, key, value)
            return made

        done = job("int4-g64", status="done", done=210, total=210, started=1.0, finished=13.5,
                   bytes_on_disk=114_829_240)  # fmt: skip
        # a row part-way (40%) but not running: a running row shows elapsed/ETA (the clock), and
        # switching it to queued after it was drawn raced the relayout (the bar came out one cell
        # wider or narrower from run to run)
        partway = job("int8", status="queued", done=84, total=210, text="model.layers.12.mlp.down_proj")
        failed = job("int2-g64", status="failed", error="disk full while saving")
        queued = job("q1_0_g128", status="queued")
        for job in (done, partway, failed, queued):
            app.jobs[job.id] = job
        app.switch_to("quantize")
        await until(pilot, lambda: len(app.screen.query("QuantRow")) == 4)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_dashboard_snapshot(snap_compare, tmp_path):
    app = QtuiApp(service=FakeService(tmp_path), autoload=False, sample_resources=False)

    async def run_before(pilot):
        m = app.metrics
        for a, b in [(45.0, 78.0), (44.0, 80.0), (46.0, 79.0)]:
            app.record_answer("bf16", GenResult(decode_tps=a, ttft_s=0.05))
            app.record_answer("int4-g64-rtn", GenResult(decode_tps=b, ttft_s=0.04))
        for name in m.tok_s:  # fixed times instead of the clock
            for series in (m.tok_s[name], m.ttft[name]):
                series._data = type(series._data)((float(i), v) for i, (_, v) in enumerate(series._data))
        for i, rss in enumerate([900, 1200, 1250, 1300]):
            m.rss.append(rss, float(i))
        m.disk.update({"bf16": (269_000_000, 16.0), "int4-g64-rtn": (114_800_000, 4.375)})
        m.accuracy.update(
            {"bf16 arc_easy/loglik": (0.62, 0.55, 0.68), "int4-g64-rtn arc_easy/loglik": (0.58, 0.51, 0.65)}
        )
        m.fidelity.update({"int4-g64-rtn": (0.29, 0.66)})

        app.loaded["default"] = Loaded(
            "bf16", "dense bfloat16 (torch matmul)", 269_000_000, 269_000_000, 16.0
        )
        app.loaded["int4"] = Loaded(
            "int4-g64-rtn", "int4pack (torch tinygemm int4 kernel)", 116_400_000, 114_800_000, 4.375
        )
        app.switch_to("dashboard")
        await pilot.pause(1.2)
        charts = list(app.screen.query(Chart))  # drawn in threads (qtui.widgets.charts)
        await until(pilot, lambda: all(c.drawn for c in charts), timeout=30)
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_snapshot(snap_compare, tmp_path):
    app = QtuiApp(service=FakeService(tmp_path), autoload=False, sample_resources=False)
    assert snap_compare(app, terminal_size=SIZE, press=["f1"])


def test_evaluate_snapshot(snap_compare, app):
    async def run_before(pilot):
        await until(pilot, lambda: len(app.loaded) == 2 and not app.loading)
        app.jobs.clear()
        await pilot.press("f6")
        screen = app.screen
        await until(pilot, lambda: screen.query_one("#eval-variants").option_count == 2)
        screen.query_one("#eval-limit").value = "40"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.cancel_event is None and len(app.eval_results) == 2)
        for row_key in list(screen.query_one("#eval-results").rows):  # the time column is wall time
            screen.query_one("#eval-results").update_cell(row_key, "time s", "1.5")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
