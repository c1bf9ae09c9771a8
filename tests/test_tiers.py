"""The test tiers (tests/conftest.py): ``-m analytic`` imports no torch, and a run of it that
does fails, naming the test after which torch was first seen."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs pytest in subprocesses

ROOT = Path(__file__).resolve().parent.parent

FAKE_TORCH = """
import sys, types


def test_loads_torch():
    sys.modules["torch"] = types.ModuleType("torch")  # as an import would leave it, without the cost
"""


def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_an_analytic_run_that_imports_torch_fails(tmp_path: Path) -> None:
    (tmp_path / "test_heavy.py").write_text(FAKE_TORCH)
    args = ("-p", "tests.conftest", "--rootdir", str(tmp_path), "-W", "ignore::pytest.PytestUnknownMarkWarning")
    bad = _pytest("-m", "analytic", *args, "test_heavy.py", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout[-2000:]
    assert "the analytic tier imported torch (first seen after test_heavy.py::test_loads_torch)" in bad.stdout
    # the same test in a run that selects no tier is not held to it
    assert _pytest(*args, "test_heavy.py", cwd=tmp_path).returncode == 0


def test_collecting_the_analytic_tier_imports_no_torch() -> None:
    out = _pytest("--collect-only", "-m", "analytic", cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "the analytic tier imported" not in out.stdout
