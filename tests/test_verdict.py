"""Fits, tight or does not fit (vramplan/verdict.py): the margin comes from the measured runs,
a tight plan says by how much and what makes it safe, and the search prefers what fits safely."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from vramplan import plan, verdict
from vramplan.gpus import resolve_gpu
from vramplan.tables import tables_dir

ROOT = Path(__file__).resolve().parents[1]


def test_the_margins_table_is_what_the_measured_runs_give_today() -> None:
    """tables/margins.json is benchmarks/margins.py's output for today's estimates and tables."""
    spec = importlib.util.spec_from_file_location("margins", ROOT / "benchmarks" / "margins.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    recorded = json.loads((tables_dir() / "margins.json").read_text())
    assert recorded == script.margins_now()
    assert recorded["tiers"]["reserved"]["rows"] >= 100
    assert 0 < verdict.margin_pct() < 25


@pytest.mark.parametrize(
    ("need", "answer"),
    [(100, "fits"), (90_000, "fits"), (95_000, "tight"), (100_000, "tight"), (100_001, "does not fit")],
)
def test_verdict_bands(monkeypatch, need: int, answer: str) -> None:
    monkeypatch.setattr(verdict, "margin_pct", lambda tier="reserved": 10.0)
    assert verdict.verdict(need, 100_000) == answer


def test_safe_capacity_is_the_edge_of_fits() -> None:
    cap = 24 * 2**30
    edge = verdict.safe_capacity(cap)
    assert verdict.verdict(edge, cap) == "fits"
    assert verdict.verdict(edge + 2**20, cap) == "tight"


def test_a_pinned_plan_near_the_card_is_tight_and_says_what_makes_it_safe() -> None:
    p = plan("qwen2.5-7b", "4090", method="lora", seq_len=5000, micro_batch=2)
    assert p.fits and p.verdict == "tight"
    note = next(n for n in p.notes if n.code == "fit.tight")
    assert note.data["safe_bytes"] > p.gpu.memory_bytes >= p.peak.device_bytes
    assert note.data["short_bytes"] == note.data["safe_bytes"] - p.gpu.memory_bytes
    fixes = [n.data for n in p.notes if n.code == "fit.suggestion"]
    assert fixes
    for fix in fixes:  # every suggestion fits with the margin, on its own card
        card = resolve_gpu(str(fix["value"])) if fix["field"] == "gpu" else p.gpu
        assert verdict.verdict(int(fix["device_bytes"]), card.memory_bytes) == "fits", fix


def test_the_search_prefers_a_setup_that_fits_safely() -> None:
    p = plan("qwen2.5-7b", "4090")
    assert p.verdict == "fits"
    assert verdict.safe_bytes(p.peak.device_bytes) <= p.gpu.memory_bytes
    tight = [a for a in p.alternatives if a.fits and verdict.verdict(a.device_bytes, p.gpu.memory_bytes) == "tight"]
    assert all(not a.chosen for a in tight)


def test_tight_only_when_nothing_fits_safely() -> None:
    """Pinned so that every candidate is near the card: the plan is tight, not 'does not fit'."""
    p = plan("qwen2.5-7b", "4090", method="lora", seq_len=5400, micro_batch=2, grad_checkpointing=True)
    assert p.verdict == "tight" and p.fits
    assert "tight" in repr(p)
