"""The GPU catalog (``tables/gpus.csv``): memory, speeds, features.

A card's ``memory_bytes`` is what torch can allocate into, ``total_memory`` of
``torch.cuda.get_device_properties`` — the "total capacity" its out-of-memory message prints —,
which is less than the total nvidia-smi shows (``driver_memory_bytes``): the driver keeps the
rest. Plans compare with it (the CUDA context comes out of it too). ``tables/gpu_capacity.csv``
holds what real cards reported; a card with no report gets nvidia-smi's total less
:data:`UNSEEN_GAP_GIB` and :data:`UNSEEN_GAP_FRACTION` of it, above every gap reported.

Names resolve case-insensitively through the key, the display name and the aliases; a
short name (``h100``, ``a100``) resolves to the most common variant and says so.
``auto`` reads the local card through NVML.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache

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
    def memory_mib(self) -> int:
        """The total as the driver shows it (nvidia-smi), in MiB."""
        return self.driver_memory_bytes // MIB


#: a card no one has reported: torch sees nvidia-smi's total less this and UNSEEN_GAP_FRACTION of it
#: (the gaps reported run from 0.25 GiB, V100 32GB, to 0.85 GiB, A100 80GB: 0.5 GiB + 0.5% is above each)
UNSEEN_GAP_GIB = 0.5
UNSEEN_GAP_FRACTION = 0.005


def unseen_capacity(driver_bytes: int) -> int:
    """What torch is taken to see on a card no one has reported (see UNSEEN_GAP_GIB)."""
    return driver_bytes - int(UNSEEN_GAP_GIB * GIB) - int(driver_bytes * UNSEEN_GAP_FRACTION)


@lru_cache(maxsize=1)
def _capacities() -> dict[str, tuple[int, str]]:
    with open(tables_dir() / "gpu_capacity.csv", newline="") as fh:
        return {r["key"]: (int(float(r["torch_total_gib"]) * GIB), r["source"]) for r in csv.DictReader(fh)}


def _row_to_gpu(row: dict[str, str]) -> GPU:
    driver = int(float(row["memory_mib"])) * MIB
    seen = _capacities().get(row["key"])
    return GPU(
        key=row["key"],
        name=row["name"],
        vendor=row["vendor"],
        memory_bytes=seen[0] if seen else unseen_capacity(driver),
        driver_memory_bytes=driver,
        capacity_kind="measured" if seen else "estimated",
        capacity_source=seen[1] if seen else "",
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
    """The catalog card for what a user typed (``auto`` reads the local card via NVML)."""
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


def detect_gpu() -> GPU:
    """The first local NVIDIA card, through NVML (nvidia-ml-py, the ``gpu`` extra)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        raise VramplanError(
            "gpu", "auto needs nvidia-ml-py (pip install 'vramplan[gpu]'); name a card instead"
        ) from None
    try:
        pynvml.nvmlInit()
    except Exception:
        raise VramplanError(
            "gpu", "auto found no NVIDIA GPU on this machine (NVML unavailable); name a card instead"
        ) from None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            raise VramplanError("gpu", "auto found no NVIDIA GPU on this machine; name a card instead")
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    finally:
        pynvml.nvmlShutdown()
    try:
        gpu = resolve_gpu(name)
    except VramplanError:
        return GPU(
            key="local",
            name=name,
            vendor="NVIDIA",
            memory_bytes=unseen_capacity(total),
            driver_memory_bytes=total,
            memory_mib_kind="nvml",
            memory_gb_marketed=round(total / 1e9),
            source="NVML on this machine",
        )
    # NVML's total is nvidia-smi's: the catalog's measured capacity holds when the totals agree
    seen = gpu.capacity_kind == "measured" and gpu.driver_memory_bytes == total
    update: dict[str, object] = {
        "memory_bytes": gpu.memory_bytes if seen else unseen_capacity(total),
        "driver_memory_bytes": total,
    }
    if not seen:
        update.update(capacity_kind="estimated", capacity_source="")
    return gpu.model_copy(update={**update, "memory_mib_kind": "nvml", "resolved_from": "auto"})
