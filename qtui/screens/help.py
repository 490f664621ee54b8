"""Help: every key, per screen, from the bindings and the screen registry (so it cannot go stale)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from qtui.screens.registry import SCREENS


def bindings_table(app) -> Table:
    table = Table(title="qtui keys", expand=True)
    table.add_column("where")
    table.add_column("key")
    table.add_column("does")
    groups = [("everywhere", type(app).BINDINGS)]
    for entry in SCREENS:
        groups += entry.help_groups()

    for where, bindings in groups:
        for b in bindings:
            if isinstance(b, Binding):
                table.add_row(where, b.key, b.tooltip or b.description)
    table.add_row("everywhere", "ctrl+p", "command palette: every action, themes")
    return table


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="help.close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(bindings_table(self.app))
            yield Static(self.app.service.note, classes="note")
