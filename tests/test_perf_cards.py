"""What keeps many-card and repeated plans quick without changing an answer: the kept
estimates (memory/phases.py), device_map's empty cards estimated once and shown as one row."""

from __future__ import annotations

import io

from rich.console import Console

from vramplan import plan
from vramplan.memory import estimate
from vramplan.memory.overhead import overhead_constants
from vramplan.memory.phases import forget_estimates
from vramplan.models import load_model
from vramplan.render import cards_table
from vramplan.setup import make_setup


def test_an_estimate_is_kept_until_the_constants_are_read_again() -> None:
    spec, setup = load_model("qwen2.5-0.5b"), make_setup(method="full", seq_len=512)
    first = estimate(spec, setup)
    assert estimate(spec, setup) is first
    overhead_constants.cache_clear()  # as vramplan.calibrate does after writing new constants
    again = estimate(spec, setup)
    assert again is not first and again == first
    forget_estimates()
    assert estimate(spec, setup) is not again


def test_cards_that_hold_nothing_share_one_row() -> None:
    """40 cards for a 24-layer model: accelerate's balanced map fills the first few and leaves
    the rest empty; every card is in the plan, the empty neighbours in one table row."""
    p = plan("qwen2.5-0.5b", "4090", num_gpus=40, parallel="device_map", method="full")
    assert [c.index for c in p.cards] == list(range(40))
    empty = [c for c in p.cards if c.holds == "nothing"]
    assert len(empty) > 1 and empty[-1].index == 39
    assert all(c.terms == empty[0].terms and c.device_bytes == empty[0].device_bytes for c in empty)
    table = cards_table(p)
    assert table.row_count == 40 - len(empty) + 1
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    assert f"{empty[0].index}-39" in out.getvalue()
