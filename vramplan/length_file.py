"""The lengths of a dataset's samples, read from a file (``--lengths-file FILE``): the
distribution memory/lengths.py draws the batches' lengths from, in place of a mean.

vramplan does not tokenize (no tokenizer ships with it, and the plan never imports one): the
file holds each sample's token count, as the trainer's tokenizer and chat template make it.

- text: one integer a line (blank lines and lines starting with ``#`` skipped);
- CSV with a header row: the column named ``length``, ``num_tokens``, ``n_tokens``,
  ``tokens`` or ``input_ids_len`` (or the only column);
- JSON Lines, or a JSON array: a sample is an integer, or an object with ``input_ids`` (its
  length counts, as a tokenized dataset saved with ``Dataset.to_json`` has it) or one of the
  count keys above.

It is kept as counts by length: exact up to 511 tokens, then in bins 1/256 of an octave wide
(0.4%), each sample counted at its bin's top (at most 0.4% longer than it is, on the safe
side), which keeps the longest samples, those that decide the cache, as the file has them.
The result is a frozen, hashable Setup field that a plan's JSON repeats (at most 256 bins an
octave: a few thousand pairs). This module reads only data: Setup imports it.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vramplan.errors import VramplanError
from vramplan.limits import MAX_SEQ_LEN

FIELD = "lengths_file"
#: bins an octave of lengths (2^k up to 2^(k+1) tokens), each 0.4% wide; below twice this many
#: tokens every length is a bin of its own
BINS_PER_OCTAVE = 256
#: what a sample's count is called in a CSV header or a JSON object
COUNT_KEYS = ("length", "num_tokens", "n_tokens", "tokens", "input_ids_len")
#: the largest file read (a dataset's token counts are a few bytes a sample)
MAX_FILE_BYTES = 1 << 30
#: a longer sample counts as this long: beyond every cap a plan takes, it is cut or dropped alike
LONGEST = MAX_SEQ_LEN + 1
#: what a trainer does with a sample longer than the cap: cut it to the cap, or drop it
OverCap = Literal["truncate", "drop"]


def bin_top(n: int) -> int:
    """The top of ``n``'s bin: ``n`` rounded up to the next 1/:data:`BINS_PER_OCTAVE` of its octave
    (``n`` itself below 512 tokens; a sample is counted at most 0.4% longer than it is)."""
    width = 1 << max(0, n.bit_length() - BINS_PER_OCTAVE.bit_length())
    return -(-n // width) * width


class LengthDistribution(BaseModel):
    """A file's sample lengths, counted by bin: ``bins`` holds ``(length, samples)`` for each
    non-empty bin, shortest first, every sample at its bin's top (:func:`bin_top`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    """The file the lengths were read from."""
    samples: int = Field(ge=1)
    """How many samples the file holds."""
    mean: float = Field(gt=0)
    """Their mean length (a sample past :data:`LONGEST` counted at it)."""
    bins: tuple[tuple[int, int], ...]

    def at_most(self, x: float) -> int:
        """How many samples are at most ``x`` tokens long."""
        tops, cumulative = _cumulative(self.bins)
        return cumulative[bisect.bisect_right(tops, x)]

    def cdf(self, x: float) -> float:
        """P(a sample's length <= x)."""
        return self.at_most(x) / self.samples

    def over(self, cap: int) -> float:
        """The share of the samples longer than ``cap``."""
        return 1.0 - self.cdf(cap)

    def kept_cdf(self, cap: int, over_cap: OverCap) -> list[float]:
        """``F[x]`` = P(a trained sample's length <= x) for x in 0..cap: the longer samples cut to
        the cap (an atom there) or dropped (the rest scaled up)."""
        kept = self.kept_samples(cap, over_cap)
        if kept == 0:
            raise VramplanError(
                FIELD,
                f"every sample in {self.source} is longer than --seq-len {cap}: the trainer drops them all"
                " (raise --seq-len)",
            )
        out = [0.0] * (cap + 1)
        below = 0
        j = 0
        for x in range(cap + 1):
            while j < len(self.bins) and self.bins[j][0] <= x:
                below += self.bins[j][1]
                j += 1
            out[x] = below / kept
        out[cap] = 1.0
        return out

    def kept_mean(self, cap: int, over_cap: OverCap) -> float:
        """The mean length of a trained sample at ``cap``."""
        total = sum(x * n for x, n in self.bins if x <= cap)
        if over_cap == "truncate":
            total += cap * (self.samples - self.at_most(cap))
        kept = self.kept_samples(cap, over_cap)
        return total / kept if kept else float(cap)

    def kept_samples(self, cap: int, over_cap: OverCap) -> int:
        """How many samples train at ``cap``."""
        return self.samples if over_cap == "truncate" else self.at_most(cap)


@cache
def _cumulative(bins: tuple[tuple[int, int], ...]) -> tuple[list[int], list[int]]:
    """The bins' tops and, for each index, how many samples lie in the bins before it."""
    tops = [x for x, _ in bins]
    cumulative = [0]
    for _, n in bins:
        cumulative.append(cumulative[-1] + n)
    return tops, cumulative


def from_lengths(lengths: list[int], source: str) -> LengthDistribution:
    """The distribution of ``lengths`` (each a sample's token count, at least 1)."""
    if not lengths:
        raise VramplanError(FIELD, f"{source} holds no sample lengths")
    counts = Counter(bin_top(n) for n in lengths)
    return LengthDistribution(
        source=source, samples=len(lengths), mean=sum(lengths) / len(lengths), bins=tuple(sorted(counts.items()))
    )


def _count(value: Any, where: str) -> int:
    """One sample's token count from a JSON value."""
    if isinstance(value, dict):
        if isinstance(value.get("input_ids"), list):
            value = len(value["input_ids"])
        else:
            keys = [k for k in COUNT_KEYS if k in value]
            if not keys:
                raise VramplanError(
                    FIELD,
                    f"{where}: no token count (input_ids, or one of {', '.join(COUNT_KEYS)}); vramplan does not"
                    " tokenize: count each sample's tokens with the model's tokenizer and chat template",
                )
            value = value[keys[0]]
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise VramplanError(FIELD, f"{where}: a token count is a whole number (got {value!r:.40})")
    return _checked(int(value), where)


def _checked(n: int, where: str) -> int:
    if n < 1:
        raise VramplanError(FIELD, f"{where}: a sample holds at least 1 token (got {n})")
    return min(n, LONGEST)


def _from_json(text: str, path: str) -> list[int]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VramplanError(FIELD, f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        return [_count(v, f"{path} item {i + 1}") for i, v in enumerate(data)]
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VramplanError(FIELD, f"{path} line {no} is not JSON: {exc.msg}") from None
        out.append(_count(value, f"{path} line {no}"))
    return out


def _from_csv(text: str, path: str) -> list[int]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    names = [k for k in COUNT_KEYS if k in header]
    first = 2  # the line the counts start on, after the header
    if names:
        col = header.index(names[0])
    elif len(header) == 1:
        col, first = 0, 1 if header[0].isdigit() else 2  # one column, with or without a header
    else:
        raise VramplanError(FIELD, f"{path}: no column named {', '.join(COUNT_KEYS)}")
    out = []
    for no, row in enumerate(rows[first - 1 :], first):
        if not row or not any(c.strip() for c in row):
            continue
        cell = row[col].strip() if col < len(row) else ""
        if not cell.isdigit():
            raise VramplanError(FIELD, f"{path} line {no}: a token count is a whole number (got {cell!r:.40})")
        out.append(_checked(int(cell), f"{path} line {no}"))
    return out


def _from_text(text: str, path: str) -> list[int]:
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        cell = line.strip()
        if not cell or cell.startswith("#"):
            continue
        if not cell.isdigit():
            hint = " (a CSV needs a .csv name, JSON Lines a .jsonl one)" if "," in cell or "{" in cell else ""
            raise VramplanError(
                FIELD, f"{path} line {no}: one token count a line, a whole number (got {cell!r:.40}){hint}"
            )
        out.append(_checked(int(cell), f"{path} line {no}"))
    return out


def read_file(path: str) -> LengthDistribution:
    """The distribution of the sample lengths in the file at ``path``, by its suffix."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise VramplanError(FIELD, f"{path} is larger than 1 GiB: give the token counts alone")
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise VramplanError(FIELD, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise VramplanError(FIELD, f"{path} is not UTF-8 text") from None
    suffix = p.suffix.lower()
    if suffix in (".json", ".jsonl"):
        lengths = _from_json(text, path)
    elif suffix in (".csv", ".tsv"):
        lengths = _from_csv(text.replace("\t", ",") if suffix == ".tsv" else text, path)
    else:
        lengths = _from_text(text, path)
    return from_lengths(lengths, path)


def load(value: Any) -> Any:
    """Setup's validator for the field: a path is read, a list of counts taken as they are, a
    LengthDistribution (or its dict, from a plan's JSON) kept."""
    if isinstance(value, str | Path):
        return read_file(str(value))
    if isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return from_lengths([_checked(v, f"item {i + 1}") for i, v in enumerate(value)], "the lengths given")
    return value
