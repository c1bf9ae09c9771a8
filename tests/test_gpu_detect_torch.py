"""``--gpu auto`` through torch, with torch.cuda stood in for a GPU: the capacity is what the
device reports (ECC, driver and MIG slice included), the rest of the card from the catalog."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import requires
from vramplan import gpus as gpu_detect
from vramplan.gpus import resolve_gpu
from vramplan.units import GIB

pytestmark = [pytest.mark.trace, requires("torch")]


def _device(monkeypatch: pytest.MonkeyPatch, name: str, total: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name=name, total_memory=total))
    monkeypatch.setattr(gpu_detect.shutil, "which", lambda exe: pytest.fail("nvidia-smi read though torch saw a GPU"))


def test_the_device_total_replaces_the_catalog_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    _device(monkeypatch, "NVIDIA H100 80GB HBM3", int(79.19 * GIB))
    g = resolve_gpu("auto")
    assert g.key == "h100-sxm-80gb" and g.resolved_from == "auto"
    assert g.memory_bytes == int(79.19 * GIB) != resolve_gpu("h100-sxm").memory_bytes
    assert g.capacity_kind == "measured" and "total_memory" in g.capacity_source


def test_a_mig_slice_is_its_card_with_the_slice_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    _device(monkeypatch, "NVIDIA A100-SXM4-80GB MIG 1g.10gb", int(9.5 * GIB))
    g = resolve_gpu("auto")
    assert g.key == "a100-sxm-80gb" and g.memory_bytes == int(9.5 * GIB)


def test_an_unknown_device_keeps_its_name_and_total(monkeypatch: pytest.MonkeyPatch) -> None:
    _device(monkeypatch, "AMD Instinct MI325X", int(255.98 * GIB))
    g = resolve_gpu("auto")
    assert (g.key, g.vendor, g.memory_bytes) == ("local", "AMD", int(255.98 * GIB))
