"""When to move long-lived objects out of the cyclic garbage collector's reach (``gc.freeze``).

Models and what quantizing imports are large object graphs: a full collection that walks them all
stalls the UI (measured: 190-300 ms for ~230,000 objects on the 2-core build machine), so the app
freezes them. But a freeze pins *every* object alive at that moment, and whatever of it later dies
in a reference cycle (the UI's coroutines, futures, messages, render caches) is never freed.
Freezing after every quantization job while four columns streamed pinned ~4,400 such objects a
job (bench/soak.py, issue 13). So freeze only when something long-lived has come since the last
freeze: a model loaded, or modules imported.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterable

# The youngest generation's threshold for the app. Python's default (700 allocations) runs a young
# collection ~60 times a second while four columns stream, so objects that live for a frame or two
# (messages, render strips, futures) survive two of them and are promoted; the oldest generation
# then grows by a quarter every couple of seconds and a full collection walks the whole heap: 303
# full collections in a 10-minute soak, up to 210 ms each, inside 268 of its 335 stalls over 100 ms
# (bench/soak.py, issue 13). With a larger threshold they die young and full collections are rare.
GEN0_THRESHOLD = 20_000


def tune_collector(gen0: int = GEN0_THRESHOLD) -> tuple[int, int, int]:
    """Raise the young generation's threshold (the older two keep theirs); returns the old thresholds."""
    old = gc.get_threshold()
    gc.set_threshold(gen0, old[1], old[2])
    return old


class Freezer:
    def __init__(self) -> None:
        self._modules = -1  # len(sys.modules) at the last freeze
        self._models: set[int] = set()  # ids of the loaded models frozen so far

    def settle(self, models: Iterable[object] = ()) -> bool:
        """``gc.freeze()`` if ``models`` holds one not frozen yet or modules were imported since the
        last freeze; returns whether it froze. Collect first where a pause is acceptable (a worker):
        the freeze pins pending cyclic garbage for good."""
        ids = {id(m) for m in models}
        if len(sys.modules) == self._modules and ids <= self._models:
            return False
        gc.freeze()
        self._modules = len(sys.modules)
        self._models |= ids
        return True
