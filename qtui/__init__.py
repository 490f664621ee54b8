"""qtui: the Textual app and the command line. Thin: all computing happens in ``engine``."""

from engine import __version__

__all__ = ["__version__"]
