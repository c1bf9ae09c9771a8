"""Fit the terms only a GPU spends on published runs whose measurement kind is known.

Fitted, in this order (each fit sees the constants fitted before it):

1. ``generation_dequant_factor`` and ``kv_cache_factor``: on ``allocated`` generation rows
   (GPTQ/AWQ ones for the first), ``measured = rest + k_d · dequant + k_kv · kv``
   by least squares, where ``rest`` is the allocated estimate without those two terms.
2. ``allocator_slack_base_bytes`` and ``allocator_slack_fraction``: on ``reserved`` rows,
   ``measured - allocated - logits_segment = base + f · allocated``, by the Theil-Sen line
   (``f`` the median of the pairwise slopes, ``base`` the median intercept), which one
   framework's outliers do not pull. The cached logits' block is computed, not fitted
   (memory/loss.py). Slack does not shrink as the allocated peak grows: a negative median
   slope gives ``f = 0`` and ``base`` the median slack.

The slack is fitted on the rows' measured reserved against their ESTIMATED allocated peak
(no published row of this kind measures both), so it leans on the estimate of each row's
trainer. torchtune's reserved rows (its own recipes: no policy, so ``vramplan validate``
leaves them out) stay in this fit with their allocated peak estimated as the plain
transformers loop (``hf``) would allocate the same setup: a stated approximation, listed in
``estimated_as_hf``. Refitting without them leaves 4 rows of one source and two
configurations (PEFT's MetaMathQA: base 0, fraction 0.126, every residual +4.5..+8%) and
breaks the published gate (median 6.6%, 90th percentile 17.4%), so they are kept.

Rows of ``unknown`` kind are never fitted on. The CUDA context and the cuBLAS workspace
are not fitted: no published row measures the device tier, and the workspace (MiB) is
below what any row resolves; they keep their documented values. Each fitted constant
records the row ids it came from, the sources behind them (``single_source`` when only
one), and the residual of every row after the fit. Torch-free.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vramplan.memory.inference import kv_cache_tensor_bytes
from vramplan.memory.overhead import dequant_workspace_bytes, overhead_constants
from vramplan.models import load_model
from vramplan.published import _model, compare, exclusion, read_rows, row_estimate, row_setup, trainer_exclusion
from vramplan.tables import tables_dir

#: reserved beyond allocated that the plan models on its own, taken out before the slack is fitted
HELD = ("overhead/logits_segment", "overhead/fsdp_stream_pools", "overhead/forward_segments")
FITTED = ("generation_dequant_factor", "kv_cache_factor", "allocator_slack_base_bytes", "allocator_slack_fraction")


def _usable(path: Path, kind: str, any_trainer: bool = False) -> list[dict[str, str]]:
    """The ``kind`` rows that may be fitted on; ``any_trainer`` keeps rows from a trainer with no policy."""
    rows = read_rows(path)
    return [
        r
        for r in rows
        if r.get("measurement") == kind
        and (r.get("outcome") or "ok") == "ok"
        and not exclusion(r, trainer=not any_trainer)
    ]


def _measured(row: dict[str, str], base: Path) -> int:
    c = compare(row, base)
    assert c.measured_bytes is not None
    return c.measured_bytes


def _source(row: dict[str, str]) -> str:
    return row.get("source", "").split(" ")[0]


def _lstsq2(xs: Sequence[tuple[float, float]], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares of y = a·x1 + b·x2 (no intercept); a lone column is fitted alone."""
    s11 = sum(a * a for a, _ in xs)
    s22 = sum(b * b for _, b in xs)
    s12 = sum(a * b for a, b in xs)
    t1 = sum(a * y for (a, _), y in zip(xs, ys, strict=True))
    t2 = sum(b * y for (_, b), y in zip(xs, ys, strict=True))
    det = s11 * s22 - s12 * s12
    if s11 and s22 and abs(det) > 1e-9 * s11 * s22:
        return (t1 * s22 - t2 * s12) / det, (t2 * s11 - t1 * s12) / det
    return (t1 / s11 if s11 else 1.0), (t2 / s22 if s22 else 1.0)


def theil_sen(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Slope and intercept of the Theil-Sen line through (x, y) points: the median of the
    slopes between every pair with distinct x, then the median of ``y - slope · x``."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1 :] if x2 != x1]
    slope = statistics.median(slopes) if slopes else 0.0
    return slope, statistics.median(y - slope * x for x, y in points)


def fit(path: Path) -> dict[str, dict[str, Any]]:
    """The fitted constants with their rows, sources and per-row residuals (% of measured)."""
    base = path.parent
    consts = overhead_constants()
    out: dict[str, dict[str, Any]] = {}

    # 1. in-kernel dequantization and the KV cache, on allocated rows
    alloc = _usable(path, "allocated")
    xs, ys, ids, srcs, rests = [], [], [], [], []
    for r in alloc:
        est = row_estimate(r, base)
        spec, setup = load_model(_model(r, base)), row_setup(r)
        block = r.get("quant") in ("gptq-int4", "awq-int4") and r.get("method") == "inference"
        d = dequant_workspace_bytes(spec, setup) if block else 0
        kv = kv_cache_tensor_bytes(spec, setup) if r.get("method") == "inference" else 0
        if not d and not kv:
            continue
        rest = est.allocated_bytes - (est.terms.get("overhead/dequant_workspace", 0) if block else 0)
        rest -= est.terms.get("inference/kv_cache", 0)
        xs.append((d, kv))
        ys.append(_measured(r, base) - rest)
        ids.append(r["id"])
        srcs.append(_source(r))
        rests.append(rest)
    kd, kk = _lstsq2(xs, ys)
    kd = max(0.0, kd)
    # the cache cannot be smaller than its tensors: a fit below 1 would mean other terms
    # (the prefill transient, taken over all tokens) are over-counted, so it is floored at 1
    kk = max(1.0, kk)
    resid = {
        i: round(100.0 * (rest + kd * d + kk * kv - (y + rest)) / (y + rest), 3)
        for i, rest, (d, kv), y in zip(ids, rests, xs, ys, strict=True)
    }
    for name, value, used in (
        ("generation_dequant_factor", kd, [i for i, (d, _) in zip(ids, xs, strict=True) if d]),
        ("kv_cache_factor", kk, [i for i, (_, kv) in zip(ids, xs, strict=True) if kv]),
    ):
        sources = sorted({s for i, s in zip(ids, srcs, strict=True) if i in used})
        out[name] = {
            "value": round(value, 4),
            "fitted_on": used,
            "sources": sources,
            "single_source": len(sources) <= 1,
            "residuals_pct": {i: resid[i] for i in used},
        }

    # 2. the caching allocator's slack, on reserved rows
    res = _usable(path, "reserved", any_trainer=True)
    points: dict[str, tuple[float, float]] = {}
    cached: dict[str, int] = {}
    srcs2 = set()
    as_hf = [r["id"] for r in res if trainer_exclusion(r) is not None]
    for r in res:
        est = row_estimate(r, base, trainer="hf" if r["id"] in as_hf else None)
        allocated = est.allocated_bytes  # reserved rows are training runs: no generation terms
        # modelled on their own: the cached logits' block (memory/loss.py), FSDP's stream pools (memory/fsdp.py),
        # the checkpointed layers' cached blocks (memory/forward_cache.py)
        held = sum(est.terms.get(k, 0) for k in HELD)
        points[r["id"]] = (float(allocated), float(_measured(r, base) - allocated - held))
        cached[r["id"]] = held
        srcs2.add(_source(r))
    if len(points) >= 2:
        f, b = theil_sen(list(points.values()))
        if f < 0:  # slack cannot shrink as the allocated peak grows: the constant that fits best
            f, b = 0.0, statistics.median(y for _, y in points.values())
    else:
        f, b = consts["allocator_slack_fraction"], consts["allocator_slack_base_bytes"]
    # stored as used: a non-negative base on the 2 MiB grid, a non-negative fraction to 4 decimals
    b, f = max(0, round(b / (2 << 20)) * (2 << 20)), max(0.0, round(f, 4))
    resid = {
        i: round(100.0 * ((a + cached[i] + b + f * a) / (a + cached[i] + y) - 1), 3) for i, (a, y) in points.items()
    }
    for name, value in (("allocator_slack_base_bytes", b), ("allocator_slack_fraction", f)):
        out[name] = {
            "value": round(value, 4),
            "fitted_on": list(points),
            "sources": sorted(srcs2),
            "single_source": len(srcs2) <= 1,
            "residuals_pct": resid,
            "estimated_as_hf": as_hf,
        }
    return out


def write(fitted: dict[str, dict[str, Any]], path: Path | None = None) -> Path:
    """Store fitted values beside their documented sources in tables/overheads.json."""
    path = path or tables_dir() / "overheads.json"
    data = json.loads(path.read_text())
    for name, f in fitted.items():
        entry = data[name]
        entry.update(f)
    path.write_text(json.dumps(data, indent=2) + "\n")
    overhead_constants.cache_clear()
    return path
