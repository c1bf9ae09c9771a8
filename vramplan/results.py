"""What vramplan answers, as data: an estimate, a plan, the setups weighed beside it and its notes.

Every class here is a frozen pydantic model; ``--json`` prints ``Plan.model_dump_json()``. This
module imports only leaf data modules (setup, gpus, params), so the memory terms, the planner,
the emitters and the renderers all read it and none of it reads them. A plan renders itself
(``__rich__``, ``_repr_html_``, through render.py); it is emitted by ``vramplan.emit.emit(plan, target)``.

A :class:`Note` is one thing the plan says: a stable ``code``, its numbers in ``data`` (bytes as
ints) and ``text``, the sentence the CLI prints. The codes and what their data holds:

- ``family.attention``: the family's attention taken for the default the family refuses:
  ``model_type``, ``attention`` (taken), ``refused`` (the default), ``others`` (other attentions it runs).
- ``moe.lora_targets``: LoRA on an MoE's attention only: ``targets`` (module names).
- ``moe.lora_dropout``: LoRA on an MoE's experts (all-linear) runs without dropout: ``lora_dropout`` (0.0).
- ``model.context``: the sequence is longer than the config's context: ``seq_len``, ``max_position_embeddings``.
- ``model.approximate``: no family module reads the model's type (arch/generic.py): ``model_type``,
  ``margin_pct`` (added to every phase as ``overhead/approximation``).
- ``stack.transformers``: the transformers major version the plan assumed, for a model whose modules
  differ between versions (a mixture of experts, vramplan/stack.py): ``transformers`` (4 or 5),
  ``source`` (``given``, ``installed``, or ``default`` when transformers is not installed).
- ``trainer.policy``: the trainer whose run the numbers describe: ``trainer``, ``package`` (what users
  install), ``established`` (the release series its policy was read from).
- ``trainer.version``: the installed release of ``package`` is not that series: as above, and ``installed``.
- ``gpu.resolved``: the card's name was resolved: ``name`` (as given), ``gpu``, ``memory_mib``.
- ``gpu.no_bf16``: the card has no bf16: ``gpu``, ``precision`` (fp16).
- ``rank.fitting``: the fitting setups of the chosen method, fastest first, as many as shown:
  ``setups`` (labels), ``tokens_per_second``, ``device_bytes`` (lists in the same order), ``more``
  (how many fitting setups are not shown); on a card without the figure the time model needs, the
  setups keep the relative model's order, ``tokens_per_second`` is empty and ``missing_figure``
  names the tables/gpus.csv column.
- ``rank.offload``: the preferred precision fits only with CPU offload (pinned host RAM not stated);
  a faster setup of the method without offload was taken: ``taken``, ``taken_tokens_per_second``,
  ``offloaded``, ``offloaded_tokens_per_second``, ``host_bytes`` (what the offloaded one needs per node).
- ``parallel.zero3_one_gpu``: ZeRO-3 on one GPU shards nothing: ``parallel``, ``world_size``.
- ``host.ram``: host RAM one node needs for offloaded state: ``host_bytes``, ``host_ram_bytes`` (given, or None).
- ``fit.host_short``: the host RAM given is too small: ``host_bytes``, ``host_ram_bytes``, ``short_bytes``.
- ``media.tokens``: images and video: ``images_per_sample``, ``image_size``, ``image_patches``,
  ``image_tokens`` (with images); ``video_frames``, ``video_size``, ``frame_pairs``, ``video_patches``,
  ``video_tokens`` (with video); ``seq_len``, ``media_tokens`` (added to it), ``tower_trained``,
  ``vision_forward_bytes``.
- ``rl.phases``: GRPO's phases: ``rl``, ``vllm``, ``generate_bytes``, ``generation_batch``,
  ``old_logprobs_bytes`` and ``reference_bytes`` (None without them), ``training_bytes``, ``peak_phase``.
- ``rl.vllm``: vLLM colocated: ``share_bytes``, ``gpu_memory_utilization``, ``sleep``, ``weights_bytes``,
  ``activations_bytes``, ``kv_one_sequence_bytes``, ``sequence_tokens``, ``concurrent_sequences``
  (below 1: vLLM cannot start), ``generation_batch``, ``waves`` (None when it cannot start).
- ``fit.tight``: the plan fits the card but not with the margin measured runs ask for
  (vramplan/verdict.py): ``gpu``, ``device_bytes``, ``memory_bytes``, ``margin_pct``, ``safe_bytes``
  (the estimate grown by the margin), ``short_bytes`` (how far that is beyond the card).
- ``fit.short_by``: nothing weighed fits the card: ``gpu``, ``device_bytes`` (the smallest),
  ``memory_bytes``, ``short_bytes``.
- ``fit.suggestion``: a change that makes it fit: ``change`` (``release``: drop the pinned ``field``
  whose value was ``value``; ``set``: set ``field`` to ``value``: ``optimizer``, ``seq_len``,
  ``num_gpus`` with its ``parallel`` layout, or ``gpu``, the smallest catalog card that holds it),
  ``setup`` (the label of what then fits) and its ``device_bytes``.
- ``gpus.auto_fewest``: ``--gpus auto`` found the fewest GPUs that fit: ``num_gpus`` (per node),
  ``num_nodes``, ``world_size``.
- ``lengths.cache``: variable batch lengths (memory/lengths.py): ``lengths``, ``avg_tokens`` (the mean the
  lengths were drawn with), ``records`` (expected batches longer than every one before), ``cache_bytes``
  (their loss chains' segments, cached), ``device_bytes`` (what nvidia-smi reads), ``needed_bytes`` (the
  least the card must offer), ``memory_bytes`` (the card's); with ``--lengths-file`` also ``lengths_file``,
  ``samples`` and ``over_cap_share`` (the samples longer than ``seq_len``, cut or dropped as the trainer does).
- ``fsdp.stream_pools``: FSDP1's per-stream caches (memory/fsdp.py): ``pools_bytes`` (the cached blocks
  nvidia-smi sees beyond the run's need), ``device_bytes``, ``needed_bytes``, ``memory_bytes`` (the card's).
- ``lengths.padding``: ``--avg-tokens`` below the cap under fixed lengths: ``avg_tokens``, ``seq_len``,
  ``real_tokens_per_step`` and ``planned_tokens_per_step`` (every replica, the accumulated micro-batches),
  ``samples_per_packed_row`` (what ``--lengths packed`` puts in a row at the same memory).
- ``gpus.auto_none``: no GPU count ``--gpus auto`` weighs fits: ``max_world_size`` (the largest weighed;
  the sentence says 512, the largest of auto.AUTO_GPUS, also when ``num_nodes`` was pinned).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from vramplan.gpus import GPU
from vramplan.params import ParamCounts
from vramplan.setup import Setup

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from vramplan.plan_fields import PlanFields

#: what a Plan's own methods run (``report``, ``plot``, ``what_if``, ``chart``), registered by
#: vramplan.planner when it is imported: the planner and the report writer read this module, so
#: it names no module of theirs (tests/test_imports.py).
PLAN_ACTIONS: dict[str, Callable[..., Any]] = {}


def _action(name: str) -> Callable[..., Any]:
    if name not in PLAN_ACTIONS:
        raise RuntimeError(f"Plan.{name} needs the planner loaded: from vramplan import plan")
    return PLAN_ACTIONS[name]


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
    #: the least the card must offer: ``device_bytes`` without the wholly free cached segments
    #: (the 16-bit logits' block, the shorter batches' loss chains under variable lengths), which
    #: torch frees and retries before it reports out-of-memory (memory/lengths.py)
    needed_bytes: int = 0


class Peak(BaseModel):
    model_config = ConfigDict(frozen=True)
    phase: str
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    #: the least the card must offer (Estimate.needed_bytes): the device tier without wholly free
    #: cached segments
    needed_bytes: int = 0


#: a value a note's data holds: numbers (bytes as ints), names, flags, or a list of them.
Scalar = bool | int | float | str | None
#: (Mapping and Sequence in the annotations so that a ``dict[str, int]`` or a ``list[str]`` type-checks
#: as note data; pydantic validates the mapping into a dict.)
NoteValue = Scalar | Sequence[Scalar]


class Note(BaseModel):
    """One thing the plan says: a stable dotted ``code``, its numbers in ``data`` and the sentence
    ``text`` the CLI prints (see the module docstring for every code and its data)."""

    model_config = ConfigDict(frozen=True)
    code: str
    data: Mapping[str, NoteValue]
    text: str


#: an Alternative's verdict: the one chosen; one that does not fit the card; one of the chosen
#: setup's method, precision and quantization that fits but is slower; one of a method or precision
#: the search prefers less that fits; one that fits and that the search prefers (weighed, not taken).
Verdict = Literal["chosen", "does_not_fit", "fits_slower", "ranks_below", "fits"]


class Alternative(BaseModel):
    """A setup that was weighed, whether it fits, and why it was or was not chosen."""

    model_config = ConfigDict(frozen=True)
    setup: Setup
    fits: bool
    device_bytes: int
    chosen: bool
    reason: str
    verdict: Verdict  # why it was or was not chosen, as a code; ``reason`` says it in words
    tokens_per_second: float | None = None  # the whole run's, from timing.py (training setups)
    seconds_per_step: float | None = None

    def __repr__(self) -> str:
        from vramplan.setup import label

        speed = f", {self.tokens_per_second:,.0f} tok/s" if self.tokens_per_second else ""
        return f"Alternative({label(self.setup)}: {self.device_bytes / 2**30:.2f} GiB{speed}, {self.verdict})"


class Plan(BaseModel):
    """The answer for one model on one card."""

    model_config = ConfigDict(frozen=True)
    model: str
    gpu: GPU
    setup: Setup
    fits: bool
    headroom_bytes: int
    #: fits (with the margin measured runs ask for, vramplan/verdict.py), tight (fits, not the margin),
    #: or does not fit; ``fits`` is true for the first two
    verdict: Literal["fits", "tight", "does not fit"] = "fits"
    #: the trainer (vramplan.frameworks) whose policy the estimates are made under
    trainer: str = "hf"
    peak: Peak
    terms: dict[str, int]
    phases: dict[str, int]
    params: ParamCounts
    total_params: int
    trainable_params: int
    alternatives: list[Alternative]
    notes: list[Note]
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
        """The notebook's view: the verdict, the peak by term against the card, the terms, the
        alternatives weighed and the advice."""
        from vramplan.render import plan_html

        chart = PLAN_ACTIONS["chart"](self) if "chart" in PLAN_ACTIONS else ""
        return plan_html(self, chart=chart)

    def report(self, path: str | Path) -> Path:
        """Write the plan's HTML page (what ``--report`` writes) to ``path``; returns the path."""
        return _action("report")(self, path)  # type: ignore[no-any-return]

    def plot(self, path: str | Path) -> Path:
        """Write the plan's charts as a PNG (``--plot``; the ``plot`` extra) to ``path``."""
        return _action("plot")(self, path)  # type: ignore[no-any-return]

    def what_if(self, **changes: Unpack[PlanFields]) -> Plan:
        """The same setup with ``changes`` (``p.what_if(seq_len=8192)``), planned again on the same
        card for the same trainer: every field of this plan's setup pinned but those changed."""
        return _action("what_if")(self, changes)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        """One line (the whole plan is ``print(plan)`` in rich, or the notebook's HTML view)."""
        from vramplan.setup import label

        peak, gib = self.peak, 2**30
        need = peak.needed_bytes or peak.device_bytes  # verdict.needed
        # cached blocks torch frees before out-of-memory: the card must offer less than nvidia-smi reads
        cached = f", nvidia-smi {peak.device_bytes / gib:.2f}" if need < peak.device_bytes else ""
        return (
            f"Plan({self.model} on {self.gpu.name}, {self.trainer}: {self.verdict}, {label(self.setup)},"
            f" needs {need / gib:.2f} of {self.gpu.memory_bytes / gib:.2f} GiB at {peak.phase}{cached})"
        )
