"""The screens' header: Textual's Header, with its title watcher safe against a header whose title
widget is not (or no longer) there.

Textual 8's Header updates its HeaderTitle from a watcher on the app's and screen's title; the
watcher catches NoScreen but not NoMatches, which it raises when it runs before the header's
children are mounted or after they were removed. On a loaded 2-core CI machine that happened in a
Pilot test (an app starting while a load failed): the exception ended the app. Same rendering as
Header; the title is written when the widget exists.
"""

from __future__ import annotations

from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.events import Mount
from textual.widget import Widget
from textual.widgets import Header
from textual.widgets._header import HeaderTitle


class QtuiHeader(Header):
    def _on_mount(self, event: Mount) -> None:
        # Header's own _on_mount registers the unguarded watcher: stop the handlers below this one,
        # and run the one Header would have reached after its own (Widget's: scrollbar set-up)
        event.prevent_default()
        Widget._on_mount(self, event)

        async def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoScreen, NoMatches):
                pass  # composed later (its own mount shows the title) or being removed

        self.watch(self.app, "title", set_title)
        self.watch(self.app, "sub_title", set_title)
        self.watch(self.screen, "title", set_title)
        self.watch(self.screen, "sub_title", set_title)
