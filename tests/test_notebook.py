"""A plan in a notebook: the HTML view (verdict, chart, terms, alternatives, advice), a short
repr, p.report / p.plot / p.what_if, and plan()'s typed keyword parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramplan import plan
from vramplan.plan_fields import PlanFields
from vramplan.setup import Setup


@pytest.fixture(scope="module")
def p():
    return plan("qwen2.5-7b", "4090")


def test_plan_fields_name_every_setup_field() -> None:
    """plan()'s typed keywords (vramplan/plan_fields.py) are the Setup fields, no more, no fewer."""
    assert set(PlanFields.__annotations__) == set(Setup.model_fields)


def test_the_html_view_has_the_verdict_chart_terms_alternatives_and_advice(p) -> None:
    page = p._repr_html_()
    assert f">{p.verdict}</b>" in page
    assert "<svg" in page and p.gpu.name in page  # the peak's bars against the card
    for name in p.terms:
        assert f"<td>{name}</td>" in page
    assert "what it holds" in page and "total (device)" in page
    chosen = next(a for a in p.alternatives if a.chosen)
    assert chosen.reason in page
    assert all(n.text.replace("'", "&#x27;") in page for n in p.notes)


def test_repr_is_one_short_line(p) -> None:
    text = repr(p)
    assert "\n" not in text and len(text) < 200
    assert p.verdict in text and p.peak.phase in text


def test_repr_says_what_the_card_must_offer_beside_what_nvidia_smi_reads() -> None:
    """Under variable lengths the cached loss chains take nvidia-smi's reading past the card while
    the run needs less (it fits): the line says both, the need first."""
    q = plan("qwen2.5-7b", "4090", trainer="swift", method="lora", lengths="variable", avg_tokens=900)
    need, smi = q.peak.needed_bytes / 2**30, q.peak.device_bytes / 2**30
    assert q.verdict != "does not fit" and need < q.gpu.memory_bytes / 2**30 < smi
    assert f"needs {need:.2f} of" in repr(q) and f"nvidia-smi {smi:.2f})" in repr(q)


def test_what_if_plans_the_same_setup_with_the_change(p) -> None:
    q = p.what_if(seq_len=4096)
    want = plan("qwen2.5-7b", "4090", **{**p.setup.model_dump(), "seq_len": 4096})
    assert q.model_dump() == want.model_dump()
    assert q.setup.seq_len == 4096 and q.setup.micro_batch == p.setup.micro_batch
    assert q.peak.device_bytes > p.peak.device_bytes


def test_report_and_plot_write_their_files(p, tmp_path: Path) -> None:
    page = p.report(tmp_path / "plan.html")
    assert page.read_text().count("<svg") >= 1
    pytest.importorskip("matplotlib")
    png = p.plot(tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
