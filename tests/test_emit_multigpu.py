"""The trl target's multi-GPU launch files: DeepSpeed's and accelerate's own parsers read them
back to the planned layout, they run on the CPU where they can, and the script's dry run reads
back the planned Setup, layout included.

What runs here (2 CPU processes over gloo, a tiny random-weight model, 2 optimizer steps):
- DDP: the emitted run line, ``accelerate launch --config_file accelerate_config.yaml train.py``,
  unmodified (accelerate trains the processes as MULTI_CPU).
- ZeRO: the emitted files through ``accelerate launch`` (on the CPU the script trains without
  DeepSpeed, as it says), and the emitted ds_config.json run by DeepSpeed's own engine. Not
  through the Trainer: accelerate gives a process without a GPU no distributed backend unless
  it runs with ``cpu=True``, which turns DeepSpeed off (accelerate/state.py), so transformers
  would count one process while DeepSpeed counts two.
- FSDP: accelerate's own FSDP2 preparation (``fsdp2_prepare_model``) with the plugin the emitted
  YAML gives each process. Not through the Trainer: accelerate enables FSDP on accelerator
  devices only (on a CPU its state is MULTI_CPU and the FSDP plugin is dropped).
- device_map needs GPUs; its ``max_memory`` is held to accelerate's placement on a meta model.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG, requires, write_samples
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.memory.parallel import per_gpu
from vramplan.memory.phases import phase_terms
from vramplan.memory.zero import reduce_bucket_bytes
from vramplan.models import catalog_names, load_model, models_dir
from vramplan.setup import Setup, make_setup
from vramplan.units import nbytes

pytestmark = requires("trl", "accelerate")

ROOT = Path(__file__).resolve().parent.parent


def _deepspeed_or_skip() -> None:
    """Skip when DeepSpeed does not import here (checked when a test runs: it imports torch)."""
    try:
        import deepspeed  # noqa: F401
        from deepspeed.runtime.config import DeepSpeedConfig  # noqa: F401
    except Exception as exc:  # ImportError, or its op builders failing at import
        pytest.skip(f"deepspeed does not import here: {type(exc).__name__}: {exc}")


needs_deepspeed = requires("deepspeed")


def _emit(tmp: Path, model: str = "qwen2.5-7b", gpu: str = "a100-80g", **pinned: object):
    p = plan(model, gpu=gpu, **pinned)
    out = emit(p, "trl", force=True)
    write_files(str(tmp), out.files, overwrite=True)
    return p, out


# -- 1. DeepSpeed's own parser -----------------------------------------------------------

DS_CASES = [
    dict(method="lora", num_gpus=4, parallel="zero1"),
    dict(method="lora", num_gpus=4, parallel="zero2", offload="optimizer", precision="fp16"),
    dict(method="full", num_gpus=8, parallel="zero3", precision="amp-bf16"),
    dict(method="full", num_gpus=8, parallel="zero3", offload="optimizer+params", optimizer="adamw-8bit"),
    dict(method="lora", num_gpus=4, parallel="zero2", offload="optimizer", optimizer="lion"),
    dict(method="lora", num_gpus=4, num_nodes=2, parallel="zero3", offload="optimizer", grad_accum=4),
]
DS_IDS = ["zero1", "zero2-offload-fp16", "zero3-amp", "zero3-offload-params-8bit", "zero2-lion", "zero3-2nodes"]


@needs_deepspeed
@pytest.mark.parametrize("pinned", DS_CASES, ids=DS_IDS)
@pytest.mark.trace
def test_deepspeed_reads_the_planned_zero_config(pinned: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deepspeed_or_skip()
    import deepspeed.runtime.config as ds_config

    p, out = _emit(tmp_path, **pinned)
    s = out.setup
    # DeepSpeedConfig checks train_batch_size against the process group's size: the planned world
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: s.world_size)
    cfg = ds_config.DeepSpeedConfig(str(tmp_path / "ds_config.json"))
    zero = cfg.zero_config
    stage = int(s.parallel[-1])
    assert cfg.zero_optimization_stage == zero.stage == stage
    assert (cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps) == (s.micro_batch, s.grad_accum)
    assert cfg.train_batch_size == s.micro_batch * s.grad_accum * s.world_size
    assert cfg.bfloat16_config.enabled == s.precision.endswith("bf16")
    assert cfg.float16_config.enabled == s.precision.endswith("fp16")
    assert zero.overlap_comm and zero.contiguous_gradients
    off_opt = s.offload in ("optimizer", "optimizer+params")
    assert (zero.offload_optimizer is not None and zero.offload_optimizer.device == "cpu") == off_opt
    assert (zero.offload_param is not None and zero.offload_param.device == "cpu") == (s.offload == "optimizer+params")
    for off in (zero.offload_optimizer, zero.offload_param):
        assert off is None or off.pin_memory
    if off_opt:  # DeepSpeed's CPU optimizer, as the host-RAM estimate counts it
        assert cfg.optimizer_name == {"adamw": "adamw", "lion": "lion"}[s.optimizer]
    else:
        assert cfg.optimizer_name is None  # transformers hands DeepSpeed the TRAINING optimizer
    spec = load_model("qwen2.5-7b")
    h = spec.hidden_size
    if stage < 3:
        assert zero.reduce_bucket_size == zero.allgather_bucket_size == 200_000_000  # vramplan/zero{1,2}
        buffers = 2  # overlap_comm: DeepSpeedZeroOptimizer.backward's second buffer
    else:
        assert zero.reduce_bucket_size == h * h  # transformers' "auto"
        assert zero.prefetch_bucket_size == int(0.9 * h * h) and zero.param_persistence_threshold == 10 * h
        assert zero.max_live_parameters == zero.max_reuse_distance == 10**9
        assert zero.gather_16bit_weights_on_model_save
        buffers = 1  # stage 3's one __ipg_bucket_flat_buffer
    # the very buffers the estimate in the header counts, of the size the file says
    backward = per_gpu(spec, s, phase_terms(spec, s))["backward"]
    per = zero.reduce_bucket_size
    assert reduce_bucket_bytes(spec, s) == backward["parallel/reduce_buckets"] == buffers * nbytes(per, "bf16")


def test_deepspeed_offload_optimizer_replacement_is_said(tmp_path: Path) -> None:
    p, out = _emit(tmp_path, **DS_CASES[3])
    assert p.setup.optimizer == "adamw-8bit" and out.setup.optimizer == "adamw"
    text = (tmp_path / "train.py").read_text()
    assert "CHANGED FOR trl: DeepSpeed's CPU offload steps with its own CPU optimizer" in text


# -- 2. accelerate's own loader and launcher ---------------------------------------------

ACC_CASES = [
    dict(method="lora", num_gpus=2, parallel="ddp"),
    dict(method="lora", num_gpus=4, parallel="zero3", offload="optimizer"),
    dict(method="lora", num_gpus=4, num_nodes=2, parallel="zero2"),
    dict(method="lora", num_gpus=4, parallel="fsdp"),
    dict(method="full", num_gpus=8, parallel="fsdp", fsdp_sharding="shard_grad_op", grad_checkpointing=False),
    dict(method="full", num_gpus=4, parallel="fsdp", offload="optimizer+params", precision="amp-bf16"),
    dict(method="full", num_gpus=8, num_nodes=2, parallel="fsdp", fsdp_sharding="hybrid_shard"),
]
ACC_IDS = ["ddp", "zero3-offload", "zero2-2nodes", "fsdp", "fsdp-shard-grad-op", "fsdp-offload", "fsdp-hybrid-2nodes"]


def _launch_env(config: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file CONFIG`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", "")
    argv = ["--config_file", str(config), "--main_process_port", "0", *extra, "train.py"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        cmd, env = prepare_deepspeed_cmd_env(args)
        assert cmd is None  # torchrun on each node, never pdsh over ssh
    else:
        env = prepare_multi_gpu_env(args)
    env["_nproc_per_node"] = str(args.nproc_per_node)
    env["_nnodes"] = str(getattr(args, "nnodes", 1))
    return env


@pytest.mark.parametrize("pinned", ACC_CASES, ids=ACC_IDS)
@pytest.mark.trace
def test_accelerate_reads_the_planned_launch(pinned: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    p, out = _emit(tmp_path, **pinned)
    s = out.setup
    cfg = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(s.parallel, "DEEPSPEED")
    assert str(cfg.distributed_type).split(".")[-1] == kind
    assert (cfg.num_processes, cfg.num_machines) == (s.world_size, s.num_nodes)
    half = "bf16" if s.precision.endswith("bf16") else "fp16" if s.precision.endswith("fp16") else "no"
    assert cfg.mixed_precision == (None if kind == "DEEPSPEED" else half)
    assert not cfg.use_cpu
    run_sh = (tmp_path / "run.sh").read_text()
    assert out.command.startswith("accelerate launch --config_file accelerate_config.yaml ")
    assert out.command + ' "$@"' in run_sh

    extra: tuple[str, ...] = ()
    if s.num_nodes > 1:
        assert '--machine_rank "$MACHINE_RANK" --main_process_ip "$MAIN_PROCESS_IP"' in run_sh
        assert ': "${MACHINE_RANK:?' in run_sh and ': "${MAIN_PROCESS_IP:?' in run_sh
        extra = ("--machine_rank", "1", "--main_process_ip", "10.0.0.1")
    monkeypatch.chdir(tmp_path)  # run.sh runs from its folder
    env = _launch_env(tmp_path / "accelerate_config.yaml", monkeypatch, *extra)
    assert (env["_nproc_per_node"], env["_nnodes"]) == (str(s.num_gpus), str(s.num_nodes))
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_", "PARALLELISM_CONFIG_")):
            monkeypatch.setenv(key, value)

    if kind == "DEEPSPEED":
        from accelerate.utils import DeepSpeedPlugin

        assert cfg.deepspeed_config["deepspeed_config_file"] == "ds_config.json"
        assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "ds_config.json"
        plugin = DeepSpeedPlugin()  # reads the file the launcher names, and refuses clashing fields
        assert plugin.zero_stage == int(s.parallel[-1])
        assert plugin.offload_optimizer_device == ("cpu" if s.offload != "none" else "none")
        assert plugin.zero3_init_flag == (s.parallel == "zero3")
        assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == s.micro_batch
    elif kind == "FSDP":
        from accelerate.utils import FullyShardedDataParallelPlugin
        from torch.distributed.fsdp import CPUOffloadPolicy

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2
        assert plugin.reshard_after_forward is (s.fsdp_sharding != "shard_grad_op")
        assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) == (s.offload == "optimizer+params")
        assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
        assert plugin.activation_checkpointing == s.grad_checkpointing
        if s.fsdp_sharding == "hybrid_shard":
            from accelerate.parallelism_config import ParallelismConfig

            pc = ParallelismConfig()
            assert (pc.dp_replicate_size, pc.dp_shard_size) == (s.num_nodes, s.num_gpus)
            assert pc.dp_shard_size == s.shard_count
        else:
            assert cfg.parallelism_config in (None, {})


@pytest.mark.trace
def test_decoder_layer_names_are_transformers_own() -> None:
    """FSDP wraps the class transformers itself refuses to split (``_no_split_modules``)."""
    import importlib

    import transformers
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    decoder_layer = {s.model_type: s.decoder_layer for s in map(load_model, catalog_names()) if s.decoder_layer}
    for model_type, layer in decoder_layer.items():
        vlm = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type) or vlm[model_type])
        if cls._no_split_modules is None:  # Mistral 3 declares none: the layer of the text model it builds
            prefix = layer.removesuffix("DecoderLayer").lower()
            assert hasattr(importlib.import_module(f"transformers.models.{prefix}.modeling_{prefix}"), layer)
            continue
        assert cls._no_split_modules == [layer], model_type


@pytest.mark.e2e
def test_layouts_train_in_the_precision_they_plan(tmp_path: Path) -> None:
    # DeepSpeed casts the model to 16 bits and keeps fp32 masters itself: an AMP plan is its bf16 mode
    p, out = _emit(tmp_path / "a", method="full", precision="amp-bf16", num_gpus=8, parallel="zero3")
    assert out.setup.precision == "bf16" and "CHANGED FOR trl: DeepSpeed's bf16 mode" in out.files["train.py"]
    # DeepSpeed's own loss scaler steps fp16 weights: no AMP detour
    p, out = _emit(tmp_path / "b", method="full", precision="fp16", num_gpus=8, parallel="zero2")
    assert out.setup.precision == "fp16" and not out.adjustments
    # FSDP2 would upcast trained 16-bit weights under mixed precision: pure bf16, as planned
    p, out = _emit(tmp_path / "c", method="full", precision="bf16", num_gpus=8, parallel="fsdp")
    assert out.setup == p.setup and not out.adjustments
    settings = _dry_run(tmp_path / "c")
    assert settings["dtype"] == "bfloat16" and not settings["training"]["bf16"]
    assert settings["parallel"]["accelerate"]["mixed_precision"] == "no"
    # bitsandbytes' optimizers do not step FSDP2's DTensor shards
    p, out = _emit(tmp_path / "d", method="lora", optimizer="paged-adamw-8bit", num_gpus=4, parallel="fsdp")
    assert out.setup.optimizer == "adamw" and "CHANGED FOR trl: bitsandbytes' paged-adamw-8bit" in out.files["run.sh"]


def test_qlora_under_sharded_weights_is_refused() -> None:
    for parallel in ("zero3", "fsdp"):
        p = plan("qwen2.5-7b", gpu="4090", method="qlora", quant="bnb-nf4", num_gpus=2, parallel=parallel)
        with pytest.raises(VramplanError, match="QLoRA under"):
            emit(p, "trl", force=True)


def test_every_file_says_the_figures_are_per_gpu(tmp_path: Path) -> None:
    _, out = _emit(tmp_path, **ACC_CASES[1])
    assert set(out.files) == {"train.py", "run.sh", "accelerate_config.yaml", "ds_config.json"}
    line = "layout: DeepSpeed ZeRO-3 on 4 GPUs (4 processes); every figure above is per GPU"
    for name in ("train.py", "run.sh", "accelerate_config.yaml"):
        assert "# estimated peak per GPU" in out.files[name] and line in out.files[name], name
    comment = json.loads(out.files["ds_config.json"])["_comment"]
    assert comment[1].startswith("estimated peak per GPU") and any(c.startswith(line) for c in comment)


# -- 3. run on the CPU --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Qwen2 model with random weights and its word-level tokenizer, and 16 samples."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("multigpu")
    model_dir = root / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_CONFIG)).save_pretrained(model_dir)
    samples = [{"instruction": f"Add {i} and {i + 1}.", "output": f"It is {2 * i + 1}."} for i in range(16)]
    data, _ = write_samples(samples, root)
    return model_dir, data


def _tiny_files(tiny: tuple[Path, Path], out_dir: Path, **pinned: object) -> Setup:
    model_dir, data = tiny
    p = plan(str(model_dir / "config.json"), gpu="4090", seq_len=64, micro_batch=2, **pinned)
    out = emit(p, "trl", data=str(data))
    write_files(str(out_dir), out.files, overwrite=False)
    return out.setup


def _results(stdout: str, key: str = "losses") -> list[dict]:
    """The JSON results the processes print (their lines may interleave)."""
    return [json.loads(m) for m in re.findall(r'\{"' + key + r'"[^{}]*\}', stdout)]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.mark.parametrize(
    "pinned",
    [
        dict(method="lora", num_gpus=2, parallel="ddp"),
        pytest.param(
            dict(method="lora", num_gpus=2, parallel="zero3", offload="optimizer"),
            marks=needs_deepspeed,
        ),
    ],
    ids=["ddp", "zero3"],
)
@pytest.mark.e2e
def test_emitted_launch_trains_on_two_cpu_processes(tiny: tuple[Path, Path], tmp_path: Path, pinned: dict) -> None:
    """run.sh's own line, the emitted files unmodified: two processes, two optimizer steps each."""
    if pinned["parallel"] == "zero3":
        _deepspeed_or_skip()
    run = tmp_path / "run"
    _tiny_files(tiny, run, **pinned)
    line = [ln for ln in (run / "run.sh").read_text().splitlines() if ln.startswith("accelerate launch")][0]
    cmd = line.replace(' "$@"', "").split()
    assert cmd[:4] == ["accelerate", "launch", "--config_file", "accelerate_config.yaml"]
    exe = [sys.executable, "-m", "accelerate.commands.launch", *cmd[2:4]]
    proc = _run([*exe, "train.py", *cmd[5:], "--model", str(tiny[0]), "--max-steps", "2", "--output", "o"], run)
    results = _results(proc.stdout, "train_loss")
    assert len(results) == 2  # one per process
    said = "training on the CPU without DeepSpeed" if pinned["parallel"] == "zero3" else "training on the CPU"
    assert proc.stdout.count(f"no CUDA device: {said}") == 2
    assert all(r["steps"] == 2 and math.isfinite(r["train_loss"]) for r in results)


DS_ENGINE = '''
"""Run an emitted ds_config.json with DeepSpeed's own engine: 2 steps on each CPU process."""
import json, os, sys
import deepspeed, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

cfg = json.load(open(sys.argv[1]))
if "optimizer" in cfg:
    # DeepSpeedCPUAdam is a C++ op DeepSpeed compiles on first use (107 s on 2 cores): torch's AdamW steps
    # the offloaded fp32 partition instead, which DeepSpeed allows with zero_force_ds_cpu_optimizer false
    del cfg["optimizer"]
    cfg["zero_force_ds_cpu_optimizer"] = False
cfg["zero_allow_untested_optimizer"] = True  # as transformers sets it for its own optimizers
deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # CPU-only comm kernel, 78 s to compile: plain gloo
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16 if cfg["bf16"]["enabled"] else None)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
trainable = [p for p in model.parameters() if p.requires_grad]
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-4), config=cfg)
losses = []
for _ in range(2 * cfg["gradient_accumulation_steps"]):
    ids = torch.randint(3, 500, (cfg["train_micro_batch_size_per_gpu"], 16))
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
params = list(engine.module.parameters())
print(json.dumps({
    "losses": losses, "steps": engine.global_steps, "stage": engine.zero_optimization_stage(),
    "reduce_bucket_size": engine.zero_reduce_bucket_size(),
    "offload_param": str(engine.zero_offload_param().device) if engine.zero_offload_param() else None,
    "offload_optimizer": str(engine.zero_offload_optimizer().device) if engine.zero_offload_optimizer() else None,
    "held": sum(p.ds_tensor.numel() for p in params), "whole": sum(p.ds_numel for p in params), "count": len(params),
}))
'''


@needs_deepspeed
@pytest.mark.e2e
def test_emitted_zero3_config_runs_in_deepspeed(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """ZeRO-3 with parameter and optimizer offload, bf16, from the emitted ds_config.json."""
    _deepspeed_or_skip()
    _tiny_files(tiny, tmp_path / "run", method="lora", num_gpus=2, parallel="zero3", offload="optimizer+params")
    (tmp_path / "engine.py").write_text(DS_ENGINE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "engine.py"]
    proc = _run([*cmd, str(tmp_path / "run" / "ds_config.json"), str(tiny[0])], tmp_path)
    results = _results(proc.stdout)
    assert len(results) == 2
    h = TINY_CONFIG["hidden_size"]
    for r in results:
        assert r["steps"] == 2 and all(math.isfinite(x) for x in r["losses"])
        assert (r["stage"], r["reduce_bucket_size"]) == (3, h * h)
        assert r["offload_param"] == r["offload_optimizer"] == "cpu"
        assert r["whole"] <= 2 * r["held"] <= r["whole"] + r["count"]  # each process holds its half of the weights


FSDP_PREPARE = '''
"""accelerate's FSDP2 preparation with the plugin the emitted YAML gives each process: 2 steps."""
import json, os, sys, types
import torch, torch.distributed as dist
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

args, _, _ = _validate_launch_command(launch_command_parser().parse_args(["--config_file", sys.argv[1], "x.py"]))
mine = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
os.environ.update(prepare_multi_gpu_env(args))  # what accelerate launch gives the process
os.environ.update(mine)
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_apply_ac, fsdp2_prepare_model
from peft import LoraConfig, get_peft_model
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
from transformers import AutoModelForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

dist.init_process_group("gloo")
plugin = FullyShardedDataParallelPlugin()
mixed = os.environ["ACCELERATE_MIXED_PRECISION"]
plugin.set_mixed_precision(mixed)
offload = type(plugin.cpu_offload).__name__
if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
    plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)  # pinned host memory needs an accelerator
accelerator = types.SimpleNamespace(
    state=types.SimpleNamespace(fsdp_plugin=plugin), device=torch.device("cpu"), mixed_precision=mixed,
    is_main_process=dist.get_rank() == 0, torch_device_mesh=None, parallelism_config=None,
)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
if plugin.activation_checkpointing:
    model = fsdp2_apply_ac(accelerator, model)
model = fsdp2_prepare_model(accelerator, model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
losses = []
for _ in range(2):
    ids = torch.randint(3, 500, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
print(json.dumps({
    "losses": losses, "units": sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)}),
    # a unit holds a decoder layer itself, or the CheckpointWrapper around one (accelerate >= 1.16 shards the wrapper)
    "layer_units": sum(
        isinstance(getattr(m, "_checkpoint_wrapped_module", m), Qwen2DecoderLayer)
        for m in model.modules() if isinstance(m, FSDPModule)
    ),
    "checkpointed": sum(isinstance(m, CheckpointWrapper) for m in model.modules()),
    "reshard": plugin.reshard_after_forward, "offload": offload,
}))
'''


@pytest.mark.e2e
def test_emitted_fsdp_config_runs_in_accelerates_fsdp2(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """FSDP full_shard with CPU offload and activation checkpointing, from the emitted YAML: one
    FSDP unit per decoder layer, as the plan assumes.

    Which module carries a layer's unit depends on accelerate. ``fsdp2_apply_ac`` wraps each
    decoder layer in a ``CheckpointWrapper`` before sharding; accelerate 1.16's
    ``fsdp2_prepare_auto_wrap_policy`` (accelerate/utils/fsdp_utils.py) looks through the wrapper
    (``_checkpoint_wrapped_module``) and ``fsdp2_prepare_model`` then shards the wrapper, not the
    layer inside it, so the unit's class is ``FSDPCheckpointWrapper`` where earlier releases
    named it ``FSDPQwen2DecoderLayer``. The same 1.16 ``fsdp2_prepare_model`` also gives the
    untied input embedding and the ``[final norm, lm_head]`` tail units of their own
    (``FSDPEmbedding``, ``FSDPLinear``), split out of the root."""
    pinned = dict(method="lora", num_gpus=2, parallel="fsdp", offload="optimizer+params", grad_checkpointing=True)
    s = _tiny_files(tiny, tmp_path / "run", **pinned)
    (tmp_path / "prepare.py").write_text(FSDP_PREPARE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "prepare.py"]
    proc = _run([*cmd, str(tmp_path / "run" / "accelerate_config.yaml"), str(tiny[0])], tmp_path)
    results = _results(proc.stdout)
    assert len(results) == 2
    for r in results:
        assert all(math.isfinite(x) for x in r["losses"])
        assert r["layer_units"] == TINY_CONFIG["num_hidden_layers"], r["units"]  # one unit per decoder layer
        assert r["checkpointed"] == TINY_CONFIG["num_hidden_layers"] and s.grad_checkpointing
        assert r["reshard"] is True and r["offload"] == "CPUOffloadPolicy"


@pytest.mark.trace
def test_device_map_max_memory_gives_the_planned_placement(tmp_path: Path) -> None:
    """transformers' own placement (what ``from_pretrained(device_map="auto", max_memory=...)`` runs)
    within the emitted max_memory puts every layer on the card the estimate puts it."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.accelerate import _get_device_map

    from vramplan.memory import device_map

    p, out = _emit(tmp_path, model="qwen2.5-7b", gpu="4090", method="lora", num_gpus=4, parallel="device_map")
    assert set(out.files) == {"train.py", "run.sh"} and out.command.startswith("python train.py ")
    settings = _dry_run(tmp_path)
    max_memory = {int(k): v for k, v in settings["parallel"]["max_memory"].items()}
    assert max_memory == {i: "24564MiB" for i in range(4)}
    cfg = json.loads((models_dir() / "qwen2.5-7b" / "config.json").read_text())
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.to(torch.bfloat16)  # the load dtype (meta tensors)
    placed = _get_device_map(model, "auto", max_memory, None)
    real = {f"layer.{int(k.split('.layers.')[1].split('.')[0])}": v for k, v in placed.items() if ".layers." in k}
    real.update(embed=placed["model.embed_tokens"], lm_head=placed["lm_head"])
    planned = {}
    for card, units in enumerate(device_map.assign(load_model("qwen2.5-7b"), out.setup)):
        for u in units:
            if u.kind in ("layer", "embed", "lm_head"):
                planned[f"layer.{u.index}" if u.kind == "layer" else u.kind] = card
    assert real == planned
    assert len(p.cards) == 4 and "lm_head" in p.cards[-1].holds


# -- 4. the dry run reads back the planned Setup, layout included --------------------------


def _dry_run(run: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(run / "train.py"), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def setup_from_launch(settings: dict) -> Setup:
    """The Setup the script and its launch files run, read from what --dry-run prints (the
    launch files as parsed next to the script), independently of the emitter's mapping."""
    from tests.test_emit_trl import setup_from_trl

    fields = setup_from_trl(settings).model_dump()
    par = settings.get("parallel")
    if par is None:
        return make_setup(**fields)
    t = settings["training"]
    if par["layout"] == "device_map":
        fields.update(parallel="device_map", num_gpus=len(par["max_memory"]), num_nodes=1)
        return make_setup(**fields)
    acc = par["accelerate"]
    nodes = acc["num_machines"]
    fields.update(num_nodes=nodes, num_gpus=acc["num_processes"] // nodes)
    kind = acc["distributed_type"]
    if kind == "MULTI_GPU":
        fields["parallel"] = "ddp"
    elif kind == "DEEPSPEED":
        ds = par["deepspeed"]
        zero = ds["zero_optimization"]
        fields["parallel"] = f"zero{zero['stage']}"
        fields["offload"] = (
            "optimizer+params" if "offload_param" in zero else "optimizer" if "offload_optimizer" in zero else "none"
        )
        if "optimizer" in ds:
            fields["optimizer"] = {"AdamW": "adamw", "Lion": "lion"}[ds["optimizer"]["type"]]
        assert ds["bf16"]["enabled"] == t["bf16"] and ds["fp16"]["enabled"] == t["fp16"]
        assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
            t["per_device_train_batch_size"],
            t["gradient_accumulation_steps"],
        )
        assert (
            ds["train_batch_size"]
            == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * (acc["num_processes"])
        )
    else:
        assert kind == "FSDP"
        fsdp = acc["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and not t["gradient_checkpointing"]
        fields["parallel"] = "fsdp"
        fields["grad_checkpointing"] = fsdp["fsdp_activation_checkpointing"]
        fields["offload"] = "optimizer+params" if fsdp["fsdp_offload_params"] else "none"
        if acc.get("parallelism_config"):
            pc = acc["parallelism_config"]
            assert (
                pc["parallelism_config_dp_replicate_size"] * pc["parallelism_config_dp_shard_size"]
                == (acc["num_processes"])
            )
            fields["fsdp_sharding"] = "hybrid_shard"
        else:
            fields["fsdp_sharding"] = "full_shard" if fsdp["fsdp_reshard_after_forward"] else "shard_grad_op"
    if kind != "DEEPSPEED":
        half = "bf16" if t["bf16"] else "fp16" if t["fp16"] else "no"
        assert acc["mixed_precision"] == half
    return make_setup(**fields)


@pytest.mark.parametrize(
    "pinned",
    [
        dict(method="lora", num_gpus=2, parallel="ddp", lora_rank=16),
        dict(method="qlora", quant="bnb-nf4", num_gpus=4, parallel="ddp", seq_len=1024),
        dict(method="full", num_gpus=4, parallel="zero1", precision="amp-bf16", seq_len=512),
        dict(method="qlora", quant="bnb-nf4", num_gpus=2, parallel="zero2", offload="optimizer", seq_len=1024),
        dict(method="full", num_gpus=4, num_nodes=2, parallel="zero3", offload="optimizer+params", grad_accum=2),
        dict(method="lora", num_gpus=4, parallel="zero3", offload="optimizer", optimizer="lion"),
        dict(method="lora", num_gpus=4, parallel="fsdp", grad_checkpointing=True, seq_len=1024),
        dict(method="full", num_gpus=8, parallel="fsdp", fsdp_sharding="shard_grad_op", grad_checkpointing=False),
        dict(method="freeze", num_gpus=4, parallel="fsdp", offload="optimizer+params", freeze_trainable_layers=3),
        dict(method="full", num_gpus=8, num_nodes=2, parallel="fsdp", fsdp_sharding="hybrid_shard"),
        dict(method="lora", num_gpus=4, parallel="device_map", seq_len=4096),
        dict(method="qlora", quant="bnb-nf4-dq", num_gpus=2, parallel="device_map"),
    ],
    ids=[
        "ddp",
        "ddp-qlora",
        "zero1",
        "zero2-qlora-offload",
        "zero3-2nodes-offload",
        "zero3-lion",
        "fsdp",
        "fsdp-shard-grad-op",
        "fsdp-freeze-offload",
        "fsdp-hybrid",
        "device_map",
        "device_map-qlora",
    ],
)
@pytest.mark.e2e
def test_dry_run_reads_back_the_planned_layout(pinned: dict, tmp_path: Path) -> None:
    p, out = _emit(tmp_path, model="qwen2.5-0.5b", **pinned)
    back = setup_from_launch(_dry_run(tmp_path))
    assert back == out.setup
    assert out.setup == p.setup.model_copy(update={"lora_dropout": back.lora_dropout}) or out.adjustments
    assert (back.parallel, back.num_gpus, back.num_nodes, back.offload) == (
        pinned["parallel"],
        pinned["num_gpus"],
        pinned.get("num_nodes", 1),
        pinned.get("offload", "none"),
    )


@pytest.mark.e2e
def test_single_gpu_script_is_unchanged_by_the_layouts(tmp_path: Path) -> None:
    """One GPU: two files, ``python train.py``, no PARALLEL block (examples/ holds the bytes)."""
    _, out = _emit(tmp_path, model="qwen2.5-0.5b", method="lora")
    assert set(out.files) == {"train.py", "run.sh"} and out.command.startswith("python train.py ")
    assert "PARALLEL" not in out.files["train.py"] and "parallel" not in _dry_run(tmp_path)
