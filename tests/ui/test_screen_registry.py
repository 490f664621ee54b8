"""The screen registry is the one source of the app's switch keys, palette entries and Help groups."""

from __future__ import annotations

import io

from rich.console import Console

from qtui.app import QtuiApp, QtuiCommands
from qtui.screens.help import bindings_table
from qtui.screens.registry import SCREENS, own_bindings


def test_every_binding_has_an_id_and_a_tooltip_and_every_screen_a_key():
    assert len({e.key for e in SCREENS}) == len({e.name for e in SCREENS}) == len(SCREENS)
    by_id = {b.id: b for b in QtuiApp.BINDINGS}
    assert all(b.id and b.tooltip for b in QtuiApp.BINDINGS)
    for e in SCREENS:
        b = by_id[f"app.{e.name}"]
        assert (b.key, b.action, b.description, b.tooltip) == (
            e.key,
            f"switch_to('{e.name}')",
            e.title,
            e.description,
        )
        assert all(b.id for b in own_bindings(e.screen))


async def test_keys_palette_and_help_come_from_the_registry(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=(140, 40)) as pilot:
        for e in SCREENS:
            await pilot.press(e.key)
            assert app.screen is app.get_screen(e.name) and isinstance(app.screen, e.screen)
        commands = QtuiCommands(app.screen)._commands()
        targets = [cb.args[0] for *_, cb in commands if getattr(cb, "func", None) == app.switch_to]
        assert set(targets) == {e.name for e in SCREENS}
        console = Console(width=200, record=True, file=io.StringIO())
        console.print(bindings_table(app))
        text = console.export_text()
        for e in SCREENS:
            for where, bindings in e.help_groups():
                for b in bindings:
                    assert any(where in line and b.key in line for line in text.splitlines())
