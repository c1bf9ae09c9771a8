"""The GPU catalog (``tables/gpus.csv``): memory as the driver reports it, speeds, features.

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
from vramplan.units import MIB


def _opt_float(text: str) -> float | None:
    return float(text) if text.strip() else None


class GPU(BaseModel):
    """One card. Units are in the field names."""

    model_config = ConfigDict(frozen=True)
    key: str
    name: str
    vendor: str
    memory_bytes: int
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
        return self.memory_bytes // MIB


def _row_to_gpu(row: dict[str, str]) -> GPU:
    return GPU(
        key=row["key"],
        name=row["name"],
        vendor=row["vendor"],
        memory_bytes=int(float(row["memory_mib"])) * MIB,
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
            memory_bytes=total,
            memory_mib_kind="nvml",
            memory_gb_marketed=round(total / 1e9),
            source="NVML on this machine",
        )
    return gpu.model_copy(update={"memory_bytes": total, "memory_mib_kind": "nvml", "resolved_from": "auto"})
