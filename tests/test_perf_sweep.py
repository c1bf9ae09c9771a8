"""The backward sweeps weigh one layer per run of identical layers (vramplan/memory/layers.py);
here they are held equal, byte for byte, to the layer-by-layer walks they replace, kept below
as references: on random small specs (hypothesis) and on the catalog."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramplan.errors import VramplanError
from vramplan.memory import activations as act
from vramplan.memory import optimizer, parallel, phases, weights
from vramplan.memory.layers import first_peak, layer_runs
from vramplan.memory.trainable import check_lora_targets
from vramplan.models import catalog_names, load_model
from vramplan.setup import make_setup
from vramplan.spec import ModelSpec, spec_from_config
from vramplan.units import nbytes


def reference_backward_sweep(spec: ModelSpec, setup, all_grads: int) -> dict[str, int]:
    """phases.backward_sweep as it was: every layer weighed, the copies summed afresh each time."""
    end = {
        "weights/autocast_copies": 0,
        "gradients": all_grads,
        "activations/saved": 0,
        "activations/recompute": 0,
        "activations/backward_transient": optimizer.tied_embedding_backward_bytes(spec, setup),
    }
    layers = list(act.saving_layers(spec, setup))
    if not layers:
        return end
    transient = act.backward_transient_bytes(spec, setup)
    moe_layers = set(spec.moe.layers) if spec.moe is not None else set()
    copies = [weights.layer_autocast_copy_bytes(spec, setup, i in moe_layers) for i in range(spec.num_layers)]
    per_layer_grads = optimizer.layer_gradient_bytes(spec, setup)
    head_grads = all_grads - sum(per_layer_grads) - optimizer.embedding_gradient_bytes(spec, setup)
    ckpt = act.checkpoint_bytes(spec, setup)
    recorded = set(layers)
    saved = [act.layer_saved_bytes(spec, setup, i) if i in recorded else 0 for i in range(spec.num_layers)]
    kept = [ckpt if i in recorded else 0 for i in range(spec.num_layers)] if setup.grad_checkpointing else saved
    best = end
    grads_above = head_grads
    for layer in range(spec.num_layers - 1, -1, -1):
        grads_above += per_layer_grads[layer]
        if layer not in recorded:
            continue
        parts = {
            "weights/autocast_copies": copies[layer] if setup.grad_checkpointing else sum(copies[: layer + 1]),
            "gradients": all_grads if setup.grad_accum > 1 else grads_above,
            "activations/saved": sum(kept[: layer + 1]),
            "activations/recompute": saved[layer] - act.checkpoint_shared_bytes(spec, setup)
            if setup.grad_checkpointing
            else 0,
            "activations/backward_transient": transient,
        }
        if sum(parts.values()) > sum(best.values()):
            best = parts
    return best


def reference_fsdp_backward(spec: ModelSpec, setup, root: int, layer: int) -> dict[str, int]:
    """parallel.fsdp_phases' backward walk as it was: every layer weighed."""
    n = setup.shard_count
    off = setup.offload == "optimizer+params"
    keep = setup.fsdp_sharding == "shard_grad_op"
    amp = setup.precision.startswith("amp-")
    acc = setup.grad_accum > 1
    all_grads = optimizer.gradient_bytes(spec, setup)
    layer_grads = optimizer.layer_gradient_bytes(spec, setup)
    root_grads = all_grads - sum(layer_grads)
    head_grads = root_grads - optimizer.embedding_gradient_bytes(spec, setup)
    gathered_all = root + layer * spec.num_layers

    def sharded(v: int) -> int:
        return 0 if off else -(-v // n)

    best = {
        "gradients": sharded(all_grads - root_grads) + root_grads,
        "activations/backward_transient": optimizer.tied_embedding_backward_bytes(spec, setup),
        "parallel/gathered_weights": gathered_all if keep else root + layer_grads[0],
    }
    recorded = set(act.saving_layers(spec, setup))
    transient = act.backward_transient_bytes(spec, setup)
    ckpt = act.checkpoint_bytes(spec, setup)
    saved = [act.layer_saved_bytes(spec, setup, i) if i in recorded else 0 for i in range(spec.num_layers)]
    kept = [ckpt if i in recorded else 0 for i in range(spec.num_layers)] if setup.grad_checkpointing else saved
    moe_layers = set(spec.moe.layers) if spec.moe is not None else set()
    copies = [weights.layer_autocast_copy_bytes(spec, setup, i in moe_layers) for i in range(spec.num_layers)]
    above = 0
    for i in range(spec.num_layers - 1, -1, -1):
        if i in recorded:
            nxt = layer_grads[i + 1] if i + 1 < spec.num_layers else 0
            parts = {
                "weights/autocast_copies": 0
                if amp
                else (copies[i] if setup.grad_checkpointing else sum(copies[: i + 1])),
                "gradients": (all_grads - above + layer_grads[i] if acc else head_grads)
                + sharded(above)
                + layer_grads[i],
                "activations/saved": sum(kept[: i + 1]),
                "activations/recompute": saved[i] - act.checkpoint_shared_bytes(spec, setup)
                if setup.grad_checkpointing
                else 0,
                "activations/backward_transient": transient,
                "parallel/gathered_weights": gathered_all if keep else root + layer + (layer if i > 0 else 0) + nxt,
            }
            if sum(parts.values()) > sum(best.values()):
                best = parts
        above += layer_grads[i]
    return best


def _same(fast: dict[str, int], slow: dict[str, int]) -> None:
    assert list(fast.items()) == list(slow.items())  # the same terms, in the same order


def _check(spec: ModelSpec, setup) -> None:
    grads = optimizer.gradient_bytes(spec, setup)
    _same(phases.backward_sweep(spec, setup, grads), reference_backward_sweep(spec, setup, grads))
    if setup.parallel == "fsdp":
        # root and layer as fsdp_phases sizes them are any two sizes to the walk: odd ones here
        root, layer = nbytes(spec.vocab_size * spec.hidden_size, "bf16"), 3 * spec.hidden_size**2 + 7
        _same(parallel.fsdp_backward_peak(spec, setup, root, layer), reference_fsdp_backward(spec, setup, root, layer))


def small_spec(layers: int, moe_every: int, dense_only: list[int], model_type: str, tied: bool) -> ModelSpec:
    cfg = {
        "model_type": model_type,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": layers,
        "intermediate_size": 160,
        "vocab_size": 300,
        "tie_word_embeddings": tied,
    }
    if model_type == "qwen3_moe":
        cfg |= {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 48,
            "decoder_sparse_step": moe_every,
            "mlp_only_layers": [i for i in dense_only if i < layers],
        }
    return spec_from_config(cfg, name=f"small-{model_type}-{layers}")


specs = st.builds(
    small_spec,
    layers=st.integers(1, 12),
    moe_every=st.integers(1, 3),
    dense_only=st.lists(st.integers(0, 11), max_size=4),
    model_type=st.sampled_from(["qwen2", "qwen3_moe", "gemma2"]),
    tied=st.booleans(),
)

setups = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["full", "freeze", "lora", "qlora"]),
        "precision": st.sampled_from(["bf16", "fp32", "amp-bf16", "amp-fp16"]),
        "grad_checkpointing": st.booleans(),
        "grad_accum": st.sampled_from([1, 2]),
        "freeze_trainable_layers": st.integers(1, 13),
        "attention": st.sampled_from(["sdpa", "eager"]),
        "seq_len": st.integers(1, 96),
        "micro_batch": st.integers(1, 3),
        "lora_rank": st.integers(1, 64),
        "quant": st.sampled_from(["bnb-nf4", "bnb-int8"]),
        "lora_targets": st.sampled_from(["all-linear", "q_proj,v_proj"]),
        "trainable_extra": st.sampled_from(["", "embeddings", "embeddings,lm_head"]),
        "layout": st.sampled_from(
            [
                {},
                {"parallel": "fsdp"},
                {"parallel": "fsdp", "fsdp_sharding": "shard_grad_op"},
                {"parallel": "fsdp", "fsdp_sharding": "hybrid_shard", "num_nodes": 2},
                {"parallel": "fsdp", "offload": "optimizer+params"},
            ]
        ),
        "num_gpus": st.integers(2, 9),
    }
)


def _setup(fields: dict):
    f = dict(fields)
    layout = f.pop("layout")
    if f["method"] != "qlora":
        f.pop("quant")
    if f["method"] not in ("lora", "qlora"):
        f.pop("lora_targets")
        f.pop("trainable_extra")
    elif f["lora_targets"] == "all-linear":
        f["lora_dropout"] = 0.0  # PEFT refuses dropout on MoE experts
    if layout:
        f |= layout
    else:
        f.pop("num_gpus")
    return make_setup(**f)


@settings(max_examples=400, deadline=None)
@given(specs, setups)
def test_sweeps_equal_the_layer_by_layer_walk(spec, fields) -> None:
    try:
        setup = _setup(fields)
        check_lora_targets(spec, setup)
    except VramplanError:
        return  # a setup the planner refuses
    _check(spec, setup)


@pytest.mark.parametrize("name", catalog_names())
def test_sweeps_equal_the_walk_on_the_catalog(name) -> None:
    spec = load_model(name)
    lora = {"lora_dropout": 0.0} if spec.moe is not None else {}
    grid = [
        {"method": m, "precision": p, "grad_checkpointing": gc, "grad_accum": acc}
        for m in ("full", "freeze")
        for p in ("bf16", "amp-bf16")
        for gc in (False, True)
        for acc in (1, 4)
    ] + [{"method": "lora", "grad_checkpointing": gc, **lora} for gc in (False, True)]
    for fields in grid:
        _check(spec, make_setup(**fields))
        _check(spec, make_setup(**fields, parallel="fsdp", num_gpus=8, num_nodes=2))


def test_runs_cover_the_layers_in_order() -> None:
    """Runs tile 0..L-1, and neighbours differ (else they would be one run)."""
    spec = small_spec(10, 2, [3], "qwen3_moe", False)
    runs = layer_runs(spec, make_setup(method="freeze", freeze_trainable_layers=4))
    assert [r.start for r in runs][0] == 0 and runs[-1].stop == 10
    assert all(a.stop == b.start for a, b in zip(runs, runs[1:], strict=False))
    # layers 1, 5, 7, 9 are MoE (every 2nd, but 3); the top 4 (6..9) train and are recorded
    assert [(r.start, r.stop) for r in runs] == [(0, 1), (1, 2), (2, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    assert [r.recorded for r in runs] == [False] * 4 + [True] * 4
    assert runs[0].grads == 0 and runs[-1].grads > 0


@given(
    st.integers(-50, 50),
    st.integers(0, 500),
    st.integers(0, 60),
    st.integers(1, 9),
    st.integers(1, 40),
)
def test_first_peak_is_the_first_largest(step, start, shard_step, n, count) -> None:
    totals = [step * m + -(-(start + shard_step * m) // n) for m in range(count)]
    assert first_peak(step, start, shard_step, n, count) == totals.index(max(totals))


@pytest.mark.parametrize("layout", [{}, {"parallel": "fsdp", "num_gpus": 1}])
def test_a_tie_goes_to_the_top_layer(layout) -> None:
    """With checkpointing and no accumulation one layer down holds one checkpoint fewer and one
    layer's gradients more: at a sequence where the two are equal every layer's total is the
    same, and the walk from the top keeps the first, the top layer (less gradients, more saved)."""
    spec = small_spec(6, 1, [], "llama", False)
    h, kv, inter = spec.hidden_size, spec.kv_dim, spec.intermediate_size
    layer_params = h * (2 * h + 2 * kv + 3 * inter + 2)  # q, o; k, v; gate, up, down; two norms
    s = make_setup(method="full", precision="bf16", seq_len=layer_params // h, **layout)
    assert act.checkpoint_bytes(spec, s) == optimizer.layer_gradient_bytes(spec, s)[0]  # a bf16 checkpoint, a layer
    _check(spec, s)
    peak = phases.backward_sweep(spec, s, optimizer.gradient_bytes(spec, s))
    assert peak["activations/saved"] == spec.num_layers * act.checkpoint_bytes(spec, s)
