"""Resource sampling (process RSS, CUDA memory) and ring buffers that charts read from."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import psutil


def rss_bytes() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss


def cuda_allocated_bytes() -> int:
    try:
        import torch

        return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


class Ticker:
    """Calls ``fn`` every ``interval`` seconds in a daemon thread until :meth:`stop` (e.g. the app's
    resource sampler: psutil's read of /proc stays off the UI thread)."""

    def __init__(self, interval: float, fn: Callable[[], object], name: str = "qtui-ticker") -> None:
        self.interval, self.fn = interval, fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.fn()

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class PeakSampler:
    """Samples process RSS in a background thread while a block runs; ``peak_rss`` afterwards.

    On CUDA the peak allocated memory comes from torch's own counters (exact, not sampled).
    """

    def __init__(self, interval: float = 0.02, cuda: bool = False):
        self.interval = interval
        self.cuda = cuda
        self.peak_rss = 0
        self.peak_cuda = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak_rss = rss_bytes()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._run, daemon=True, name="qtui-peak-rss")
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        if self.cuda:
            import torch

            self.peak_cuda = int(torch.cuda.max_memory_allocated())


@dataclass
class RingBuffer:
    """Fixed-size (time, value) series for live charts."""

    size: int = 300
    _data: deque[tuple[float, float]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, value: float, t: float | None = None) -> None:
        with self._lock:
            self._data.append((time.monotonic() if t is None else t, float(value)))
            while len(self._data) > self.size:
                self._data.popleft()

    def snapshot(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        return len(self._data)
