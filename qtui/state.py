"""App-wide state the screens read: the quantization queue and the metric series for charts.

Workers write plain attributes here (one writer each); widgets read them on a timer, so bursty
progress never floods the message queue.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from engine import typed
from engine.progress import Progress, ProgressClock
from engine.quant import distill
from engine.request import QuantRequest
from engine.telemetry import RingBuffer, rss_bytes

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]

_ids = itertools.count(1)


@dataclass
class QuantJob:
    request: QuantRequest  # built and checked where the user asked (Models screen, start-up)
    id: int = field(default_factory=lambda: next(_ids))
    status: JobStatus = "queued"
    progress_now: Progress | None = None  # the latest progress, with its ETA (engine.progress)
    started: float = 0.0
    finished: float = 0.0
    error: str = ""
    bytes_on_disk: int = 0
    estimate: int = 0  # peak memory the engine estimated for the job (bytes; 0 until known)
    peak_rss: int = 0  # the process's largest RSS seen while the job ran
    then_load: bool = False  # load into chat when done (start-up formats)
    cancel: threading.Event = field(default_factory=threading.Event)
    clock: ProgressClock = field(default_factory=ProgressClock, repr=False)
    losses: RingBuffer = field(default_factory=lambda: RingBuffer(400), repr=False)  # distillation

    @property
    def source(self) -> str:
        return self.request.source.ref

    @property
    def fmt(self) -> str:
        return self.request.fmt.name

    @property
    def method(self) -> str:
        return self.request.method.name

    @property
    def label(self) -> str:
        changed = typed.changed(self.request.config)
        extra = " ".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.source}:{self.fmt} ({self.method}{' ' + extra if extra else ''})"

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    @property
    def done(self) -> int:
        return self.progress_now.done if self.progress_now else 0

    @property
    def total(self) -> int:
        return self.progress_now.total if self.progress_now else 0

    @property
    def text(self) -> str:
        return self.progress_now.text if self.progress_now else ""

    @property
    def eta(self) -> float | None:
        if self.status != "running" or self.progress_now is None:
            return None
        return self.progress_now.eta

    def progress(self, done: int, total: int, text: str) -> None:
        self.progress_now = self.clock(done, total, text)
        loss = distill.loss_of(text)
        if loss is not None:  # a distillation step: its loss, for the queue row's curve
            self.losses.append(loss)
        self.peak_rss = max(self.peak_rss, rss_bytes())


@dataclass
class Metrics:
    """Series per variant name, fed as answers stream and by the resource sampler."""

    tok_s: dict[str, RingBuffer] = field(default_factory=dict)
    ttft: dict[str, RingBuffer] = field(default_factory=dict)
    rss: RingBuffer = field(default_factory=lambda: RingBuffer(600))
    cuda: RingBuffer = field(default_factory=lambda: RingBuffer(600))
    disk: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (bytes, bits/w)
    accuracy: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # label -> (acc, lo, hi)
    fidelity: dict[str, tuple[float, float]] = field(default_factory=dict)  # variant -> (KLD, top-1)

    def series(self, table: dict[str, RingBuffer], name: str) -> RingBuffer:
        if name not in table:
            table[name] = RingBuffer(300)
        return table[name]
