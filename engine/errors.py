"""User-facing errors: one clear message, never a traceback."""

from __future__ import annotations


class QtuiError(Exception):
    """An error a user can act on. ``str(err)`` is the whole message shown to them."""


class SourceError(QtuiError):
    """A model source could not be found, fetched or loaded."""


class StoreError(QtuiError):
    """A saved variant is missing, corrupted or cannot be written."""


class FormatError(QtuiError):
    """An unknown or invalid quantization format was asked for."""


class Cancelled(QtuiError):
    """A long-running operation was cancelled through its ``threading.Event``."""
