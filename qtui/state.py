"""App-wide state the screens read: the quantization queue and the metric series for charts.

Workers write plain attributes here (one writer each); widgets read them on a timer, so bursty
progress never floods the message queue.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from engine.telemetry import RingBuffer

_ids = itertools.count(1)


@dataclass
class QuantJob:
    source: str
    fmt: str
    method: str
    device: str
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0
    total: int = 0
    text: str = ""
    started: float = 0.0
    finished: float = 0.0
    error: str = ""
    bytes_on_disk: int = 0
    then_load: bool = False  # load into chat when done (start-up formats)
    params: dict = field(default_factory=dict)  # method parameters
    calibration: str = ""  # "" = defaults, or SOURCE[:SAMPLESxSEQ_LEN]

    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.source}:{self.fmt} ({self.method}{' ' + extra if extra else ''})"

    @property
    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    @property
    def eta(self) -> float | None:
        if self.status != "running" or not self.total or not self.done:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def progress(self, done: int, total: int, text: str) -> None:
        self.done, self.total, self.text = done, total, text


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
