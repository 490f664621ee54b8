"""Shared fixtures: an isolated QTUI_HOME, tiny random-weight models and a tiny tokenizer (tests.helpers).

Nothing here touches the network or the user's folders. (tests/unit/conftest.py adds an offline,
empty Hugging Face cache and drops the QTUI_* overrides for unit tests.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import build_model, build_tokenizer


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own QTUI_HOME (cache, data, config): nothing touches the user's folders.

    A folder of its own rather than ``tmp_path``, so tests can expect their ``tmp_path`` empty.
    """
    home = tmp_path_factory.mktemp("qtui-home")
    monkeypatch.setenv("QTUI_HOME", str(home))
    return home


@pytest.fixture
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: ``tiny_model(arch, seed=0, tie=None) -> (model, tokenizer)``."""

    def make(arch: str, seed: int = 0, tie: bool | None = None):
        return build_model(arch, seed, tie), build_tokenizer()

    return make


@pytest.fixture
def loaded_source(tiny_model, tmp_path):
    """Factory: a hand-built ``sources.LoadedSource`` around a tiny model."""
    from engine import sources

    def make(arch: str, **kwargs):
        model, tok = tiny_model(arch, **kwargs)
        folder = Path(tmp_path)
        src = sources.ModelSource("folder", f"tiny-{arch}", folder, f"tiny-{arch}")
        return sources.LoadedSource(
            source=src, folder=folder, model=model, tokenizer=tok, content_hash="sha256:test"
        )

    return make
