"""``device_map``: the layers split over the GPUs of one process, card by card.

transformers 5 ``from_pretrained(device_map="auto")`` computes a *balanced* map with its own
copies of accelerate's functions (``transformers/integrations/accelerate.py``):
``get_balanced_memory`` gives every card but the last a budget of

    total / N + 1.25 · max(largest no-split block, largest module holding parameters)

(the largest module is usually the embedding; bitsandbytes quantizers then keep 90% of
it), the last card keeping its whole memory; ``infer_auto_device_map`` walks the modules
in order (vision tower, embedding, decoder layers, final norm, lm_head), putting each on
the current card while it fits and moving on to the next card when it does not. The first
card also keeps room for the largest block still to come (``main_devices``). A tied
lm_head goes with the embedding. Sizes are the load-time ones (quantized linears packed,
everything else in the 16-bit load dtype). Checked against transformers' own functions
on meta-device models (tests/test_device_map.py).

Each card then holds the weights of its modules, the trainable state of their parameters
and the saved activations of its layers; the loss chain lives where lm_head is, the vision
tower's activations where the tower is, and every card has its CUDA context. One card
computes at a time (the layers run in turn), so a card's peak is its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from vramplan.memory import activations as act
from vramplan.memory.policy import policy_of
from vramplan.memory.trainable import (
    extra_trainable_params,
    head_lora_params,
    kind_params,
    layer_params,
    lora_params,
    moe_layer_set,
    trainable_layers,
    trainable_params,
)
from vramplan.memory.weights import quant_weight_bytes, quantized_weight_params
from vramplan.params import param_counts
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: ``get_balanced_memory``: the buffer is 1.25 x the larger of the biggest no-split block
#: and the biggest module holding parameters.
BUFFER_FACTOR = 1.25


@dataclass(frozen=True)
class Unit:
    """A module accelerate places whole: ``kind`` is vision, embed, layer, norm or lm_head."""

    kind: str
    index: int
    bytes: int


def _weight_dtype(setup: Setup) -> str:
    """The dtype the checkpoint is loaded in (before PEFT's k-bit upcasts)."""
    if setup.method in ("inference", "qlora"):
        return "fp16" if setup.precision.endswith("fp16") else ("fp32" if setup.precision == "fp32" else "bf16")
    return policy_of(setup).weights


def units(spec: ModelSpec, setup: Setup) -> list[Unit]:
    """The modules in the order accelerate meets them, with their size as loaded (quantized
    linears packed: their share of the packed bytes spread evenly over the layers)."""
    return list(_units(spec, _weight_dtype(setup), setup.quant))


@lru_cache(maxsize=64)
def _units(spec: ModelSpec, dt: str, quant: str) -> tuple[Unit, ...]:
    counts = param_counts(spec)
    out: list[Unit] = []
    if counts.vision and spec.vision is not None:
        # the tower goes whole when it fits, else block by block: the same cards either way
        v = spec.vision
        block = sum(lin.params for lin in v.blocks) + 2 * v.hidden_size * (2 if v.norm == "layernorm" else 1)
        out.append(Unit("vision", -1, nbytes(counts.vision - v.depth * block, dt)))
        out += [Unit("vision", i, nbytes(block, dt)) for i in range(v.depth)]
        out.append(Unit("vision", v.depth, nbytes(counts.projector, dt)))
    out.append(Unit("embed", 0, nbytes(counts.embeddings, dt)))
    q_bytes = q_params = 0
    if quant != "none":
        q_bytes = quant_weight_bytes(spec, quant) // spec.num_layers
        q_params = quantized_weight_params(spec, quant) // spec.num_layers
    for i in range(spec.num_layers):
        out.append(Unit("layer", i, q_bytes + nbytes(layer_params(spec, i) - q_params, dt)))
    out.append(Unit("norm", 0, nbytes(spec.hidden_size, dt)))
    if counts.lm_head:
        out.append(Unit("lm_head", 0, nbytes(counts.lm_head, dt)))
    return tuple(out)


#: transformers' bitsandbytes quantizers ``adjust_max_memory``: 90% of each card's budget.
BNB_MEMORY_FRACTION = 0.9


def balanced_budget(spec: ModelSpec, parts: list[Unit], n: int, quant: str = "none") -> int:
    """Bytes transformers' ``get_balanced_memory`` allows each card but the last (``quant``:
    the setup's quantization)."""
    total = sum(u.bytes for u in parts)
    block = max([u.bytes for u in parts if u.kind in ("layer", "vision")], default=0)
    leaf = max([u.bytes for u in parts if u.kind in ("embed", "lm_head")], default=0)
    budget = total // n + int(BUFFER_FACTOR * max(block, leaf))
    if quant.startswith("bnb"):
        budget = int(budget * BNB_MEMORY_FRACTION)
    return budget


def assign(spec: ModelSpec, setup: Setup, n: int | None = None) -> list[list[Unit]]:
    """Modules per card, as accelerate's balanced ``infer_auto_device_map`` places them.
    Whatever the first ``n - 1`` cards cannot take lands on the last one (where accelerate
    would start offloading to the CPU once the card is full)."""
    return [list(card) for card in placement(spec, setup, n)]


def placement(spec: ModelSpec, setup: Setup, n: int | None = None) -> tuple[tuple[Unit, ...], ...]:
    """:func:`assign` as the tuples it keeps (one placement per spec, load dtype, quant and count)."""
    return _assign(spec, _weight_dtype(setup), setup.quant, n or setup.num_gpus)


@lru_cache(maxsize=64)
def _assign(spec: ModelSpec, dt: str, quant: str, n: int) -> tuple[tuple[Unit, ...], ...]:
    parts = _units(spec, dt, quant)
    budget = balanced_budget(spec, list(parts), n, quant)
    # the largest module after each one: the first card keeps room for it (accelerate main_devices)
    largest_after = [0] * len(parts)
    for pos in range(len(parts) - 2, -1, -1):
        largest_after[pos] = max(largest_after[pos + 1], parts[pos + 1].bytes)
    cards: list[list[Unit]] = [[] for _ in range(n)]
    card, used = 0, 0
    for pos, u in enumerate(parts):
        while card < n - 1:
            cap = budget
            if card == 0:
                cap -= largest_after[pos]
            if used + u.bytes <= cap:
                break
            card, used = card + 1, 0
        cards[card].append(u)
        used += u.bytes
    return tuple(tuple(c) for c in cards)


def card_labels(spec: ModelSpec, setup: Setup, n: int | None = None) -> list[tuple[str, int]]:
    """What each card of :func:`assign` holds, as :func:`label` says it, and its layer count."""
    return list(_card_labels(spec, _weight_dtype(setup), setup.quant, n or setup.num_gpus))


@lru_cache(maxsize=64)
def _card_labels(spec: ModelSpec, dt: str, quant: str, n: int) -> tuple[tuple[str, int], ...]:
    return tuple((label(list(c)), sum(1 for u in c if u.kind == "layer")) for c in _assign(spec, dt, quant, n))


def label(units_on_card: list[Unit]) -> str:
    """``vision, embed, layers 0-17`` for one card."""
    names = ["vision" if u.kind == "vision" else u.kind for u in units_on_card if u.kind in ("vision", "embed")]
    names = list(dict.fromkeys(names))
    layers = [u.index for u in units_on_card if u.kind == "layer"]
    if layers:
        names.append(f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}")
    if any(u.kind == "lm_head" for u in units_on_card):
        names.append("lm_head")
    return ", ".join(names) or "nothing"


@dataclass(frozen=True)
class CardShare:
    """What one card holds, as fractions of the single-process terms."""

    weights: float
    layers: float
    trainable: float
    has_head: bool
    has_vision: bool
    saved_bytes: int
    recomputes: bool


def shares(spec: ModelSpec, setup: Setup, cards: Sequence[Sequence[Unit]]) -> list[CardShare]:
    """Each card's share of weights, layers, trainable parameters, and its saved
    activations (its layers' checkpoints or full activations, plus the head's when the
    loss runs there)."""
    total_w = sum(u.bytes for c in cards for u in c) or 1
    L = spec.num_layers
    trained = trainable_layers(spec, setup)
    saving = act.saving_layers(spec, setup) if setup.method != "inference" else range(0)
    moe = moe_layer_set(spec)
    per_layer_lora = (lora_params(spec, setup) - head_lora_params(spec, setup)) / L if setup.is_lora else 0.0
    extra = setup.trainable_extra if setup.is_lora else ()
    tied = spec.tie_word_embeddings
    counts = param_counts(spec)
    total_t = trainable_params(spec, setup) or 1
    head_params_on_embed = tied  # a tied lm_head is placed with the embedding
    ckpt = act.checkpoint_bytes(spec, setup)
    out = []
    empty: CardShare | None = None  # the share of a card that holds nothing (many, with many cards)
    for c in cards:
        if not c and empty is not None:
            out.append(empty)
            continue
        kinds = {u.kind for u in c}
        layers = [u.index for u in c if u.kind == "layer"]
        # the card's layers by kind (MoE, trained, recorded): layers of one kind hold the same
        by_kind = Counter((i in moe, i in trained, i in saving) for i in layers)
        has_head = "lm_head" in kinds or (head_params_on_embed and "embed" in kinds)
        if setup.is_lora:
            t = per_layer_lora * len(layers)
            if "embed" in kinds and "embeddings" in extra:
                t += extra_trainable_params(spec, setup.model_copy(update={"trainable_extra": ("embeddings",)}))
            if has_head:
                t += head_lora_params(spec, setup)
                if "lm_head" in extra:
                    t += spec.vocab_size * spec.hidden_size
        elif setup.method == "full":
            t = sum(n * kind_params(spec, is_moe) for (is_moe, _, _), n in by_kind.items())
            t += counts.embeddings if "embed" in kinds else 0
            t += counts.lm_head if "lm_head" in kinds else 0
            if "vision" in kinds:
                t += (0 if setup.freeze_vision else counts.vision) + (0 if setup.freeze_projector else counts.projector)
        elif setup.method == "freeze":
            t = sum(n * kind_params(spec, is_moe) for (is_moe, trains, _), n in by_kind.items() if trains)
        else:
            t = 0
        mine = sum(n for (_, _, records), n in by_kind.items() if records)  # layers it recomputes
        if setup.grad_checkpointing:
            saved = mine * ckpt
        else:
            saved = sum(
                n * act.layer_kind_saved_bytes(spec, setup, is_moe, trains)
                for (is_moe, trains, records), n in by_kind.items()
                if records
            )
        if has_head and saving:
            saved += act.head_saved_bytes(spec, setup)
        out.append(
            CardShare(
                weights=sum(u.bytes for u in c) / total_w,
                layers=len(layers) / L,
                trainable=t / total_t if setup.method != "inference" else 0.0,
                has_head=has_head,
                has_vision="vision" in kinds,
                saved_bytes=saved,
                recomputes=mine > 0,
            )
        )
        if not c:
            empty = out[-1]
    return out


def card_terms(terms: dict[str, int], share: CardShare) -> dict[str, int]:
    """One phase's single-process terms as one card holds them."""
    out: dict[str, int] = {}
    for k, v in terms.items():
        if k.startswith("weights/autocast_copies") or k == "inference/kv_cache":
            x = v * share.layers
        elif k == "weights/trainable":
            x = v * share.trainable
        elif k.startswith("weights/"):
            x = v * share.weights
        elif k == "gradients" or k.startswith(("optimizer/", "parallel/")):
            x = v * share.trainable
        elif k == "activations/saved":
            x = share.saved_bytes if v else 0
        elif k.startswith("activations/"):
            x = v if share.recomputes else 0
        elif k.startswith("loss/"):
            x = v if share.has_head else 0
        elif k.startswith("vision/"):
            x = v if share.has_vision else 0
        else:  # overhead/*, inference/transient: every card (each runs its layers)
            x = v
        out[k] = int(-(-x // 1))
    return out
