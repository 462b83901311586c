"""Text from the data (a condition, a setting, a description) as it may be printed to a
terminal: a character that is not printable (controls, C1 controls such as CSI U+009B,
bidi overrides such as U+202E, line and paragraph separators, zero-width characters)
would let the data move the cursor, recolour, hide or reorder what a reviewer reads."""

from __future__ import annotations

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_unprintable(text: str) -> str:
    """`text` with every character `str.isprintable` refuses (a space is kept) written as
    an escape: `\\n`, `\\r`, `\\t`, else `\\xHH`, `\\uHHHH` or `\\UHHHHHHHH`; a backslash
    stays as it is. Printable text comes back unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _SHORT.get(c) or _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
