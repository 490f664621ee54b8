"""Pilot tests of every screen against the scripted fake engine."""

from __future__ import annotations

import io

from rich.console import Console
from textual.widgets import Select

from qtui.app import QtuiApp
from qtui.screens.chat import ChatScreen, first_divergence
from qtui.screens.help import HelpScreen, bindings_table
from qtui.widgets.chat_column import ChatColumn
from tests.helpers import formats_ready, until
from tests.ui.fake_engine import ANSWERS

SIZE = (140, 40)


async def _ready(app, pilot, n=2):
    await until(pilot, lambda: len(app.loaded) == n and not app.loading)
    await until(pilot, lambda: isinstance(app.screen, ChatScreen) and len(app.screen.columns) == n)


async def test_startup_quantizes_missing_format_then_opens_chat(fake, settings):
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        assert [lo.name for lo in app.loaded.values()] == ["bf16", "int4-g64-rtn"]
        job = next(iter(app.jobs.values()))
        assert job.status == "done" and job.fmt == "int4-g64"


async def test_prompt_streams_into_every_column(fake, settings):
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?", "enter")
        await until(pilot, lambda: not app.screen.generating)
        cols = app.screen.query(ChatColumn)
        assert [c.answer_text for c in cols] == [ANSWERS["bf16"], ANSWERS["int4-g64-rtn"]]
        for col in cols:
            assert "tok/s" in str(col.status.render())
        assert fake.prompts[0][-1]["content"] == "What is the capital of France?"
        assert app.metrics.tok_s  # the dashboard series got the answers


async def test_escape_stops_all_columns_and_returns_the_prompt(fake, settings):
    fake.token_delay = 0.2  # long enough that Esc lands mid-answer even on a loaded machine
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"Tell me a story", "enter")
        await until(pilot, lambda: any(c.answer_text for c in app.screen.columns))
        await pilot.press("escape")
        await until(pilot, lambda: not app.screen.generating)
        assert app.screen.query_one("#prompt").value == "Tell me a story"
        assert all(c.result is not None and c.result.stopped for c in app.screen.columns)


async def test_stop_one_column_keeps_the_others(fake, settings):
    fake.token_delay = 0.4  # the 's' must land mid-answer even on a loaded machine
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        await pilot.click("#prompt")
        await pilot.press(*"hello", "enter")
        await until(pilot, lambda: any(c.answer_text for c in app.screen.columns))
        first, second = app.screen.columns
        first.focus()
        await pilot.press("s")
        await until(pilot, lambda: not app.screen.generating)
        assert first.result.stopped and not second.result.stopped
        assert second.answer_text == ANSWERS["int4-g64-rtn"]


async def test_cancelling_a_quantization_leaves_no_variant(fake, settings):
    fake.release.clear()
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        job = app.enqueue_quantize(fake.quantize_request("default", "int8", "rtn"))
        await until(pilot, fake.quantize_started.is_set)
        app.cancel_job(job.id)
        fake.release.set()
        await until(pilot, lambda: job.status == "cancelled")
        assert fake.saved == {}
        queued = app.enqueue_quantize(fake.quantize_request("default", "int8", "rtn"))
        other = app.enqueue_quantize(fake.quantize_request("default", "int4-g64", "rtn"))
        app.cancel_job(other.id)  # cancelled while still queued: never runs
        await until(pilot, lambda: queued.status == "done")
        assert other.status == "cancelled" and list(fake.saved) == ["int8-rtn"]


async def test_running_job_shows_memory_estimate_and_live_peak(fake, settings):
    fake.layer_delay = 0.2
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        job = app.enqueue_quantize(fake.quantize_request("default", "int8", "rtn"))
        app.switch_to("quantize")
        await until(pilot, lambda: job.status == "running" and job.done > 0)
        assert job.estimate == 1_900_000_000 and job.peak_rss > 0
        await until(pilot, lambda: "(est. 1.9 GB)" in str(app.screen.query_one(".job-info").render()))
        text = str(app.screen.query_one(".job-info").render())
        assert "mem " in text
        job.cancel.set()
        await until(pilot, lambda: job.status == "cancelled")


async def test_failing_quantization_becomes_a_notification_and_the_app_carries_on(fake, settings):
    fake.fail_formats = ("int2-g64",)
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        bad = app.enqueue_quantize(fake.quantize_request("default", "int2-g64", "rtn"))
        good = app.enqueue_quantize(fake.quantize_request("default", "int8", "rtn"))
        await until(pilot, lambda: good.status == "done")
        assert bad.status == "failed" and "simulated failure" in bad.error
        assert any("simulated failure" in n.message for n in app._notifications)
        app.switch_to("quantize")
        await pilot.pause()
        row = app.screen.query_one(f"#job-{bad.id}")
        await until(pilot, lambda: "failed" in str(row.query_one(".job-info").render()))


async def test_failing_load_becomes_a_notification(fake, settings):
    fake.fail_load = ("default",)
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("simulated load failure" in n.message for n in app._notifications))
        await until(pilot, lambda: len(app.loaded) == 1)  # the int4 column still arrives
        assert isinstance(app.screen, ChatScreen | type(app.get_screen("quantize")))


async def test_models_screen_lists_formats_with_sizes_and_queues_quantization(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        picker = app.screen.query_one("#formats")
        assert picker.selected == ["int4-g64"]
        picker.select("int8")
        await pilot.press("ctrl+k")
        await until(pilot, lambda: len(app.jobs) == 2 and all(j.status == "done" for j in app.jobs.values()))
        assert set(fake.saved) == {"int8-rtn", "int4-g64-rtn"}
        app.switch_to("models")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.screen.query_one("#variants").row_count == 2)


async def test_help_lists_every_key_and_dashboard_redraws(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(bindings_table(app))
        text = console.export_text()
        for key in ("f2", "f5", "escape", "ctrl+e", "ctrl+k"):
            assert key in text
        await pilot.press("escape")
        await pilot.press("f5")
        await pilot.pause(1.2)
        assert app.screen.query("SeriesChart")


async def test_settings_persist_and_export_writes_markdown_and_json(fake, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("QTUI_HOME", str(tmp_path / "home"))
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await _ready(app, pilot)
        await pilot.press("ctrl+g")
        field = app.screen.query_one("#set-max_new_tokens")
        field.value = "3"
        await pilot.click("#save")
        assert app.settings.max_new_tokens == 3
        await pilot.click("#prompt")
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: not app.screen.generating)
        assert app.screen.columns[0].result.hit_limit
        await pilot.press("ctrl+e")
        exports = list((tmp_path / "home" / "data" / "exports").iterdir())
        assert sorted(p.suffix for p in exports) == [".json", ".md"]
    from qtui.config import Settings

    assert Settings.load().max_new_tokens == 3


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 7]) == 2
    assert first_divergence([1, 2, 3], [1, 2]) is None


async def _evaluate_screen(app, pilot):
    await _ready(app, pilot)
    await pilot.press("f6")
    screen = app.screen
    await until(pilot, lambda: screen.query_one("#eval-variants").option_count == 2)
    return screen


async def test_evaluate_runs_every_variant_and_fills_table_and_dashboard(fake, settings):
    app = QtuiApp(service=fake, settings=settings, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _evaluate_screen(app, pilot)
        screen.query_one("#eval-limit").value = "50"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.cancel_event is None and len(app.eval_results) == 2)
        table = screen.query_one("#eval-results")
        assert table.row_count == 2
        cells = [str(table.get_row_at(i)[3]) for i in range(2)]
        assert cells[0].startswith("62.0% [") and "n=50" in cells[0]  # interval shown with n
        assert set(app.metrics.accuracy) == {"bf16 knowledge/loglik", "int4-g64-rtn knowledge/loglik"}
        value, lo, hi = app.metrics.accuracy["bf16 knowledge/loglik"]
        assert lo < value < hi


async def test_evaluate_skips_tasks_without_the_mode_and_reports_failures(fake, settings):
    fake.fail_tasks = ("wikitext",)
    app = QtuiApp(service=fake, settings=settings, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _evaluate_screen(app, pilot)
        screen.query_one("#eval-tasks").select("wikitext")
        screen.query_one("#eval-mode").value = "fidelity"
        await pilot.press("ctrl+s")
        await until(
            pilot,
            lambda: screen.cancel_event is None and "done" in str(screen.query_one("#eval-status").render()),
        )
        messages = [n.message for n in app._notifications]
        assert any("knowledge: no fidelity mode, skipped" in m for m in messages)
        assert any("simulated evaluation failure" in m for m in messages)


async def test_evaluate_can_be_cancelled(fake, settings):
    app = QtuiApp(service=fake, settings=settings, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = await _evaluate_screen(app, pilot)
        fake.token_delay = 0.02
        await pilot.press("ctrl+s")
        await until(pilot, lambda: screen.step[0] > 0)
        await pilot.press("escape")
        await until(pilot, lambda: screen.cancel_event is None)
        assert "cancelled" in str(screen.query_one("#eval-status").render())
        assert len(app.eval_results) < 2


async def test_models_screen_passes_method_parameters_and_calibration(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        app.screen.query_one("#method", Select).value = "gptq"
        app.screen.query_one("#method-params").value = "percdamp=0.02 act_order=true"
        app.screen.query_one("#calibration").value = "builtin:8x128"
        await pilot.press("ctrl+k")
        await until(pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()))
        calib = {"source": "builtin", "samples": 8, "seq_len": 128}
        assert fake.quantize_calls == [("int4-g64", "gptq", {"percdamp": 0.02, "act_order": True}, calib)]
        # remembered parsed, not as the typed text
        assert app.settings.method_params == {"percdamp": 0.02, "act_order": True}
        assert app.settings.calibration == calib
        app.switch_to("models")
        app.screen.query_one("#method-params").value = "damp"  # not KEY=VALUE
        await pilot.press("ctrl+k")
        await until(pilot, lambda: any("KEY=VALUE" in n.message for n in app._notifications))
        # the bug: an unknown parameter ran with the defaults; now it is refused, naming the valid ones
        app.screen.query_one("#method-params").value = "damp=0.02"
        await pilot.press("ctrl+k")
        await until(pilot, lambda: any("unknown parameter 'damp'" in n.message for n in app._notifications))
        assert len(app.jobs) == 1


async def test_models_screen_device_reaches_the_request(fake, settings):
    """The device chosen on the Models screen is the request's device (it was dropped before)."""
    app = QtuiApp(service=fake, settings=settings, autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        await pilot.press("ctrl+k")
        await until(pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()))
        job = next(iter(app.jobs.values()))
        assert str(job.request.device) == app.settings.device == "cpu"


async def test_models_screen_rotation_reaches_the_request(fake, settings):
    """The rotation picked on the Models screen is the request's option (and its variant name)."""
    from textual.widgets import Select

    app = QtuiApp(service=fake, settings=settings, autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        app.screen.query_one("#rotate", Select).value = "hadamard"
        await pilot.pause()
        await pilot.press("ctrl+k")
        await until(pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()))
        job = next(iter(app.jobs.values()))
        assert job.request.options.rotate == "hadamard"
        assert job.request.dest.name.endswith("-hadamard")


async def _refused_then_queued(app, pilot, field: str, bad: str, message: str, good: str):
    """Type ``bad`` into the Models screen's ``field`` and quantize: a notification holding
    ``message`` and no job; then ``good``: the one job, once done."""
    from textual.widgets import Input

    app.screen.query_one(field, Input).value = bad
    await pilot.press("ctrl+k")
    await until(pilot, lambda: any(message in n.message for n in app._notifications))
    assert not app.jobs
    app.screen.query_one(field, Input).value = good
    await pilot.press("ctrl+k")
    await until(pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()))
    return next(iter(app.jobs.values()))


async def test_models_screen_bit_budget_reaches_the_request(fake, settings):
    """The bits/weight typed on the Models screen is the request's budget (and its variant name); a
    budget below the selected (narrowest) format is a notification, not a job."""
    from textual.widgets import SelectionList

    app = QtuiApp(service=fake, settings=settings, autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        floor = next(f for f in app.screen.query_one("#formats", SelectionList).selected if f != "bf16")
        job = await _refused_then_queued(app, pilot, "#bits-per-weight", "1.0", "bits-per-weight 1", "9")
        assert job.request.options.bits_per_weight == 9.0 and job.request.fmt.name == floor
        assert job.request.dest.name.endswith("-bpw9")


async def test_models_screen_distill_reaches_the_request(fake, settings):
    """What is typed in the Models screen's distill field is the request's DistillConfig (and its
    variant name); an unknown distillation parameter is a notification, not a job."""
    from engine.quant.distill import DistillConfig

    app = QtuiApp(service=fake, settings=settings, autoload=False, sample_resources=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        job = await _refused_then_queued(
            app, pilot, "#distill", "5 speed=2", "unknown parameter 'speed'", "5 r2 lr=0.01"
        )
        assert job.request.options.distill == DistillConfig(steps=5, adapter_rank=2, lr=0.01)
        assert job.request.dest.name.endswith("-distill5r2")


def test_a_distillation_progress_line_feeds_the_jobs_loss_curve():
    from engine.request import QuantRequest
    from qtui.state import QuantJob

    job = QuantJob(QuantRequest.build("default", "int2-g64"))
    job.progress(1, 10, "distill: held-out KL 3.1 before training")
    job.progress(1, 10, "distill: step 1/10, KL 2.5000, held-out 3.1000")
    job.progress(2, 10, "distill: step 2/10, KL 2.2500, held-out 3.1000")
    assert [v for _, v in job.losses.snapshot()] == [2.5, 2.25]


def test_settings_file_holds_parsed_values(tmp_path, monkeypatch):
    """settings.json keeps parsed data; older text values are converted, bad ones reset."""
    import json

    from qtui.config import Settings

    monkeypatch.setenv("QTUI_HOME", str(tmp_path))
    path = Settings.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {"method_params": "percdamp=0.02 act_order=true", "calibration": "builtin:8x128", "top_p": 1.0}
    path.write_text(json.dumps(old))
    s = Settings.load()
    assert s.method_params == {"percdamp": "0.02", "act_order": "true"}  # checked when a request is built
    assert s.calibration == {"source": "builtin", "samples": 8, "seq_len": 128}
    assert (s.params_text, s.calibration_text) == ("percdamp=0.02 act_order=true", "builtin:8x128")
    s.save()
    assert json.loads(path.read_text())["calibration"] == {"source": "builtin", "samples": 8, "seq_len": 128}
    bad = {"calibration": {"source": "builtin", "samples": 0}, "top_p": 7, "temperature": "hot", "seed": 3}
    path.write_text(json.dumps(bad))
    s = Settings.load()
    assert s.calibration is None and (s.top_p, s.temperature) == (1.0, 0.0)
    path.write_text("[1, 2")  # not JSON at all
    assert Settings.load() == Settings()
