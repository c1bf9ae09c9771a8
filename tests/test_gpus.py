"""The GPU catalog: driver-reported memory, aliases people type, short names, auto."""

from __future__ import annotations

import csv

import pytest

from vramplan.errors import VramplanError
from vramplan.gpus import gpu_catalog, resolve_gpu
from vramplan.tables import tables_dir
from vramplan.units import MIB

REQUIRED = [
    "RTX 3060",
    "3090",
    "4060 Ti",
    "4080",
    "4090",
    "4090D",
    "5090",
    "A4000",
    "A5000",
    "A6000",
    "RTX 6000 Ada",
    "T4",
    "V100 16GB",
    "V100 32GB",
    "A10",
    "A10G",
    "L4",
    "L40S",
    "A100 40GB PCIe",
    "A100 80GB SXM",
    "A800 40GB",
    "A800 80GB",
    "H100 PCIe",
    "H100 SXM",
    "H800",
    "H20",
    "H200",
    "B200",
    "MI250",
    "MI300X",
]


def test_at_least_thirty_cards() -> None:
    assert len(gpu_catalog()) >= 30


@pytest.mark.parametrize("name", REQUIRED)
def test_required_cards_resolve(name: str) -> None:
    assert resolve_gpu(name).memory_bytes > 0


def test_rtx_4090_reports_driver_memory() -> None:
    g = resolve_gpu("4090")
    assert g.driver_memory_bytes == 24564 * MIB and g.memory_mib == 24564
    assert g.memory_bytes == int(23.514 * 2**30) and g.capacity_kind == "measured"


@pytest.mark.parametrize("alias", ["4090", "rtx4090", "RTX 4090", "rtx-4090", "NVIDIA GeForce RTX 4090"])
def test_aliases(alias: str) -> None:
    assert resolve_gpu(alias).name == "RTX 4090"


@pytest.mark.parametrize("alias", ["4090d", "a800-40g", "A800 40GB", "a10"])
def test_more_aliases(alias: str) -> None:
    g = resolve_gpu(alias)
    assert g.resolved_from is None  # an exact name, not a short one


def test_short_name_says_which_variant() -> None:
    g = resolve_gpu("h100")
    assert "SXM" in g.name and "80" in g.name
    assert g.resolved_from == "h100"


def test_aliases_are_unique_and_units_in_keys() -> None:
    with open(tables_dir() / "gpus.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = rows[0].keys()
    assert {"memory_mib", "bf16_tflops_dense", "memory_bandwidth_gb_s", "source"} <= set(header)
    seen: dict[str, str] = {}
    for row in rows:
        names = [row["key"], row["name"], *row["aliases"].split(";"), *row["default_for"].split(";")]
        for n in {x.strip().lower() for x in names if x.strip()}:
            assert seen.setdefault(n, row["key"]) == row["key"], f"{n!r} names both {seen[n]} and {row['key']}"
        assert row["source"].strip(), row["key"]


def test_feature_flags_are_consistent() -> None:
    for g in gpu_catalog().values():
        if g.flash_attn2_supported:
            assert g.bf16_supported, g.key  # FA2 needs sm80+, which all have bf16
    assert not resolve_gpu("t4").bf16_supported
    assert resolve_gpu("a100-80g").flash_attn2_supported


def test_unknown_gpu_names_closest() -> None:
    with pytest.raises(VramplanError) as err:
        resolve_gpu("rtx 4099")
    assert err.value.field == "gpu"
    assert "4090" in str(err.value)


@pytest.mark.parametrize(
    ("alias", "key"),
    [
        ("v100-32g", "v100-sxm2-32gb"),
        ("V100 16G", "v100-sxm2-16gb"),
        ("a100-40g", "a100-sxm-40gb"),
        ("a800-80g", "a800-sxm-80gb"),
        ("rtx-3090", "rtx-3090"),
        ("a10g", "a10g"),
        ("l40s", "l40s"),
        ("h20", "h20"),
        ("b200", "b200"),
        ("mi300x", "mi300x"),
    ],
)
def test_names_users_write_resolve(alias: str, key: str) -> None:
    """Cards as real reports and trainers' READMEs name them (memory as "32g")."""
    assert resolve_gpu(alias).key == key
