"""The quantization queue: one row per variant with a progress bar, layer, elapsed and ETA."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Label, ProgressBar, Sparkline, Static

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

        self._loss_curve()
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

    def _loss_curve(self) -> None:
        """A distillation's training loss, step by step (the last 400), as a sparkline in the row."""
        losses = [v for _, v in self.job.losses.snapshot()]
        if not losses:
            return
        curves = self.query(Sparkline)
        if not curves:
            self.mount(
                Sparkline(losses, summary_function=max, classes="job-loss"), after=self.query_one(ProgressBar)
            )
            return
        curves.first().data = losses


KEEP_FINISHED = 20  # rows of finished jobs kept (the newest): a long session's list stays bounded


def shown_jobs(jobs: dict[int, QuantJob]) -> list[QuantJob]:
    """The jobs with a row: every queued or running one, and the newest finished ones."""
    finished = [j.id for j in jobs.values() if j.status not in ("queued", "running")]
    old = set(finished[:-KEEP_FINISHED]) if len(finished) > KEEP_FINISHED else set()
    return [j for j in jobs.values() if j.id not in old]


class QuantQueue(VerticalScroll):
    """Rows for the jobs in ``app.jobs`` (see :func:`shown_jobs`); refreshed from state four times
    a second."""

    def on_mount(self) -> None:
        self._settled: set[int] = set()  # finished jobs whose row shows their final state
        self.set_interval(0.25, self.sync)
        self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        if not force and not self.screen.is_current:
            return  # nobody sees the rows: they catch up within 0.25 s of the screen coming back
        jobs = getattr(self.app, "jobs", {})
        keep = shown_jobs(jobs)
        keep_ids = {job.id for job in keep}
        self._settled &= keep_ids
        shown: dict[int, QuantRow] = {}
        for row in self.query_children(QuantRow):
            if row.job.id in keep_ids:
                shown[row.job.id] = row
            else:
                row.remove()  # an old finished job: its widgets go (issue 13's soak)
        for job in keep:
            if job.id not in shown:
                row = QuantRow(job)
                self.mount(row)
                shown[job.id] = row
        for row in shown.values():
            if row.is_mounted and row.children and row.job.id not in self._settled:
                row.refresh_job()
                job = row.job
                if job.status not in ("queued", "running") and (job.finished or not job.started):
                    self._settled.add(job.id)  # its last state is shown: no more work a tick
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
