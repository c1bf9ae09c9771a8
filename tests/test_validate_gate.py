"""``vramplan validate`` as a CI gate: bounds, exit status, the rows that break them, the JUnit
file (parsed with xml.etree, written whole or not at all), ``--traced PATH``, vramplan.testing,
and the example workflow's validate step run on examples/ci's data. In-process and torch-free:
the analytic tier, whose run fails if torch is imported."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from vramplan.cli import main
from vramplan.comparison import Comparison, summarize
from vramplan.gate import Bounds, check
from vramplan.testing import assert_within_bounds, gate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ci"
RUNS = EXAMPLE / "runs.csv"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def errors(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float | None]:
    """Every row's error as validate's JSON gives it (no bounds)."""
    code, out, _ = run(["validate", "--csv", str(path), "--json"], capsys)
    assert code == 0
    return {r["id"]: r["error_pct"] for r in json.loads(out)["rows"]}


def workflow_validate_argv() -> list[str]:
    """The ``run:`` of the example workflow's step named validate, as argv."""
    flow = yaml.safe_load((EXAMPLE / ".github" / "workflows" / "vramplan.yml").read_text())
    steps = [s for job in flow["jobs"].values() for s in job["steps"] if s.get("name") == "validate"]
    assert len(steps) == 1
    argv = shlex.split(steps[0]["run"])
    assert argv[:2] == ["vramplan", "validate"]
    return argv[1:]


def test_the_example_workflow_validate_step_passes_on_its_data(tmp_path, monkeypatch, capsys) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    argv = workflow_validate_argv()
    code, out, _ = run(argv, capsys)
    assert code == 0
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("validate: 7 rows, median ") and "(bound 5%)" in summary and "(bound 10%)" in summary
    assert summary.endswith(": ok")
    junit = Path(argv[argv.index("--junit") + 1])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert len(cases) == len(rows_of(RUNS)) == 8
    assert not suite.findall("testcase/failure") and not suite.findall("testcase/skipped")
    assert suite.get("failures") == "0" and suite.get("tests") == "8"


def test_the_example_user_test_runs_and_holds() -> None:
    """examples/ci/tests/ is the user's test, not collected here (testpaths): run it as theirs would."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_test", EXAMPLE / "tests" / "test_vramplan_bounds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.test_estimates_hold_against_measured_runs()


def test_the_example_bounds_hold(capsys) -> None:
    result = assert_within_bounds(RUNS, max_median_error=5, max_underestimate=10)
    assert result.ok and result.compared == 7 and result.oom_called_fits == []
    errs = errors(RUNS, capsys)
    assert result.worst_under_pct == min(e for e in errs.values() if e is not None)


def test_a_bound_that_fails_exits_1_listing_each_row(capsys) -> None:
    errs = {k: v for k, v in errors(RUNS, capsys).items() if v is not None}
    code, out, _ = run(
        ["validate", "--csv", str(RUNS), "--max-median-error", "0.5", "--max-underestimate", "1%"], capsys
    )
    assert code == 1
    lines = out.strip().splitlines()
    listed = {line.split()[1] for line in lines if line.startswith("  failed: ")}
    # under 1% under fails on its own; the median (above 0.5%) lists every row beyond 0.5%
    assert listed == {i for i, e in errs.items() if e < -1 or abs(e) > 0.5}
    assert any(e < -1 for e in errs.values()) and any(-1 <= e < -0.5 or e > 0.5 for e in errs.values())
    assert lines[-1].startswith("validate: 7 rows, median ") and lines[-1].endswith(": FAILED")
    assert "(bound 0.5%)" in lines[-1] and "(bound 1%)" in lines[-1]


def test_only_the_underestimate_bound_fails_rows_under_it(capsys) -> None:
    errs = {k: v for k, v in errors(RUNS, capsys).items() if v is not None}
    code, out, _ = run(["validate", "--csv", str(RUNS), "--max-underestimate", "2"], capsys)
    assert code == 1
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("  failed: ")}
    assert listed == {i for i, e in errs.items() if e < -2} != set()
    assert "median" in out.splitlines()[-1] and "bound 2%" in out.splitlines()[-1]


def test_an_oom_row_called_fits_fails_any_bounds(tmp_path, capsys) -> None:
    rows = rows_of(RUNS)
    ran = next(r for r in rows if r["id"] == "272")
    path = write_rows(tmp_path / "runs.csv", [*rows, {**ran, "id": "272-oom", "outcome": "oom", "measured_value": ""}])
    code, out, _ = run(
        ["validate", "--csv", str(path), "--max-median-error", "100", "--max-underestimate", "100"], capsys
    )
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("  failed: ")]
    assert failed == [f"  failed: 272-oom (line {len(rows) + 2}): ran out of memory; the estimate calls it fits"]
    assert out.splitlines()[-1].endswith("1 out-of-memory row called fits: FAILED")
    # without a bound: the output of before, exit 0
    code, out, _ = run(["validate", "--csv", str(path), "--json"], capsys)
    assert code == 0 and set(json.loads(out)) == {"rows", "summary"}
    assert json.loads(out)["summary"]["oom_predicted_fit"] == ["272-oom"]


@pytest.mark.parametrize("flag", ["--max-median-error", "--max-underestimate"])
@pytest.mark.parametrize("value", ["x", "-1", "nan", "inf", "1e9", "", "5%%"])
def test_a_bad_bound_is_one_line_exit_2(flag: str, value: str, capsys) -> None:
    code, out, err = run(["validate", "--csv", str(RUNS), flag, value], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"vramplan: error: {flag[2:].replace('-', '_')}: ")


def test_junit_and_traced_need_what_they_gate(tmp_path, capsys) -> None:
    code, _, err = run(["validate", "--csv", str(RUNS), "--junit", str(tmp_path / "j.xml")], capsys)
    assert code == 2 and err.startswith("vramplan: error: junit: ") and err.count("\n") == 1
    assert not (tmp_path / "j.xml").exists()
    code, _, err = run(["validate", "--traced", "--max-underestimate", "5"], capsys)
    assert code == 2 and err.startswith("vramplan: error: traced: ")


def test_junit_file_has_one_testcase_a_row(tmp_path, capsys) -> None:
    rows = rows_of(RUNS)
    odd = {**rows[0], "id": "on-an-unknown-card", "gpu": "v100-99g"}
    path = write_rows(tmp_path / "runs.csv", [*rows, odd])
    errs = {k: v for k, v in errors(path, capsys).items() if v is not None}
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    code, _, _ = run(
        ["validate", "--csv", str(path), "--max-underestimate", "2", "--junit", str(junit), "--json"], capsys
    )
    assert code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name", "").split(" ")[0]: c for c in suite.findall("testcase")}
    assert set(cases) == {r["id"] for r in [*rows, odd]}
    failed = {i for i, c in cases.items() if c.find("failure") is not None}
    assert failed == {i for i, e in errs.items() if e < -2}
    skipped = cases["on-an-unknown-card"].find("skipped")
    assert skipped is not None and "v100-99g" in skipped.get("message", "")
    assert suite.get("failures") == str(len(failed)) and suite.get("skipped") == "1"
    assert suite.get("tests") == str(len(cases))
    line = 2 + [r["id"] for r in rows].index("272")  # after the header
    assert cases["272"].get("line") == str(line) and cases["272"].find("system-out") is not None


def test_with_json_the_gate_is_in_the_json_and_its_lines_on_stderr(capsys) -> None:
    code, out, err = run(["validate", "--csv", str(RUNS), "--max-underestimate", "2", "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["gate"]["ok"] is False
    assert data["gate"]["bounds"] == {"max_median_error_pct": None, "max_underestimate_pct": 2.0}
    assert err.splitlines()[-1].endswith(": FAILED")


def test_junit_is_written_whole_or_not_at_all(tmp_path, monkeypatch, capsys) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text("old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vramplan.files.os.replace", refuse)
    code, _, err = run(["validate", "--csv", str(RUNS), "--max-underestimate", "10", "--junit", str(junit)], capsys)
    assert code == 2 and err.startswith("vramplan: error: junit: ")
    assert junit.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml"]  # no temporary left


def test_junit_into_a_missing_folder_is_refused_before_comparing(tmp_path, capsys) -> None:
    code, out, err = run(
        ["validate", "--csv", str(RUNS), "--max-underestimate", "10", "--junit", str(tmp_path / "no" / "j.xml")],
        capsys,
    )
    assert code == 2 and out == "" and err.startswith("vramplan: error: junit: ")


def test_a_median_bound_with_no_compared_row_fails(tmp_path, capsys) -> None:
    oom = next(r for r in rows_of(RUNS) if r["outcome"] == "oom")
    path = write_rows(tmp_path / "runs.csv", [oom])
    code, out, _ = run(["validate", "--csv", str(path), "--max-median-error", "5"], capsys)
    assert code == 1 and "no row was compared" in out and out.splitlines()[-1].endswith(": FAILED")
    code, out, _ = run(["validate", "--csv", str(path), "--max-underestimate", "5"], capsys)
    assert code == 0 and out.splitlines()[-1] == "validate: 0 rows, no row compared, no underestimate (bound 5%): ok"


def test_assert_within_bounds_lists_the_rows(capsys) -> None:
    errs = {k: v for k, v in errors(RUNS, capsys).items() if v is not None}
    with pytest.raises(AssertionError) as err:
        assert_within_bounds(RUNS, max_underestimate=2)
    text = str(err.value)
    for rid, e in errs.items():
        assert (f"failed: {rid} " in text) == (e < -2)
    assert text.splitlines()[-1].endswith(": FAILED")
    with pytest.raises(ValueError):
        assert_within_bounds(RUNS)
    with pytest.raises(ValueError):
        gate(RUNS, max_underestimate=-1)


def test_traced_reads_the_records_at_a_path(tmp_path, capsys) -> None:
    from vramplan.records import records_path

    lines = records_path().read_text().splitlines()
    mine = tmp_path / "vramplan-runs.jsonl"
    mine.write_text("\n".join(lines[:3]) + "\n")
    code, out, _ = run(["validate", "--traced", str(mine), "--json"], capsys)
    assert code == 0
    assert 1 <= json.loads(out)["count"] <= 3
    code, _, err = run(["validate", "--traced", str(tmp_path / "none.jsonl")], capsys)
    assert code == 2 and err.startswith("vramplan: error: traced: ")
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = run(["validate", "--traced", str(tmp_path / "empty.jsonl")], capsys)
    assert code == 2 and "--record PATH" in err


def _row(rid: str, err: float | None, outcome: str = "ok", verdict: str | None = "fits") -> Comparison:
    return Comparison(
        id=rid,
        line=None,
        source="s",
        model="m",
        method="lora",
        outcome=outcome,
        measurement="reserved",
        tier="reserved",
        measured_bytes=None if err is None else 100,
        estimate_bytes=None if err is None else int(100 + err),
        error_pct=err,
        verdict=verdict,
    )


def test_a_row_at_a_bound_passes_and_one_beyond_fails() -> None:
    rows = [_row("a", -10.0), _row("b", 4.0), _row("c", -10.5), _row("d", 3.0), _row("e", None, "oom", "tight")]
    result = check(rows, summarize(rows), Bounds(max_median_error_pct=4.0, max_underestimate_pct=10.0))
    assert result.median_abs_pct == 7.0 and not result.median_ok  # |errors| 3, 4, 10, 10.5
    assert {c.id: c.status for c in result.cases} == {
        "a": "failed",  # the median fails: rows above 4% are listed
        "b": "passed",
        "c": "failed",
        "d": "passed",
        "e": "passed",  # an OOM the estimate calls tight is not a miss
    }
    assert "under" in result.cases[2].message and "median" in result.cases[0].message
    loose = check(rows, summarize(rows), Bounds(max_median_error_pct=7.0, max_underestimate_pct=10.5))
    assert loose.ok and loose.summary_line().endswith(
        "median 7.0% (bound 7%), worst underestimate -10.5% (bound 10.5%): ok"
    )


@pytest.mark.e2e
def test_the_workflow_validate_step_as_a_ci_runner_runs_it(tmp_path) -> None:
    """The step's command in a subprocess, in a copy of examples/ci: its exit status is what the
    runner acts on; then the same command with a bound the data breaks exits 1."""
    import os
    import subprocess
    import sys

    shutil.copytree(EXAMPLE, tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = workflow_validate_argv()

    def step(args: list[str]) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vramplan", *args]
        return subprocess.run(cmd, cwd=tmp_path / "repo", env=env, capture_output=True, text=True, timeout=300)

    ok = step(argv)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].endswith(": ok") and (tmp_path / "repo" / "vramplan-junit.xml").is_file()
    tight = step([*argv[: argv.index("--max-underestimate")], "--max-underestimate", "0"])
    assert tight.returncode == 1 and tight.stdout.splitlines()[-1].endswith(": FAILED")
