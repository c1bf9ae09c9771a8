"""What torch can allocate on a card (tables/gpu_capacity.csv: the "total capacity" real cards
printed), not nvidia-smi's total, is what a plan must fit in."""

from __future__ import annotations

import csv
import re

from vramplan import plan
from vramplan.gpus import GPU, capacities, gpu_catalog, resolve_gpu, unseen_capacity
from vramplan.tables import tables_dir
from vramplan.units import GIB, MIB


def _rows() -> list[dict[str, str]]:
    with open(tables_dir() / "gpu_capacity.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_catalog_card_has_a_capacity_row_with_its_source() -> None:
    catalog = gpu_catalog()
    rows = _rows()
    assert sorted(r["key"] for r in rows) == sorted(catalog)
    for row in rows:
        g = catalog[row["key"]]
        assert row["kind"] in ("measured", "estimated") and g.capacity_kind == row["kind"], row["key"]
        if row["kind"] == "measured":
            assert "https://github.com/" in row["source"] and g.memory_bytes == int(float(row["torch_total_gib"]) * GIB)
        else:  # the number shown is the rule's, which the code computes
            assert abs(float(row["torch_total_gib"]) * GIB - g.memory_bytes) < 0.001 * GIB, row["key"]
            assert int(row["driver_mib"]) * MIB == g.driver_memory_bytes


def test_a_measured_row_keeps_the_least_value_its_source_quotes() -> None:
    for row in _rows():
        if row["kind"] == "measured":
            quoted = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?) GiB \(", row["source"])]
            assert quoted and min(quoted) == float(row["torch_total_gib"]), row["key"]


def test_torch_sees_less_than_the_driver_on_every_card() -> None:
    for g in gpu_catalog().values():
        assert 0.9 * g.driver_memory_bytes < g.memory_bytes < g.driver_memory_bytes, g.key


def test_the_unseen_rule_stays_below_every_reported_capacity() -> None:
    """For a card no one reported, the rule must not promise more than the reported cards gave,
    at the driver total they printed it with (ECC on shows 46068 of a 48 GB card's 49140 MiB)."""
    for key, cap in capacities().items():
        if cap.kind == "measured":
            assert unseen_capacity(cap.driver_bytes) <= cap.bytes, key


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
        # the device tier is the allocator's reserved peak plus the CUDA context, both inside torch's total
        assert p.peak.device_bytes == p.peak.reserved_bytes + p.terms["overhead/cuda_context"]
    assert card.driver_memory_bytes - card.memory_bytes > 0.4 * 2**30
