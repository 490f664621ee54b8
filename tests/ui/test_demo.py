"""The Demo screen with the fake engine: prepares every variant, plays steps into the columns
(space next, b back, p pause, a step's pause goes on by itself), writes the transcript and table;
a bad playlist plays nothing. Plus a snapshot of one step."""

from __future__ import annotations

from engine import demo
from qtui.cli_demo import make_app
from qtui.config import Settings
from qtui.screens.demo import DemoScreen
from qtui.widgets.chat_column import ChatColumn
from tests.helpers import until
from tests.ui.fake_engine import FakeService

PLAYLIST = """
title: Fake demo
variants: [bf16, int4-g64, int2-g64]
steps:
  - title: Capital
    prompt: What is the capital of France?
  - title: Auto
    prompt: Say something.
    pause: 0.2
  - title: Last
    prompt: One more?
"""


def playlist(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(PLAYLIST)
    return demo.load_playlist(path)


def app_for(tmp_path):
    return make_app(
        playlist(tmp_path), service=FakeService(tmp_path), settings=Settings(), sample_resources=False
    )


async def test_plays_steps_back_pause_and_writes_the_transcript(tmp_path):
    app = app_for(tmp_path)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DemoScreen) and app.screen.state == "answered")
        screen = app.screen
        assert screen.step == 0 and [c.key for c in screen.query(ChatColumn)] == [
            "bf16",
            "int4-g64",
            "int2-g64",
        ]
        assert "CAPITAL" in str(screen.query_one("#demo-title").render())
        assert [c.result.text for c in screen.query(ChatColumn)][0] == "The capital of France is Paris."
        await pilot.press("space")  # step 2 has a pause: it goes on to step 3 by itself
        await until(pilot, lambda: screen.step == 2 and screen.state == "answered", timeout=10)
        await pilot.press("p")  # paused: step 2's pause no longer moves on
        assert screen.paused
        await pilot.press("b")
        await until(pilot, lambda: screen.step == 1 and screen.state == "answered")
        await pilot.pause(0.5)
        assert screen.step == 1
        await pilot.press("space")
        await until(pilot, lambda: screen.step == 2 and screen.state == "answered")
        await pilot.press("space")
        await until(pilot, lambda: screen.state == "done")
        table = screen.query_one("#demo-table")
        assert table.display and table.row_count == 3
        md = open(screen.transcript).read()
        assert "## 1. Capital" in md and "## 3. Last" in md and "| int2-g64 | 3 |" in md
        assert len([r for r in screen.records if r.step == 1]) == 3  # a replayed step is recorded once


async def test_demo_screen_from_the_palette_uses_the_sample(tmp_path):
    from qtui.app import QtuiApp

    app = QtuiApp(service=FakeService(tmp_path), autoload=False, sample_resources=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("f8")
        screen = app.screen
        assert isinstance(screen, DemoScreen) and screen.state == "idle"
        assert screen.playlist.title == "What 4 bits and 2 bits cost"
        assert "press space to prepare" in str(screen.query_one("#demo-status").render())


def test_bad_playlist_plays_nothing(tmp_path, capsys):
    from qtui.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("variants: [bf16]\nsteps:\n  - {title: Wait, prompt: hi, pause: -2}\n")
    assert main(["demo", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "qtui: error: step 1 ('Wait'): pause must be >= 0 seconds, got -2"


def test_demo_step_snapshot(snap_compare, tmp_path):
    app = app_for(tmp_path)

    async def run_before(pilot):
        await until(pilot, lambda: isinstance(app.screen, DemoScreen) and app.screen.state == "answered")
        for col in app.screen.query(ChatColumn):  # timings are not deterministic
            col.status.update(f"{col.result.new_tokens} tok")
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(140, 40), run_before=run_before)
