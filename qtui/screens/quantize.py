"""Quantize: the queue of variants being made, with per-layer progress and cancel."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Button, Label

from qtui.widgets.footer import Footer
from qtui.widgets.header import QtuiHeader
from qtui.widgets.quant_queue import QuantQueue


class QuantizeScreen(Screen):
    BINDINGS = [
        Binding("c", "cancel_one", "Cancel job", tooltip="Cancel the focused job", id="quantize.cancel"),
        Binding(
            "C",
            "cancel_all",
            "Cancel all",
            tooltip="Cancel every queued or running job",
            id="quantize.cancel_all",
        ),
    ]

    def compose(self) -> ComposeResult:
        yield QtuiHeader()
        yield Label(
            "Quantization queue (focus a row with Tab; cancel leaves no half-written variant)",
            classes="pane-title",
        )
        yield QuantQueue(id="queue")
        with Horizontal(id="queue-buttons"):
            yield Button("Cancel focused (c)", id="cancel-one", variant="warning")
            yield Button("Cancel all (C)", id="cancel-all", variant="error")
        yield Footer()

    def action_cancel_one(self) -> None:
        job = self.query_one(QuantQueue).selected_job
        if job is None:
            self.app.notify("Focus a job row first (Tab)", severity="warning")
            return
        self.app.cancel_job(job.id)

    def action_cancel_all(self) -> None:
        for job_id in list(self.app.jobs):
            self.app.cancel_job(job_id)

    @on(Button.Pressed, "#cancel-one")
    def _one(self) -> None:
        self.action_cancel_one()

    @on(Button.Pressed, "#cancel-all")
    def _all(self) -> None:
        self.action_cancel_all()
