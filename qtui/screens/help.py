"""Help: every key, per screen, from the bindings themselves (so it cannot go stale)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def bindings_table(app) -> Table:
    from qtui.screens.chat import ChatScreen
    from qtui.screens.evaluate import EvaluateScreen
    from qtui.screens.models import ModelsScreen
    from qtui.screens.quantize import QuantizeScreen
    from qtui.widgets.chat_column import ChatColumn

    table = Table(title="qtui keys", expand=True)
    table.add_column("where")
    table.add_column("key")
    table.add_column("does")
    groups = [
        ("everywhere", type(app).BINDINGS),
        ("Models", ModelsScreen.BINDINGS),
        ("Quantize", QuantizeScreen.BINDINGS),
        ("Chat", ChatScreen.BINDINGS),
        ("Chat column (focused)", ChatColumn.BINDINGS),
        ("Evaluate", EvaluateScreen.BINDINGS),
    ]

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
