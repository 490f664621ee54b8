"""Inspect: where a variant's quantization hurts, Linear by Linear.

A heatmap of the per-Linear error (blocks down, Linear kinds across; ``m`` switches the metric),
the worst Linears listed beside it, and, for the selected cell, that Linear up close: its weight
histogram with the grid of a typical and of the worst group, in the chosen variant and in a second
one side by side. Everything is computed by thread workers (engine.inspection, cached on disk);
Esc cancels a computation; the screen never waits on one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Select, Static
from textual.worker import get_current_worker

from engine.errors import Cancelled
from engine.heatmap import badness, colour
from engine.inspection import METRICS, LinearView, VariantTable, compare_cells
from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader
from qtui.widgets.linear_panel import LinearPanel

NONE = "(none)"


@dataclass
class TablesReady(Message):
    tables: list[VariantTable] = field(default_factory=list)
    error: str = ""
    generation: int = 0  # which request this answers (a cancelled one's late answer is dropped)


@dataclass
class LinearReady(Message):
    name: str = ""
    views: list[LinearView] = field(default_factory=list)
    error: str = ""
    generation: int = 0


@dataclass
class VariantsListed(Message):
    variants: list[tuple[str, str]] = field(default_factory=list)  # (label, path)


class InspectScreen(Screen):
    BINDINGS = [
        Binding("m", "next_metric", "Metric", tooltip="Switch the heatmap's metric", id="inspect.metric"),
        Binding("escape", "cancel", "Cancel", tooltip="Cancel the computation in progress", id="inspect.cancel"),
        Binding("w", "focus_worst", "Worst", tooltip="Go to the list of the worst Linears", id="inspect.worst"),
        Binding("h", "focus_heatmap", "Heatmap", tooltip="Go to the heatmap", id="inspect.heatmap"),
    ]  # fmt: skip

    DEFAULT_CSS = """
    #inspect-bar { height: 3; }
    #inspect-bar Select { width: 1fr; }
    #inspect-metric { width: 34; }
    #inspect-status { height: 1; padding: 0 1; color: $text-muted; }
    #inspect-main { height: 1fr; }
    #inspect-left { width: 64; }
    #heatmap { height: 2fr; border: round $primary 40%; }
    #worst { height: 1fr; border: round $primary 40%; }
    #inspect-linear { width: 1fr; }
    #linear-title { height: 1; padding: 0 1; text-style: bold; }
    #linear-panels { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tables: list[VariantTable] = []
        self.views: list[LinearView] = []
        self.metric = "weight"
        self.metric_chosen = False  # until a user picks one: output error where recorded
        self.progress_text = ""
        self.computing = False
        self.selected: str | None = None
        self._cancel: threading.Event | None = None
        self.generation = 0  # bumped by every request; answers to older ones are dropped

    def compose(self) -> ComposeResult:
        yield QtuiHeader()
        with Horizontal(id="inspect-bar"):
            yield Select([], prompt="variant to inspect", id="inspect-a")
            yield Select([], prompt="second variant (side by side)", id="inspect-b")
            yield Select([(m.label, k) for k, m in METRICS.items()], value="weight", allow_blank=False,
                         id="inspect-metric")  # fmt: skip
        yield Static("pick a saved variant", id="inspect-status")
        with Horizontal(id="inspect-main"):
            with Vertical(id="inspect-left"):
                yield DataTable(id="heatmap", cursor_type="cell", zebra_stripes=False)
                yield DataTable(id="worst", cursor_type="row", zebra_stripes=True)
            with Vertical(id="inspect-linear"):
                yield Static("select a cell (Enter) to see that Linear", id="linear-title")
                with Horizontal(id="linear-panels"):
                    yield LinearPanel(id="linear-a")
                    yield LinearPanel(id="linear-b")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#heatmap", DataTable).tooltip = "Enter on a cell: that Linear up close"
        self.set_interval(0.25, self._show_progress)
        self.list_variants()

    def on_screen_resume(self) -> None:
        self.list_variants()

    # -------------------------------------------------------------------- variants
    @work(thread=True, group="inspect-list", exclusive=True, exit_on_error=False)
    def list_variants(self) -> None:
        try:
            found = self.app.service.saved_variants(self.app.settings.model)
        except Exception:
            found = []
        self.post_message(VariantsListed([(v.name, str(v.path)) for v in found if v.method]))

    def on_variants_listed(self, message: VariantsListed) -> None:
        for sel_id in ("#inspect-a", "#inspect-b"):
            sel = self.query_one(sel_id, Select)
            value = sel.value
            sel.set_options(message.variants)
            if value in [p for _, p in message.variants]:
                sel.value = value
        if not message.variants:
            self._status("no saved variants yet: quantize one (Models, F2)")

    def inspect(self, path: str, second: str | None = None) -> None:
        """Show ``path`` (and ``second`` side by side), listed or not: what the CLI, the demo and
        tests call."""
        from pathlib import Path

        for sel_id, value in (("#inspect-a", path), ("#inspect-b", second)):
            if not value:
                continue
            sel = self.query_one(sel_id, Select)
            options = [(str(label), v) for label, v in sel._options if isinstance(v, str)]
            if value not in [v for _, v in options]:
                sel.set_options([*options, (Path(value).name, value)])
            with self.prevent(Select.Changed):
                sel.value = value
        self.start()

    @on(Select.Changed, "#inspect-a")
    @on(Select.Changed, "#inspect-b")
    def _variant_changed(self, event: Select.Changed) -> None:
        self.start()

    @on(Select.Changed, "#inspect-metric")
    def _metric_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.metric:
            self.metric = event.value
            self.metric_chosen = True
            self.render_tables()

    def _paths(self) -> list[str]:
        out = []
        for sel_id in ("#inspect-a", "#inspect-b"):
            value = self.query_one(sel_id, Select).value
            if isinstance(value, str) and value not in out:
                out.append(value)
        return out if isinstance(self.query_one("#inspect-a", Select).value, str) else []

    # -------------------------------------------------------------------- computing
    def start(self) -> None:
        paths = self._paths()
        if not paths:
            return
        self.action_cancel()
        self.generation += 1
        self.computing = True
        self.compute(paths, self.generation)

    def _progress(self, done: int, total: int, text: str) -> None:
        self.progress_text = f"{text} ({done}/{total})" if total > 1 else text

    @work(thread=True, group="inspect", exclusive=True, exit_on_error=False)
    def compute(self, paths: list[str], generation: int) -> None:
        cancel = get_current_worker().cancelled_event
        self._cancel = cancel
        try:
            tables = [self.app.service.inspect_variant(p, self._progress, cancel) for p in paths]
        except Cancelled:
            self.post_message(TablesReady([], "cancelled", generation))
            return
        except Exception as exc:
            self.post_message(TablesReady([], str(exc) or type(exc).__name__, generation))
            return
        self.post_message(TablesReady(tables, "", generation))

    @work(thread=True, group="inspect-linear", exclusive=True, exit_on_error=False)
    def compute_linear(self, paths: list[str], name: str, generation: int) -> None:
        cancel = get_current_worker().cancelled_event
        self._cancel = cancel
        try:
            views = [self.app.service.inspect_linear(p, name, self._progress, cancel) for p in paths]
        except Cancelled:
            self.post_message(LinearReady(name, [], "cancelled", generation))
            return
        except Exception as exc:
            self.post_message(LinearReady(name, [], str(exc) or type(exc).__name__, generation))
            return
        self.post_message(LinearReady(name, views, "", generation))

    def on_tables_ready(self, message: TablesReady) -> None:
        if message.generation != self.generation:
            return
        self.computing = False
        self.progress_text = ""
        if message.error:
            self._status(f"inspect: {message.error}")
            if message.error != "cancelled":
                self.app.notify(message.error, title="Inspect failed", severity="error", timeout=8)
            return
        self.tables = message.tables
        if not self.metric_chosen:
            self.metric = "output" if self.tables[0].has("output") else "weight"
            with self.prevent(Select.Changed):
                self.query_one("#inspect-metric", Select).value = self.metric
        self.render_tables()
        if self.selected and self.tables[0].get(self.selected):
            self.open_linear(self.selected)

    def on_linear_ready(self, message: LinearReady) -> None:
        if message.generation != self.generation:
            return
        self.computing = False
        self.progress_text = ""
        if message.error:
            self._status(f"{message.name}: {message.error}")
            return
        self.views = message.views
        self.query_one("#linear-title", Static).update(message.name)
        panels = [self.query_one("#linear-a", LinearPanel), self.query_one("#linear-b", LinearPanel)]
        for i, panel in enumerate(panels):
            view = self.views[i] if i < len(self.views) else None
            panel.show(view, "" if view else "pick a second variant to compare this Linear")
        self.render_status()

    def open_linear(self, name: str) -> None:
        self.selected = name
        paths = self._paths()
        if not paths:
            return
        self.query_one("#linear-title", Static).update(f"{name} (computing...)")
        self.workers.cancel_group(self, "inspect-linear")
        self.generation += 1
        self.computing = True
        self.compute_linear(paths, name, self.generation)

    def action_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
        self.workers.cancel_group(self, "inspect")
        self.workers.cancel_group(self, "inspect-linear")

    def _show_progress(self) -> None:
        if self.computing and self.progress_text:
            self._status(f"computing: {self.progress_text}  (Esc cancels)")

    def _status(self, text: str) -> None:
        self.query_one("#inspect-status", Static).update(text)

    # -------------------------------------------------------------------- rendering
    def action_next_metric(self) -> None:
        keys = list(METRICS)
        self.query_one("#inspect-metric", Select).value = keys[(keys.index(self.metric) + 1) % len(keys)]

    def action_focus_worst(self) -> None:
        self.query_one("#worst", DataTable).focus()

    def action_focus_heatmap(self) -> None:
        self.query_one("#heatmap", DataTable).focus()

    def render_tables(self) -> None:
        heat = self.query_one("#heatmap", DataTable)
        worst = self.query_one("#worst", DataTable)
        cursor = heat.cursor_coordinate
        heat.clear(columns=True)
        worst.clear(columns=True)
        if not self.tables:
            return
        table, m = self.tables[0], METRICS[self.metric]
        values = [v for s in table.linears if s.block >= 0 and (v := s.value(self.metric)) is not None]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        heat.add_column("blk", key="block")
        for kind in table.kinds:
            heat.add_column(kind, key=kind)
        for b in range(table.blocks):
            row: list[Text | str] = [str(b)]
            for kind in table.kinds:
                s = table.cell(b, kind)
                v = s.value(self.metric) if s else None
                if v is None:
                    row.append(Text("  -  ", style="dim"))
                    continue
                t = badness(v, lo, hi, m.higher_is_worse)
                fg = "black" if t < 0.6 else "white"
                row.append(Text(f"{self._fmt(v):>6}", style=f"{fg} on {colour(t)}"))
            heat.add_row(*row, key=str(b))
        if cursor.row < heat.row_count and cursor.column < len(heat.columns):
            heat.cursor_coordinate = cursor
        other = self.tables[1] if len(self.tables) > 1 else None
        worst.add_column("worst Linears", key="name")
        worst.add_column(table.variant[:14], key="a")
        if other is not None:
            worst.add_column(other.variant[:14], key="b")
        for s in table.worst(self.metric, 15):
            cells = [s.name.removeprefix("model.layers."), self._fmt(s.value(self.metric))]
            if other is not None:
                o = other.get(s.name)
                cells.append(self._fmt(o.value(self.metric) if o else None))
            worst.add_row(*cells, key=s.name)
        self.render_status()

    def render_status(self) -> None:
        if not self.tables:
            return
        table, m = self.tables[0], METRICS[self.metric]
        parts = [
            f"{table.variant}: {len(table.linears)} Linears, {m.label}{m.unit and ' (' + m.unit.strip() + ')'}"
        ]
        if len(self.tables) > 1:
            better, total = compare_cells(table, self.tables[1], self.metric)
            if total:
                parts.append(f"{self.tables[1].variant} better in {better}/{total} cells")
        if not table.has(self.metric):
            parts.append(f"no {m.label} for this variant")
        parts += list(table.notes[:1])
        self._status("; ".join(parts))

    def _fmt(self, v: float | None) -> str:
        if v is None:
            return "-"
        if self.metric == "sqnr":
            return f"{v:.1f}"
        if self.metric in ("clipped", "collapsed", "bits"):
            return f"{v:.2f}"
        return f"{v:.4f}"

    @on(DataTable.CellSelected, "#heatmap")
    def _cell_selected(self, event: DataTable.CellSelected) -> None:
        if not self.tables or event.coordinate.column == 0:
            return
        kind = self.tables[0].kinds[event.coordinate.column - 1]
        s = self.tables[0].cell(event.coordinate.row, kind)
        if s is not None:
            self.open_linear(s.name)

    @on(DataTable.RowSelected, "#worst")
    def _worst_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.open_linear(event.row_key.value)
