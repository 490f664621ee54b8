"""The real app on the real default model, driven like a user: pick, quantize, chat."""

from __future__ import annotations

import pytest

from qtui.app import QtuiApp
from qtui.config import Settings
from tests.helpers import until

pytestmark = pytest.mark.e2e


async def test_pick_default_quantize_int4_and_chat(real_cache):
    app = QtuiApp(autoload=False, settings=Settings(formats=["bf16", "int4-g64"]), sample_resources=False)
    async with app.run_test(size=(160, 45)) as pilot:
        models = app.screen
        picker = models.query_one("#formats")
        await until(pilot, lambda: picker.option_count > 0, timeout=60)
        assert set(picker.selected) == {"bf16", "int4-g64"}
        await pilot.press("ctrl+k")  # bf16 loads as the baseline, int4-g64 is quantized
        await until(
            pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()), timeout=300
        )
        await until(pilot, lambda: "default" in app.loaded, timeout=120)
        app.switch_to("models")
        await pilot.press("ctrl+r")
        table = models.query_one("#variants")
        await until(pilot, lambda: table.row_count == 1, timeout=60)
        await pilot.press("ctrl+o")  # load the highlighted saved variant into chat
        await until(pilot, lambda: len(app.loaded) == 2 and not app.loading, timeout=120)
        chat = app.get_screen("chat")
        await until(pilot, lambda: app.screen is chat and len(chat.columns) == 2, timeout=30)
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?", "enter")
        await until(pilot, lambda: all(c.result for c in chat.columns) and not chat.generating, timeout=120)

        names = [c.title for c in chat.columns]
        assert names == ["bf16", "int4-g64-rtn"]
        for col in chat.columns:
            assert "Paris" in col.answer_text, col.answer_text
            assert "tok/s" in str(col.status.render())
            assert col.result.decode_tps > 0
        assert "int4pack" in chat.columns[1].backend
