"""What every ``qtui`` command module shares: exit codes and the progress line on stderr."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

from engine.progress import Progress, ProgressClock

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ProgressLine:
    """The CLI's progress sink: a one-line bar on stderr (a line per stage when not a terminal).
    The engine calls it as ``progress(done, total, text)``; the ETA comes from
    :class:`engine.progress.ProgressClock`, the one place it is computed."""

    def __init__(self, stream: TextIO | None = None) -> None:
        # sys.stderr looked up now: a default bound at import outlives a swapped stderr (tests)
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.clock = ProgressClock()
        self.last_stage = ""
        self.last_draw = 0.0

    def __call__(self, done: int, total: int, text: str) -> None:
        p = self.clock(done, total, text)
        if not self.tty:
            stage = p.stage if total > 1 else p.text  # a line per stage: "block 3/36", a Linear, a file
            if stage != self.last_stage:
                print(f"  {p.text}", file=self.stream, flush=True)
                self.last_stage = stage
            return
        now = time.monotonic()
        if now - self.last_draw < 0.1 and done < total:
            return
        self.last_draw = now
        print("\r" + render(p, shutil.get_terminal_size().columns - 1), end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.last_draw:
            print(file=self.stream, flush=True)


def render(p: Progress, cols: int, width: int = 24) -> str:
    """``[#####---] 42.0% eta   12s block 3/30: q_proj`` cut or padded to ``cols``."""
    if p.fraction is not None:
        filled = int(p.fraction * width)
        eta = f"eta {p.eta:4.0f}s" if p.eta is not None else "eta    ?s"
        line = f"[{'#' * filled}{'-' * (width - filled)}] {p.fraction * 100:5.1f}% {eta} {p.text}"
    else:
        line = f"[{'.' * width}] {p.text}"
    return line[:cols].ljust(cols)
