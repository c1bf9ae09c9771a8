"""The emitted TRL script runs (real TRL, PEFT, transformers, bitsandbytes on the CPU) and
encodes exactly the Setup that was estimated."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OPTIM_BACK, TINY_CONFIG, requires, write_samples
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.setup import Setup, make_setup

pytestmark = requires("trl")

SAMPLES = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Qwen2 model with random weights, a word-level tokenizer trained on the
    dataset, and a 20-sample instruction dataset, all written locally."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("emit")
    model_dir = root / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_CONFIG)).save_pretrained(model_dir)
    samples = [
        {
            "instruction": f"Add {i} and {i + 1}.",
            "input": "" if i % 2 else f"numbers {i}",
            "output": f"It is {2 * i + 1}.",
        }
        for i in range(SAMPLES - 2)
    ]
    samples += [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no")
    ]
    data, size = write_samples(samples, root)
    assert size < TINY_CONFIG["vocab_size"]
    return model_dir, data


def _bnb_cpu_4bit() -> bool:
    try:
        import bitsandbytes.functional as F
        import torch

        q, state = F.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
        return F.dequantize_4bit(q, state).shape == (64, 64)
    except Exception:
        return False


@pytest.mark.parametrize(
    "method",
    [
        {"method": "lora"},
        {"method": "full"},
        {"method": "freeze", "freeze_trainable_layers": 1},
        {"method": "qlora", "quant": "bnb-nf4"},
    ],
    ids=["lora", "full", "freeze", "qlora"],
)
@pytest.mark.e2e
def test_emitted_trl_script_trains(tiny: tuple[Path, Path], tmp_path: Path, method: dict) -> None:
    if method["method"] == "qlora" and not _bnb_cpu_4bit():
        pytest.skip("bitsandbytes has no CPU 4-bit here")
    model_dir, data = tiny
    p = plan(str(model_dir / "config.json"), gpu="4090", seq_len=64, micro_batch=2, **method)
    out = emit(p, "trl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    script = tmp_path / "run" / "train.py"
    assert script.read_text().startswith("#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n# vramplan plan for trl:")
    proc = subprocess.run(
        [sys.executable, str(script), "--model", str(model_dir), "--max-steps", "2", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path / "run",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2
    assert math.isfinite(result["train_loss"])


# -- the emitted settings map back to the Setup that was estimated ----------------------

ATTN_BACK = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash-attn-2"}


def setup_from_trl(settings: dict) -> Setup:
    """Read what the script would run, independently of the emitter's own mapping."""
    t = settings["training"]
    dtype = settings["dtype"]
    if dtype == "float32":
        precision = "amp-bf16" if t["bf16"] else "amp-fp16" if t["fp16"] else "fp32"
    else:
        precision = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
    fields: dict = dict(
        method=settings["method"],
        precision=precision,
        optimizer=OPTIM_BACK[t["optim"]],
        seq_len=t["max_length"],
        micro_batch=t["per_device_train_batch_size"],
        grad_accum=t["gradient_accumulation_steps"],
        grad_checkpointing=t["gradient_checkpointing"],
        attention=ATTN_BACK[settings["attn_implementation"]],
    )
    q = settings["quantization"]
    if q:
        if q.get("load_in_8bit"):
            fields["quant"] = "bnb-int8"
        elif q["bnb_4bit_quant_type"] == "fp4":
            fields["quant"] = "bnb-fp4"
        else:
            fields["quant"] = "bnb-nf4-dq" if q["bnb_4bit_use_double_quant"] else "bnb-nf4"
    lora = settings["lora"]
    if lora:
        targets = lora["target_modules"]
        fields.update(
            lora_rank=lora["r"],
            lora_alpha=lora["lora_alpha"],
            lora_dropout=lora["lora_dropout"],
            lora_targets=targets if isinstance(targets, str) else ",".join(targets),
            trainable_extra=tuple(
                "lm_head" if m == "lm_head" else "embeddings" for m in (lora["modules_to_save"] or [])
            ),
        )
    if settings["freeze_top_layers"]:
        fields["freeze_trainable_layers"] = settings["freeze_top_layers"]
    return make_setup(**fields)


def _dry_run(files: dict[str, str], tmp_path: Path) -> dict:
    write_files(str(tmp_path), files, overwrite=True)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "train.py"), "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    "pinned",
    [
        dict(method="lora", lora_rank=16, lora_targets="q_proj,v_proj", seq_len=512, micro_batch=2),
        dict(method="qlora", quant="bnb-nf4-dq", optimizer="paged-adamw-8bit", seq_len=1024, grad_accum=4),
        dict(method="full", precision="amp-bf16", optimizer="adamw-fused", grad_checkpointing=False, seq_len=256),
        dict(method="freeze", freeze_trainable_layers=3, attention="eager", seq_len=512),
        dict(method="lora", trainable_extra=("embeddings", "lm_head"), precision="bf16", seq_len=256),
    ],
    ids=["lora", "qlora", "full-amp", "freeze", "lora-extra"],
)
@pytest.mark.e2e
def test_emitted_trl_settings_are_the_planned_setup(pinned: dict, tmp_path: Path) -> None:
    p = plan("qwen2.5-0.5b", gpu="a100-80g", **pinned)
    emitted = emit(p, "trl")
    back = setup_from_trl(_dry_run(emitted.files, tmp_path))
    assert back == emitted.setup == p.setup.model_copy(update={"lora_dropout": back.lora_dropout})
    assert emitted.allocated_bytes == p.peak.allocated_bytes


@pytest.mark.e2e
def test_emitted_lora_run_traces_within_the_bound(tmp_path: Path) -> None:
    """Trace the configuration the script encodes (same config, same shape) and hold the
    plan's allocated estimate to the exactness bound (3%)."""
    pytest.importorskip("torch")
    from vramplan.trace.run import trace

    p = plan("qwen2.5-0.5b", gpu="4090", method="lora", seq_len=512, micro_batch=2)
    back = setup_from_trl(_dry_run(emit(p, "trl").files, tmp_path))
    traced = trace("qwen2.5-0.5b", back, steps=2, keep_timeline=False)
    est = traceable_bytes(estimate(load_model("qwen2.5-0.5b"), p.setup))
    assert abs(est - traced.peak_bytes) / traced.peak_bytes <= 0.03


def test_gptq_is_replaced_and_said(tmp_path: Path) -> None:
    # pinned small: bnb nf4's fp32 residual stream (PEFT's k-bit preparation) saves more than GPTQ's
    # 16-bit one, so the planner's largest micro-batch under GPTQ need not fit once swapped
    p = plan(
        "qwen2.5-7b",
        gpu="a100-80g",
        method="qlora",
        quant="gptq-int4",
        precision="fp16",
        micro_batch=1,
        grad_checkpointing=True,
    )
    out = emit(p, "trl")
    assert out.setup.quant == "bnb-nf4" and out.adjustments
    assert "CHANGED FOR trl: gptq-int4 needs a pre-quantized checkpoint" in out.files["train.py"]


def test_fp16_trained_weights_become_amp_and_said() -> None:
    """The fp16 GradScaler cannot unscale fp16 gradients: trained fp16 weights are emitted as
    fp32 masters under fp16 autocast, re-estimated and said."""
    for pinned in (
        dict(method="full", precision="fp16"),
        dict(method="lora", precision="fp16", trainable_extra=("lm_head",)),
    ):
        p = plan("qwen2.5-0.5b", gpu="a100-80g", seq_len=256, **pinned)
        out = emit(p, "trl")
        assert out.setup.precision == "amp-fp16" and "CHANGED FOR trl: fp16 weights" in out.files["train.py"]


def test_qlora_script_places_each_rank_and_prepares_kbit() -> None:
    text = emit(plan("qwen2.5-7b", gpu="4090", method="qlora", quant="bnb-nf4"), "trl").files["train.py"]
    assert 'load["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}' in text
    assert "prepare_model_for_kbit_training(" in text
