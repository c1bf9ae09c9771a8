"""One error type for every bad input: it names the field and what is allowed."""

from __future__ import annotations

import difflib
from typing import Any

#: the longest user value an error message echoes; longer ones are cut in the middle.
SHOWN_CHARS = 80


def one_line(text: str) -> str:
    """``text`` with every control or non-printable character escaped as ``repr`` writes it
    (``\\n``, ``\\x1b``, ``\\u200b``), so a message stays one line and moves no cursor."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` cut in the middle, with its length, when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]}...{text[-half:]} ({len(text):,} characters)"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``value`` as an error message echoes it: ``repr`` (strings quoted and escaped), an
    integer too long to print named by its size, and anything longer than ``limit``
    characters cut in the middle with its length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = one_line(repr(value))
    except (ValueError, RecursionError):  # an int nested in a list past the int-str limit, a deep list
        return f"a {type(value).__name__}"
    return cut(text, limit)


class VramplanError(ValueError):
    """Bad input. ``str(err)`` is one line: ``<field>: <what is wrong and what is allowed>``,
    with control characters escaped."""

    def __init__(self, field: str, message: str) -> None:
        self.field = one_line(str(field))
        self.message = one_line(str(message))
        super().__init__(f"{self.field}: {self.message}")


class DoesNotFit(VramplanError):
    """A request that needs a fitting plan (emitting a config) got one that does not fit."""


def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The catalog entries nearest to ``name`` (difflib ratio, then prefix matches)."""
    low = name.lower()[:100]  # difflib is quadratic: a long name is no closer for its tail
    by_low = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(low, list(by_low), n=n, cutoff=0.5)
    if len(hits) < n:
        hits += [c for c in by_low if (low in c or c in low) and c not in hits][: n - len(hits)]
    return [by_low[h] for h in hits]
