"""Which parameters train: full, freeze (top layers), LoRA adapters and extra modules."""

from __future__ import annotations

from functools import lru_cache

from vramplan.errors import VramplanError
from vramplan.params import param_counts
from vramplan.setup import Setup
from vramplan.spec import Linear, ModelSpec


def _matches(name: str, target: str) -> bool:
    """PEFT's target matching: the module name equals the target or ends with '.target'."""
    return name == target or name.endswith("." + target)


def lora_linears(spec: ModelSpec, setup: Setup, layer: int) -> tuple[Linear, ...]:
    """The linears of ``layer`` that carry a LoRA adapter.

    ``all-linear`` is PEFT's ``INCLUDE_LINEAR_LAYERS_SHORTHAND``: every ``nn.Linear`` but the
    output layer; here the language model's (vision towers stay frozen as trainers default).
    """
    if not setup.is_lora:
        return ()
    return _lora_linears(spec.layer_linears(layer), setup.lora_targets)


def lora_group(linears: tuple[Linear, ...], setup: Setup) -> tuple[Linear, ...]:
    """The adapted linears among one layer group's ``linears``."""
    return _lora_linears(linears, setup.lora_targets) if setup.is_lora else ()


@lru_cache(maxsize=1024)
def _lora_linears(linears: tuple[Linear, ...], lora_targets: str) -> tuple[Linear, ...]:
    targets = None if lora_targets.strip().lower() == "all-linear" else [t.strip() for t in lora_targets.split(",")]
    if targets is None:
        return tuple(lin for lin in linears if lin.nn_linear)
    return tuple(lin for lin in linears if lin.nn_linear and any(_matches(lin.name, t) for t in targets))


def param_targets(linears: tuple[Linear, ...], setup: Setup) -> tuple[tuple[Linear, int], ...]:
    """The parameters (not ``nn.Linear`` modules) PEFT adapts in one layer group, with their
    rank: with ``all-linear`` on a mixture of experts PEFT also targets the router's weight
    and the fused 3D expert stacks (``target_parameters``: ``gate.weight``, ``gate_up_proj``,
    ``down_proj``, wrapped by its ``ParamWrapper``), the fused ``gate_up_proj`` at twice the
    rank (PEFT's ``rank_pattern``, as it stands for two projections). Per parameter of E
    experts: A is (rank·E) x in, B is out x (rank·E)."""
    if not setup.is_lora or setup.lora_targets.strip().lower() != "all-linear":
        return ()
    return tuple((lin, lin.param_target_rank * setup.lora_rank) for lin in linears if lin.param_target_rank)


def param_target_params(linears: tuple[Linear, ...], setup: Setup) -> int:
    """Adapter parameters on one layer group's targeted parameters: rank·E·(in + out) each."""
    return sum(rank * lin.count * (lin.in_features + lin.out_features) for lin, rank in param_targets(linears, setup))


def check_lora_targets(spec: ModelSpec, setup: Setup) -> None:
    """Every named target must match a linear of the model."""
    targets = setup.lora_target_list()
    if setup.is_lora and targets is None and spec.all_linear_refused:
        named = ",".join(lin.name for lin in spec.attention if lin.nn_linear)
        raise VramplanError(
            "lora_targets", f"all-linear on {spec.name}: {spec.all_linear_refused}; name them, e.g. {named}"
        )
    wrapped = any(lin.param_target_rank for group, _ in spec.layer_groups for lin in group)
    if setup.is_lora and targets is None and wrapped and setup.lora_dropout:
        raise VramplanError(
            "lora_dropout",
            f"on {spec.name} all-linear also adapts the router and the fused experts through PEFT's ParamWrapper,"
            " which refuses dropout: --lora-dropout 0 (or name the targets, e.g. "
            + ",".join(lin.name for lin in spec.attention if lin.nn_linear)
            + ")",
        )
    if not setup.is_lora or targets is None:
        return
    names = spec.linear_names()
    unknown = [t for t in targets if t != "lm_head" and not any(_matches(n, t) for n in names)]
    if unknown:
        raise VramplanError(
            "lora_targets",
            f"{', '.join(unknown)} not in {spec.name}; allowed: all-linear or any of {','.join(names)}",
        )


def lora_params(spec: ModelSpec, setup: Setup) -> int:
    """Adapter parameters: r·(in + out) per targeted linear (A: r x in, B: out x r), times
    its copies (``count``), summed over layers (PEFT ``LoraLayer.update_layer``)."""
    if not setup.is_lora:
        return 0
    r = setup.lora_rank
    return head_lora_params(spec, setup) + sum(
        n
        * (
            sum(
                lin.count * r * (lin.in_features + lin.out_features) for lin in _lora_linears(group, setup.lora_targets)
            )
            + param_target_params(group, setup)
        )
        for group, n in spec.layer_groups
    )


def head_lora_params(spec: ModelSpec, setup: Setup) -> int:
    """An adapter on the output layer when ``lm_head`` is named as a target (torchtune's
    ``apply_lora_to_output``): r·(h + V). ``all-linear`` leaves the output layer alone."""
    targets = setup.lora_target_list() if setup.is_lora else None
    if not targets or "lm_head" not in targets:
        return 0
    return setup.lora_rank * (spec.hidden_size + spec.vocab_size)


def extra_trainable_params(spec: ModelSpec, setup: Setup) -> int:
    """Modules trained in full beside LoRA (PEFT ``modules_to_save``: a trainable copy of
    the embedding and/or lm_head; the original stays, frozen)."""
    if not setup.is_lora:
        return 0
    n = spec.vocab_size * spec.hidden_size
    return sum(n for m in setup.trainable_extra if m in ("embeddings", "lm_head"))


def trainable_layers(spec: ModelSpec, setup: Setup) -> range:
    """Decoder layers with trainable weights (freeze: the top ``freeze_trainable_layers``)."""
    L = spec.num_layers
    if setup.method == "freeze":
        return range(max(0, L - setup.freeze_trainable_layers), L)
    return range(L)


@lru_cache(maxsize=256)
def layer_kind_runs(
    spec: ModelSpec, trained_from: int, recorded_from: int
) -> tuple[tuple[int, int, bool, bool, bool], ...]:
    """The decoder layers as runs of one kind, bottom up: ``(start, stop, moe, trained,
    recorded)``, the trained and the recorded layers being the top ones, from ``trained_from``
    and ``recorded_from`` up. Layers of one kind hold the same (weights, gradients, saved
    activations), so a sum or a walk over the layers can take a run at a time."""
    moe = set(spec.moe.layers) if spec.moe is not None else set()
    out: list[tuple[int, int, bool, bool, bool]] = []
    start, kind = 0, (False, False, False)
    for i in range(spec.num_layers):
        k = (i in moe, i >= trained_from, i >= recorded_from)
        if k != kind and i > start:
            out.append((start, i, *kind))
            start = i
        kind = k
    if spec.num_layers > start:
        out.append((start, spec.num_layers, *kind))
    return tuple(out)


@lru_cache(maxsize=256)
def layer_kind_counts(
    spec: ModelSpec, trained_from: int, recorded_from: int
) -> tuple[tuple[int, int, bool, bool, bool], ...]:
    """``(first layer, layers, moe, trained, recorded)`` of each kind of layer there is."""
    first: dict[tuple[bool, bool, bool], list[int]] = {}
    for start, stop, moe, trained, recorded in layer_kind_runs(spec, trained_from, recorded_from):
        seen = first.setdefault((moe, trained, recorded), [start, 0])
        seen[1] += stop - start
    return tuple((rep, n, *kind) for kind, (rep, n) in first.items())


@lru_cache(maxsize=64)
def moe_layer_set(spec: ModelSpec) -> frozenset[int]:
    """The MoE decoder layers, as a set."""
    return frozenset(spec.moe.layers) if spec.moe is not None else frozenset()


def layer_params(spec: ModelSpec, layer: int) -> int:
    """Parameters of one decoder layer: its linears, q/k (or MLA's latent) norms and its norms."""
    return kind_params(spec, layer in moe_layer_set(spec))


@lru_cache(maxsize=256)
def kind_params(spec: ModelSpec, moe: bool) -> int:
    """A dense (``moe`` False) or MoE layer's parameters (``spec.layer_linears`` of one)."""
    norm = spec.hidden_size * (2 if spec.norm == "layernorm" else 1)
    qk = sum(spec.qk_norm_shapes) + sum(spec.latent_norm_shapes) + sum(spec.sink_shapes)
    mlp = spec.moe_mlp if moe else spec.mlp
    return sum(lin.params for lin in spec.attention + mlp) + qk + spec.norms_per_layer * norm


def full_trainable_params(spec: ModelSpec, setup: Setup) -> int:
    """Parameters updated in place by full / freeze fine-tuning."""
    if setup.method == "full":
        counts = param_counts(spec)
        # a tower counted only (``spec.tower_params``, Llama 4) sees text batches: no gradient reaches
        # it, so AdamW keeps no state for it (traced: Scout's 0.87B tower parameters get none)
        text_only = spec.vision is None
        return (
            counts.total
            - (counts.vision if setup.freeze_vision or text_only else 0)
            - (counts.projector if setup.freeze_projector or text_only else 0)
        )
    if setup.method == "freeze":
        return sum(layer_params(spec, i) for i in trainable_layers(spec, setup))
    return 0


def upcast_params(spec: ModelSpec, setup: Setup) -> tuple[int, int]:
    """(trained, frozen) elements of the input embedding, lm_head and norms a full/freeze run
    keeps in :attr:`~vramplan.policy.Policy.upcast_modules` (none when that is unset): full
    trains them all; freeze keeps them frozen (the norms of its trained layers, h each, are left
    with the layers)."""
    from vramplan.memory.policy import policy_of

    if policy_of(setup).upcast_modules is None or setup.method not in ("full", "freeze"):
        return 0, 0
    counts = param_counts(spec)
    n = counts.embeddings + counts.lm_head + counts.norms
    return (n, 0) if setup.method == "full" else (0, n)


def trainable_params(spec: ModelSpec, setup: Setup) -> int:
    """All parameters the optimizer steps."""
    if setup.is_lora:
        return lora_params(spec, setup) + extra_trainable_params(spec, setup)
    return full_trainable_params(spec, setup)


def largest_trainable_tensor(spec: ModelSpec, setup: Setup) -> int:
    """Elements of the largest trainable tensor (sizes per-parameter optimizer temporaries)."""
    if setup.is_lora:
        sizes = [
            setup.lora_rank * max(lin.in_features, lin.out_features)
            for group, _ in spec.layer_groups
            for lin in _lora_linears(group, setup.lora_targets)
        ]
        sizes += [
            rank * lin.count * max(lin.in_features, lin.out_features)
            for group, _ in spec.layer_groups
            for lin, rank in param_targets(group, setup)
        ]
        if extra_trainable_params(spec, setup):
            sizes.append(spec.vocab_size * spec.hidden_size)
        return max(sizes, default=0)
    sizes = [lin.in_features * lin.out_features for i in trainable_layers(spec, setup) for lin in spec.layer_linears(i)]
    if setup.method == "full":
        sizes.append(spec.vocab_size * spec.hidden_size)
    return max(sizes, default=0)


def trainable_shapes(spec: ModelSpec, setup: Setup) -> list[tuple[tuple[int, ...], int]]:
    """(shape, how many such tensors) of every trainable tensor: what per-tensor optimizer
    state (Adafactor's factored moments, bitsandbytes' 8-bit threshold) depends on."""
    out: list[tuple[tuple[int, ...], int]] = []
    h = spec.hidden_size
    if setup.is_lora:
        r = setup.lora_rank
        for group, n in spec.layer_groups:
            for lin in lora_group(group, setup):
                out += [((r, lin.in_features), n * lin.count), ((lin.out_features, r), n * lin.count)]
            for lin, rank in param_targets(group, setup):
                k = rank * lin.count
                out += [((k, lin.in_features), n), ((lin.out_features, k), n)]
        out += [((spec.vocab_size, h), 1) for m in setup.trainable_extra if m in ("embeddings", "lm_head")]
        if head_lora_params(spec, setup):
            out += [((r, h), 1), ((spec.vocab_size, r), 1)]
        return out
    layers = list(trainable_layers(spec, setup))
    moe_layers = set(spec.moe.layers) if spec.moe is not None else set()
    norm_shape = (h,)
    for is_moe in (False, True):
        n = sum(1 for i in layers if (i in moe_layers) == is_moe)
        if not n:
            continue
        group = spec.attention + (spec.moe_mlp if is_moe else spec.mlp)
        for lin in group:
            shape = (
                (lin.out_features, lin.in_features)
                if lin.count == 1
                else (lin.count, lin.out_features, lin.in_features)
            )
            out.append((shape, n))
            if lin.bias:
                out.append(((lin.count * lin.out_features,), n))
        out.append((norm_shape, n * spec.norms_per_layer * (2 if spec.norm == "layernorm" else 1)))
        for width in spec.qk_norm_shapes + spec.latent_norm_shapes + spec.sink_shapes:
            out.append(((width,), n))
    if setup.method == "full":
        out.append(((spec.vocab_size, h), 1 if spec.tie_word_embeddings else 2))
        out.append((norm_shape, 2 if spec.norm == "layernorm" else 1))
        if spec.vision is not None:  # counted as one flat block: Adafactor factors it little
            counts = param_counts(spec)
            out.append(((counts.vision + counts.projector,), 1))
    return out
