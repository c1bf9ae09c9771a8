"""Per-GPU memory under a multi-GPU layout: which terms are sharded, which are added.

Applied to each phase's terms of one process (``phases.phase_terms``). With ``N`` GPUs:

| layout      | weights | gradients | optimizer state | added |
|-------------|---------|-----------|-----------------|-------|
| ddp         | full    | full      | full            | DDP's gradient buckets (a full gradient copy) |
| zero1       | full    | full      | /N (fp32)       | fp32 master /N, ZeRO's buffers (memory/zero.py) |
| zero2       | full    | /N        | /N (fp32)       | fp32 master /N, ZeRO's buffers (memory/zero.py) |
| zero3       | /N      | /N        | /N (fp32)       | fp32 master /N, ZeRO's buffers and gathered weights (zero.py) |
| fsdp        | /N      | /N        | /N              | the root unit and two layers gathered |
| fsdp shard_grad_op | full | /N   | /N              | (weights stay gathered from forward to backward) |
| device_map  | /N      | /N        | /N              | the loss on the last GPU, in full |

DeepSpeed (``DeepSpeedZeroOptimizer``, ``DeepSpeedZeroOptimizer_Stage3``) runs the model in
16 bits and keeps fp32 master weights and fp32 Adam moments for its partition (ZeRO paper,
Rajbhandari et al. 2020, section 5: 2 + 2 + 12 bytes per parameter before partitioning);
ZeRO's own buffers (reduce buckets, the step's fp32 gradient partition, stage 3's gathered
weights) come from the ds_config.json the run uses (memory/zero.py). Activations are per
process: data-parallel ranks each run their own micro-batch. ``N`` is the ranks the state is sharded over
(``Setup.shard_count``): every GPU of every node, or one node's GPUs under FSDP's
``hybrid_shard`` (sharded within a node, replicated across nodes). Offload moves the optimizer state and master weights
(``optimizer``) and also the sharded weights (``optimizer+params``) to host memory.
"""

from __future__ import annotations

from vramplan.memory import activations as act
from vramplan.memory import optimizer, zero
from vramplan.memory.layers import layer_runs
from vramplan.memory.policy import policy_of, with_policy
from vramplan.memory.sweep import At, Descent, sweep
from vramplan.memory.trainable import trainable_params
from vramplan.setup import DEEPSPEED, Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

WEIGHT_TERMS = ("weights/frozen", "weights/trainable", "weights/quant_state")
#: layers FSDP/ZeRO-3 hold gathered at once: the running one and the prefetched next.
GATHERED_LAYERS = 2


def _ceil_div(a: int, n: int) -> int:
    return -(-a // n)


def deepspeed_state_bytes(spec: ModelSpec, setup: Setup) -> int:
    """DeepSpeed keeps optimizer state in fp32 whatever the model dtype (the same bytes as an
    AMP run's fp32 state), plus an fp32 master copy of 16-bit trainable weights."""
    kept = {"master": "fp32", "adapter": "fp32", "extra_trainable": "fp32"}
    fp32 = with_policy(setup, policy_of(setup).model_copy(update=kept))
    state = optimizer.optimizer_state_bytes(spec, fp32)
    master = nbytes(trainable_params(spec, setup), "fp32") if policy_of(setup).master != "fp32" else 0
    return state + master


def gathered_bytes(spec: ModelSpec, setup: Setup, weights_total: int) -> int:
    """Weights gathered to full size on every rank under ZeRO-3 / FSDP: the running and the
    prefetched decoder layer (the layers' share of the weights, per layer), plus the output
    layer, gathered whole while the loss and its backward run (FSDP: the root unit with the
    embedding and lm_head stays gathered through the step)."""
    embed = spec.vocab_size * spec.hidden_size
    root = embed * (1 if spec.tie_word_embeddings else 2)
    dt = "fp32" if policy_of(setup).weights == "fp32" and setup.parallel == "fsdp" else "bf16"
    root_bytes = nbytes(root, dt)
    per_layer = max(0, weights_total - root_bytes) // max(1, spec.num_layers)
    layers = GATHERED_LAYERS * per_layer
    return layers + (root_bytes if setup.parallel == "fsdp" else nbytes(embed, dt))


def per_gpu(spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The terms of each phase as one GPU of the layout holds them."""
    if setup.parallel == "none":
        return phases
    n = setup.num_gpus if setup.parallel == "device_map" else setup.shard_count
    layout = setup.parallel
    keep_weights = layout == "fsdp" and setup.fsdp_sharding == "shard_grad_op"
    off_opt = setup.offload in ("optimizer", "optimizer+params")
    off_params = setup.offload == "optimizer+params"
    opt_key = f"optimizer/{setup.optimizer}"
    out: dict[str, dict[str, int]] = {}
    for phase, terms in phases.items():
        t = dict(terms)
        if layout == "device_map":
            out[phase] = {k: (v if k.startswith(("loss/", "overhead/")) else _ceil_div(v, n)) for k, v in t.items()}
            continue
        weights_total = sum(t.get(k, 0) for k in WEIGHT_TERMS)
        if layout in DEEPSPEED:
            if opt_key in t:
                t[opt_key] = 0 if off_opt else _ceil_div(deepspeed_state_bytes(spec, setup), n)
        elif layout == "fsdp" and opt_key in t:
            t[opt_key] = 0 if off_opt else _ceil_div(t[opt_key], n)
            if "optimizer/step_temporaries" in t:
                t["optimizer/step_temporaries"] = 0 if off_opt else _ceil_div(t["optimizer/step_temporaries"], n)
        if layout == "ddp":
            t["parallel/ddp_buckets"] = optimizer.gradient_bytes(spec, setup)
        if layout in ("zero2", "zero3", "fsdp") and "gradients" in t:
            t["gradients"] = 0 if (off_params and layout == "fsdp") else _ceil_div(t["gradients"], n)
        if layout in ("zero3", "fsdp") and not keep_weights:
            for k in WEIGHT_TERMS:
                if k in t:
                    t[k] = 0 if off_params else _ceil_div(t[k], n)
            t["parallel/gathered_weights"] = (
                zero.gathered_bytes(spec, setup, weights_total, phase)
                + zero.pending_release_bytes(spec, setup, weights_total, phase)
                if layout == "zero3"
                else gathered_bytes(spec, setup, weights_total)
            )
        if layout in DEEPSPEED:
            t.update(deepspeed_terms(spec, setup, phase, t))
        out[phase] = t
    return out


def deepspeed_terms(spec: ModelSpec, setup: Setup, phase: str, terms: dict[str, int]) -> dict[str, int]:
    """ZeRO's own buffers at ``phase``, from the config the run uses (memory/zero.py): the reduce
    buckets in backward (stage 3's persistent one in every phase), stage 3's gradient partition
    from the start, and the step's fp32 gradient partition and temporaries."""
    out: dict[str, int] = {}
    stage3 = setup.parallel == "zero3"
    off_opt = setup.offload in ("optimizer", "optimizer+params")
    if phase in ("backward_start", "backward"):
        out["parallel/reduce_buckets"] = zero.reduce_bucket_bytes(spec, setup)
    if phase == "backward":
        out["parallel/averaged_gradients"] = zero.averaged_gradient_bytes(spec, setup)
    elif stage3:
        out["parallel/reduce_buckets"] = zero.persistent_bucket_bytes(spec, setup)
    if stage3 and not off_opt:
        # grad_partitions_flat_buffer is allocated in __init__: the partition exists in every phase
        grads16 = zero.step_terms(spec, setup)["gradients"] if phase != "optimizer_step" else 0
        out["gradients"] = max(terms.get("gradients", 0), grads16)
    if phase == "optimizer_step" and "optimizer/step_temporaries" in terms:
        out.update(zero.step_terms(spec, setup))
        if off_opt:  # the fp32 partition, its gradient and the step live on the host
            out.update({"parallel/fp32_grad_partition": 0, "optimizer/step_temporaries": 0})
            out["gradients"] = terms.get("gradients", 0)
    return out


def fsdp_phases(spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per-GPU terms of FSDP2 (``fully_shard`` on each decoder layer, then the root), as a
    fake-process-group trace of rank 0 shows them (vramplan/trace/fsdp.py; within 0.2% on
    Qwen2.5-0.5B full and LoRA, 2 and 4 ranks, tests/test_fsdp_trace.py).

    Weights and optimizer state are 1/N. With R the root unit (embedding, and lm_head when
    untied), L one layer's weights and Lg[l] layer l's gradients:

    - end of forward and start of backward: R and one layer gathered (the last layer's
      buffer until the root's post-forward; then the next layer, prefetched);
    - during forward, while a layer's parameters are unpacked, its all-gather buffer and
      the previous layer's are alive too: R + 3L for a moment;
    - in layer l's backward: R, layer l and the prefetched layer l-1 gathered, layer l+1's
      reduce-scatter buffer (Lg[l+1]), layer l's whole gradient, the sharded gradients of
      the layers above, and the root's gradients whole (they are reduced last);
    - at the end of backward: the root's gradient whole beside layer 0's reduce-scatter
      buffer;
    - the optimizer step: everything sharded, nothing gathered.

    With accumulation, the trainer runs every micro-batch but the last under
    ``accelerator.no_sync`` (transformers ``Trainer``; FSDP2 ``set_requires_gradient_sync
    (False)``), so each rank accumulates whole, unsharded gradients; in the last
    micro-batch's backward each layer's are reduce-scattered (and freed) in turn, through a
    copy of the accumulated gradient. Under AMP (fp32 shards) accelerate gathers the weights
    in 16 bits (``MixedPrecisionPolicy``), so nothing is cast again under autocast.

    ``shard_grad_op`` keeps every layer gathered from forward to the end of backward;
    ``optimizer+params`` offload keeps the shards, their gradients and the state on the CPU.
    """
    n = setup.shard_count
    off = setup.offload == "optimizer+params"
    keep = setup.fsdp_sharding == "shard_grad_op"
    opt_key = f"optimizer/{setup.optimizer}"
    step = phases["optimizer_step"]
    weights_total = sum(step.get(k, 0) for k in WEIGHT_TERMS)
    embed = spec.vocab_size * spec.hidden_size
    amp = setup.precision.startswith("amp-")
    dt = "fp32" if setup.precision == "fp32" else "bf16"  # AMP: gathered in 16 bits
    if amp:
        weights_total //= 2
    root = nbytes(embed * (1 if spec.tie_word_embeddings else 2), dt)
    layer = max(0, weights_total - root) // max(1, spec.num_layers)
    all_grads = optimizer.gradient_bytes(spec, setup)
    acc = setup.grad_accum > 1

    def sharded(v: int) -> int:
        return 0 if off else _ceil_div(v, n)

    def shard_static(terms: dict[str, int]) -> dict[str, int]:
        t = dict(terms)
        for k in (*WEIGHT_TERMS, opt_key, "optimizer/step_temporaries"):
            if k in t:
                t[k] = sharded(t[k])
        if amp and "weights/autocast_copies" in t:
            t["weights/autocast_copies"] = 0
        return t

    def held(grads: int) -> int:
        """Gradients alive in forward: the accumulated, unsharded ones under no_sync."""
        return all_grads if (acc and grads) else sharded(grads)

    gathered_all = root + layer * spec.num_layers  # shard_grad_op: all unsharded until backward ends
    out: dict[str, dict[str, int]] = {}
    for name in ("forward_end", "backward_start"):
        t = shard_static(phases[name])
        t["gradients"] = held(t.get("gradients", 0))
        # accumulating, the last micro-batch's backward starts with one more layer gathered
        # (seen in the fake-process-group trace under no_sync)
        extra = layer if (acc and name == "backward_start") else 0
        t["parallel/gathered_weights"] = gathered_all if keep else root + layer + extra
        out[name] = t
    # forward, while the last layer's parameters are unpacked (before the loss chain)
    t = shard_static({k: v for k, v in phases["forward_end"].items() if not k.startswith("loss/")})
    t["gradients"] = held(t.get("gradients", 0))
    last = spec.num_layers - 1
    recorded = set(act.saving_layers(spec, setup))
    kept_last = 0
    if last in recorded:
        kept_last = (
            act.checkpoint_bytes(spec, setup) if setup.grad_checkpointing else act.layer_saved_bytes(spec, setup, last)
        )
    head = act.head_saved_bytes(spec, setup) if recorded else 0
    t["activations/saved"] = max(0, t.get("activations/saved", 0) - head - kept_last)
    t["parallel/gathered_weights"] = gathered_all if keep else root + 3 * layer
    out["forward_layer"] = t
    # backward, layer by layer from the top
    static = shard_static(
        {k: v for k, v in phases["backward"].items() if k.startswith(("weights/", "optimizer/", "overhead/"))}
    )
    out["backward"] = {**static, **fsdp_backward_peak(spec, setup, root, layer)}
    t = shard_static(step)
    t["gradients"] = sharded(t.get("gradients", 0))
    out["optimizer_step"] = t
    return out


def fsdp_backward_peak(spec: ModelSpec, setup: Setup, root: int, layer: int) -> dict[str, int]:
    """FSDP's worst point of backward (see :func:`fsdp_phases`), walking the layers from the
    top (sweep.py): in layer l's backward, the root (``root`` bytes gathered) with layer l and
    the prefetched l-1 gathered (``layer`` bytes each), layer l+1's reduce-scatter buffer,
    layer l's whole gradient and the sharded gradients above, beside the activations of layers
    0..l; after layer 0, the root's gradients whole beside layer 0's buffer. The first point
    from the top on a tie.

    One layer down a run of identical layers (layers.py) holds a copy and a checkpoint fewer,
    (accumulating) one whole gradient fewer, and one more layer's gradients sharded, its
    share rounded up; a run's top layer (its reduce-scatter buffer is the run above's) and
    layer 0 (nothing to prefetch) are weighed alone."""
    n = setup.shard_count
    off = setup.offload == "optimizer+params"
    keep = setup.fsdp_sharding == "shard_grad_op"
    amp = setup.precision.startswith("amp-")
    gc, acc = setup.grad_checkpointing, setup.grad_accum > 1
    runs = layer_runs(spec, setup)
    all_grads = optimizer.gradient_bytes(spec, setup)
    root_grads = all_grads - sum(run.grads * run.count for run in runs)
    head_grads = root_grads - optimizer.embedding_gradient_bytes(spec, setup)
    gathered_all = root + layer * spec.num_layers  # shard_grad_op: all unsharded until backward ends
    transient = act.backward_transient_bytes(spec, setup)
    shared = act.checkpoint_shared_bytes(spec, setup)

    def sharded(v: int) -> int:
        return 0 if off else _ceil_div(v, n)

    end: dict[str, int] = {
        "gradients": sharded(all_grads - root_grads) + root_grads,
        "activations/backward_transient": optimizer.tied_embedding_backward_bytes(spec, setup),
        "parallel/gathered_weights": gathered_all if keep else root + runs[0].grads,
    }

    def point(at: At, i: int) -> dict[str, int]:
        run, g, above = at.run, at.run.grads, at.grads_above(i)
        return {
            "weights/autocast_copies": 0 if amp else (run.copies if gc else at.copies(i)),
            # with accumulation the layers not yet reduce-scattered (this one and below, and
            # the root) still hold their whole accumulated gradients
            "gradients": (all_grads - above + g if acc else head_grads) + sharded(above) + g,
            "activations/saved": at.kept(i),
            "activations/recompute": run.saved - shared if gc else 0,
            "activations/backward_transient": transient,
            "parallel/gathered_weights": (
                gathered_all if keep else root + layer + (layer if i > 0 else 0) + at.grads_of(i + 1)
            ),
        }

    def descent(at: At) -> Descent:
        run, g = at.run, at.run.grads
        step = -(0 if amp or gc else run.copies) - run.kept - (g if acc else 0)
        if off:
            return Descent(step)
        return Descent(step, at.above + g, g, n)

    return sweep(runs, end, point, descent)
