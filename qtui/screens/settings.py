"""Generation settings (a modal): temperature, top-p, seed, max tokens. Saved to the config file."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

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
        values = {}
        for name, label, kind in FIELDS:
            raw = self.query_one(f"#set-{name}", Input).value.strip()
            try:
                values[name] = kind(raw)
            except ValueError:
                self.app.notify(f"{label}: {raw!r} is not a number", severity="error")
                return
        if values["max_new_tokens"] < 1 or values["temperature"] < 0 or not 0 < values["top_p"] <= 1:
            self.app.notify("max tokens >= 1, temperature >= 0, 0 < top-p <= 1", severity="error")
            return
        for name, value in values.items():
            setattr(s, name, value)
        s.save()
        self.dismiss()

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss()
