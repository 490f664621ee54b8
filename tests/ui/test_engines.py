"""The engine choice per chat column (issue 11): torch or llama.cpp for a saved variant, a remote
OpenAI-compatible server from the Models screen, and a column whose engine failed shows its
one-line error while the others answer."""

from __future__ import annotations

from textual.widgets import Input, Select

from engine.columns import ColumnResult
from engine.runtime import Token
from qtui.app import QtuiApp
from qtui.screens.chat import ChatScreen
from qtui.widgets.chat_column import ChatColumn
from tests.helpers import formats_ready, until

SIZE = (140, 40)


async def _one_saved_variant(app, pilot):
    await until(pilot, lambda: formats_ready(app))
    await pilot.press("ctrl+k")
    await until(pilot, lambda: app.jobs and all(j.status == "done" for j in app.jobs.values()))
    app.switch_to("models")
    await pilot.press("ctrl+r")
    await until(pilot, lambda: app.screen.query_one("#variants").row_count == 1)


async def test_engine_choice_loads_the_variant_on_llama_cpp(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await _one_saved_variant(app, pilot)
        app.screen.query_one("#engine", Select).value = "llama.cpp"
        await pilot.press("ctrl+o")
        await until(pilot, lambda: len(app.loaded) == 1 and not app.loading)
        (spec,) = app.loaded
        assert spec.endswith("int4-g64-rtn@llama.cpp")
        app.switch_to("models")
        app.screen.query_one("#engine", Select).value = "torch"
        await pilot.press("ctrl+o")
        await until(pilot, lambda: len(app.loaded) == 2 and not app.loading)
        assert sorted(s.endswith("@llama.cpp") for s in app.loaded) == [
            False,
            True,
        ]  # same variant, two engines


async def test_remote_column_from_the_models_screen(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: formats_ready(app))
        field = app.screen.query_one("#remote-input", Input)
        field.value = "ftp://nowhere"
        field.focus()
        await pilot.press("enter")
        await until(pilot, lambda: any("not an http(s) URL" in n.message for n in app._notifications))
        assert not app.loaded
        field.value = "http://127.0.0.1:8080"
        await pilot.press("enter")
        await until(pilot, lambda: "remote:http://127.0.0.1:8080" in app.loaded and not app.loading)


async def test_a_failed_engine_shows_its_error_in_its_column_only(fake, settings):
    plain = fake.stream

    def stream(loaded, messages, gen_settings, cancel):
        if "127.0.0.1" not in loaded.name:  # the fake names a loaded spec by its last path part
            return plain(loaded, messages, gen_settings, cancel)

        def gen():
            yield Token(0, -1, "Par", 0.01)
            return ColumnResult(text="Par", token_ids=[-1], new_tokens=1, error="HTTP 500 from x: boom")

        return gen()

    fake.stream = stream
    app = QtuiApp(service=fake, settings=settings)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(app.loaded) == 2 and not app.loading)
        app.load_variant("remote:http://127.0.0.1:9")
        await until(pilot, lambda: len(app.loaded) == 3 and not app.loading)
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and len(app.screen.columns) == 3)
        await pilot.click("#prompt")
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: not app.screen.generating)
        cols = list(app.screen.query(ChatColumn))
        statuses = [str(c.status.render()) for c in cols]
        assert "HTTP 500 from x: boom" in statuses[2] and "[error]" in statuses[2]
        assert all("error" not in s for s in statuses[:2]) and cols[1].answer_text  # the others answered
        assert "departs" not in statuses[2] and "= baseline" not in statuses[2]  # no token ids to compare


async def test_export_from_the_models_screen_to_each_target(fake, settings):
    from textual.widgets import Button, Select

    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await _one_saved_variant(app, pilot)
        await pilot.click("#export")
        await until(pilot, lambda: any("tensors exact" in n.message for n in app._notifications))
        app.screen.query_one("#export-to", Select).value = "compressed-tensors"
        await pilot.pause()
        # the first export's notification now sits over the button: a click would land on the toast
        app.screen.query_one("#export", Button).press()
        await until(pilot, lambda: any("quantized Linears" in n.message for n in app._notifications))
        path = str(fake.root / "variants" / "int4-g64-rtn")
        assert fake.exported == [(path, "gguf"), (path, "compressed-tensors")]
        titles = {n.title for n in app._notifications}
        assert {"Exported GGUF", "Exported compressed-tensors"} <= titles


def test_every_export_target_of_the_cli_has_a_label_in_the_app():
    from qtui.services import EXPORT_LABELS, EXPORT_TARGETS

    assert set(EXPORT_LABELS) == set(EXPORT_TARGETS) == {"gguf", "compressed-tensors"}
