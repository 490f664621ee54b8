"""Textual's Footer, without the leak of its recompose.

Textual's ``Footer`` recomposes whenever the bindings change (every screen switch, many focus
changes) and binds each new key's ``compact`` to itself (``data_bind``); it drops the watchers of
keys that are gone only when ``compact`` changes, which it never does in qtui. So every key a
footer ever showed stayed alive, with its styles and render caches: about 70 widgets (and ~1.7 MB)
per tour of Dashboard / Quantize / Chat in the soak (bench/soak.py, issue 13). This footer drops
those watchers before it composes the new keys.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer as TextualFooter


class Footer(TextualFooter):
    def compose(self) -> ComposeResult:
        watchers = getattr(self, "__watchers", {}).get("compact")
        if watchers:  # the keys of the previous composition are removed (detached) by now
            watchers[:] = [(node, callback) for node, callback in watchers if node.is_attached]
        yield from super().compose()
