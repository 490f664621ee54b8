"""Generation settings (a modal): temperature, top-p, seed, max tokens. Saved to the config file."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from engine.errors import QtuiError

FIELDS = [
    ("max_new_tokens", "max tokens", int),
    ("temperature", "temperature (0 = greedy)", float),
    ("top_p", "top-p", float),
    ("seed", "seed", int),
]


class SettingsScreen(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss", "Cancel", id="settings.cancel")]

    def compose(self) -> ComposeResult:
        s = self.app.settings
        with Grid(id="settings-box"):
            for name, label, _ in FIELDS:
                yield Label(label)
                yield Input(str(getattr(s, name)), id=f"set-{name}")
            with Horizontal():
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed, "#save")
    @on(Input.Submitted)
    def save(self) -> None:
        s = self.app.settings
        values = {name: self.query_one(f"#set-{name}", Input).value.strip() for name, _, _ in FIELDS}
        try:  # one parser with the bounds GenSettings declares
            s.set_generation(values)
        except QtuiError as exc:
            self.app.notify(str(exc), severity="error")
            return
        s.save()
        self.dismiss()

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss()
