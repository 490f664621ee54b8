"""Snapshot of the Inspect screen (F7): RTN vs GPTQ heatmap, worst list and one Linear side by side."""

from __future__ import annotations

from qtui.app import QtuiApp
from qtui.config import Settings
from tests.helpers import until
from tests.ui.fake_engine import FakeService
from tests.ui.test_inspect import saved

SIZE = (140, 44)


def test_inspect_snapshot(snap_compare, tmp_path):
    fake = FakeService(tmp_path)
    app = QtuiApp(
        service=fake, settings=Settings(formats=["int4-g64"]), autoload=False, sample_resources=False
    )
    rtn, gptq = saved(fake)

    async def run_before(pilot):
        await pilot.press("f7")
        screen = app.screen
        await until(pilot, lambda: len(screen.query_one("#inspect-a")._options) > 2)
        screen.inspect(rtn, gptq)
        await until(pilot, lambda: len(screen.tables) == 2 and not screen.computing)
        screen.query_one("#heatmap").focus()
        screen.query_one("#heatmap").cursor_coordinate = (2, 7)
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.views) == 2 and not screen.computing)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
