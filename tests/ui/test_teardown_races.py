"""Races a loaded CI machine showed (2026-12-08): a header title watcher or the chat hint's timer
running while the widgets they update are not (or no longer) there ended the app with NoMatches."""

from __future__ import annotations

from textual.widgets._header import HeaderTitle

from qtui.app import QtuiApp
from qtui.screens.chat import ChatScreen
from qtui.widgets.header import QtuiHeader


async def test_a_title_change_with_no_title_widget_is_ignored(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=(120, 36)) as pilot:
        header = app.screen.query_one(QtuiHeader)
        await header.query_one(HeaderTitle).remove()
        app.title = "renamed while the header has no title widget"
        app.screen.sub_title = "and its screen too"
        await pilot.pause()
        assert app.is_running and app._exception is None


async def test_chat_hint_timer_after_its_widgets_are_gone_is_ignored(fake, settings):
    app = QtuiApp(service=fake, settings=settings, autoload=False)
    async with app.run_test(size=(120, 36)) as pilot:
        app.switch_to("chat")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await screen.query_one("#chat-hint").remove()
        screen._refresh_hint()  # what the 0.5 s timer calls
        await screen.query_one("#columns").remove()
        screen.sync_columns()
        await pilot.pause()
        assert app._exception is None
