"""Messages that workers post to the UI (dataclasses; thread-safe to post)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine.runtime import GenResult


@dataclass
class ColumnText(Message):
    """New text for one chat column (tokens batched by the generation worker)."""

    key: str
    text: str
    tokens: int
    elapsed: float


@dataclass
class ColumnDone(Message):
    key: str
    result: GenResult


@dataclass
class GenerationFinished(Message):
    """Every column of one prompt has finished (or was stopped)."""

    stopped: bool


@dataclass
class VariantsChanged(Message):
    """Loaded variants changed (a load finished or failed)."""
