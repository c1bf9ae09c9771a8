"""The CI gate: measured runs held to the user's bounds, as data (what ``vramplan validate
--max-median-error P --max-underestimate P`` and :mod:`vramplan.testing` act on).

Two bounds, asymmetric as the errors are (an underestimate is what crashes a run):

- the **median** |error| over the compared rows must not exceed ``max_median_error_pct``;
  when it does, the rows beyond the bound are the ones listed (they pull the median up);
- no row may be more than ``max_underestimate_pct`` under its measurement: each such row fails.

Whatever the bounds, an out-of-memory row the estimate calls ``fits`` on its card fails
(vramplan/verdict.py: fits / tight / does not fit; ``tight`` passes, as in the summary's
``oom_predicted_fit``). A row the comparison excluded is skipped with its reason. The gate's
JUnit XML (:func:`junit_xml`) has one testcase per row. Torch-free.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vramplan.comparison import Comparison, Summary
from vramplan.errors import VramplanError, one_line, shown

__all__ = ["Bounds", "GateResult", "RowResult", "check", "failure_lines", "junit_xml", "parse_bound"]

Status = Literal["passed", "failed", "skipped"]
#: characters XML 1.0 cannot hold (a CSV's reason or id may carry them): dropped from the JUnit file
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class Bounds(BaseModel):
    """The user's bounds in % (None: not checked)."""

    model_config = ConfigDict(frozen=True)
    max_median_error_pct: float | None = None
    max_underestimate_pct: float | None = None

    @property
    def given(self) -> bool:
        return self.max_median_error_pct is not None or self.max_underestimate_pct is not None


class RowResult(BaseModel):
    """One row's testcase: passed, failed (``message`` says which bound) or skipped (the exclusion)."""

    model_config = ConfigDict(frozen=True)
    id: str
    line: int | None
    model: str
    method: str
    status: Status
    error_pct: float | None
    message: str = ""


class GateResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    bounds: Bounds
    #: rows whose error was compared (outcome ok), and rows excluded
    compared: int
    excluded: int
    median_abs_pct: float | None
    worst_under_pct: float | None
    median_ok: bool
    underestimate_ok: bool
    #: out-of-memory rows the estimate calls fits
    oom_called_fits: list[str]
    cases: list[RowResult]
    ok: bool

    @property
    def failures(self) -> list[RowResult]:
        return [c for c in self.cases if c.status == "failed"]

    def summary_line(self) -> str:
        """The line a CI log shows: ``validate: 23 rows, median 4.0% (bound 5%), worst
        underestimate -13.5% (bound 15%): ok`` (or ``: FAILED``)."""
        b = self.bounds
        median = "no row compared" if self.median_abs_pct is None else f"median {self.median_abs_pct:.1f}%"
        if b.max_median_error_pct is not None:
            median += f" (bound {b.max_median_error_pct:g}%)"
        under = (
            "no underestimate" if self.worst_under_pct is None else f"worst underestimate {self.worst_under_pct:+.1f}%"
        )
        if b.max_underestimate_pct is not None:
            under += f" (bound {b.max_underestimate_pct:g}%)"
        parts = [f"validate: {self.compared} rows", median, under]
        if self.oom_called_fits:
            n = len(self.oom_called_fits)
            parts.append(f"{n} out-of-memory row{'s' if n > 1 else ''} called fits")
        return ", ".join(parts) + (": ok" if self.ok else ": FAILED")


def parse_bound(text: str, field: str) -> float:
    """A bound as the user wrote it (``5``, ``5%``, ``2.5``): a finite percentage from 0 to 1000,
    else a one-line VramplanError naming ``field``."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= 1000:
        raise VramplanError(field, f"{shown(text)}: give a percentage from 0 to 1000 (5 or 5%)")
    return value


def _case(row: Comparison, bounds: Bounds, median_ok: bool) -> RowResult:
    base: dict[str, Any] = dict(id=row.id, line=row.line, model=row.model, method=row.method, error_pct=row.error_pct)
    if row.excluded:
        return RowResult(**base, status="skipped", message=row.reason or row.code)
    if row.outcome == "oom":
        if row.verdict == "fits":
            return RowResult(**base, status="failed", message="ran out of memory; the estimate calls it fits")
        return RowResult(**base, status="passed", message=f"ran out of memory; the estimate says {row.verdict}")
    if not row.counted or row.error_pct is None:
        return RowResult(**base, status="skipped", message="not compared")
    err = row.error_pct
    under = bounds.max_underestimate_pct
    if under is not None and err < -under:
        return RowResult(**base, status="failed", message=f"{err:+.1f}% under, beyond the bound of {under:g}%")
    median = bounds.max_median_error_pct
    if not median_ok and median is not None and abs(err) > median:
        return RowResult(**base, status="failed", message=f"|error| {abs(err):.1f}% above the median bound {median:g}%")
    return RowResult(**base, status="passed", message=f"{err:+.1f}%")


def check(rows: list[Comparison], summary: Summary, bounds: Bounds) -> GateResult:
    """The rows and their summary (vramplan.comparison) against ``bounds``."""
    median, worst = summary.overall.median_abs_pct, summary.overall.worst_under_pct
    median_ok = bounds.max_median_error_pct is None or (median is not None and median <= bounds.max_median_error_pct)
    under_ok = bounds.max_underestimate_pct is None or worst is None or worst >= -bounds.max_underestimate_pct
    cases = [_case(r, bounds, median_ok) for r in rows]
    return GateResult(
        bounds=bounds,
        compared=summary.compared,
        excluded=summary.excluded,
        median_abs_pct=median,
        worst_under_pct=worst,
        median_ok=median_ok,
        underestimate_ok=under_ok,
        oom_called_fits=list(summary.oom_predicted_fit),
        cases=cases,
        ok=median_ok and under_ok and not any(c.status == "failed" for c in cases),
    )


def failure_lines(result: GateResult) -> list[str]:
    """One line a failing row (its id, line and error), then the summary line."""
    lines = []
    for c in result.failures:
        where = f" (line {c.line})" if c.line is not None else ""
        lines.append(f"  failed: {one_line(c.id)}{where}: {c.message}")
    if not result.median_ok and result.median_abs_pct is None:
        lines.append("  failed: no row was compared, so the median bound cannot hold")
    return [*lines, result.summary_line()]


def _xml(text: str) -> str:
    return _NOT_XML.sub("", text)


def junit_xml(result: GateResult, name: str = "vramplan validate") -> bytes:
    """JUnit XML: one ``testsuite`` named ``name``, one ``testcase`` a row (``failure`` for a
    row out of bounds, ``skipped`` with the reason for an excluded one), the summary line and
    the bounds as the suite's properties. A failed median with no row beyond its bound still
    shows as a failing ``median`` testcase."""
    cases = list(result.cases)
    if not result.median_ok and not any(c.status == "failed" and "median" in c.message for c in cases):
        cases.append(
            RowResult(
                id="median",
                line=None,
                model="",
                method="",
                status="failed",
                error_pct=result.median_abs_pct,
                message=result.summary_line(),
            )
        )
    failures = sum(c.status == "failed" for c in cases)
    skipped = sum(c.status == "skipped" for c in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": _xml(name), **counts})
    suite = ET.SubElement(root, "testsuite", {"name": _xml(name), **counts})
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("summary", result.summary_line()),
        ("max_median_error_pct", result.bounds.max_median_error_pct),
        ("max_underestimate_pct", result.bounds.max_underestimate_pct),
        ("median_abs_pct", result.median_abs_pct),
        ("worst_under_pct", result.worst_under_pct),
    ):
        if value is not None:
            ET.SubElement(props, "property", {"name": key, "value": _xml(str(value))})
    for c in cases:
        label = ", ".join(x for x in (c.model, c.method) if x)
        attrs = {"classname": "vramplan.validate", "name": _xml(f"{c.id} ({label})" if label else c.id)}
        if c.line is not None:
            attrs["line"] = str(c.line)
        case = ET.SubElement(suite, "testcase", attrs)
        if c.status == "failed":
            ET.SubElement(case, "failure", {"message": _xml(c.message)}).text = _xml(c.message)
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", {"message": _xml(c.message)})
        else:
            ET.SubElement(case, "system-out").text = _xml(c.message)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
