"""The GPU catalog (``tables/gpus.csv``): memory, speeds, features.

A card's ``memory_bytes`` is torch's total capacity: the total its caching allocator runs against,
which its out-of-memory message prints ("GPU 0 has a total capacity of X GiB": ``device_total`` of
``cudaMemGetInfo`` in ``c10/cuda/CUDACachingAllocator.cpp``, torch 2.x) and which
``torch.cuda.get_device_properties(i).total_memory`` (``cudaDeviceProp.totalGlobalMem``,
``torch/csrc/cuda/Module.cpp``) reads within about 0.1 GiB of it (H100: 79.19 by Unsloth's banner,
79.11 in an out-of-memory message). It is less than the total nvidia-smi shows
(``driver_memory_bytes``) by 0.2-0.9 GiB that the driver keeps. Everything the process puts on the
card comes out of it, the CUDA context included: the same message counts the context in
"this process has X memory in use" beside what PyTorch allocated and reserved (RTX 4090:
14.56 GiB in use, 13.86 allocated and 0.21 reserved by PyTorch, 3DTopia/Phidias-Diffusion#8). So the verdict
compares the device tier (``Estimate.device_bytes``: the allocator's reserved peak plus
``overhead/cuda_context`` plus paged optimizer state, peak.py) with ``memory_bytes``; the context
is not taken off the capacity a second time. What one process held outside the allocator on real
cards (0.21-0.60 GiB, median 0.44) is in ``tables/measured/cuda_context.csv``.

``tables/gpu_capacity.csv`` holds, for every card, what real cards printed with the threads that
show it (``measured``: the least where reports disagree, ECC on or off, driver and torch versions)
or, where no report was found, the :func:`unseen_capacity` rule (``estimated``).

Names resolve case-insensitively through the key, the display name and the aliases; a
short name (``h100``, ``a100``) resolves to the most common variant and says so.
``auto`` reads the local card (:func:`detect_gpu`).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
from functools import lru_cache
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError, closest, shown
from vramplan.tables import tables_dir
from vramplan.units import GIB, MIB


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


class GPU(BaseModel):
    """One card. Units are in the field names."""

    model_config = ConfigDict(frozen=True)
    key: str
    name: str
    vendor: str
    #: what torch can allocate into (torch's total_memory); plans compare with it
    memory_bytes: int
    #: the total nvidia-smi (or rocm-smi) shows
    driver_memory_bytes: int
    #: ``measured`` (a real card reported it: gpu_capacity.csv) or ``estimated`` (the unseen rule)
    capacity_kind: str = "estimated"
    capacity_source: str = ""
    memory_mib_kind: str
    memory_gb_marketed: float
    bf16_tflops_dense: float | None = None
    fp16_tflops_dense: float | None = None
    fp8_tflops_dense: float | None = None
    memory_bandwidth_gb_s: float | None = None
    architecture: str = ""
    compute_capability: str = ""
    bf16_supported: bool = False
    flash_attn2_supported: bool = False
    interconnect: str = ""
    interconnect_gb_s: float | None = None
    tdp_w: float | None = None
    source: str = ""
    resolved_from: str | None = None  # set when a short name picked this variant

    @property
    def nvlink(self) -> bool:
        """The board's GPUs talk over NVLink first (SXM boards; ``interconnect`` starts "NVLink"), so
        NCCL runs many channels with buffers on the card (memory/overhead.py ``nccl_bytes``); PCIe
        cards, bridged or not, are not counted."""
        return self.interconnect.startswith("NVLink")

    @property
    def memory_mib(self) -> int:
        """The total as the driver shows it (nvidia-smi), in MiB."""
        return self.driver_memory_bytes // MIB


#: a card no one has reported: torch sees nvidia-smi's total less this and UNSEEN_GAP_FRACTION of it.
#: On the 29 NVIDIA cards reported (tables/gpu_capacity.csv) torch saw 0.22 (RTX 3080) to 0.85 GiB (A100
#: 80GB) less than nvidia-smi's total; the rule stays below every one of them, by 0.05 (A100 80GB) to
#: 0.68 GiB (B200), median 0.21, and is kept: a tighter constant would meet the A100 80GB's 0.85 GiB gap.
#: On ROCm torch reports the driver's total itself (MI250X, MI300X): the rule is safer still there.
UNSEEN_GAP_GIB = 0.5
UNSEEN_GAP_FRACTION = 0.005


def unseen_capacity(driver_bytes: int) -> int:
    """What torch is taken to see on a card no one has reported (see UNSEEN_GAP_GIB)."""
    return driver_bytes - int(UNSEEN_GAP_GIB * GIB) - int(driver_bytes * UNSEEN_GAP_FRACTION)


class Capacity(NamedTuple):
    """One row of tables/gpu_capacity.csv: torch's total capacity and the nvidia-smi total of the
    cards that printed it (46068 MiB for a 48 GB workstation card with ECC on)."""

    bytes: int
    driver_bytes: int
    kind: str  # measured | estimated
    source: str


@lru_cache(maxsize=1)
def capacities() -> dict[str, Capacity]:
    """tables/gpu_capacity.csv by card key; an estimated row's bytes are the rule's, exactly."""
    out: dict[str, Capacity] = {}
    with open(tables_dir() / "gpu_capacity.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            driver = int(r["driver_mib"]) * MIB
            seen = r["kind"] == "measured"
            total = int(float(r["torch_total_gib"]) * GIB) if seen else unseen_capacity(driver)
            out[r["key"]] = Capacity(total, driver, r["kind"], r["source"])
    return out


def _row_to_gpu(row: dict[str, str]) -> GPU:
    driver = int(float(row["memory_mib"])) * MIB
    cap = capacities().get(row["key"])
    seen = cap if cap and cap.kind == "measured" else None
    return GPU(
        key=row["key"],
        name=row["name"],
        vendor=row["vendor"],
        memory_bytes=seen.bytes if seen else unseen_capacity(driver),
        driver_memory_bytes=driver,
        capacity_kind="measured" if seen else "estimated",
        capacity_source=cap.source if cap else "",
        memory_mib_kind=row["memory_mib_kind"],
        memory_gb_marketed=float(row["memory_gb_marketed"]),
        bf16_tflops_dense=_opt_float(row["bf16_tflops_dense"]),
        fp16_tflops_dense=_opt_float(row["fp16_tflops_dense"]),
        fp8_tflops_dense=_opt_float(row["fp8_tflops_dense"]),
        memory_bandwidth_gb_s=_opt_float(row["memory_bandwidth_gb_s"]),
        architecture=row["architecture"],
        compute_capability=row["compute_capability"],
        bf16_supported=row["bf16_supported"].strip().lower() == "true",
        flash_attn2_supported=row["flash_attn2_supported"].strip().lower() == "true",
        interconnect=row["interconnect"],
        interconnect_gb_s=_opt_float(row["interconnect_gb_s"]),
        tdp_w=_opt_float(row["tdp_w"]),
        source=row["source"],
    )


@lru_cache(maxsize=1)
def gpu_catalog() -> dict[str, GPU]:
    with open(tables_dir() / "gpus.csv", newline="") as fh:
        return {row["key"]: _row_to_gpu(row) for row in csv.DictReader(fh)}


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


@lru_cache(maxsize=1)
def _index() -> tuple[dict[str, str], dict[str, str]]:
    """(exact names -> key, short names -> key)."""
    exact: dict[str, str] = {}
    short: dict[str, str] = {}
    with open(tables_dir() / "gpus.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            for name in [row["key"], row["name"], *row["aliases"].split(";")]:
                if name.strip():
                    exact[_norm(name)] = row["key"]
                    exact[_norm(name).replace(" ", "")] = row["key"]
            for name in row["default_for"].split(";"):
                if name.strip():
                    short[_norm(name)] = row["key"]
    return exact, short


def gpu_names() -> list[str]:
    exact, short = _index()
    return sorted(set(exact) | set(short))


def resolve_gpu(query: str) -> GPU:
    """The catalog card for what a user typed (``auto`` reads the local card: :func:`detect_gpu`)."""
    if not isinstance(query, str) or not query.strip() or len(query) > 200:
        raise VramplanError("gpu", f"name a card ('vramplan gpus' lists all) or auto, got {shown(query)}")
    q = _norm(query)
    if q == "auto":
        return detect_gpu()
    exact, short = _index()
    catalog = gpu_catalog()
    # memory written "32g" (as in "v100-32g", the way trainers' READMEs and users name cards) is "32gb"
    spelled = re.sub(r"(\d+)g\b", r"\1gb", q)
    probes = dict.fromkeys(
        p for w in (q, spelled) for p in (w, w.replace(" ", ""), w.replace("-", " "), w.replace("-", ""))
    )
    for probe in probes:
        if probe in exact:
            return catalog[exact[probe]]
        if probe in short:
            return catalog[short[probe]].model_copy(update={"resolved_from": query})
    near = closest(query, [g.name for g in catalog.values()] + sorted(short))
    hint = f"; closest: {', '.join(near)}" if near else ""
    raise VramplanError("gpu", f"unknown GPU {shown(query)}{hint} ('vramplan gpus' lists all, or use auto)")


#: how long nvidia-smi may take to answer (it can stall while the driver wakes a card)
NVIDIA_SMI_TIMEOUT_S = 30


def _from_torch() -> tuple[str, int] | None:
    """(name, total_memory) of torch's device 0, or None when torch is absent or sees no GPU."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    try:
        if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
            return None
        props = torch.cuda.get_device_properties(0)
        return str(props.name), int(props.total_memory)
    except (RuntimeError, AssertionError, AttributeError):
        return None


def _first_visible_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def parse_nvidia_smi(text: str, index: int = 0) -> tuple[str, int] | None:
    """(name, total bytes) of the ``index``-th line of ``--query-gpu=name,memory.total
    --format=csv,noheader`` ("NVIDIA GeForce RTX 4090, 24564 MiB"), or None when absent or unreadable."""
    lines = [line for line in text.splitlines() if line.strip()]
    if index >= len(lines):
        return None
    name, _, memory = lines[index].rpartition(",")
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(MiB)?\s*", memory)
    if not name.strip() or not found:
        return None
    return name.strip(), int(float(found.group(1)) * MIB)


def _from_nvidia_smi() -> tuple[str, int] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(done.stdout, _first_visible_index()) if done.returncode == 0 else None


def _catalog_card(name: str) -> GPU | None:
    """The catalog card a device name is (a MIG slice's name carries the card's, then 'MIG ...')."""
    try:
        return resolve_gpu(re.sub(r"\s+MIG\s.*$", "", name))
    except VramplanError:
        return None


def _local(name: str, total: int, torch_total: bool) -> GPU:
    return GPU(
        key="local",
        name=name,
        vendor="AMD" if "amd" in name.lower() else "NVIDIA",
        memory_bytes=total if torch_total else unseen_capacity(total),
        driver_memory_bytes=total,
        capacity_kind="measured" if torch_total else "estimated",
        capacity_source=_TORCH_SOURCE if torch_total else "",
        memory_mib_kind="torch" if torch_total else "nvidia-smi",
        memory_gb_marketed=round(total / 1e9),
        source="read on this machine",
    )


_TORCH_SOURCE = "torch.cuda.get_device_properties(0).total_memory on this machine"


def detect_gpu() -> GPU:
    """The card ``--gpu auto`` plans for: this machine's, read from torch when it sees one, else
    from nvidia-smi.

    torch (CUDA or ROCm builds) gives the first visible device's name and
    ``get_device_properties(0).total_memory``: the capacity torch itself will run against, ECC setting,
    driver and MIG slice included, so it replaces the catalog's number. Without torch or without a GPU
    torch can see, ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` gives the driver's
    total: the catalog's measured capacity holds when its cards printed it at that same total (ECC off
    and on differ by 1/16 of the memory), else the unseen-card rule (:func:`unseen_capacity`) is
    applied to it. nvidia-smi lists physical cards, not MIG slices, and takes the first of
    ``CUDA_VISIBLE_DEVICES`` when that names indices. No GPU either way is bad input (exit 2).
    """
    found = _from_torch()
    if found is not None:
        name, total = found
        card = _catalog_card(name)
        if card is None:
            return _local(name, total, torch_total=True)
        device = {"memory_bytes": total, "capacity_kind": "measured", "capacity_source": _TORCH_SOURCE}
        return card.model_copy(update={**device, "resolved_from": "auto"})
    found = _from_nvidia_smi()
    if found is None:
        raise VramplanError(
            "gpu",
            "auto found no GPU on this machine (torch sees none, nvidia-smi is absent or lists none); name a card",
        )
    name, driver = found
    card = _catalog_card(name)
    if card is None:
        return _local(name, driver, torch_total=False)
    cap = capacities().get(card.key)
    seen = cap is not None and cap.kind == "measured" and cap.driver_bytes == driver
    update: dict[str, object] = {
        "memory_bytes": card.memory_bytes if seen else unseen_capacity(driver),
        "driver_memory_bytes": driver,
        "memory_mib_kind": "nvidia-smi",
        "resolved_from": "auto",
    }
    if not seen:
        update.update(capacity_kind="estimated", capacity_source="")
    return card.model_copy(update=update)
