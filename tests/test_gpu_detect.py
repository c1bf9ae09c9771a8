"""``--gpu auto`` from nvidia-smi, with a stand-in for it (no GPU, no subprocess, no torch here):
the card is matched by name and planned with the capacity its driver total calls for."""

from __future__ import annotations

import subprocess

import pytest

from vramplan import gpus as gpu_detect
from vramplan.errors import VramplanError
from vramplan.gpus import capacities, resolve_gpu, unseen_capacity
from vramplan.units import GIB, MIB

TWO_CARDS = "NVIDIA GeForce RTX 4090, 24564 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\n"


@pytest.fixture
def smi(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """nvidia-smi answers what the test puts in the returned list; torch sees no GPU."""
    answer: list[str] = [TWO_CARDS]
    monkeypatch.setattr(gpu_detect, "_from_torch", lambda: None)
    monkeypatch.setattr(gpu_detect.shutil, "which", lambda exe: "/stand-in/nvidia-smi")

    def run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:] == ["--query-gpu=name,memory.total", "--format=csv,noheader"]
        return subprocess.CompletedProcess(cmd, 0, stdout=answer[0], stderr="")

    monkeypatch.setattr(gpu_detect.subprocess, "run", run)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return answer


def test_parse_reads_name_and_total_with_or_without_units() -> None:
    assert gpu_detect.parse_nvidia_smi(TWO_CARDS) == ("NVIDIA GeForce RTX 4090", 24564 * MIB)
    assert gpu_detect.parse_nvidia_smi(TWO_CARDS, 1) == ("NVIDIA A100-SXM4-80GB", 81920 * MIB)
    assert gpu_detect.parse_nvidia_smi("NVIDIA L4, 23034\n") == ("NVIDIA L4", 23034 * MIB)
    assert gpu_detect.parse_nvidia_smi("NVIDIA L4, [N/A]\n") is None
    assert gpu_detect.parse_nvidia_smi("") is None
    assert gpu_detect.parse_nvidia_smi(TWO_CARDS, 2) is None


def test_a_reported_card_at_its_driver_total_gets_the_reported_capacity(smi: list[str]) -> None:
    g = resolve_gpu("auto")
    assert g.key == "rtx-4090" and g.resolved_from == "auto"
    assert g.memory_bytes == resolve_gpu("4090").memory_bytes == int(23.514 * GIB)
    assert g.capacity_kind == "measured" and g.driver_memory_bytes == 24564 * MIB


def test_the_first_visible_device_is_read(smi: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert resolve_gpu("auto").key == "a100-sxm-80gb"


def test_ecc_off_is_not_given_the_ecc_on_capacity(smi: list[str]) -> None:
    """The RTX A6000's kept capacity was printed with ECC on (46068 MiB): a card showing 49140 MiB
    (ECC off) gets the rule on its own total, 2.7 GiB more; one showing 46068 MiB gets 44.55 GiB."""
    assert capacities()["rtx-a6000"].driver_bytes == 46068 * MIB
    smi[0] = "NVIDIA RTX A6000, 49140 MiB\n"
    off = resolve_gpu("auto")
    assert off.key == "rtx-a6000" and off.capacity_kind == "estimated"
    assert off.memory_bytes == unseen_capacity(49140 * MIB)
    smi[0] = "NVIDIA RTX A6000, 46068 MiB\n"
    on = resolve_gpu("auto")
    assert on.capacity_kind == "measured" and on.memory_bytes == int(44.55 * GIB) < off.memory_bytes


def test_a_card_outside_the_catalog_is_planned_with_the_unseen_rule(smi: list[str]) -> None:
    smi[0] = "Tesla P40, 24451 MiB\n"
    g = resolve_gpu("auto")
    assert (g.key, g.name, g.capacity_kind) == ("local", "Tesla P40", "estimated")
    assert g.memory_bytes == unseen_capacity(24451 * MIB) < g.driver_memory_bytes


def test_no_gpu_is_bad_input_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_detect, "_from_torch", lambda: None)
    monkeypatch.setattr(gpu_detect.shutil, "which", lambda exe: None)
    with pytest.raises(VramplanError) as err:
        resolve_gpu("auto")
    assert err.value.field == "gpu" and "no GPU" in str(err.value)


def test_nvidia_smi_failing_is_no_gpu(smi: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 9, stdout="", stderr="NVIDIA-SMI has failed")

    monkeypatch.setattr(gpu_detect.subprocess, "run", fails)
    with pytest.raises(VramplanError):
        resolve_gpu("auto")
