"""Schedulers that run several generations side by side."""

from __future__ import annotations

import threading

import pytest

from engine.multichat import SCHEDULERS, round_robin
from engine.runtime import GenResult, Token


def fake_stream(name: str, n: int, log: list | None = None):
    for i in range(n):
        if log is not None:
            log.append((name, i))
        yield Token(i, i, f"{name}{i}", float(i))
    return GenResult(text=name, new_tokens=n, finish="length")


def test_round_robin_interleaves_one_token_each():
    log: list = []
    streams = {"a": fake_stream("a", 3, log), "b": fake_stream("b", 1, log), "c": fake_stream("c", 2, log)}
    tokens, done = [], {}
    round_robin(streams, lambda k, t: tokens.append((k, t.index)), lambda k, r: done.__setitem__(k, r))
    assert log == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2)]
    assert tokens == log
    assert {k: r.new_tokens for k, r in done.items()} == {"a": 3, "b": 1, "c": 2}
    assert list(done) == ["b", "c", "a"]  # each finishes as soon as its stream does


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_delivers_everything(name):
    lock = threading.Lock()
    tokens: dict[str, list[str]] = {"x": [], "y": []}
    done: dict[str, GenResult] = {}

    def on_token(key, token):
        with lock:
            tokens[key].append(token.text)

    def on_done(key, result):
        with lock:
            done[key] = result

    SCHEDULERS[name]({"x": fake_stream("x", 4), "y": fake_stream("y", 2)}, on_token, on_done)
    assert tokens == {"x": ["x0", "x1", "x2", "x3"], "y": ["y0", "y1"]}
    assert {k: (r.text, r.finish) for k, r in done.items()} == {"x": ("x", "length"), "y": ("y", "length")}
