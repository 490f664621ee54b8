"""Where qtui keeps its files (XDG base directories, overridable with QTUI_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

MANIFEST = "qtui-manifest.json"  # the file that makes a folder a saved qtui variant


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def cache_dir() -> Path:
    """Downloaded and converted models (safe to delete; re-fetched on demand)."""
    explicit = os.environ.get("QTUI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    home = os.environ.get("QTUI_HOME")
    if home:
        return Path(home) / "cache"
    return _xdg("XDG_CACHE_HOME", ".cache") / "qtui"


def data_dir() -> Path:
    """Saved variants (the user's work)."""
    home = os.environ.get("QTUI_HOME")
    if home:
        return Path(home) / "data"
    return _xdg("XDG_DATA_HOME", ".local/share") / "qtui"


def config_dir() -> Path:
    home = os.environ.get("QTUI_HOME")
    if home:
        return Path(home) / "config"
    return _xdg("XDG_CONFIG_HOME", ".config") / "qtui"


def variants_dir() -> Path:
    return data_dir() / "variants"
