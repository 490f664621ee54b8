"""Inspect on the real default model: int4-g64 RTN vs GPTQ (both calibrated, so both record the
output error), through the engine and the Inspect screen on the real engine service."""

from __future__ import annotations

import time

import pytest

from engine import inspection
from tests.helpers import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # quantizes GPTQ on the CPU (shared fixture)


@pytest.fixture(scope="module")
def variants(int4_g64_saved):
    return int4_g64_saved["rtn"], int4_g64_saved["gptq"]


def test_gptq_output_error_lower_in_most_cells(variants, real_cache):
    rtn, gptq = (inspection.inspect_variant(v) for v in variants)
    assert rtn.has_source and gptq.has_source  # the default model is in the cache: clipping is known
    assert rtn.blocks == gptq.blocks == 30 and len(rtn.linears) == 210
    better, total = inspection.compare_cells(rtn, gptq, "output")
    assert total == 210 and better > total / 2, (better, total)
    assert all(s.clipped is not None for s in gptq.linears)
    view = inspection.inspect_linear(variants[1], "model.layers.12.self_attn.v_proj")
    assert view.act_top is not None and len(view.act_top) == 10  # GPTQ is calibrated: channels recorded
    assert sum(view.counts_source) == 576 * 192


async def test_inspect_screen_on_the_real_engine(variants, real_cache):
    from qtui.app import QtuiApp
    from qtui.config import Settings
    from qtui.screens.inspector import InspectScreen
    from qtui.services import EngineService

    rtn, gptq = (str(v) for v in variants)
    for v in variants:
        inspection.inspect_variant(v)  # computed once: the screen opens from the cache
    app = QtuiApp(service=EngineService(), settings=Settings(), autoload=False, sample_resources=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f7")
        screen = app.screen
        assert isinstance(screen, InspectScreen)
        t0 = time.monotonic()
        screen.inspect(rtn, gptq)
        await until(pilot, lambda: len(screen.tables) == 2 and not screen.computing, timeout=30)
        opened = time.monotonic() - t0
        assert opened < 2.0, f"cached Inspect took {opened:.2f} s"
        screen.query_one("#inspect-metric").value = "output"
        await until(pilot, lambda: "better in" in str(screen.query_one("#inspect-status").render()))
        status = str(screen.query_one("#inspect-status").render())
        better, total = (int(x) for x in status.split("better in ")[1].split(" cells")[0].split("/"))
        assert total == 210 and better > 105
        screen.query_one("#worst").focus()
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.views) == 2 and not screen.computing, timeout=60)
        assert screen.views[0].counts_source is not None and screen.views[1].method == "gptq"
