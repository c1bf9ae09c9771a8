"""The time model: FLOPs by method, its fit on published speeds, the wall-time answer."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.models import load_model
from vramplan.published import published_csv, read_rows
from vramplan.setup import make_setup
from vramplan.tables import tables_dir
from vramplan.timing import constants, fit, flops_per_token, speed_rows

ROOT = Path(__file__).resolve().parents[1]


def test_flops_follow_the_method() -> None:
    spec = load_model("qwen2.5-7b")
    full = flops_per_token(spec, make_setup(method="full", grad_checkpointing=False, seq_len=512))
    lora = flops_per_token(spec, make_setup(method="lora", grad_checkpointing=False, seq_len=512))
    lora_gc = flops_per_token(spec, make_setup(method="lora", grad_checkpointing=True, seq_len=512))
    freeze = flops_per_token(spec, make_setup(method="freeze", grad_checkpointing=False, seq_len=512))
    n = 7.07e9  # Qwen2.5-7B linear weights without the embedding (7.62B - 0.545B)
    assert full == pytest.approx(6 * n, rel=0.05)  # forward 2N, backward 4N
    assert lora == pytest.approx(4 * n, rel=0.05)  # no weight gradients
    assert lora_gc == pytest.approx(6 * n, rel=0.05)  # the layers' forward again
    assert freeze < lora < full
    moe = load_model("qwen3-30b-a3b")
    active = flops_per_token(
        moe, make_setup(method="lora", lora_targets="q_proj", grad_checkpointing=False, seq_len=512)
    )
    assert active < 4 * 4e9  # routed through 8 of 128 experts: ~3.3B active, not 30B


def test_speed_rows_belong_to_published_rows() -> None:
    ids = {r["id"] for r in read_rows(published_csv())}
    with (tables_dir() / "measured" / "speeds.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 80 and {r["id"] for r in rows} <= ids
    assert all(float(r["seconds_per_iteration"]) > 0 and r["source"].startswith("github.com/QwenLM/") for r in rows)


def test_fit_is_stored_and_its_error_bounded() -> None:
    gpus = {r["id"]: r["num_gpus"] for r in read_rows(published_csv())}
    rows = [r for r in speed_rows() if gpus[r.id] == "1"]
    consts, resid = fit(rows)
    stored = constants()
    for k, v in consts.items():
        assert stored[k] == pytest.approx(v, rel=1e-3), k
    errs = sorted(abs(v) for v in resid.values())
    # bounds set from what the model reaches (median 8.1%, p90 22.7% on 78 rows)
    assert statistics.median(errs) <= 10.0
    assert errs[int(0.9 * (len(errs) - 1))] <= 25.0
    data = json.loads((tables_dir() / "timing.json").read_text())
    assert data["matmul_efficiency"]["fitted_on"] == [r.id for r in rows]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.e2e
def test_scenario_3_wall_time() -> None:
    out = run(
        "qwen2.5-7b",
        "--gpu",
        "4090d",
        "--method",
        "lora",
        "--grad-accum",
        "16",
        "--micro-batch",
        "1",
        "--samples",
        "500",
        "--avg-tokens",
        "300",
        "--epochs",
        "10",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    t = json.loads(out.stdout)["time"]
    assert t["tokens"] == 1_500_000 and t["steps"] == 313
    assert 60 < t["seconds"] < 6 * 3600


@pytest.mark.e2e
def test_samples_need_avg_tokens() -> None:
    out = run("qwen2.5-7b", "--samples", "500")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "avg-tokens" in out.stderr
