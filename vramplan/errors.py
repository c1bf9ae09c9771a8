"""One error type for every bad input: it names the field and what is allowed."""

from __future__ import annotations


class VramplanError(ValueError):
    """Bad input. ``str(err)`` is one line: ``<field>: <what is wrong and what is allowed>``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DoesNotFit(VramplanError):
    """A request that needs a fitting plan (emitting a config) got one that does not fit."""


def closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The catalog entries nearest to ``name`` (difflib ratio, then prefix matches)."""
    import difflib

    low = name.lower()
    by_low = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(low, list(by_low), n=n, cutoff=0.5)
    if len(hits) < n:
        hits += [c for c in by_low if (low in c or c in low) and c not in hits][: n - len(hits)]
    return [by_low[h] for h in hits]
