"""The run around the step in the emitted files: the batches' lengths (padding, packing) and the
evaluation the plan counted, read back by TRL's own ``SFTConfig`` (trl 1.16) from the script's dry run,
ZeRO-3's loading (``zero.Init`` or not) read by accelerate and DeepSpeed, the user's ds_config.json
carried, and what a target cannot write refused, naming its field. The other targets' own parsers read
the same options in tests/test_{swift,llamafactory,axolotl}_parse.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.frameworks import framework
from vramplan.memory import run
from vramplan.memory.policy import with_policy

MODEL = "qwen2.5-0.5b"


def _dry_run(files: dict[str, str], tmp_path: Path) -> dict:
    write_files(str(tmp_path), files, overwrite=True)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "train.py"), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


TRL_CASES = {
    "fixed": dict(seq_len=1024),
    "variable-loss": dict(lengths="variable", evaluation="loss", eval_batch=4, eval_samples=50),
    "packed": dict(lengths="packed", attention="flash-attn-2", micro_batch=2, evaluation="loss"),
}


@requires("trl")
@pytest.mark.e2e
@pytest.mark.parametrize("name", list(TRL_CASES))
def test_trl_config_reads_back_the_planned_lengths_and_evaluation(name: str, tmp_path: Path) -> None:
    """The script's settings, given to TRL's own SFTConfig, hold the plan's lengths and evaluation: every
    batch padded to max_length (fixed), each to its longest (variable: no pad_to_multiple_of), or packed
    best-fit into max_length rows; evaluation every 100 steps at the planned batch, loss only."""
    from trl import SFTConfig

    p = plan(MODEL, gpu="a100-80g", method="lora", **TRL_CASES[name])
    out = emit(p, "trl")
    settings = _dry_run(out.files, tmp_path)
    training = {**settings["training"], "bf16": False, "fp16": False, "use_cpu": True}
    cfg = SFTConfig(output_dir=str(tmp_path / "o"), **training)
    s = out.setup
    assert cfg.max_length == s.seq_len
    assert cfg.packing is (s.lengths == "packed")
    assert cfg.pad_to_multiple_of == (s.seq_len if s.lengths == "fixed" else None)
    if s.lengths == "packed":
        assert cfg.packing_strategy == "bfd"  # padding-free: SFTTrainer turns it on for bfd
    run_setup = with_policy(s, framework("trl").policy(s))
    mode = run.evaluation(run_setup)
    assert str(cfg.eval_strategy).split(".")[-1].lower() == ("no" if mode == "none" else "steps")
    if mode == "none":
        assert settings["evaluation"] is None
        return
    assert mode == "loss" and cfg.prediction_loss_only and cfg.eval_steps == 100
    assert cfg.per_device_eval_batch_size == run.eval_batch(run_setup)
    assert settings["evaluation"] == {"held_out": s.eval_samples or 0.05}


@pytest.mark.parametrize(
    ("target", "fields", "field"),
    [
        ("trl", dict(lengths="packed"), "lengths"),  # sdpa: padding-free packing needs flash-attention
        ("swift", dict(lengths="packed"), "lengths"),
        ("trl", dict(evaluation="logits", eval_batch=1), "evaluation"),
        ("axolotl", dict(evaluation="logits", eval_batch=1), "evaluation"),
    ],
    ids=["trl-packed-sdpa", "swift-packed-sdpa", "trl-logits", "axolotl-logits"],
)
def test_what_a_target_cannot_write_is_refused_naming_the_field(target: str, fields: dict, field: str) -> None:
    p = plan(MODEL, gpu="a100-80g", method="lora", seq_len=512, micro_batch=1, **fields)
    with pytest.raises(VramplanError) as err:
        emit(p, target, force=True)
    assert err.value.field == field


def test_avg_tokens_under_fixed_lengths_is_noted_and_said_in_every_file() -> None:
    """--avg-tokens 300 at 2048: the plan's lengths.padding note gives the real tokens a step trains, and each
    target's file says the same beside its lengths option."""
    p = plan(MODEL, gpu="a100-80g", method="lora", seq_len=2048, micro_batch=4, grad_accum=2, avg_tokens=300)
    (note,) = [n for n in p.notes if n.code == "lengths.padding"]
    assert note.data["real_tokens_per_step"] == 300 * 4 * 2
    assert note.data["planned_tokens_per_step"] == 2048 * 4 * 2
    assert note.data["samples_per_packed_row"] == 6.8
    said = "a step trains about 2,400 real tokens of the 16,384 its memory is planned for"
    for target, name in (
        ("trl", "train.py"),
        ("swift", "run.sh"),
        ("llamafactory", "train.yaml"),
        ("axolotl", "config.yml"),
    ):
        assert said in emit(p, target).files[name], target
    assert not [
        n for n in plan(MODEL, gpu="a100-80g", method="lora", seq_len=2048).notes if n.code == "lengths.padding"
    ]


@requires("trl", "accelerate")
@pytest.mark.trace
def test_zero3_without_init_reaches_the_launcher_and_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--zero3-init off: accelerate's plugin reads zero3_init_flag false and the script builds its SFTConfig
    (which turns transformers' zero.Init on) after from_pretrained; the default keeps both before."""
    from accelerate.commands.config.config_args import load_config_from_file

    for init, flag in (("off", False), ("auto", True)):
        p = plan("qwen2.5-7b", gpu="a100-80g", method="lora", num_gpus=4, parallel="zero3", zero3_init=init)
        out = emit(p, "trl", force=True)
        folder = tmp_path / init
        settings = _dry_run(out.files, folder)
        assert settings["parallel"]["zero3_init"] is flag
        cfg = load_config_from_file(str(folder / "accelerate_config.yaml"))
        assert cfg.deepspeed_config["zero3_init_flag"] is flag
        script = out.files["train.py"]
        before = script.index("config = SFTConfig(output_dir=args.output, **training) if PARALLEL.get(")
        late = script.index("    if config is None:\n        config = SFTConfig(")
        assert before < script.index("from_pretrained(args.model, **load)") < late
        assert ("load phase" in out.files["ds_config.json"]) is (not flag)


@requires("deepspeed")
@pytest.mark.trace
def test_the_users_deepspeed_file_is_carried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--deepspeed FILE: the emitted ds_config.json keeps the file's own keys (its optimizer block, which the
    plan counted as DeepSpeed's FusedAdam) and its ZeRO values, read back by DeepSpeed's parser."""
    import deepspeed.runtime.config as ds_config

    user = {
        "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
        "communication_data_type": "fp32",
        "zero_optimization": {"stage": 2, "overlap_comm": False, "reduce_bucket_size": 123_000_000},
    }
    (tmp_path / "mine.json").write_text(json.dumps(user))
    p = plan(
        "qwen2.5-7b",
        gpu="a100-80g",
        method="lora",
        num_gpus=4,
        parallel="zero2",
        deepspeed_config=str(tmp_path / "mine.json"),
    )
    out = emit(p, "trl", force=True)
    write_files(str(tmp_path / "out"), out.files, overwrite=False)
    written = json.loads((tmp_path / "out" / "ds_config.json").read_text())
    assert written["optimizer"] == user["optimizer"] and written["communication_data_type"] == "fp32"
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(ds_config.dist, "get_world_size", lambda *a, **k: 4)
    cfg = ds_config.DeepSpeedConfig(str(tmp_path / "out" / "ds_config.json"))
    assert cfg.zero_optimization_stage == 2 and cfg.optimizer_name == "adamw"
    assert cfg.zero_config.reduce_bucket_size == 123_000_000 and not cfg.zero_config.overlap_comm
    assert cfg.train_micro_batch_size_per_gpu == out.setup.micro_batch


@requires("trl", "torch", "transformers")
@pytest.mark.e2e
@pytest.mark.parametrize("lengths", ["fixed", "variable"])
def test_emitted_script_evaluates_as_planned(lengths: str, tmp_path: Path) -> None:
    """The emitted script on a tiny random model (tests/conftest.py tiny_causal_lm), evaluating every step
    (eval_steps 100 -> 1 in the file: the only edit) on its held-out samples: real TRL trains two steps and
    logs the evaluation loss, with fixed-length batches padded to max_length or variable ones to their longest."""
    from tests.conftest import tiny_causal_lm

    (tmp_path / "tiny").mkdir()
    model, data = tiny_causal_lm(tmp_path / "tiny", samples=16)
    p = plan(
        str(model / "config.json"),
        gpu="4090",
        method="lora",
        seq_len=64,
        micro_batch=2,
        lengths=lengths,
        evaluation="loss",
        eval_batch=2,
        eval_samples=4,
    )
    out = emit(p, "trl", data=str(data))
    files = dict(out.files)
    assert "'eval_steps': 100," in files["train.py"]
    files["train.py"] = files["train.py"].replace("'eval_steps': 100,", "'eval_steps': 1,")
    write_files(str(tmp_path / "run"), files, overwrite=False)
    proc = subprocess.run(
        [sys.executable, "train.py", "--model", str(model), "--max-steps", "2", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["finite"]
    assert proc.stdout.count("'eval_loss'") + proc.stderr.count("'eval_loss'") >= 2  # evaluated at steps 1 and 2
