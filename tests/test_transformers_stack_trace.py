"""Mixture-of-experts estimates held to traces under each transformers major version.

``tables/measured/moe_stack.jsonl`` (benchmarks/moe_stack.py) holds small Mixtral and Qwen3-MoE
steps traced under transformers 4 and 5; every row's estimate, for the spec as that version
builds it, must be within 3% of its trace. The e2e test traces one transformers 4 row again in
the transformers 4 environment (``VRAMPLAN_TF4_PYTHON``, made by .ci/venv-tf4.sh): skipped on a
machine without it, failed under CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE_PCT = 3.0


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("moe_stack", ROOT / "benchmarks" / "moe_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _bench()
ROWS: list[dict[str, Any]] = BENCH.read_rows()


@pytest.mark.analytic
def test_every_model_setup_and_version_is_recorded() -> None:
    got = {(r["model"], json.dumps(r["setup"], sort_keys=True), r["transformers"]) for r in ROWS}
    want = {
        (m, json.dumps({**BENCH.COMMON, **f}, sort_keys=True), v)
        for m in BENCH.CONFIGS
        for f in BENCH.SETUPS
        for v in (4, 5)
    }
    assert want <= got, "trace them: benchmarks/moe_stack.py under each transformers"
    assert all(r["versions"]["transformers"].split(".")[0] == str(r["transformers"]) for r in ROWS)


@pytest.mark.analytic
@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=[f"{r['model']}-t{r['transformers']}-{BENCH._label(r['setup']).replace(' ', '-')}" for r in ROWS],
)
def test_estimate_within_3pct_of_trace(row: dict[str, Any]) -> None:
    fields = {k: v for k, v in row["setup"].items() if k not in BENCH.COMMON}
    est = BENCH.estimate_row(row["config"], fields, row["transformers"])
    err = 100 * (est - row["peak_bytes"]) / row["peak_bytes"]
    assert abs(err) <= TOLERANCE_PCT, f"{err:+.2f}%"


@pytest.mark.analytic
def test_table_is_written_from_the_rows() -> None:
    assert (ROOT / "benchmarks" / "moe_stack.md").read_text() == BENCH.table(ROWS)


@pytest.mark.analytic
def test_the_versions_differ_where_the_experts_are_quantized() -> None:
    """QLoRA: transformers 4 quantizes the experts, so its trace is the smaller one."""
    for model in BENCH.CONFIGS:
        for fields in BENCH.SETUPS:
            if fields["method"] != "qlora":
                continue
            key = json.dumps({**BENCH.COMMON, **fields}, sort_keys=True)
            peak = {
                r["transformers"]: r["peak_bytes"]
                for r in ROWS
                if r["model"] == model and json.dumps(r["setup"], sort_keys=True) == key
            }
            assert peak[4] < peak[5]


@pytest.mark.e2e
def test_one_transformers_4_trace_again() -> None:
    """Mixtral QLoRA nf4 all-linear, traced in the transformers 4 environment: the spec is built
    as transformers 4 builds it and the estimate holds within 3%."""
    python = os.environ.get("VRAMPLAN_TF4_PYTHON", "")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("CI runs this test: .ci/run sets VRAMPLAN_TF4_PYTHON")
        pytest.skip("VRAMPLAN_TF4_PYTHON (python with transformers 4.x) is not set")
    fields = BENCH.SETUPS[3]
    script = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); import moe_stack as m;"
        f" print(json.dumps(m.trace_row('mixtral-tiny', {fields!r})))"
    )
    out = subprocess.run(
        [python, "-c", script],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["transformers"] == 4 and row["versions"]["transformers"].startswith("4.")
    est = BENCH.estimate_row(row["config"], fields, 4)
    assert est == row["estimate_bytes"]
    assert abs(100 * (est - row["peak_bytes"]) / row["peak_bytes"]) <= TOLERANCE_PCT
    assert sys.version_info >= (3, 10)
