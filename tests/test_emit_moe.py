"""A mixture of experts through the trl target with all-linear LoRA: PEFT adapts the router
and the fused experts (ParamWrapper), the plan counts exactly the adapters PEFT makes, and
the emitted script trains two steps on the CPU with a tiny random Qwen3-MoE."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires, write_samples
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.errors import VramplanError

pytestmark = requires("trl")

TINY_MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("moe")
    model_dir = root / "model"
    samples = [{"instruction": f"Add {i} and {i + 1} .", "output": f"It is {2 * i + 1} ."} for i in range(12)]
    data, n = write_samples(samples, root)
    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**TINY_MOE, "vocab_size": n + 8})
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    return model_dir, data


@pytest.mark.e2e
def test_all_linear_counts_what_peft_wraps_and_trains(tiny_moe, tmp_path: Path) -> None:
    model_dir, data = tiny_moe
    p = plan(str(model_dir / "config.json"), gpu="4090", method="lora", lora_targets="all-linear", seq_len=32)
    assert p.setup.lora_dropout == 0.0 and any("ParamWrapper" in n.text for n in p.notes)
    out = emit(p, "trl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    script = tmp_path / "run" / "train.py"
    settings = json.loads(
        subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True, check=True).stdout
    )
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**settings["lora"]))
    names = [n for n, t in peft_model.named_parameters() if t.requires_grad]
    assert any(".experts." in n for n in names) and any(".gate." in n for n in names)
    assert sum(t.numel() for t in peft_model.parameters() if t.requires_grad) == p.trainable_params
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(model_dir), "--max-steps", "2", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=script.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and math.isfinite(result["train_loss"])


@pytest.mark.trace
def test_all_linear_with_dropout_is_refused(tiny_moe) -> None:
    model_dir, _ = tiny_moe
    with pytest.raises(VramplanError, match="lora_dropout"):
        plan(str(model_dir / "config.json"), gpu="4090", method="lora", lora_targets="all-linear", lora_dropout=0.1)


@pytest.mark.trace
def test_other_targets_refuse_moe_all_linear(tiny_moe) -> None:
    model_dir, _ = tiny_moe
    p = plan(str(model_dir / "config.json"), gpu="4090", method="lora", lora_targets="all-linear", seq_len=32)
    for target in ("swift", "llamafactory", "axolotl"):
        with pytest.raises(VramplanError, match="router and fused experts"):
            emit(p, target)
