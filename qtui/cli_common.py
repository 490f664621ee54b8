"""What every ``qtui`` command module shares: exit codes and the progress line on stderr."""

from __future__ import annotations

import shutil
import sys
import time

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ProgressLine:
    """A one-line progress bar on stderr (``progress(done, total, text)`` for the engine)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last_text = ""
        self.last_draw = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if not self.tty:
            stage = text.split(" ")[0] if total > 1 else text
            if stage != self.last_text:
                print(f"  {text}", file=self.stream, flush=True)
                self.last_text = stage
            return
        if now - self.last_draw < 0.1 and done < total:
            return
        self.last_draw = now
        width = 24
        if total > 0:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            eta = (now - self.start) / frac * (1 - frac) if frac > 0 else 0
            line = f"[{bar}] {frac * 100:5.1f}% eta {eta:4.0f}s {text}"
        else:
            line = f"[{'.' * width}] {text}"
        cols = shutil.get_terminal_size().columns
        print("\r" + line[: cols - 1].ljust(cols - 1), end="", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.last_draw:
            print(file=self.stream, flush=True)
