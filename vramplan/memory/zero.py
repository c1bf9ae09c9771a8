"""DeepSpeed ZeRO's own memory, from the ds_config.json the run uses (vramplan/zero_config.py).

What ``DeepSpeedZeroOptimizer`` (stages 1-2, deepspeed/runtime/zero/stage_1_and_2.py) and
``DeepSpeedZeroOptimizer_Stage3`` (stage3.py, partitioned_param_coordinator.py) allocate beside
the model, read at DeepSpeed 0.15.4 (the 0.14-0.16 users ran) and counted on its engine on CPU
ranks (benchmarks/zero_buffers.py; tests/test_zero_trace.py). ``P`` trainable parameters,
``N`` ranks, ``B`` the reduce bucket (elements), 16-bit gradients (bf16/fp16 runs):

Which wrapper runs (engine.py ``_do_optimizer_sanity_check``): with ZeRO on, ``ZERO_OPTIMIZATION``
(the classes below) for bf16, fp16 and fp32 alike; ``BF16_Optimizer`` only at stage 1 with an
fp32 ``data_types.grad_accum_dtype``, which a ds_config must ask for (``get_data_types`` makes it
the model's dtype whenever ZeRO is on). The trainer's torch optimizer, handed in when the file has
no "optimizer" block (transformers ``deepspeed_optim_sched``), steps the fp32 partition.

Stages 1-2
- ``backward()`` allocates the reduce bucket ``ipg_buffer``, ``B`` 16-bit elements, and a second
  one with ``overlap_comm``, when ``contiguous_gradients`` (``backward``); the epilogue frees
  them (``independent_gradient_partition_epilogue`` -> ``_release_ipg_buffers``): backward only.
- ``copy_grads_in_partition``: the rank's reduced gradients, ``grads_in_partition`` (P/N 16-bit);
  accumulating, the previous micro-batches' partition beside it in backward.
- ``step``: ``flatten(averaged_gradients).to(fp32)`` makes a 16-bit flat copy and the fp32
  gradient partition (P/N each) while the 16-bit partition is still alive; then it frees the
  16-bit gradients and runs the optimizer on the fp32 partition: torch's AdamW (what the HF
  Trainer hands in without an "optimizer" block; foreach) adds one fp32 partition
  (``_foreach_sqrt``), DeepSpeed's ``FusedAdam`` none. The larger of the two moments is the
  step's peak: 8 bytes per ``P/N`` either way with AdamW.
- The all-gather after the step writes into the 16-bit flat weights in place
  (runtime/utils.py ``all_gather_dp_groups``): nothing added.

Stage 3
- ``__ipg_bucket_flat_buffer`` (``B`` 16-bit, with ``contiguous_gradients``) and
  ``grad_partitions_flat_buffer`` (the P/N gradient partition) are made in ``__init__`` and live
  through every phase (``overlap_comm`` adds nothing here).
- Parameters are gathered per module and released after it
  (``PartitionedParameterCoordinator.release_sub_module``) unless they come back within
  ``stage3_max_reuse_distance`` elements of the recorded module order (``__params_to_release``):
  the output layer, used again at once by its backward, stays gathered through the loss, and so
  do the last decoder layers whose recompute/backward comes back soon enough. Prefetching
  fetches the next parameters up to ``stage3_prefetch_bucket_size`` elements, while fewer than
  ``stage3_max_live_parameters`` are gathered (``fetch_sub_module``).
- ``step`` prepares one sub group at a time (``_prepare_fp32_grad_for_sub_group``): the 16-bit
  flat copy and the fp32 gradient of at most ``sub_group_size`` elements (one parameter's
  partition when 0), with the optimizer's temporaries over it.

Parameters under ``stage3_param_persistence_threshold`` (norms, biases) stay whole on every rank:
a few MiB, not counted.
"""

from __future__ import annotations

from vramplan.memory import optimizer
from vramplan.memory.policy import policy_of, with_policy
from vramplan.memory.trainable import largest_trainable_tensor, trainable_params
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes
from vramplan.zero_config import ZeroConfig, shipped


def _ceil_div(a: int, n: int) -> int:
    return -(-a // n)


def zero_config(spec: ModelSpec, setup: Setup) -> ZeroConfig:
    """The config the run uses: the user's (``--deepspeed``), else the trainer's shipped one for the
    stage (``Policy.deepspeed_configs``), with ``"auto"`` filled from the model as transformers does."""
    stage = int(setup.parallel.removeprefix("zero"))
    cfg = setup.deepspeed_config or shipped(policy_of(setup).deepspeed_configs, stage)
    return cfg.resolved(spec.hidden_size)


def _grad_dtype(setup: Setup) -> str:
    """The dtype DeepSpeed keeps buckets and gradient partitions in: the model's (16-bit under its
    bf16/fp16 modes, which cast an ``amp-*`` model too; fp32 without them)."""
    if setup.precision == "fp32":
        return "fp32"
    return "fp16" if setup.precision.endswith("fp16") else "bf16"


def reduce_bucket_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Reduce buffers alive in backward: stages 1-2, ``reduce_bucket_size`` 16-bit elements, two
    with ``overlap_comm`` (``DeepSpeedZeroOptimizer.backward``); stage 3, its one persistent
    ``__ipg_bucket_flat_buffer`` whatever ``overlap_comm`` (the concatenation
    ``reduce_scatter_coalesced`` makes while a bucket is reduced did not reach backward's peak
    on the engine). None without ``contiguous_gradients``. Counted on DeepSpeed 0.15.4
    (benchmarks/zero_buffers.md)."""
    cfg = zero_config(spec, setup)
    if not cfg.contiguous_gradients:
        return 0
    bucket = nbytes(cfg.reduce_bucket_size or 0, _grad_dtype(setup))
    if cfg.stage == 3:
        return bucket
    return bucket * (2 if cfg.overlap_comm else 1)


def persistent_bucket_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Stage 3's ``__ipg_bucket_flat_buffer``, made in ``DeepSpeedZeroOptimizer_Stage3.__init__``
    and alive in every phase (stages 1-2 make theirs in backward only)."""
    cfg = zero_config(spec, setup)
    if cfg.stage != 3 or not cfg.contiguous_gradients:
        return 0
    return nbytes(cfg.reduce_bucket_size or 0, _grad_dtype(setup))


def averaged_gradient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Stages 1-2 accumulating (``grad_accum`` > 1): the epilogue keeps each micro-batch's reduced
    partition as ``averaged_gradients`` (views of its ``grads_in_partition``) and the next backward
    copies into a new ``grads_in_partition`` before adding it in
    (``independent_gradient_partition_epilogue``): one more 16-bit partition in backward (counted:
    +P/N 16-bit at accumulation 2, benchmarks/zero_buffers.md)."""
    if setup.grad_accum == 1 or setup.parallel == "zero3" or setup.offload != "none":
        return 0
    return nbytes(_ceil_div(trainable_params(spec, setup), setup.shard_count), _grad_dtype(setup))


def _fp32(setup: Setup) -> Setup:
    kept = {"master": "fp32", "adapter": "fp32", "extra_trainable": "fp32"}
    return with_policy(setup, policy_of(setup).model_copy(update=kept))


def optimizer_temp_bytes(spec: ModelSpec, setup: Setup, elements: int) -> int:
    """The optimizer's own temporaries over ``elements`` fp32 elements of the flat partition:
    DeepSpeed's ``FusedAdam`` (an "optimizer" block) none, torch's AdamW (``torch_adam``, or the
    trainer's ``adamw`` handed in) one fp32 copy of the moments (optimizer.optimizer_step_temp_bytes),
    the others as the trainer's optimizer counts them on the whole set, scaled to ``elements``."""
    cfg = zero_config(spec, setup)
    if cfg.optimizer == "fused":
        return 0
    if cfg.optimizer == "torch":
        return nbytes(elements, "fp32")
    whole = optimizer.optimizer_step_temp_bytes(spec, _fp32(setup))
    total = max(1, trainable_params(spec, setup))
    return whole * elements // total


def step_terms(spec: ModelSpec, setup: Setup) -> dict[str, int]:
    """The optimizer step's peak beside the state: ``gradients`` (the 16-bit partition),
    ``parallel/fp32_grad_partition`` and ``optimizer/step_temporaries``, at the larger of its two
    moments (module docstring): building the fp32 gradient (16-bit partition, its flat 16-bit
    copy, the fp32 partition) or the optimizer's step (the fp32 partition and the optimizer's
    temporaries). Stage 3 builds one sub group at a time; its gradient partition stays allocated."""
    cfg = zero_config(spec, setup)
    n = setup.shard_count
    p = trainable_params(spec, setup)
    part = _ceil_div(p, n)
    dt = _grad_dtype(setup)
    grads16 = nbytes(part, dt)
    group = part
    if cfg.stage == 3:
        largest = _ceil_div(largest_trainable_tensor(spec, setup), n)
        group = min(part, cfg.sub_group_size + largest) if cfg.sub_group_size > 0 else largest
    # an fp32 run's flat copy is already the fp32 gradient (``.to`` a dtype it has copies nothing)
    flat16, fp32 = (0 if dt == "fp32" else nbytes(group, dt)), nbytes(group, "fp32")
    temps = optimizer_temp_bytes(spec, setup, group)
    building = grads16 + flat16 + fp32
    stepping = (grads16 if cfg.stage == 3 else 0) + fp32 + temps
    if building >= stepping:
        return {"gradients": grads16, "parallel/fp32_grad_partition": fp32, "optimizer/step_temporaries": flat16}
    return {
        "gradients": grads16 if cfg.stage == 3 else 0,
        "parallel/fp32_grad_partition": fp32,
        "optimizer/step_temporaries": temps,
    }


def kept_params(spec: ModelSpec, setup: Setup, layer_params: int, head_params: int) -> int:
    """Stage 3: decoder-layer parameters still gathered when the loss runs. The module order
    DeepSpeed records (``record_module`` on every fetch, forward and backward) puts between the
    forward of a parameter ``x`` elements from the end of the layers and its next use: those ``x``
    elements, the output layer twice (its forward, then its backward), and going down in backward
    the same ``x`` again, fetched twice with checkpointing (recompute, then backward). It stays
    gathered while that is under ``stage3_max_reuse_distance`` (``__params_to_release``), so
    ``x < (distance - 2 head) / (2 or 3)``, at most every layer. On the engine (benchmarks/
    zero_buffers.md): distance 2e6 keeps the output layer alone, 4e6 the output layer and 2.16 MB
    of layers (this says 1.9 MB), 1e9 the whole model."""
    cfg = zero_config(spec, setup)
    per = 3 if setup.grad_checkpointing else 2
    room = max(0, cfg.max_reuse_distance - 2 * head_params) // per
    return min(room, layer_params * spec.num_layers)


def pending_release_bytes(spec: ModelSpec, setup: Setup, weights_total: int, phase: str) -> int:
    """Stage 3 on a GPU: one decoder layer's gathered weights released but not yet reusable.
    ``free_param`` (partition_parameters.py) calls ``record_stream`` on the compute stream before
    dropping a gathered parameter, and the gathers are allocated on the all-gather stream
    (``__all_gather_params_``): the caching allocator hands the block out again only once the
    kernels queued behind it ran, while the CPU, running ahead, already gathers the next layer.
    A CPU rank (a synchronized device) frees at once, so benchmarks/zero_buffers.md cannot show it;
    none at the step (every parameter released, the compute stream drained by the norm)."""
    if phase == "optimizer_step":
        return 0
    dt = _grad_dtype(setup)
    embed_bytes = nbytes(spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2), dt)
    return max(0, weights_total - embed_bytes) // max(1, spec.num_layers)


def prefetch_params(spec: ModelSpec, setup: Setup, layer_params: int) -> int:
    """Stage 3: parameters fetched ahead of use: up to ``stage3_prefetch_bucket_size`` elements (the
    next module's whole, at least), none when ``stage3_max_live_parameters`` is 0
    (``fetch_sub_module``: ``min(max_live - available, prefetch_bucket_size)``)."""
    cfg = zero_config(spec, setup)
    if cfg.max_live_parameters <= 0 or not cfg.prefetch_bucket_size:
        return 0
    return min(layer_params, max(cfg.prefetch_bucket_size, layer_params // 7))


def gathered_bytes(spec: ModelSpec, setup: Setup, weights_total: int, phase: str) -> int:
    """Stage 3's gathered weights on a rank at ``phase`` (in the model's dtype): while the loss runs, the output
    layer (lm_head; the embedding when tied) and the kept last layers (:func:`kept_params`); in
    backward, those layers or the one running, and the prefetched parameters; none at the step,
    which releases every parameter first (``step`` -> ``_partition_all_parameters``)."""
    if phase == "optimizer_step":
        return 0
    dt = _grad_dtype(setup)
    head = spec.vocab_size * spec.hidden_size
    embed_bytes = nbytes(head * (1 if spec.tie_word_embeddings else 2), dt)
    layer_bytes = max(0, weights_total - embed_bytes) // max(1, spec.num_layers)
    layer_params = layer_bytes // nbytes(1, dt)
    kept = nbytes(kept_params(spec, setup, layer_params, head), dt)
    prefetch = nbytes(prefetch_params(spec, setup, layer_params), dt)
    if phase == "backward":
        return max(kept, layer_bytes) + prefetch
    reuse = zero_config(spec, setup).max_reuse_distance
    # the output layer's backward is the next module: kept whenever any reuse distance is allowed
    head_kept = nbytes(head, dt) if reuse > 0 else 0
    if kept >= layer_bytes * spec.num_layers and not spec.tie_word_embeddings:
        # the whole trace comes back within the distance: the input embedding stays gathered too
        per = 3 if setup.grad_checkpointing else 2
        if per * spec.num_layers * layer_params + 2 * head < reuse:
            head_kept += nbytes(head, dt)
    return head_kept + kept + (prefetch if phase == "backward_start" else 0)
