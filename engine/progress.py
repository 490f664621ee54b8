"""Progress of long engine work: one callback type for the engine, one value type for the sinks.

Engine functions take a :data:`ProgressFn` and call it as ``progress(done, total, text)`` per layer,
tensor or token batch; ``text`` is ``"stage: detail"`` (``"block 3/30: q_proj, k_proj"``) or just a
stage. A sink (the CLI's progress line, the app's queue rows) wraps itself in a
:class:`ProgressClock`, which turns each call into a :class:`Progress` with the stage and detail
split and the ETA computed here, once, for every sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

ProgressFn = Callable[[int, int, str], None]


def no_progress(done: int, total: int, text: str) -> None:
    """A :data:`ProgressFn` that reports nothing (for callees that need one when a caller has none)."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int  # 0: unknown (a spinner, not a bar)
    stage: str
    detail: str = ""
    eta: float | None = None  # seconds left in this stage, when it can be told
    elapsed: float = 0.0  # seconds since the first call

    @property
    def fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total > 0 else None

    @property
    def text(self) -> str:
        return f"{self.stage}: {self.detail}" if self.detail else self.stage


def split_text(text: str) -> tuple[str, str]:
    stage, sep, detail = text.partition(": ")
    return (stage, detail) if sep else (text, "")


class ProgressClock:
    """``clock(done, total, text) -> Progress``: the ETA is the stage's rate so far times what is
    left; a new ``total`` starts a new stage (loading, then quantizing, then saving)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self.start = now()
        self._stage_start = self.start
        self._stage_total: int | None = None
        self._stage_first = 0
        self.last: Progress | None = None

    def __call__(self, done: int, total: int, text: str) -> Progress:
        now = self._now()
        if total != self._stage_total:
            self._stage_total, self._stage_start, self._stage_first = total, now, done
        eta = None
        worked = done - self._stage_first
        if total > 0 and worked > 0 and done < total:
            eta = (now - self._stage_start) / worked * (total - done)
        elif total > 0 and done >= total:
            eta = 0.0
        stage, detail = split_text(text)
        self.last = Progress(done, total, stage, detail, eta, now - self.start)
        return self.last
