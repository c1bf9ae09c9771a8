"""``vramplan fit``: the method x sequence-length table and the longest context per card, each
cell the plan of that setup, each longest context the edge of what fits safely."""

from __future__ import annotations

import json

import pytest

from vramplan import plan
from vramplan.cli import main
from vramplan.fit_table import CONTEXT_STEP, METHODS, _cell, _fields, fit_table
from vramplan.gpus import resolve_gpu
from vramplan.models import load_model


@pytest.fixture(scope="module")
def table():
    return fit_table("qwen2.5-7b", "4090", seq_lens=(1024, 8192, 16384), cards=("4090", "a100-80g"))


def test_each_cell_is_the_plan_of_its_setup(table) -> None:
    spec, gpu = load_model("qwen2.5-7b"), resolve_gpu("4090")
    for (label, method), row in zip(METHODS, table.rows, strict=True):
        assert row.method == label
        for cell in row.cells:
            p = plan("qwen2.5-7b", "4090", **_fields(spec, gpu, method, cell.seq_len))
            assert p.peak.device_bytes == cell.device_bytes, (label, cell.seq_len)
            assert p.verdict == cell.verdict, (label, cell.seq_len)


def test_the_longest_context_is_the_edge_of_a_safe_fit(table) -> None:
    spec, gpu = load_model("qwen2.5-7b"), resolve_gpu("4090")
    lora = dict(METHODS)["lora"]
    longest = next(r.longest for r in table.rows if r.method == "lora")
    assert longest and longest % CONTEXT_STEP == 0
    assert _cell(spec, gpu, "trl", lora, longest).verdict == "fits"
    assert _cell(spec, gpu, "trl", lora, longest + CONTEXT_STEP).verdict != "fits"
    # the full fine-tunings do not fit a 4090 at any length; the bigger card takes a longer context
    assert [r.longest for r in table.rows[:2]] == [None, None]
    by_card = {c.gpu: c.longest["lora"] for c in table.cards}
    assert by_card["A100 SXM 80GB"] > by_card["RTX 4090"] == longest


def test_the_command_prints_json_and_refuses_bad_lengths(capsys) -> None:
    assert main(["fit", "qwen2.5-0.5b", "--seq-lens", "512,2048", "--cards", "t4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["seq_len"] for c in data["rows"][0]["cells"]] == [512, 2048]
    assert [c["gpu"] for c in data["cards"]] == ["T4"]
    assert main(["fit", "qwen2.5-0.5b", "--seq-lens", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seq_lens" in err
