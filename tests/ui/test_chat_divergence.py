"""Token-level divergence in the Chat screen (fake engine): computed after the answers, hidden
until ctrl+t, the baseline's answer coloured per token, the first token past the threshold marked."""

from __future__ import annotations

import pytest

from qtui.app import QtuiApp
from qtui.config import Settings
from qtui.screens.chat_divergence import TokenDivergenceView, kld_style
from tests.helpers import until


@pytest.mark.parametrize(("fmt", "first", "word"), [("int4-g64", 5, "Paris."), ("int2-g64", 1, "capital")])
async def test_divergence_colouring_marks_the_first_departing_token(fake, fmt, first, word):
    app = QtuiApp(service=fake, settings=Settings(formats=[fmt]), sample_resources=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(app.loaded) == 2 and len(app.screen.query("ChatColumn")) == 2)
        chat = app.screen
        await pilot.click("#prompt")
        await pilot.press(*"What is the capital of France?", "enter")
        await until(pilot, lambda: len(chat.query(TokenDivergenceView)) == 1)
        view = chat.query_one(TokenDivergenceView)
        assert view.display is False  # off until asked for
        assert view.parent.parent is chat.columns[1]  # in the variant's column, not the baseline's
        d = view.result
        assert d.first_over == first and d.tokens[first].text.strip() == word
        assert [t.token_id for t in d.tokens] == chat.columns[0].token_ids  # teacher-forced on the baseline
        await pilot.press("ctrl+t")
        assert view.display is True
        text = view.render()
        assert f"first over 0.5 at token {first + 1} ('{word}')" in str(text)
        marked = [s for s in text.spans if "underline" in str(s.style)]
        assert str(text)[marked[0].start : marked[0].end].strip() == word
        await pilot.press("ctrl+t")
        assert view.display is False


def test_colour_scale_runs_green_to_red():
    assert "#2e7d32" in kld_style(0.01) and "#c62828" in kld_style(5.0)
    assert kld_style(0.3) != kld_style(1.0)
