"""How sizes are shown to a person, in the app and on the command line."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """Decimal units, one decimal above bytes: ``512 B``, ``1.5 KB``, ``20.7 MB``, ``3.0 TB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
