"""The emitted GRPO script (TRL GRPOTrainer) runs on the CPU with real TRL/PEFT/transformers
and encodes the GRPO Setup that was estimated."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG, requires, save_word_tokenizer
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit

pytestmark = [pytest.mark.e2e, requires("trl")]

GRPO = dict(rl="grpo", seq_len=48, completion_len=16, num_generations=4, micro_batch=4, gpu="4090")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Qwen2 model with random weights, a word-level tokenizer and 8 prompts, local."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("grpo")
    model_dir = root / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_CONFIG)).save_pretrained(model_dir)
    prompts = [{"prompt": f"Add {i} and {i + 1} ."} for i in range(6)]
    prompts += [{"instruction": "Add 7 and 8 .", "input": "numbers"}, {"prompt": "Say yes ."}]
    data = root / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    save_word_tokenizer([f"Add {i} and {i + 1} . It is {2 * i + 1} numbers Say yes" for i in range(20)], model_dir)
    return model_dir, data


def _emit(model_dir: Path, data: Path, out: Path, **fields) -> Path:
    p = plan(str(model_dir / "config.json"), **{**GRPO, **fields})
    write_files(str(out), emit(p, "trl", data=str(data)).files, overwrite=False)
    return out / "train.py"


def _run(script: Path, *args: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=script.parent,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if "--dry-run" not in args else json.loads(proc.stdout)


@pytest.mark.parametrize(
    "fields",
    [{"method": "lora"}, {"method": "full", "beta": 0.04, "precision": "amp-bf16"}],
    ids=["lora", "full-with-reference"],
)
def test_emitted_grpo_script_trains(tiny: tuple[Path, Path], tmp_path: Path, fields: dict) -> None:
    model_dir, data = tiny
    script = _emit(model_dir, data, tmp_path / "run", **fields)
    text = script.read_text()
    assert "GRPOTrainer" in text and "# GRPO: 4 completions per prompt, prompt 32 + completion 16 tokens" in text
    result = _run(script, "--model", str(model_dir), "--max-steps", "2", "--output", str(tmp_path / "o"))
    assert result["steps"] == 2 and math.isfinite(result["train_loss"])


def test_a_users_reward_is_called(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, data = tiny
    script = _emit(model_dir, data, tmp_path / "run", method="lora")
    calls = tmp_path / "calls.txt"
    (tmp_path / "myreward.py").write_text(
        "def score(completions, **kwargs):\n"
        f"    open({str(calls)!r}, 'a').write(str(len(completions)) + '\\n')\n"
        "    return [1.0 if 'yes' in str(c) else 0.0 for c in completions]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = _run(script, "--model", str(model_dir), "--max-steps", "1", "--reward", "myreward:score", env=env)
    assert result["steps"] == 1
    assert calls.read_text().split() == ["4"]  # one generation batch of num_generations completions


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "grad_accum": 2, "micro_batch": 2, "beta": 0.1},
        {"method": "full", "precision": "amp-bf16", "num_generations": 8, "micro_batch": 8, "completion_len": 24},
        {"method": "qlora", "quant": "bnb-nf4", "micro_batch": 4},
    ],
)
def test_dry_run_reads_back_to_the_planned_setup(tiny: tuple[Path, Path], tmp_path: Path, fields: dict) -> None:
    model_dir, data = tiny
    p = plan(str(model_dir / "config.json"), **{**GRPO, **fields})
    write_files(str(tmp_path / "run"), emit(p, "trl", data=str(data)).files, overwrite=False)
    got = _run(tmp_path / "run" / "train.py", "--dry-run")
    t = got["training"]
    s = p.setup
    assert got["rl"] == "grpo" and got["method"] == s.method
    assert t["num_generations"] == s.num_generations and t["beta"] == s.beta
    assert t["max_completion_length"] == s.completion_len
    assert got["max_prompt_tokens"] + t["max_completion_length"] == s.seq_len
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (s.micro_batch, s.grad_accum)
    assert t["gradient_checkpointing"] == s.grad_checkpointing
    assert (got["quantization"] is not None) == (s.method == "qlora")


def test_other_targets_refuse_grpo(tiny: tuple[Path, Path]) -> None:
    model_dir, _ = tiny
    env = {**os.environ, "COLUMNS": "200"}
    for target in ("swift", "llamafactory", "axolotl"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "vramplan",
                str(model_dir / "config.json"),
                "--rl",
                "grpo",
                "--seq-len",
                "48",
                "--completion-len",
                "16",
                "--num-generations",
                "4",
                "--emit",
                target,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert r.returncode == 2 and "trl only" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sleep", [False, True], ids=["held", "sleep"])
def test_vllm_colocate_settings_reach_grpo_config(tiny: tuple[Path, Path], tmp_path: Path, sleep: bool) -> None:
    """--vllm colocate writes TRL's vLLM options with the planned share; TRL's own GRPOConfig
    takes them (vLLM itself needs a GPU and is not run here)."""
    from trl import GRPOConfig

    model_dir, data = tiny
    p = plan(
        str(model_dir / "config.json"),
        **{**GRPO, "method": "lora"},
        vllm="colocate",
        vllm_gpu_memory_utilization=0.45,
        vllm_sleep=sleep,
    )
    script = tmp_path / "run" / "train.py"
    write_files(str(tmp_path / "run"), emit(p, "trl", data=str(data)).files, overwrite=False)
    t = _run(script, "--dry-run")["training"]
    assert (t["use_vllm"], t["vllm_mode"]) == (True, "colocate")
    assert t["vllm_gpu_memory_utilization"] == 0.45 and t["vllm_enable_sleep_mode"] is sleep
    assert t["vllm_max_model_length"] == p.setup.seq_len  # vLLM sized for the planned sequence, not the model's context
    share = 0.45 * p.gpu.memory_bytes / 2**30  # of what torch sees: vLLM takes its share of total_memory
    assert f"vLLM colocated takes {share:.2f} GiB of the card" in script.read_text()
    config = GRPOConfig(
        output_dir=str(tmp_path / "o"), use_cpu=True, **{k: v for k, v in t.items() if k != "max_steps"}
    )
    assert config.use_vllm and config.vllm_gpu_memory_utilization == 0.45
