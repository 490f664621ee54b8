"""Run several variants on the same prompt at once: the schedulers the chat columns use.

``round_robin`` (the default, used by the app) advances every column by one token in turn on
one thread: no oversubscription of the cores (torch already uses every core for one forward), a
fair share per column, and a stop takes effect after at most one token. ``threaded`` runs one
thread per column and is kept to measure against (``bench/columns.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

from engine.runtime import GenResult, Token

Stream = Generator[Token, None, GenResult]
OnToken = Callable[[str, Token], None]
OnDone = Callable[[str, GenResult], None]


def round_robin(streams: dict[str, Stream], on_token: OnToken, on_done: OnDone) -> None:
    """Advance each stream one token at a time, in turn, until all have finished."""
    active = dict(streams)
    while active:
        for key in list(active):
            try:
                token = next(active[key])
            except StopIteration as stop:
                del active[key]
                on_done(key, stop.value)
            else:
                on_token(key, token)


def threaded(streams: dict[str, Stream], on_token: OnToken, on_done: OnDone) -> None:
    """One thread per stream; returns when all have finished."""

    def _run(key: str, gen: Stream) -> None:
        while True:
            try:
                token = next(gen)
            except StopIteration as stop:
                on_done(key, stop.value)
                return
            on_token(key, token)

    threads = [threading.Thread(target=_run, args=kv, daemon=True) for kv in streams.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


SCHEDULERS = {"round-robin": round_robin, "threaded": threaded}
