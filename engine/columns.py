"""What a chat column runs on: qtui's torch runtime, llama.cpp, or a remote OpenAI-compatible server.

``open_column`` turns a column spec into a ready column: ``SPEC`` (torch, ``engine.variants``),
``SPEC@llama.cpp`` (``engine.llamacpp``) or ``remote:URL`` / a URL (``engine.remote``). ``stream``
runs any of them with the same signature as ``engine.runtime.stream``. A llama.cpp or remote column
that fails mid-answer does not raise into the scheduler that interleaves the columns: its stream ends
with a :class:`ColumnResult` whose ``error`` is the one-line reason, and the other columns go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import cast

import torch

from engine import runtime, specs
from engine.errors import QtuiError
from engine.llamacpp import LlamaCppColumn
from engine.progress import ProgressFn, no_progress
from engine.remote import RemoteColumn
from engine.runtime import GenResult, GenSettings, Message, Token, Variant
from engine.sources import LoadedSource

Column = Variant | LlamaCppColumn | RemoteColumn


@dataclass
class ColumnResult(GenResult):
    """A result that may end in an error (a llama.cpp or remote column that failed mid-answer)."""

    error: str = ""

    @property
    def flags(self) -> list[str]:
        return [*super().flags, "error"] if self.error else super().flags


def open_column(
    spec: str,
    device: torch.device | str | None = None,
    progress: ProgressFn = no_progress,
    cancel: threading.Event | None = None,
    loaded_cache: dict[str, LoadedSource] | None = None,
    method: str = "rtn",
    threads: int | None = None,
) -> Column:
    """The column ``spec`` names (see the module doc), loaded and warmed up."""
    from engine import llamacpp, remote, variants

    col = specs.parse_column_spec(spec)
    if col.engine == "remote":
        return remote.open_column(col.target)
    if col.engine == "llama.cpp":
        return llamacpp.open_column(col.target, method, progress, cancel, threads)
    variant = variants.open_spec(
        specs.parse_model_spec(col.target, method), device, progress, cancel, loaded_cache
    )
    variant.warm_up(progress)
    return variant


def stream(
    column: Column,
    prompt: str | list[Message],
    settings: GenSettings = GenSettings(),
    cancel: threading.Event | None = None,
) -> Generator[Token, None, GenResult]:
    """``column``'s tokens for ``prompt``; returns its :class:`GenResult` (a :class:`ColumnResult` with
    ``error`` set when a llama.cpp or remote column failed)."""
    if isinstance(column, Variant):
        return runtime.stream(column, prompt, settings, cancel)
    return _guarded(column.stream(prompt, settings, cancel))


def _guarded(gen: Generator[Token, None, GenResult]) -> Generator[Token, None, GenResult]:
    tokens: list[Token] = []
    try:
        while True:
            try:
                token = next(gen)
            except StopIteration as stop:
                done = cast(GenResult, stop.value)
                return ColumnResult(**{k: getattr(done, k) for k in GenResult.__dataclass_fields__})
            tokens.append(token)
            yield token
    except QtuiError as exc:
        text = "".join(t.text for t in tokens)
        return ColumnResult(
            text=text,
            token_ids=[t.token_id for t in tokens],
            new_tokens=len(tokens),
            ttft_s=tokens[0].t if tokens else 0.0,
            total_s=tokens[-1].t if tokens else 0.0,
            error=str(exc),
        )
    finally:
        gen.close()


def generate(
    column: Column,
    prompt: str | list[Message],
    settings: GenSettings = GenSettings(),
    on_token: Callable[[Token], None] | None = None,
    cancel: threading.Event | None = None,
) -> GenResult:
    """Collect :func:`stream` (``engine.runtime.generate`` for any column)."""
    return runtime.collect(stream(column, prompt, settings, cancel), on_token)


def close(column: Column) -> None:
    """Free what a column holds outside torch (a llama.cpp server)."""
    if not isinstance(column, Variant):
        column.close()
