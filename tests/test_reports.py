"""Real users' runs and out-of-memory reports (tables/measured/reports.csv, curated from
shared/data/real_reports.csv): the curation is reproducible and its settings column is read as
the CLI reads flags."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from vramplan.errors import VramplanError
from vramplan.published import compare_csv, row_settings, summarize
from vramplan.tables import tables_dir

ROOT = Path(__file__).resolve().parents[1]
REPORTS = tables_dir() / "measured" / "reports.csv"


def _curate():
    spec = importlib.util.spec_from_file_location("curate_reports", ROOT / "benchmarks" / "curate_reports.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_curated_table_is_the_shared_file_curated() -> None:
    src = ROOT.parent / "shared" / "data" / "real_reports.csv"
    if not src.exists():
        pytest.skip("shared/data not beside the checkout")
    with REPORTS.open(newline="", encoding="utf-8") as fh:
        assert _curate().curate(src) == list(csv.DictReader(fh))


def test_settings_are_setup_fields() -> None:
    assert row_settings({"settings": "lora_dropout=0.1; freeze_vision=true"}) == {
        "lora_dropout": "0.1",
        "freeze_vision": "true",
    }
    for bad in ("lora_dropot=0.1", "seq_len=512", "novalue"):
        with pytest.raises(VramplanError) as exc:
            row_settings({"settings": bad})
        assert exc.value.field == "settings"


def test_every_report_on_a_named_card_gets_a_verdict_and_a_phase() -> None:
    rows = compare_csv(REPORTS)
    judged = [r for r in rows if not r.excluded and r.verdict is not None]
    assert len(judged) >= 20
    assert all(r.phase for r in judged)
    s = summarize(rows)
    assert s.oom_rows >= 10 and s.ran_on_a_card >= 15
