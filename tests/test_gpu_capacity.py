"""What torch can allocate on a card (tables/gpu_capacity.csv: the "total capacity" real cards
printed), not nvidia-smi's total, is what a plan must fit in."""

from __future__ import annotations

import csv

from vramplan import plan
from vramplan.gpus import GPU, gpu_catalog, resolve_gpu, unseen_capacity
from vramplan.tables import tables_dir


def _rows() -> list[dict[str, str]]:
    with open(tables_dir() / "gpu_capacity.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_reported_card_is_in_the_catalog_with_its_source() -> None:
    catalog = gpu_catalog()
    for row in _rows():
        assert row["key"] in catalog, row["key"]
        assert row["kind"] == "measured" and "https://github.com/" in row["source"]
        assert catalog[row["key"]].capacity_kind == "measured"


def test_torch_sees_less_than_the_driver_on_every_card() -> None:
    for g in gpu_catalog().values():
        assert 0.9 * g.driver_memory_bytes < g.memory_bytes < g.driver_memory_bytes, g.key


def test_the_unseen_rule_stays_below_every_reported_capacity() -> None:
    """For a card no one reported, the rule must not promise more than the reported cards gave."""
    for g in gpu_catalog().values():
        if g.capacity_kind == "measured":
            assert unseen_capacity(g.driver_memory_bytes) <= g.memory_bytes, g.key


def _fits(g: GPU, need: int) -> bool:
    return need <= g.memory_bytes


def test_a_plan_fits_what_torch_sees() -> None:
    """Qwen2.5-7B LoRA on a 4090 at growing micro-batches: every verdict and headroom is the
    comparison with torch's 23.51 GiB, not nvidia-smi's 23.99 GiB."""
    card = resolve_gpu("4090")
    for mb in (1, 2, 3, 4, 5, 6):
        p = plan("qwen2.5-7b", "4090", method="lora", micro_batch=mb, grad_checkpointing=False, seq_len=1024)
        assert p.fits == _fits(card, p.peak.device_bytes)
        assert p.headroom_bytes == card.memory_bytes - p.peak.device_bytes
    assert card.driver_memory_bytes - card.memory_bytes > 0.4 * 2**30
