"""Multi-GPU launch files for the TRL target: ``accelerate_config.yaml``, ``ds_config.json``,
the launch line in ``run.sh`` and the script's blocks that depend on the layout.

Setup -> launch:

| parallel   | started by                                  | files                                   |
|------------|---------------------------------------------|-----------------------------------------|
| none       | ``python train.py``                         | train.py, run.sh                        |
| ddp        | ``accelerate launch`` (MULTI_GPU)           | + accelerate_config.yaml                |
| zero1/2/3  | ``accelerate launch`` (DEEPSPEED)           | + accelerate_config.yaml, ds_config.json |
| fsdp       | ``accelerate launch`` (FSDP, version 2)     | + accelerate_config.yaml                |
| device_map | ``python train.py`` (one process, all GPUs) | train.py, run.sh                        |

``num_processes`` is the world size (GPUs per node x nodes), one process per GPU; with
several nodes run.sh takes the machine rank and the main machine's address from the
environment. ds_config.json's ZeRO block is the config the memory model counts
(:mod:`vramplan.memory.zero`): the user's ``--deepspeed`` file, else vramplan's own
(tables/deepspeed_configs.json ``vramplan/zero{1,2,3}``: stages 1-2 reduce in buckets of 2e8
with ``overlap_comm``, stage 3 in hidden² elements, prefetching 0.9·hidden² and keeping
parameters under 10·hidden elements gathered, transformers' ``"auto"`` values). A user's file is
carried whole (its optimizer block, communication settings and the rest), with the batch sizes,
bf16/fp16, the stage and the ZeRO keys set as planned. ZeRO-3 loads under ``deepspeed.zero.Init``
(``Setup.zero3_init``, default the trainer's): transformers builds the model inside it when a stage-3
``TrainingArguments`` exists before ``from_pretrained`` (integrations/deepspeed.py
``is_deepspeed_zero3_enabled``: the weak reference ``HfTrainerDeepSpeedConfig`` sets), so the script
builds its SFTConfig before loading, or after it with ``--zero3-init off`` (every rank loads the
whole model, the plan's load phase), and accelerate_config.yaml's ``zero3_init_flag`` says the same. Offload sends
the optimizer state (and with ``optimizer+params`` the parameters) to pinned CPU memory,
stepped by DeepSpeed's CPU Adam, as :mod:`vramplan.memory.host` counts it. FSDP is FSDP2
(``fully_shard``) wrapping each decoder layer; ``full_shard`` re-shards after forward,
``shard_grad_op`` keeps the weights gathered until backward, ``hybrid_shard`` shards within a
node and replicates across nodes (accelerate's ``parallelism_config``); its CPU offload
moves parameters, gradients and the optimizer step to the CPU, and the plan's gradient
checkpointing is FSDP's own activation checkpointing.
"""

from __future__ import annotations

import json
from typing import Any

from vramplan.errors import VramplanError
from vramplan.frameworks.files.common import Context, comment_block, printable, py_literal, yaml_scalar
from vramplan.setup import DEEPSPEED, Setup
from vramplan.zero_config import ZeroConfig, shipped

ACCELERATE_CONFIG = "accelerate_config.yaml"
DEEPSPEED_CONFIG = "ds_config.json"
#: bitsandbytes optimizers: their 8-bit/paged state does not step FSDP2's DTensor shards.
BNB_OPTIMIZERS = ("adamw-8bit", "paged-adamw-8bit", "paged-adamw-32bit")
#: DeepSpeed's optimizer for each Setup optimizer it can run on the CPU (offload).
DS_CPU_OPTIMIZER = {"adamw": "AdamW", "lion": "Lion"}


def adapt_precision(setup: Setup, notes: list[str]) -> Setup:
    """The precision a layout trains in; a change is said in ``notes``.

    DeepSpeed's bf16/fp16 mode casts the model's parameters to 16 bits and keeps the fp32
    master copy in its optimizer partition (``DeepSpeedEngine._configure_distributed_model``):
    what ``bf16``/``fp16`` plans with DeepSpeed, so an ``amp-*`` plan runs as that."""
    if setup.parallel in DEEPSPEED and setup.precision.startswith("amp-"):
        half = setup.precision.removeprefix("amp-")
        notes.append(
            f"DeepSpeed's {half} mode casts the weights to {half} and keeps the fp32 master copy in its optimizer"
            f" partition: {half} (re-estimated)"
        )
        return setup.model_copy(update={"precision": half})
    return setup


def pure_16bit(setup: Setup) -> bool:
    """FSDP training 16-bit weights in full or freeze: no mixed precision, or accelerate's FSDP2
    would upcast the trained weights to fp32 masters (``fsdp2_prepare_model``), which a
    ``bf16`` plan does not hold; the bf16 weights compute in bf16 as they would under autocast."""
    return setup.parallel == "fsdp" and setup.precision in ("bf16", "fp16") and setup.method in ("full", "freeze")


def adapt_optimizer(setup: Setup, notes: list[str]) -> Setup:
    """The optimizer a layout can step; a replaced one is said in ``notes``."""
    if setup.parallel in DEEPSPEED and setup.offload != "none" and setup.optimizer not in DS_CPU_OPTIMIZER:
        notes.append(
            f"DeepSpeed's CPU offload steps with its own CPU optimizer (DeepSpeedCPUAdam or DeepSpeedCPULion):"
            f" {setup.optimizer} becomes adamw (re-estimated)"
        )
        return setup.model_copy(update={"optimizer": "adamw"})
    if setup.parallel == "fsdp" and setup.optimizer in BNB_OPTIMIZERS:
        notes.append(
            f"bitsandbytes' {setup.optimizer} does not step FSDP2's sharded (DTensor) parameters"
            " (bitsandbytes issues 89, 1633): adamw instead (re-estimated)"
        )
        return setup.model_copy(update={"optimizer": "adamw"})
    return setup


def decoder_layer(ctx: Context) -> str:
    """The transformers class FSDP wraps one unit of (the model's decoder layer, as its family declares it)."""
    if not ctx.spec.decoder_layer:
        raise VramplanError(
            "emit", f"trl: no decoder layer class known for model_type {ctx.spec.model_type!r} (FSDP wrapping)"
        )
    return ctx.spec.decoder_layer


def mixed_precision(setup: Setup) -> str:
    """accelerate's ``mixed_precision`` for the Setup precision."""
    if pure_16bit(setup):
        return "no"
    if setup.precision.endswith("bf16"):
        return "bf16"
    if setup.precision.endswith("fp16"):
        return "fp16"
    return "no"


def max_memory(ctx: Context) -> dict[int, str]:
    """device_map: each card's memory as the driver reports it, the budget accelerate's
    balanced map is computed within (the placement the estimate counts)."""
    return {i: f"{ctx.gpu.memory_mib}MiB" for i in range(ctx.setup.num_gpus)}


def parallel_constant(ctx: Context) -> dict[str, Any]:
    """The script's PARALLEL: the layout and the files that start it."""
    s = ctx.setup
    if s.parallel == "device_map":
        return {"layout": "device_map", "device_map": "auto", "max_memory": max_memory(ctx)}
    out: dict[str, Any] = {
        "layout": s.parallel,
        "num_processes": s.world_size,
        "num_machines": s.num_nodes,
        "accelerate_config": ACCELERATE_CONFIG,
    }
    if s.parallel in DEEPSPEED:
        out["deepspeed_config"] = DEEPSPEED_CONFIG
    if s.parallel == "zero3":
        out["zero3_init"] = zero3_init(ctx)
    return out


# -- DeepSpeed ---------------------------------------------------------------------------


def deepspeed_config(ctx: Context, comment: list[str]) -> dict[str, Any]:
    """ds_config.json: ZeRO stage, offload, the planned buckets, precision and batch sizes
    (explicit: DeepSpeed and transformers check them against the run)."""
    s = ctx.setup
    stage = int(s.parallel[-1])
    zero: dict[str, Any] = {"stage": stage}
    if s.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if s.offload == "optimizer+params":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    zero.update(planned_zero(ctx).zero_block())
    user = user_deepspeed(ctx)
    out: dict[str, Any] = {"_comment": comment + _ds_notes(ctx)}
    if user is not None:  # the user's file: its keys kept, the planned ones set
        out.update({k: v for k, v in user.items() if k not in ("_comment", "zero_optimization")})
        zero = {**user["zero_optimization"], **zero}
        for key in ("offload_optimizer", "offload_param"):  # the rule Setup checks: they match --offload
            if key in user["zero_optimization"]:
                zero[key] = user["zero_optimization"][key]
    out["train_micro_batch_size_per_gpu"] = s.micro_batch
    out["gradient_accumulation_steps"] = s.grad_accum
    out["train_batch_size"] = s.micro_batch * s.grad_accum * s.world_size
    out.setdefault("gradient_clipping", 1.0)  # SFTConfig's max_grad_norm
    mp = mixed_precision(s)
    out["bf16"] = {"enabled": mp == "bf16"}
    out["fp16"] = (
        {"enabled": True, "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16, "hysteresis": 2}
        if mp == "fp16"
        else {"enabled": False}
    )
    out["zero_optimization"] = zero
    if s.offload != "none" and "optimizer" not in out:
        params = {"lr": "auto", "betas": "auto", "weight_decay": "auto"}
        if s.optimizer == "adamw":
            params["eps"] = "auto"
        out["optimizer"] = {"type": DS_CPU_OPTIMIZER[s.optimizer], "params": params}
    out.setdefault("steps_per_print", 100)
    out.setdefault("wall_clock_breakdown", False)
    return out


def user_deepspeed(ctx: Context) -> dict[str, Any] | None:
    """The user's ds_config.json (``--deepspeed FILE``, ``Setup.deepspeed_config``) as JSON, or None
    without one; the file is read again where it was planned from (zero_config.read_file)."""
    cfg = ctx.setup.deepspeed_config
    if cfg is None or not cfg.source.endswith(".json"):
        return None
    try:
        with open(cfg.source, encoding="utf-8") as f:
            user = json.load(f)
    except (OSError, ValueError):
        raise VramplanError("deepspeed_config", f"cannot read {cfg.source} again to carry it") from None
    return user if isinstance(user, dict) and isinstance(user.get("zero_optimization"), dict) else None


def zero3_init(ctx: Context) -> bool:
    """ZeRO-3 partitions while the model loads (``deepspeed.zero.Init``): ``Setup.zero3_init``, or the
    trainer's (:attr:`Policy.zero3_init`) when ``auto``, as the estimate read it (memory/run.py)."""
    from vramplan.memory import run
    from vramplan.memory.policy import with_policy

    return ctx.setup.parallel == "zero3" and run.zero3_init(with_policy(ctx.setup, ctx.policy))


def planned_zero(ctx: Context) -> ZeroConfig:
    """The ZeRO config the plan counted (memory/zero.py): the user's ``--deepspeed`` file, else
    vramplan's (tables/deepspeed_configs.json ``vramplan/zero{1,2,3}``), ``"auto"`` filled."""
    s = ctx.setup
    cfg = s.deepspeed_config or shipped("vramplan", int(s.parallel[-1]))
    return cfg.resolved(ctx.spec.hidden_size)


def _ds_notes(ctx: Context) -> list[str]:
    s = ctx.setup
    stage = int(s.parallel[-1])
    notes = ["ds_config.json (read by train.py's SFTConfig and named in accelerate_config.yaml):"]
    cfg = planned_zero(ctx)
    if user_deepspeed(ctx) is not None:
        notes.append(
            f"  from {cfg.source}: its keys kept; the batch sizes, bf16/fp16, the stage and the ZeRO keys below"
            " set as planned ('auto' filled as transformers fills it)"
        )
    buffers = "two 16-bit buffers with overlap_comm" if stage < 3 and cfg.overlap_comm else "one 16-bit buffer"
    notes.append(
        f"  reduce_bucket_size {cfg.reduce_bucket_size:,} elements ({cfg.source}), {buffers}: the"
        " parallel/reduce_buckets the estimate counts (vramplan/memory/zero.py)"
    )
    if stage == 3:
        notes.append(
            f"  stage3_prefetch_bucket_size {cfg.prefetch_bucket_size:,}, stage3_max_reuse_distance"
            f" {cfg.max_reuse_distance:,}: the output layer (and the last layers fetched again within that"
            " distance) stay gathered through the loss, as parallel/gathered_weights counts them"
        )
    if stage == 3:
        notes.append(
            "  zero.Init: the script builds its SFTConfig (this file) before from_pretrained, so each GPU loads"
            " its partition only"
            if zero3_init(ctx)
            else "  no zero.Init (--zero3-init off): the script builds its SFTConfig after from_pretrained, so every"
            " rank loads the whole model first, as the plan's load phase counts it"
            f" ({ctx.est.phases.get('load', 0) / 2**30:.2f} GiB allocated)"
        )
    if s.offload != "none":
        what = "optimizer state and fp32 master weights" + (" and the parameters" if "params" in s.offload else "")
        notes.append(
            f"  offload: the {what} in pinned CPU memory ({ctx.host_bytes / 2**30:.2f} GiB per node),"
            f" stepped by DeepSpeed's CPU {DS_CPU_OPTIMIZER[s.optimizer]}"
            " ('optimizer' here replaces TRAINING's optim; lr, betas and weight decay come from the SFTConfig)"
        )
    notes.append(
        f"  micro-batch {s.micro_batch} x grad-accum {s.grad_accum} x {s.world_size} GPUs"
        f" = train_batch_size {s.micro_batch * s.grad_accum * s.world_size}"
    )
    return notes


# -- accelerate --------------------------------------------------------------------------

Entry = tuple[str, Any, str]


def _yaml_lines(entries: list[Entry], indent: int = 0) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value, comment in entries:
        tail = f"  # {printable(comment)}" if comment else ""
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            lines.append(f"{pad}{key}:{tail}")
            lines += _yaml_lines(value, indent + 2)
        else:
            lines.append(f"{pad}{key}: {yaml_scalar(value)}{tail}")
    return lines


def _layout_name(s: Setup) -> str:
    if s.parallel == "ddp":
        return "DDP: every GPU holds the whole model and steps it on its own micro-batches"
    if s.parallel == "fsdp":
        return f"FSDP2, {s.fsdp_sharding}"
    return f"DeepSpeed ZeRO-{s.parallel[-1]}"


def accelerate_entries(ctx: Context) -> list[Entry]:
    """accelerate_config.yaml as (key, value, comment); a nested mapping is a list of entries."""
    s = ctx.setup
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(s.parallel, "DEEPSPEED")
    per_node = f"{s.num_gpus} GPU{'s' if s.num_gpus > 1 else ''} per node"
    entries: list[Entry] = [
        ("compute_environment", "LOCAL_MACHINE", ""),
        ("distributed_type", kind, _layout_name(s)),
        ("num_machines", s.num_nodes, "nodes"),
        ("num_processes", s.world_size, f"one per GPU, all nodes: {per_node} x {s.num_nodes} node(s)"),
        ("machine_rank", 0, "run.sh passes --machine_rank on every node" if s.num_nodes > 1 else ""),
        ("main_training_function", "main", ""),
    ]
    if kind != "DEEPSPEED":
        why = f"Setup precision {s.precision}"
        if pure_16bit(s):
            why += ": the weights train in 16 bits (FSDP2 mixed precision would upcast them to fp32 masters)"
        entries.append(("mixed_precision", mixed_precision(s), why))
    entries += [
        ("gpu_ids", "all", ""),
        ("rdzv_backend", "static", ""),
        ("same_network", True, ""),
        ("use_cpu", False, ""),
        ("debug", False, ""),
    ]
    if kind == "DEEPSPEED":
        ds: list[Entry] = [
            ("deepspeed_config_file", DEEPSPEED_CONFIG, "stage, offload, buckets, bf16/fp16, batch sizes"),
            (
                "zero3_init_flag",
                zero3_init(ctx),
                "ZeRO-3 only"
                if s.parallel != "zero3"
                else "from_pretrained loads each GPU's partition only"
                if zero3_init(ctx)
                else "--zero3-init off: every rank loads the whole model first (train.py builds its SFTConfig after"
                " from_pretrained: transformers' zero.Init follows the config, not this flag)",
            ),
        ]
        if s.num_nodes > 1:
            ds.append(("deepspeed_multinode_launcher", "standard", "torchrun on each node, started by run.sh"))
        entries.append(("deepspeed_config", ds, ""))
    if kind == "FSDP":
        layer = decoder_layer(ctx)
        reshard = s.fsdp_sharding != "shard_grad_op"
        offload = s.offload == "optimizer+params"
        fsdp: list[Entry] = [
            ("fsdp_version", 2, "FSDP2 (torch fully_shard)"),
            (
                "fsdp_reshard_after_forward",
                reshard,
                f"{s.fsdp_sharding}: "
                + (
                    "weights re-sharded after each layer's forward"
                    if reshard
                    else "weights stay gathered until backward"
                ),
            ),
            ("fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", ""),
            ("fsdp_transformer_layer_cls_to_wrap", layer, "one FSDP unit per decoder layer"),
            (
                "fsdp_offload_params",
                offload,
                "CPU offload: parameters, gradients and the optimizer step on the CPU" if offload else "",
            ),
            (
                "fsdp_activation_checkpointing",
                s.grad_checkpointing,
                "the plan's gradient checkpointing, done by FSDP (TRAINING's gradient_checkpointing is off)",
            ),
            ("fsdp_cpu_ram_efficient_loading", True, "rank 0 reads the checkpoint, the others get its shards"),
            ("fsdp_state_dict_type", "FULL_STATE_DICT", "save_model writes an ordinary checkpoint"),
        ]
        entries.append(("fsdp_config", fsdp, ""))
        if s.fsdp_sharding == "hybrid_shard":
            entries.append(
                (
                    "parallelism_config",
                    [
                        ("parallelism_config_dp_replicate_size", s.num_nodes, "replicas: one per node"),
                        ("parallelism_config_dp_shard_size", s.num_gpus, "the state is sharded over a node's GPUs"),
                    ],
                    "hybrid_shard: FSDP2 over a 2-D mesh",
                )
            )
    return entries


def accelerate_yaml(ctx: Context, comment: list[str]) -> str:
    lines = [comment_block(comment)]
    if ctx.setup.parallel in DEEPSPEED:
        lines.append(
            "# mixed_precision is not set here: ds_config.json's bf16/fp16 block sets it"
            " (accelerate refuses both with a deepspeed_config_file)"
        )
    return "\n".join(lines + _yaml_lines(accelerate_entries(ctx))) + "\n"


def config_files(ctx: Context, comment: list[str]) -> dict[str, str]:
    """The launch files besides train.py and run.sh (none on one GPU or under device_map)."""
    s = ctx.setup
    if s.parallel in ("none", "device_map"):
        return {}
    files = {ACCELERATE_CONFIG: accelerate_yaml(ctx, comment)}
    if s.parallel in DEEPSPEED:
        files[DEEPSPEED_CONFIG] = json.dumps(deepspeed_config(ctx, comment), indent=2) + "\n"
    return files


def launcher(ctx: Context) -> tuple[str, str]:
    """(lines run.sh runs first, the command that starts train.py without its arguments)."""
    s = ctx.setup
    if s.parallel in ("none", "device_map"):
        return "", "python"
    base = f"accelerate launch --config_file {ACCELERATE_CONFIG}"
    here = f"# run from this folder: accelerate reads {ACCELERATE_CONFIG} from the current directory\n"
    if s.num_nodes == 1:
        return here, base
    others = f"1..{s.num_nodes - 1}" if s.num_nodes > 2 else "1"
    prelude = (
        here + f"# {s.num_nodes} machines x {s.num_gpus} GPUs: start this script on every machine with\n"
        f"#   MACHINE_RANK       0 on the main machine, {others} on the others\n"
        "#   MAIN_PROCESS_IP    the main machine's address, reachable from the others\n"
        "#   MAIN_PROCESS_PORT  a free port on the main machine (default 29500)\n"
        f': "${{MACHINE_RANK:?set MACHINE_RANK: 0 on the main machine, {others} on the others}}"\n'
        ': "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP: the address of the machine with MACHINE_RANK=0}"\n'
    )
    multi = (
        ' --machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP"'
        ' --main_process_port "${MAIN_PROCESS_PORT:-29500}"'
    )
    return prelude, base + multi


# -- the script's layout-dependent blocks (vramplan/frameworks/files/templates/sft.py) -------------------


def parallel_entries(ctx: Context, value: dict[str, Any]) -> str:
    """The script's PARALLEL entries (the layout and the files that start it), each with why."""
    s = ctx.setup
    why = {
        "layout": "run.sh starts it: "
        + (
            "one python process for all GPUs"
            if s.parallel == "device_map"
            else "accelerate launch, one process per GPU"
        ),
        "num_processes": f"the world size: {s.num_gpus} GPU(s) per node x {s.num_nodes} node(s)",
        "num_machines": "nodes",
        "zero3_init": "ZeRO-3 partitions while loading (deepspeed.zero.Init) when true; false: every rank loads the"
        " whole model before DeepSpeed partitions it (the plan's load phase)",
        "device_map": "from_pretrained's balanced placement of the layers (accelerate's algorithm)",
        "max_memory": f"per card: the {ctx.gpu.name}'s {ctx.gpu.memory_mib:,} MiB, the budget the balanced map"
        " (and the estimate's card-by-card placement) works within",
    }
    lines = []
    for key, v in value.items():
        tail = f"  # {printable(why[key])}" if key in why else ""
        lines.append(f"    {py_literal(key)}: {py_literal(v)},{tail}")
    return "\n".join(lines)


def script_blocks(ctx: Context) -> dict[str, bool]:
    """Which of the trl script's layout blocks the layout keeps."""
    p = ctx.setup.parallel
    return {
        "parallel": p != "none",
        "placement_per_process": p != "device_map",
        "placement_device_map": p == "device_map",
        "deepspeed_config": p in DEEPSPEED,
        "deepspeed_late": p in DEEPSPEED,
        "plain_config": p not in DEEPSPEED and p != "fsdp",
        "fsdp_config": p == "fsdp",
    }
