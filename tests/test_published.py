"""The published-measurements table, `vramplan validate --csv`, the calibration and the gate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import measured_row
from vramplan.calibrate import fit
from vramplan.memory.overhead import overhead_constants
from vramplan.models import load_model
from vramplan.published import (
    COLUMNS,
    TIERS,
    compare_csv,
    exclusion,
    published_csv,
    read_rows,
    row_estimate,
    row_setup,
    summarize,
)
from vramplan.setup import METHODS, OFFLOADS, OPTIMIZERS, PARALLELS, PRECISIONS, QUANTS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "published_measurements.csv"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with published_csv().open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def compared():
    return compare_csv(published_csv())


def test_table_schema_and_values(rows: list[dict[str, str]]) -> None:
    assert len(rows) >= 150
    assert list(rows[0]) == COLUMNS
    allowed = {
        "method": set(METHODS) | {"inference"},
        "quant": set(QUANTS),
        "precision": set(PRECISIONS),
        "optimizer": set(OPTIMIZERS),
        "parallel": set(PARALLELS),
        "offload": set(OFFLOADS),
        "grad_checkpointing": {"true", "false"},
        "attention": {"eager", "sdpa", "flash-attn-2"},
        "measured_unit": {"GiB", "GB"},
        "measurement": set(TIERS),
        "outcome": {"ok", "oom"},
    }
    for row in rows:
        assert row["source"].startswith("github.com/"), row["id"]
        for field, ok in allowed.items():
            assert not row[field] or row[field] in ok, (row["id"], field, row[field])
    assert len({r["id"] for r in rows}) == len(rows)


def test_every_counted_row_loads_and_is_a_valid_setup(rows: list[dict[str, str]]) -> None:
    counted = [r for r in rows if not exclusion(r)]
    assert len(counted) >= 120
    for row in counted:
        load_model(row["model"])
        row_setup(row)


@pytest.mark.skipif(not SHARED.exists(), reason="shared/data not beside the checkout")
def test_curation_reproduces_the_table(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import curate_published
    finally:
        sys.path.pop(0)
    fresh = curate_published.curate(SHARED)
    with published_csv().open(newline="") as fh:
        stored = list(csv.DictReader(fh))
    assert fresh == stored
    # every source row is kept, excluded ones with their reason
    with SHARED.open(newline="") as fh:
        source_ids = {r["id"] for r in csv.DictReader(fh)}
    assert source_ids <= {r["id"] for r in stored}


def test_gate_holds(compared) -> None:
    """The issue's CI gate over complete rows: median |error| <= 8%, p90 <= 18%, no oom row
    called a fit and no row underestimated by more than 15%."""
    s = summarize(compared)
    assert s.compared >= 115  # 126 before each row named its trainer; torchtune's 7 have no policy
    assert s.overall.median_abs_pct is not None and s.overall.median_abs_pct <= 8.0
    assert s.oom_rows >= 1 and s.oom_predicted_fit == []
    assert s.overall.p90_abs_pct is not None and s.overall.p90_abs_pct <= 18.0
    unders = [r.id for r in compared if r.counted and r.error_pct is not None and r.error_pct < -15]
    assert unders == [], unders
    # today's figures, pinned so that they can only get better: p90 12.5%, worst -13.9%
    assert s.overall.p90_abs_pct <= 13.0
    assert s.overall.worst_under_pct is not None and s.overall.worst_under_pct >= -14.0


def test_slack_fit_is_a_robust_line(compared) -> None:
    """The allocator's slack is base + fraction x allocated, the Theil-Sen line through the
    reserved rows once the cached logits' block is taken out, its slope kept non-negative
    (slack does not shrink as the allocated peak grows; with a negative median slope the
    best constant, the median slack, is kept). The line is the median one: about half the
    rows above it, half below."""
    from vramplan.calibrate import theil_sen

    consts = overhead_constants()
    assert consts["allocator_slack_base_bytes"] > 0 and 0 <= consts["allocator_slack_fraction"] < 0.2
    slope, icpt = theil_sen([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0), (4.0, 100.0)])
    assert slope == pytest.approx(2.0) and icpt == pytest.approx(1.0)  # one outlier does not pull it
    rows = [r for r in compared if r.counted and r.measurement == "reserved"]
    over = sum(r.error_pct > 0 for r in rows)  # type: ignore[operator]
    assert abs(over - (len(rows) - over)) <= 2


def test_slack_slope_is_kept_non_negative(tmp_path) -> None:
    """Reserved rows whose slack falls as the allocated peak grows give no negative slope:
    the fit keeps a constant, their median slack."""
    rows = [r for r in read_rows(published_csv()) if r["id"] in ("272", "273", "275")]
    # the same three runs, the largest one with the least slack
    for r, value in zip(rows, ("21.4", "21.3", "21.9"), strict=True):
        r["measured_value"] = value
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    fitted = fit(path)
    assert fitted["allocator_slack_fraction"]["value"] == 0.0
    slack = []
    for r in rows:
        est = row_estimate(r, path.parent)
        held = est.terms.get("overhead/logits_segment", 0)
        slack.append(float(r["measured_value"]) * 2**30 - est.allocated_bytes - held)
    median = sorted(slack)[1]
    assert median > 0
    assert fitted["allocator_slack_base_bytes"]["value"] == pytest.approx(median, abs=2 << 20)


def test_known_kind_rows_are_close(compared) -> None:
    """Rows whose measurement kind is stated and that ran transformers' own models. The
    furthest is PEFT's full fine-tuning of Llama-3.2-3B (-4.1%): its traced step replayed
    through the caching allocator gives 34.64 GiB, the estimate 34.72; the published 36.2
    covers the whole run, evaluation and batches of other lengths included."""
    modern = [r for r in compared if r.counted and r.measurement != "unknown" and "torchtune" not in r.source]
    assert len(modern) >= 13
    assert max(abs(r.error_pct) for r in modern) <= 4.5  # type: ignore[arg-type]  (README: "within 4.5%")


def test_calibration_is_stored_as_fitted() -> None:
    fitted = fit(published_csv())
    stored = overhead_constants()
    data = json.loads((ROOT / "tables" / "overheads.json").read_text())
    for name, f in fitted.items():
        assert f["value"] == pytest.approx(stored[name], abs=1e-3), name
        assert data[name]["fitted_on"] == f["fitted_on"]
        assert f["fitted_on"], name
    assert fitted["kv_cache_factor"]["single_source"] is True
    assert fitted["allocator_slack_fraction"]["single_source"] is False
    assert fitted["kv_cache_factor"]["value"] >= 1.0


@pytest.mark.e2e
def test_cli_table_and_json() -> None:
    out = run("validate", "--csv", str(published_csv()))
    assert out.returncode == 0, out.stderr
    assert "median |error|" in out.stdout and "oom rows" in out.stdout and "source github.com/QwenLM/Qwen" in out.stdout
    js = run("validate", "--csv", str(published_csv()), "--json")
    data = json.loads(js.stdout)
    assert set(data) == {"rows", "summary"}
    first = next(r for r in data["rows"] if r["error_pct"] is not None)
    assert {"id", "estimate_bytes", "measured_bytes", "error_pct"} <= set(first)
    assert first["error_pct"] == pytest.approx(
        100 * (first["estimate_bytes"] - first["measured_bytes"]) / first["measured_bytes"]
    )
    assert data["summary"]["overall"]["rows"] == data["summary"]["compared"]


def _user_csv(tmp_path: Path, tiny_config_file: str, **over: str) -> Path:
    cfg = tmp_path / "my" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(Path(tiny_config_file).read_text())
    mine = dict(id="mine-1", model="my/config.json", gpu="4090", measured_value="0.5", measurement="unknown")
    row = measured_row(**(mine | over))
    path = tmp_path / "runs.csv"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerow(row)
    return path


@pytest.mark.e2e
def test_user_csv_with_config_path(tmp_path: Path, tiny_config_file: str) -> None:
    path = _user_csv(tmp_path, tiny_config_file)
    data = json.loads(run("validate", "--csv", str(path), "--json").stdout)
    row = data["rows"][0]
    assert row["tier"] == "reserved"  # unknown kind is compared against reserved
    assert row["measured_bytes"] == 2**29
    assert row["estimate_bytes"] > 0


@pytest.mark.parametrize(
    "over, field",
    [
        ({"measurement": "peak"}, "measurement"),
        ({"measured_unit": "MB"}, "measured_unit"),
        ({"precision": "fp8"}, "precision"),
    ],
)
@pytest.mark.e2e
def test_bad_csv_values_exit_2_naming_the_field(tmp_path: Path, tiny_config_file: str, over, field) -> None:
    """A bad value excludes its row (tests/test_validate_rows.py); a file whose only row is
    excluded has nothing to compare: exit 2, one line naming the row, the field and the value."""
    out = run("validate", "--csv", str(_user_csv(tmp_path, tiny_config_file, **over)))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert f"unknown {field} {next(iter(over.values()))!r}" in out.stderr and "mine-1" in out.stderr


@pytest.mark.e2e
def test_missing_column_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,model\n1,qwen2.5-7b\n")
    out = run("validate", "--csv", str(path))
    assert out.returncode == 2 and "lacks column" in out.stderr


@pytest.mark.e2e
def test_excel_bom_and_non_utf8(tmp_path: Path, tiny_config_file: str) -> None:
    path = _user_csv(tmp_path, tiny_config_file)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert run("validate", "--csv", str(path)).returncode == 0
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(path.read_bytes()[3:].replace(b"my lab notebook", b"caf\xe9"))
    out = run("validate", "--csv", str(bad))
    assert out.returncode == 2 and "UTF-8" in out.stderr
