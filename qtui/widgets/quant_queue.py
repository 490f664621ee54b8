"""The quantization queue: one row per variant with a progress bar, layer, elapsed and ETA."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, ProgressBar, Static

from engine.units import human_bytes
from qtui.state import QuantJob


class QuantRow(Horizontal, can_focus=True):
    def __init__(self, job: QuantJob) -> None:
        super().__init__(id=f"job-{job.id}", classes="quant-row")
        self.job = job

    def compose(self) -> ComposeResult:
        yield Label(self.job.label, classes="job-label")
        yield ProgressBar(total=None, show_eta=False, show_percentage=True, classes="job-bar")
        yield Static("", classes="job-info")

    def refresh_job(self) -> None:
        job = self.job
        if not self.query(".job-info") or not self.query(ProgressBar):
            return  # still composing
        bar = self.query_one(ProgressBar)

        # never indeterminate (an animated pulse): a job without a count yet shows an empty bar
        bar.update(total=job.total or 1, progress=job.done if job.total else 0)

        info = self.query_one(".job-info", Static)
        self.set_class(job.status == "failed", "failed")
        self.set_class(job.status == "done", "done")
        if job.status == "queued":
            info.update("queued")
        elif job.status == "running":
            eta = f", eta {job.eta:.0f}s" if job.eta is not None else ""
            where = "" if job.request.device.type == "cpu" else f" on {job.request.device}"
            mem = f"  mem {human_bytes(job.peak_rss)}" if job.peak_rss else ""
            mem += f" (est. {human_bytes(job.estimate)})" if job.estimate else ""
            info.update(f"{job.text}  {job.elapsed:.1f}s{eta}{where}{mem}")
        elif job.status == "done":
            info.update(f"done in {job.elapsed:.1f}s, {human_bytes(job.bytes_on_disk)}")
            bar.update(total=1, progress=1)
        elif job.status == "failed":
            info.update(f"failed: {job.error}")
        else:
            info.update("cancelled (nothing saved)")


class QuantQueue(VerticalScroll):
    """Rows for every job in ``app.jobs``; refreshed from state four times a second."""

    def on_mount(self) -> None:
        self.set_interval(0.25, self.sync)
        self.sync()

    def sync(self) -> None:
        jobs = getattr(self.app, "jobs", {})
        shown = {row.job.id: row for row in self.query(QuantRow)}
        for job in jobs.values():
            if job.id not in shown:
                row = QuantRow(job)
                self.mount(row)
                shown[job.id] = row
        for row in shown.values():
            if row.is_mounted and row.children:
                row.refresh_job()
        empty = self.query(".queue-empty")
        if not jobs and not empty:
            self.mount(
                Static("No quantization yet: pick formats on the Models screen (F2).", classes="queue-empty")
            )
        elif jobs and empty:
            empty.remove()

    @property
    def selected_job(self) -> QuantJob | None:
        focused = self.app.focused
        return focused.job if isinstance(focused, QuantRow) else None
