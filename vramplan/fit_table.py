"""The fit table: what fits one model, method by method and sequence length by sequence length,
on one card, and the longest context each method fits on each of a list of cards.

The tables people copy from trainers' READMEs (LLaMA-Factory's memory by method and size,
Unsloth's longest context per card), computed for the model, the trainer and the cards the user
names. Every cell is the least setting of its method: micro-batch 1 with gradient checkpointing
(the search's smallest candidate), the family's attention, the trainer's policy; its verdict is
vramplan/verdict.py's (fits with the margin measured runs ask for, tight, does not fit). The
longest context is the longest multiple of :data:`CONTEXT_STEP` tokens, up to the model's own
context, that fits safely. Memory never falls as the sequence grows, so it is found by bisection.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan import verdict
from vramplan.frameworks import framework
from vramplan.gpus import GPU, resolve_gpu
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.planner import family_defaults
from vramplan.setup import make_setup
from vramplan.spec import ModelSpec

#: the sequence lengths the method table shows by default
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
#: the cards the context table shows by default: the ones fine-tuning questions name most
CARDS = ("t4", "a10g", "3090", "4090", "l40s", "a100-40g", "a100-80g", "h100")
#: the longest context is a multiple of this many tokens
CONTEXT_STEP = 128
#: the methods weighed, most memory first: (label, Setup fields without the 16-bit kind)
METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("full amp", {"method": "full", "precision": "amp"}),
    ("full 16-bit", {"method": "full", "precision": "half"}),
    ("lora", {"method": "lora", "precision": "half"}),
    ("qlora nf4", {"method": "qlora", "quant": "bnb-nf4", "precision": "half"}),
)


class FitCell(BaseModel):
    model_config = ConfigDict(frozen=True)
    seq_len: int
    device_bytes: int
    verdict: verdict.Verdict


class FitRow(BaseModel):
    """One method on one card: a cell per sequence length and the longest context that fits."""

    model_config = ConfigDict(frozen=True)
    method: str
    cells: list[FitCell]
    longest: int | None  # None: not even CONTEXT_STEP tokens fit


class CardContexts(BaseModel):
    """The longest context each method fits on one card (None: none fits)."""

    model_config = ConfigDict(frozen=True)
    gpu: str
    memory_bytes: int
    longest: dict[str, int | None]


class FitTable(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str
    trainer: str
    gpu: GPU
    max_context: int
    rows: list[FitRow]
    cards: list[CardContexts]


def _fields(spec: ModelSpec, gpu: GPU, method: dict[str, Any], seq_len: int) -> dict[str, Any]:
    half = "bf16" if gpu.bf16_supported else "fp16"
    precision = {"amp": f"amp-{half}", "half": half}[method["precision"]]
    fields = {**method, "precision": precision, "seq_len": seq_len, "micro_batch": 1, "grad_checkpointing": True}
    return family_defaults(spec, fields)[0]


def _cell(spec: ModelSpec, gpu: GPU, trainer: str, method: dict[str, Any], seq_len: int) -> FitCell:
    setup = make_setup(**_fields(spec, gpu, method, seq_len))
    est = estimate(spec, setup, policy=framework(trainer).policy(setup), card_bytes=gpu.memory_bytes, nvlink=gpu.nvlink)
    return FitCell(
        seq_len=seq_len,
        device_bytes=est.device_bytes,
        verdict=verdict.verdict(verdict.needed(est), gpu.memory_bytes),
    )


def longest_context(spec: ModelSpec, gpu: GPU, trainer: str, method: dict[str, Any], limit: int) -> int | None:
    """The longest multiple of CONTEXT_STEP tokens up to ``limit`` at which ``method`` fits
    ``gpu`` safely, by bisection (memory never falls as the sequence grows); None if none does."""

    def fits(k: int) -> bool:
        return _cell(spec, gpu, trainer, method, k * CONTEXT_STEP).verdict == "fits"

    lo, hi = 0, max(1, limit // CONTEXT_STEP)  # fits(lo) holds by convention; find the last k that fits
    if fits(hi):
        return hi * CONTEXT_STEP
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * CONTEXT_STEP or None


def fit_table(
    model: str,
    gpu: str = "4090",
    *,
    trainer: str = "trl",
    seq_lens: tuple[int, ...] = SEQ_LENS,
    cards: tuple[str, ...] = CARDS,
) -> FitTable:
    """The method table of ``model`` on ``gpu`` at each of ``seq_lens`` (those beyond the model's
    context left out), and the longest context of each method on each of ``cards``, all as
    ``trainer`` runs them. Bad input raises :class:`vramplan.errors.VramplanError`."""
    spec = load_model(model)
    card = resolve_gpu(gpu)
    framework(trainer)  # an unknown trainer is refused before any estimate
    limit = spec.max_position_embeddings or max(seq_lens)
    shown = [s for s in seq_lens if s <= limit] or [min(seq_lens)]
    rows = [
        FitRow(
            method=label,
            cells=[_cell(spec, card, trainer, method, s) for s in shown],
            longest=longest_context(spec, card, trainer, method, limit),
        )
        for label, method in METHODS
    ]
    contexts = []
    for name in dict.fromkeys(cards):
        other = resolve_gpu(name)
        longest = {label: longest_context(spec, other, trainer, method, limit) for label, method in METHODS}
        contexts.append(CardContexts(gpu=other.name, memory_bytes=other.memory_bytes, longest=longest))
    return FitTable(model=spec.name, trainer=trainer, gpu=card, max_context=limit, rows=rows, cards=contexts)


def fit_renderable(table: FitTable) -> Any:
    """Two rich tables: GiB by method and sequence length on the card (green fits, yellow tight,
    red does not fit) with the longest context, and the longest context per card."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    style = {"fits": "green", "tight": "yellow", "does not fit": "red"}
    gib = table.gpu.memory_bytes / 2**30
    first = Table(
        title=f"{table.model} on {table.gpu.name} ({gib:.2f} GiB), {table.trainer}: GiB at micro-batch 1 with"
        " checkpointing",
        caption="green fits, yellow tight (fits, not the margin measured runs ask for), red does not fit",
    )
    first.add_column("method")
    seqs = [c.seq_len for c in table.rows[0].cells]
    for s in seqs:
        first.add_column(f"{s:,}", justify="right")
    first.add_column("longest context", justify="right")
    for row in table.rows:
        cells = [Text(f"{c.device_bytes / 2**30:.1f}", style=style[c.verdict]) for c in row.cells]
        first.add_row(row.method, *cells, "-" if row.longest is None else f"{row.longest:,}")
    second = Table(title=f"longest context that fits safely (tokens; the model's own: {table.max_context:,})")
    second.add_column("card")
    second.add_column("GiB", justify="right")
    methods = [r.method for r in table.rows]
    for m in methods:
        second.add_column(m, justify="right")
    for card in table.cards:
        values = ["-" if card.longest[m] is None else f"{card.longest[m]:,}" for m in methods]
        second.add_row(card.gpu, f"{card.memory_bytes / 2**30:.2f}", *values)
    return Group(first, second)
