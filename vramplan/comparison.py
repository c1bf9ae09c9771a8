"""How close the estimates come to measured runs, as data: one :class:`Comparison` per row
(:mod:`vramplan.published` makes them), and their statistics overall, by source and by method
(what ``vramplan validate`` prints and the CI gate reads)."""

from __future__ import annotations

import statistics
from collections import Counter

from pydantic import BaseModel, ConfigDict, computed_field


class Comparison(BaseModel):
    """One row: the estimate at the measured tier, or why it was left out (``code`` and
    ``reason``, both empty for a row that is used)."""

    model_config = ConfigDict(frozen=True)
    id: str
    line: int | None = None
    source: str
    #: the program that ran the measured step (``hf`` for a blank column) and its version as stated
    trainer: str = "hf"
    trainer_version: str = ""
    model: str
    method: str
    outcome: str
    measurement: str
    tier: str
    measured_bytes: int | None
    estimate_bytes: int | None
    error_pct: float | None
    fits: bool | None = None
    #: the verdict on the row's card (vramplan/verdict.py): fits, tight or does not fit (None without a card)
    verdict: str | None = None
    #: what the card must hold (the estimate's device tier), which the verdict weighs
    device_bytes: int | None = None
    #: the phase whose peak the estimate is (the step's, or loading, evaluation, saving)
    phase: str = ""
    code: str = ""
    reason: str = ""
    notes: str = ""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def excluded(self) -> bool:
        return bool(self.code)

    @property
    def counted(self) -> bool:
        return not self.excluded and self.outcome == "ok" and self.error_pct is not None


class Stats(BaseModel):
    model_config = ConfigDict(frozen=True)
    rows: int
    median_abs_pct: float | None
    p90_abs_pct: float | None
    within_10pct: int
    underestimates: int
    worst_under_pct: float | None


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)
    rows: int
    compared: int
    excluded: int
    #: excluded rows by code, most frequent first
    exclusions: dict[str, int] = {}
    overall: Stats
    by_source: dict[str, Stats]
    by_method: dict[str, Stats]
    #: every row's trainer: how many rows name it, of them compared
    by_trainer: dict[str, Stats] = {}
    rows_by_trainer: dict[str, int] = {}
    oom_rows: int
    #: out-of-memory rows the estimate calls fits (the worst error), and calls tight
    oom_predicted_fit: list[str]
    oom_predicted_tight: list[str] = []
    #: rows that ran (outcome ok, on a named card) that the estimate calls does not fit
    ran_predicted_no_fit: list[str] = []
    ran_on_a_card: int = 0
    unknown_vs_reserved: int


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``, interpolated linearly between the ranks around it."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(rows: list[Comparison]) -> Stats:
    errs = [r.error_pct for r in rows if r.counted and r.error_pct is not None]
    if not errs:
        return Stats(
            rows=0, median_abs_pct=None, p90_abs_pct=None, within_10pct=0, underestimates=0, worst_under_pct=None
        )
    abs_ = [abs(e) for e in errs]
    unders = [e for e in errs if e < 0]
    return Stats(
        rows=len(errs),
        median_abs_pct=statistics.median(abs_),
        p90_abs_pct=quantile(abs_, 0.9),
        within_10pct=sum(a <= 10 for a in abs_),
        underestimates=len(unders),
        worst_under_pct=min(unders) if unders else None,
    )


def summarize(rows: list[Comparison]) -> Summary:
    counted = [r for r in rows if r.counted]
    by_source = {s: stats([r for r in counted if r.source == s]) for s in sorted({r.source for r in counted})}
    by_method = {m: stats([r for r in counted if r.method == m]) for m in sorted({r.method for r in counted})}
    ooms = [r for r in rows if r.outcome == "oom" and not r.excluded]
    ran = [r for r in rows if r.outcome == "ok" and not r.excluded and r.verdict is not None]
    return Summary(
        rows=len(rows),
        compared=len(counted),
        excluded=sum(1 for r in rows if r.excluded),
        exclusions=dict(Counter(r.code for r in rows if r.excluded).most_common()),
        overall=stats(counted),
        by_source=by_source,
        by_method=by_method,
        by_trainer={t: stats([r for r in counted if r.trainer == t]) for t in sorted({r.trainer for r in counted})},
        rows_by_trainer=dict(sorted(Counter(r.trainer for r in rows).items())),
        oom_rows=len(ooms),
        oom_predicted_fit=[r.id for r in ooms if r.verdict == "fits"],
        oom_predicted_tight=[r.id for r in ooms if r.verdict == "tight"],
        ran_predicted_no_fit=[r.id for r in ran if r.verdict == "does not fit"],
        ran_on_a_card=len(ran),
        unknown_vs_reserved=sum(1 for r in counted if r.measurement == "unknown"),
    )
