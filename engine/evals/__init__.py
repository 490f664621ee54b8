"""Evaluation: tasks, log-likelihood / generative / fidelity runs, statistics, result cache.

The API for the CLI and the app is :func:`engine.evals.api.run` (also importable as
``engine.evals.run``); see docs/evaluation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.evals.results import TaskResult


def run(*args: Any, **kwargs: Any) -> TaskResult:
    """:func:`engine.evals.api.run` (imported lazily so ``engine.evals.fidelity`` stays light)."""
    from engine.evals.api import run as _run

    return _run(*args, **kwargs)
