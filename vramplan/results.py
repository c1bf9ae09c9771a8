"""What vramplan answers, as data: an estimate, a plan, the setups weighed beside it and its notes.

Every class here is a frozen pydantic model; ``--json`` prints ``Plan.model_dump_json()``. This
module imports only leaf data modules (setup, gpus, params), so the memory terms, the planner,
the emitters and the renderers all read it and none of it reads them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan.gpus import GPU
from vramplan.params import ParamCounts
from vramplan.setup import Setup


class CardEstimate(BaseModel):
    """One GPU of a ``device_map`` split: what it holds and its own peak."""

    model_config = ConfigDict(frozen=True)
    index: int
    holds: str  # "embed, layers 0-17"
    layers: int
    phase: str
    terms: dict[str, int]
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int


class Estimate(BaseModel):
    """Memory of one setup: terms at the peak phase (bytes; they sum to ``device_bytes``).
    Under ``device_map`` these are the fullest card's, and ``cards`` has every card."""

    model_config = ConfigDict(frozen=True)
    phase: str
    terms: dict[str, int]
    phases: dict[str, int]
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    total_params: int
    trainable_params: int
    cards: list[CardEstimate] = []


class Peak(BaseModel):
    model_config = ConfigDict(frozen=True)
    phase: str
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int


class Alternative(BaseModel):
    """A setup that was weighed, whether it fits, and why it was or was not chosen."""

    model_config = ConfigDict(frozen=True)
    setup: Setup
    fits: bool
    device_bytes: int
    chosen: bool
    reason: str
    tokens_per_second: float | None = None  # the whole run's, from timing.py (training setups)
    seconds_per_step: float | None = None


class Plan(BaseModel):
    """The answer for one model on one card."""

    model_config = ConfigDict(frozen=True)
    model: str
    gpu: GPU
    setup: Setup
    fits: bool
    headroom_bytes: int
    peak: Peak
    terms: dict[str, int]
    phases: dict[str, int]
    params: ParamCounts
    total_params: int
    trainable_params: int
    alternatives: list[Alternative]
    notes: list[str]
    source: str = ""  # the model as the user named it (catalog name, hub id or path)
    cards: list[CardEstimate] = []  # device_map: every card's own peak
    host_terms: dict[str, int] = {}  # CPU offload: host RAM per node, by what it holds
    host_ram_bytes: int | None = None  # the host RAM the user has, when given

    @property
    def host_bytes(self) -> int:
        """Host RAM one node needs for what is offloaded to it."""
        return sum(self.host_terms.values())

    def __rich__(self) -> Any:
        from vramplan.render import plan_renderable

        return plan_renderable(self)

    def _repr_html_(self) -> str:
        from vramplan.render import plan_html

        return plan_html(self)
