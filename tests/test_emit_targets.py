"""The YAML/CLI targets parse, validate against the trainer's own option table, and say
exactly the Setup that was estimated.

Validation source, per target (printed by the tests' ids and asserted in each test):
- llamafactory: SCHEMA (tables/emit/llamafactory.json, from its hparams dataclasses). The
  package cannot be installed beside this project's stack: llamafactory 0.9.5 pins
  transformers<=5.6.0, peft<=0.18.1, trl<=0.24.
- axolotl: SCHEMA (tables/emit/axolotl.json, from its pydantic config). axolotl 0.19.0 pins
  transformers==5.16.1 and GPU-only kernels.
- swift: parsed by ms-swift 4.x itself, in its own venv (tests/test_swift_parse.py).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from vramplan import plan
from vramplan.emit import emit
from vramplan.frameworks.files.schema import check, option_table
from vramplan.setup import Setup, make_setup

HF_OPTIM_BACK = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw-fused",
    "adamw_bnb_8bit": "adamw-8bit",
    "paged_adamw_8bit": "paged-adamw-8bit",
    "paged_adamw_32bit": "paged-adamw-32bit",
    "adafactor": "adafactor",
    "sgd": "sgd",
    "lion_32bit": "lion",
}

SETUPS = {
    "lora": dict(method="lora", lora_rank=16, lora_alpha=32, lora_targets="q_proj,v_proj", seq_len=1024),
    "lora-all-extra": dict(method="lora", trainable_extra=("embeddings", "lm_head"), seq_len=512, grad_accum=8),
    "qlora-nf4": dict(method="qlora", quant="bnb-nf4", optimizer="paged-adamw-8bit", seq_len=2048),
    "qlora-nf4-dq": dict(method="qlora", quant="bnb-nf4-dq", attention="eager", seq_len=1024, micro_batch=2),
    "qlora-fp4": dict(method="qlora", quant="bnb-fp4", seq_len=512),
    "lora-int8": dict(method="qlora", quant="bnb-int8", seq_len=512),
    "full-bf16": dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=512),
    "full-amp": dict(
        method="full", precision="amp-bf16", optimizer="adamw-fused", grad_checkpointing=False, seq_len=256
    ),
    "freeze": dict(method="freeze", freeze_trainable_layers=4, seq_len=512),
}


def _plan(fields: dict) -> object:
    return plan("qwen2.5-0.5b", gpu="a100-80g", **fields)


# -- LLaMA-Factory ---------------------------------------------------------------------


def llamafactory_setup(y: dict) -> Setup:
    ft = y["finetuning_type"]
    bf16, fp16, pure = y.get("bf16", False), y.get("fp16", False), y.get("pure_bf16", False)
    if ft == "lora":
        precision = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    elif pure:
        precision = "bf16"
    else:
        precision = "amp-bf16" if bf16 else "amp-fp16" if fp16 else "fp32"
    fields: dict = dict(
        precision=precision,
        seq_len=y["cutoff_len"],
        micro_batch=y["per_device_train_batch_size"],
        grad_accum=y["gradient_accumulation_steps"],
        grad_checkpointing=not y["disable_gradient_checkpointing"],
        attention={"disabled": "eager", "sdpa": "sdpa", "fa2": "flash-attn-2"}[y["flash_attn"]],
        optimizer=HF_OPTIM_BACK[y["optim"]],
    )
    if ft == "lora":
        bits = y.get("quantization_bit")
        if bits == 8:
            fields.update(method="qlora", quant="bnb-int8")
        elif bits == 4:
            dq = y.get("double_quantization", True)
            quant = "bnb-fp4" if y.get("quantization_type") == "fp4" else ("bnb-nf4-dq" if dq else "bnb-nf4")
            fields.update(method="qlora", quant=quant)
        else:
            fields.update(method="lora")
        target = y["lora_target"]
        extra = [t for t in (y.get("additional_target") or "").split(",") if t]
        fields.update(
            lora_rank=y["lora_rank"],
            lora_alpha=y["lora_alpha"],
            lora_dropout=y["lora_dropout"],
            lora_targets="all-linear" if target == "all" else target,
            trainable_extra=tuple("lm_head" if t == "lm_head" else "embeddings" for t in extra),
        )
    else:
        fields["method"] = ft
        if ft == "freeze":
            fields["freeze_trainable_layers"] = y["freeze_trainable_layers"]
    return make_setup(**fields)


@pytest.mark.parametrize("name", list(SETUPS))
def test_llamafactory_yaml_validates_against_schema(name: str) -> None:
    """Validated against: SCHEMA (see the module docstring)."""
    assert option_table("llamafactory")["source"], "schema without sources"
    p = _plan(SETUPS[name])
    out = emit(p, "llamafactory")
    text = out.files["train.yaml"]
    assert text.startswith("# vramplan plan for llamafactory:")
    y = yaml.safe_load(text)
    assert check("llamafactory", y) == []
    if "quantization_bit" in y:  # LLaMA-Factory: quantization only with lora/oft
        assert y["finetuning_type"] in ("lora", "oft")
    info = json.loads(out.files["dataset_info.json"])
    assert y["dataset"] in info and info[y["dataset"]]["file_name"] == "data.jsonl"
    assert llamafactory_setup(y) == out.setup
    assert out.setup.model_copy(update={"lora_dropout": p.setup.lora_dropout}) == p.setup or out.adjustments


def test_llamafactory_pure_fp16_full_is_adjusted_and_said() -> None:
    out = emit(_plan(dict(method="full", precision="fp16", seq_len=256)), "llamafactory")
    assert out.setup.precision == "amp-fp16"
    assert "CHANGED FOR llamafactory: no pure fp16" in out.files["train.yaml"]


# -- axolotl ---------------------------------------------------------------------------


def axolotl_setup(y: dict, num_layers: int) -> Setup:
    precision = "bf16" if y.get("bf16") is True else "fp16" if y.get("fp16") is True else "fp32"
    fields: dict = dict(
        precision=precision,
        seq_len=y["sequence_len"],
        micro_batch=y["micro_batch_size"],
        grad_accum=y["gradient_accumulation_steps"],
        grad_checkpointing=y["gradient_checkpointing"],
        attention={"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash-attn-2"}[y["attn_implementation"]],
        optimizer=HF_OPTIM_BACK[y["optimizer"]],
    )
    adapter = y.get("adapter")
    if adapter:
        if y.get("load_in_8bit"):
            fields.update(method="qlora", quant="bnb-int8")
        elif adapter == "qlora":
            kw = y.get("bnb_config_kwargs") or {}
            dq = kw.get("bnb_4bit_use_double_quant", True)
            qt = kw.get("bnb_4bit_quant_type", "nf4")
            fields.update(method="qlora", quant="bnb-fp4" if qt == "fp4" else ("bnb-nf4-dq" if dq else "bnb-nf4"))
        else:
            fields.update(method="lora")
        targets = "all-linear" if y.get("lora_target_linear") else ",".join(y["lora_target_modules"])
        fields.update(
            lora_rank=y["lora_r"],
            lora_alpha=y["lora_alpha"],
            lora_dropout=y["lora_dropout"],
            lora_targets=targets,
            trainable_extra=tuple(
                "lm_head" if t == "lm_head" else "embeddings" for t in (y.get("lora_modules_to_save") or [])
            ),
        )
    elif y.get("unfrozen_parameters"):
        layers = re.findall(r"\d+", y["unfrozen_parameters"][0])
        assert [int(x) for x in layers] == list(range(num_layers - len(layers), num_layers))
        fields.update(method="freeze", freeze_trainable_layers=len(layers))
    else:
        fields["method"] = "full"
    return make_setup(**fields)


@pytest.mark.parametrize("name", list(SETUPS))
def test_axolotl_yaml_validates_against_schema(name: str) -> None:
    """Validated against: SCHEMA (see the module docstring)."""
    p = _plan(SETUPS[name])
    out = emit(p, "axolotl")
    text = out.files["config.yml"]
    assert text.startswith("# vramplan plan for axolotl:")
    y = yaml.safe_load(text)
    assert check("axolotl", y) == []
    if y.get("adapter") == "qlora":  # axolotl validate_qlora
        assert y.get("load_in_4bit") is True and not y.get("load_in_8bit")
    if y.get("load_in_8bit") or y.get("load_in_4bit"):  # validate_adapter
        assert y.get("adapter")
    ds = y["datasets"][0]
    assert ds == {"path": "data.jsonl", "type": "alpaca", "ds_type": "json"}
    assert axolotl_setup(y, 24) == out.setup
    if not out.adjustments:
        assert out.setup.model_copy(update={"lora_dropout": p.setup.lora_dropout}) == p.setup


def test_axolotl_amp_is_adjusted_and_said() -> None:
    out = emit(_plan(SETUPS["full-amp"]), "axolotl")
    assert out.setup.precision == "bf16" and "CHANGED FOR axolotl" in out.files["config.yml"]
    assert out.allocated_bytes != _plan(SETUPS["full-amp"]).peak.allocated_bytes  # re-estimated


def test_schema_check_catches_mistakes() -> None:
    assert check("llamafactory", {"finetuning_type": "qlora"})  # not a choice
    assert check("llamafactory", {"lora_rank": "8"})  # wrong type
    assert check("axolotl", {"lora_rnk": 8})  # unknown key
