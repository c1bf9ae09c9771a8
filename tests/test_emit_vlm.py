"""A vision-language model through the trl target: text-only training of its language model,
run on the CPU with a tiny random-weight Qwen2-VL; LoRA stays on the language model, as
the plan counts it; the device_map launch of SCENARIOS.md case 4 is written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires, write_samples
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit

pytestmark = requires("trl")

TINY_VL = {
    "model_type": "qwen2_vl",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "tie_word_embeddings": True,
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "mlp_ratio": 2,
        "num_heads": 2,
        "in_chans": 3,
        "hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration

    root = tmp_path_factory.mktemp("vl")
    model_dir = root / "model"
    samples = [{"instruction": f"Describe picture {i} .", "output": f"A box number {i} ."} for i in range(12)]
    data, n = write_samples(samples, root)
    config = {**TINY_VL, "vocab_size": n + 8, "image_token_id": n + 1, "video_token_id": n + 2}
    config.update(vision_start_token_id=n + 3, vision_end_token_id=n + 4)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(AutoConfig.for_model(**config)).save_pretrained(model_dir)
    return model_dir, data


@pytest.mark.e2e
def test_vlm_text_training_runs_and_keeps_lora_on_the_language_model(tiny_vl, tmp_path: Path) -> None:
    model_dir, data = tiny_vl
    p = plan(str(model_dir / "config.json"), gpu="4090", method="lora", seq_len=32, micro_batch=2)
    out = emit(p, "trl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    script = tmp_path / "run" / "train.py"
    settings = json.loads(
        subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True, check=True).stdout
    )
    assert settings["auto_class"] == "AutoModelForImageTextToText"
    # PEFT on the real model, with the emitted LoraConfig: exactly the adapters the plan counts
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**settings["lora"]))
    trainable = sum(t.numel() for t in peft_model.parameters() if t.requires_grad)
    assert trainable == p.trainable_params
    assert not any("visual" in n for n, t in peft_model.named_parameters() if t.requires_grad)
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


@pytest.mark.e2e
def test_case4_device_map_launch_is_written(tmp_path: Path) -> None:
    """The issue's command with --emit trl (over the card, so --force): one python process
    splitting the layers, every card's planned peak in the header."""
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vramplan",
            "qwen2-vl-72b",
            "--gpu",
            "a800-40g",
            "--gpus",
            "4",
            "--method",
            "lora",
            "--parallel",
            "device_map",
            "--grad-checkpointing",
            "--emit",
            "trl",
            "--force",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr  # written, and still does not fit
    text = (tmp_path / "r" / "train.py").read_text()
    assert "AutoModelForImageTextToText" in text and '"device_map": "auto"' in text.replace("'", '"')
    assert "WILL NOT FIT" in text and "layers 19-40" in text
    run = (tmp_path / "r" / "run.sh").read_text()
    assert "python" in run and "accelerate launch" not in run
    dry = subprocess.run(
        [sys.executable, str(tmp_path / "r" / "train.py"), "--dry-run"], capture_output=True, text=True, check=True
    )
    assert json.loads(dry.stdout)["parallel"]["layout"] == "device_map"


@pytest.mark.trace
def test_other_targets_are_refused_with_and_without_images(tiny_vl) -> None:
    model_dir, _ = tiny_vl
    p = plan(str(model_dir / "config.json"), gpu="4090", method="lora", seq_len=32)
    from vramplan.errors import VramplanError

    for target in ("swift", "llamafactory", "axolotl"):
        with pytest.raises(VramplanError):
            emit(p, target)
    images = plan(str(model_dir / "config.json"), gpu="4090", method="lora", seq_len=32, image_size="448x448")
    with pytest.raises(VramplanError, match="training with images is emitted for trl only"):
        emit(images, "swift")
    assert "IMAGES = {'per_prompt': 1" in emit(images, "trl").files["train.py"]  # run in test_emit_grpo_images.py


@pytest.mark.e2e
def test_full_with_a_frozen_tower_trains_what_the_plan_counts(tiny_vl, tmp_path: Path) -> None:
    """--freeze-vision (and --freeze-projector) in full fine-tuning: the script freezes the
    tower (and the merger) as planned, trains the rest for two steps."""
    model_dir, data = tiny_vl
    import torch
    from transformers import AutoModelForImageTextToText

    from vramplan.trace.build import freeze_vision_parts

    for tower, projector in ((True, False), (True, True)):
        p = plan(
            str(model_dir / "config.json"),
            gpu="4090",
            method="full",
            precision="bf16",
            seq_len=32,
            micro_batch=2,
            freeze_vision=tower,
            freeze_projector=projector,
        )
        out = emit(p, "trl", data=str(data))
        run = tmp_path / f"run-{tower}-{projector}"
        write_files(str(run), out.files, overwrite=False)
        settings = json.loads(
            subprocess.run(
                [sys.executable, str(run / "train.py"), "--dry-run"], capture_output=True, text=True, check=True
            ).stdout
        )
        assert settings["freeze_vision"] == [tower, projector]
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
        freeze_vision_parts(model, tower, projector)
        assert sum(t.numel() for t in model.parameters() if t.requires_grad) == p.trainable_params
    proc = subprocess.run(
        [
            sys.executable,
            str(run / "train.py"),
            "--model",
            str(model_dir),
            "--max-steps",
            "2",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 2
