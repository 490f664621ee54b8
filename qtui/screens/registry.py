"""The app's screens in one table: key, name, title, screen class, description.

The app's switch keys (F2...), the command palette's "open a screen" entries and the Help
screen's per-screen key lists are all generated from ``SCREENS``, so a new screen is its own
module plus one line here (like Textual's ``App.SCREENS``, with the key and the words added).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding
from textual.dom import DOMNode
from textual.screen import Screen

from qtui.screens.chat import ChatScreen
from qtui.screens.dashboard import DashboardScreen
from qtui.screens.demo import DemoScreen
from qtui.screens.evaluate import EvaluateScreen
from qtui.screens.inspector import InspectScreen
from qtui.screens.models import ModelsScreen
from qtui.screens.quantize import QuantizeScreen
from qtui.widgets.chat_column import ChatColumn


@dataclass(frozen=True)
class ScreenEntry:
    key: str  # the app-wide key that switches to the screen
    name: str  # installed under this name: app.switch_to(name); the key's binding id is app.<name>
    title: str  # the key's footer label and the screen's group in Help
    screen: type[Screen]
    description: str  # the key's tooltip (shown in Help)
    # command-palette entries (name, help) that open the screen; none given: (title, description)
    palette: tuple[tuple[str, str], ...] = ()
    # (where, widget class): focusable widgets of the screen whose own keys Help lists too
    widgets: tuple[tuple[str, type[DOMNode]], ...] = ()

    def binding(self) -> Binding:
        return Binding(
            self.key, f"switch_to({self.name!r})", self.title, tooltip=self.description, id=f"app.{self.name}"
        )

    def palette_entries(self) -> tuple[tuple[str, str], ...]:
        return self.palette or ((self.title, self.description),)

    def help_groups(self) -> list[tuple[str, list[Binding]]]:
        return [(self.title, own_bindings(self.screen))] + [(w, own_bindings(c)) for w, c in self.widgets]


def own_bindings(cls: type[DOMNode]) -> list[Binding]:
    """The bindings a class declares itself (not Screen's inherited tab / shift+tab)."""
    return [b for b in cls.__dict__.get("BINDINGS", ()) if isinstance(b, Binding)]


SCREENS = (
    ScreenEntry("f2", "models", "Models", ModelsScreen, "Sources, saved variants, formats",
                palette=(("Load variant...", "Open the Models screen to pick a saved variant"),
                         ("Quantize...", "Pick formats on the Models screen"))),
    ScreenEntry("f3", "quantize", "Quantize", QuantizeScreen, "The quantization queue",
                palette=(("Quantization queue", "Show progress of every job"),)),
    ScreenEntry("f4", "chat", "Chat", ChatScreen, "Chat with variants side by side",
                palette=(("Chat side by side", "Open the chat columns"),),
                widgets=(("Chat column (focused)", ChatColumn),)),
    ScreenEntry("f5", "dashboard", "Dashboard", DashboardScreen, "Live charts",
                palette=(("Dashboard", "Live charts: speed, latency, memory, size"),)),
    ScreenEntry("f6", "evaluate", "Evaluate", EvaluateScreen, "Accuracy and fidelity of variants",
                palette=(("Evaluate", "Accuracy (with intervals) and fidelity to the baseline"),)),
    ScreenEntry("f7", "inspect", "Inspect", InspectScreen, "Where quantization hurts, Linear by Linear",
                palette=(("Inspect variant", "Per-Linear error heatmap, worst Linears, one Linear up close"),)),
    ScreenEntry("f8", "demo", "Demo", DemoScreen, "Play a demo playlist (the sample; qtui demo FILE for yours)",
                palette=(("Demo: play the sample playlist", "Prompts into side-by-side columns, step by step"),)),
)  # fmt: skip
