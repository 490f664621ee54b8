"""Text from outside (prompts, model output, file names in messages) made safe to put on a terminal.

A model can emit any byte sequence its tokenizer knows, and a prompt or a path can hold anything a
user pasted: an ANSI escape (``ESC[2J`` clears the screen, ``ESC]0;...BEL`` retitles the window,
OSC 52 writes the clipboard), a carriage return that overwrites the line, a bidi override that
reorders what is shown. :func:`visible` writes every such character as a visible escape
(``\\x1b``, ``\\u202e``) and keeps newlines and tabs; printable text, any script, is unchanged.
"""

from __future__ import annotations

KEEP = {"\n", "\t"}
BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_TABLE = {
    code: _escape(code)
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *BIDI]
    if chr(code) not in KEEP
}


def visible(text: str) -> str:
    """``text`` with control characters, escapes and bidi overrides written as visible escapes."""
    return text.translate(_TABLE)
