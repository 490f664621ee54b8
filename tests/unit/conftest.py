"""Unit tests run offline against an empty Hugging Face cache and the default QTUI_HOME layout."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline_hf_cache(_isolated_home, monkeypatch):
    cache = _isolated_home / "hf-cache"  # not created: tests decide whether it exists
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QTUI_CACHE_DIR", raising=False)
    monkeypatch.delenv("QTUI_DEFAULT_WHEEL", raising=False)
    # huggingface_hub reads these variables once, at import: patch its constants too
    from huggingface_hub import constants
    from huggingface_hub.utils import _cache_manager

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))
    return cache
