"""Evaluate: pick loaded variants, tasks, a mode and a limit; run in a worker; results table."""

from __future__ import annotations

import threading
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Label,
    ProgressBar,
    Select,
    SelectionList,
    Static,
)

from engine.progress import ProgressClock
from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader

MODES = [("log-likelihood (knowledge, format-free)", "loglik"), ("generative (\\boxed{} answers)", "generate"),
         ("fidelity to the baseline (KLD, top-1, PPL)", "fidelity")]  # fmt: skip


def cell_text(result) -> str:
    """One results-table cell: accuracy with its interval, or fidelity figures."""
    if result.mode == "fidelity":
        m = result.metrics
        return f"KLD {m.get('kld_mean', float('nan')):.3f} top1 {100 * result.accuracy.value:.1f}%"
    text = result.accuracy.text()
    if result.mode == "generate":
        text += f" boxed {100 * result.compliance.value:.0f}%"
        if result.degenerate:
            text += f" degen {result.degenerate}"
    return text


class EvaluateScreen(Screen):
    BINDINGS = [
        Binding(
            "ctrl+s",
            "run",
            "Run",
            tooltip="Evaluate the selected variants on the selected tasks",
            id="evaluate.run",
            priority=True,
        ),
        Binding("escape", "cancel", "Cancel", tooltip="Cancel the running evaluation", id="evaluate.cancel"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cancel_event: threading.Event | None = None
        self.step = (0, 0, "")
        self.started = 0.0
        self.clock = ProgressClock()  # the engine's one ETA computation

    def compose(self) -> ComposeResult:
        yield QtuiHeader()
        with Horizontal(id="eval-body"):
            with Vertical(id="eval-form", classes="pane"):
                yield Label("Variants (loaded)", classes="pane-title")
                yield SelectionList(id="eval-variants")
                yield Label("Tasks", classes="pane-title")
                yield SelectionList(id="eval-tasks")
                yield Select(MODES, id="eval-mode", value="loglik", allow_blank=False)
                yield Input("100", id="eval-limit", placeholder="items per task (limit)", type="integer")
                yield Button("Run (ctrl+s)", id="eval-run", variant="primary")
                yield ProgressBar(id="eval-progress", show_eta=False)
                yield Static("", id="eval-status", classes="note")
            with Vertical(id="eval-results-pane", classes="pane"):
                yield Label("Results: accuracy, 95% Wilson interval, n", classes="pane-title")

                yield DataTable(id="eval-results", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#eval-results", DataTable)
        for label in ("variant", "task", "mode", "result", "time s"):
            table.add_column(label, key=label)
        tasks = self.query_one("#eval-tasks", SelectionList)
        self.task_modes = {}
        for name, title, modes in self.app.service.eval_tasks():
            self.task_modes[name] = modes
            tasks.add_option((f"{name}  [dim]{title} ({', '.join(modes)})[/]", name, name == "knowledge"))

        self.set_interval(0.25, self._tick)
        self.refresh_variants()
        for result in self.app.eval_results:
            self._add_row(result)

    def on_screen_resume(self) -> None:
        self.refresh_variants()

    def refresh_variants(self) -> None:
        box = self.query_one("#eval-variants", SelectionList)
        chosen = set(box.selected) or set(self.app.loaded)
        box.clear_options()
        for key, loaded in self.app.loaded.items():
            box.add_option((f"{loaded.name}  [dim]{loaded.backend}[/]", key, key in chosen))

    def _tick(self) -> None:
        done, total, text = self.step
        bar = self.query_one("#eval-progress", ProgressBar)
        bar.update(total=total or 1, progress=done if total else 0)
        if self.cancel_event is not None:
            p = self.clock.last
            elapsed = time.monotonic() - self.started
            eta = f", eta {p.eta:.0f}s" if p is not None and p.eta is not None and p.eta > 0 else ""
            self.query_one("#eval-status", Static).update(f"{text}  {elapsed:.0f}s{eta}")

    def action_run(self) -> None:
        if self.cancel_event is not None:
            self.app.notify("An evaluation is already running (Esc cancels it)", severity="warning")
            return
        variants = list(self.query_one("#eval-variants", SelectionList).selected)
        tasks = list(self.query_one("#eval-tasks", SelectionList).selected)
        mode = str(self.query_one("#eval-mode", Select).value)
        raw = self.query_one("#eval-limit", Input).value.strip()
        if not variants or not tasks:
            self.app.notify("Pick at least one variant and one task", severity="warning")
            return
        skipped = [t for t in tasks if mode not in self.task_modes.get(t, ())]
        tasks = [t for t in tasks if t not in skipped]
        if skipped:
            self.app.notify(f"{', '.join(skipped)}: no {mode} mode, skipped", severity="warning")
        if not tasks:
            return
        limit = int(raw) if raw else None

        if limit is not None and limit < 1:
            self.app.notify("limit must be at least 1", severity="error")
            return
        self.cancel_event = threading.Event()
        self.started = time.monotonic()
        self.clock = ProgressClock()
        self.evaluate(variants, tasks, mode, limit, self.cancel_event)

    def action_cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()

    @work(thread=True, exclusive=True, group="evaluate", exit_on_error=False)
    def evaluate(self, keys: list[str], tasks: list[str], mode: str, limit: int | None, cancel) -> None:
        service = self.app.service
        baseline = next(iter(self.app.loaded.values()), None)
        jobs = [(k, t) for k in keys for t in tasks]
        try:
            for i, (key, task) in enumerate(jobs):
                if cancel.is_set():
                    break
                loaded = self.app.loaded.get(key)
                if loaded is None:
                    continue

                def progress(done, total, text, i=i, name=loaded.name, task=task):
                    self.clock(done, total, text)
                    self.step = (done, total, f"[{i + 1}/{len(jobs)}] {name} / {task}: {text}")

                try:
                    result = service.evaluate(loaded, baseline, task, mode, limit, progress, cancel)
                except Exception as exc:  # one failing task is a notification, the rest go on
                    if cancel.is_set():
                        break
                    self.app.call_from_thread(
                        self.app.notify,
                        f"{loaded.name} / {task}: {exc}",
                        title="Evaluation failed",
                        severity="error",
                        timeout=10,
                    )
                    continue
                self.app.call_from_thread(self._finished_one, result)
        finally:
            self.app.call_from_thread(self._all_done, cancel.is_set())

    def _finished_one(self, result) -> None:
        self.app.record_eval(result)
        self._add_row(result)

    def _add_row(self, result) -> None:
        table = self.query_one("#eval-results", DataTable)
        cached = " (cached)" if getattr(result, "cached", False) else ""
        table.add_row(
            result.variant, result.task, result.mode, cell_text(result), f"{result.seconds:.1f}{cached}"
        )

    def _all_done(self, cancelled: bool) -> None:
        self.cancel_event = None
        self.step = (0, 0, "")
        self.query_one("#eval-status", Static).update("cancelled" if cancelled else "done")

    @on(Button.Pressed, "#eval-run")
    def _run_pressed(self) -> None:
        self.action_run()
