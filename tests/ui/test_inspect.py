"""The Inspect screen (F7) with the scripted fake engine: heatmap -> Linear view, the metric switch,
a second variant side by side, cancelling a computation, the palette entry."""

from __future__ import annotations

import pytest

from qtui.app import QtuiApp
from qtui.config import Settings
from qtui.screens.inspector import InspectScreen
from qtui.services import VariantInfo
from qtui.widgets.linear_panel import LinearHistogram, LinearPanel
from tests.helpers import until
from tests.ui.fake_engine import FakeService


def saved(fake: FakeService) -> tuple[str, str]:
    for name in ("int4-g64-rtn", "int4-g64-gptq"):
        path = fake.root / "variants" / name
        path.mkdir(parents=True, exist_ok=True)
        fake.saved[name] = VariantInfo(name, "int4-g64", name.rsplit("-", 1)[1], path, 114_800_000, 4.375)
    return str(fake.root / "variants" / "int4-g64-rtn"), str(fake.root / "variants" / "int4-g64-gptq")


@pytest.fixture
def app(fake):
    return QtuiApp(
        service=fake, settings=Settings(formats=["int4-g64"]), autoload=False, sample_resources=False
    )


async def open_inspect(pilot, app) -> InspectScreen:
    await pilot.press("f7")
    screen = app.screen
    assert isinstance(screen, InspectScreen)
    await until(pilot, lambda: len(screen.query_one("#inspect-a")._options) > 2)
    return screen


async def test_heatmap_cell_opens_the_linear_side_by_side(app, fake):
    rtn, gptq = saved(fake)
    async with app.run_test(size=(140, 44)) as pilot:
        screen = await open_inspect(pilot, app)
        screen.inspect(rtn, gptq)
        await until(pilot, lambda: len(screen.tables) == 2 and not screen.computing)
        heat = screen.query_one("#heatmap")
        assert heat.row_count == 6 and len(heat.columns) == 8  # block + q k v o gate up down
        status = str(screen.query_one("#inspect-status").render())
        assert "int4-g64-gptq better in" in status
        # the worst cell of the fake is block 2's down_proj: first in the worst list
        worst = screen.query_one("#worst")
        assert worst.get_row_at(0)[0] == "2.mlp.down_proj"
        heat.focus()
        heat.cursor_coordinate = (2, 7)
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.views) == 2 and not screen.computing)
        assert screen.views[0].name == "model.layers.2.mlp.down_proj"
        assert [v.method for v in screen.views] == ["rtn", "gptq"]
        panels = list(screen.query(LinearPanel))
        texts = [str(p.query_one(".linear-text").render()) for p in panels]
        assert "int4-g64-rtn" in texts[0] and "int4-g64-gptq" in texts[1]
        assert "largest input channels" in texts[1] and "not recorded" in texts[0]
        assert all(h.view is not None for h in screen.query(LinearHistogram))
        assert "model.layers.2.mlp.down_proj" in str(screen.query_one("#linear-title").render())


async def test_metric_switch_and_worst_list(app, fake):
    rtn, gptq = saved(fake)
    async with app.run_test(size=(140, 44)) as pilot:
        screen = await open_inspect(pilot, app)
        screen.inspect(gptq)
        await until(pilot, lambda: len(screen.tables) == 1 and not screen.computing)
        assert screen.metric == "output"  # recorded by this variant: shown first
        assert screen.query_one("#inspect-metric").value == "output"
        before = screen.query_one("#heatmap").get_cell_at((0, 1))
        screen.query_one("#heatmap").focus()
        await pilot.press("m")
        await until(pilot, lambda: screen.metric == "clipped")
        assert str(screen.query_one("#heatmap").get_cell_at((0, 1))) != str(before)
        await pilot.press("m", "m", "m")
        await until(pilot, lambda: screen.metric == "sqnr")
        assert "SQNR" in str(screen.query_one("#inspect-status").render())
        await pilot.press("w")
        assert screen.query_one("#worst").has_focus
        await pilot.press("enter")  # the first row of the worst list: the lowest SQNR
        await until(pilot, lambda: len(screen.views) == 1 and not screen.computing)
        assert screen.views[0].name == "model.layers.2.mlp.down_proj"


async def test_escape_cancels_and_keys_still_answer(app, fake):
    rtn, _ = saved(fake)
    fake.inspect_delay = 0.5  # 6 blocks: 3 s of computing
    async with app.run_test(size=(140, 44)) as pilot:
        screen = await open_inspect(pilot, app)
        screen.inspect(rtn)
        await until(
            pilot,
            lambda: screen.computing and "computing" in str(screen.query_one("#inspect-status").render()),
        )
        await pilot.press("m")  # the UI answers while the worker computes (bench/ui_latency.py times it)
        await until(pilot, lambda: screen.metric == "sqnr")
        assert screen.computing and not screen.tables
        await pilot.press("escape")
        await until(pilot, lambda: not screen.computing, timeout=5)
        assert "cancelled" in str(screen.query_one("#inspect-status").render())
        assert screen.tables == []


async def test_palette_and_help_list_inspect(app, fake):
    async with app.run_test(size=(140, 44)) as pilot:
        app.action_command_palette()
        await pilot.pause()
        await pilot.press(*"Inspect variant")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, InspectScreen))
        await until(
            pilot, lambda: "no saved variants" in str(app.screen.query_one("#inspect-status").render())
        )
