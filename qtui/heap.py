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
