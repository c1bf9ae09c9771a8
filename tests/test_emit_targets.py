"""The YAML/CLI targets parse, validate against the trainer's own option table, and say
exactly the Setup that was estimated.

Validation source, per target (printed by the tests' ids and asserted in each test):
- llamafactory: its own parser, in its own venv (tests/test_llamafactory_parse.py).
- axolotl: its own config validation, in its own venv (tests/test_axolotl_parse.py).
"""

from __future__ import annotations

import re

import pytest

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


def test_schema_check_catches_mistakes() -> None:
    assert check("swift_sft", {"train_type": "qlora"})  # not a choice
    assert check("swift_sft", {"lora_rank": "8"})  # wrong type
    assert check("swift_sft", {"lora_rnk": 8})  # unknown key


# -- ms-swift --------------------------------------------------------------------------
# Validated against: SCHEMA (tables/emit/swift_sft.json, from ms-swift 3.12.6's argument
# dataclasses). ms-swift cannot be installed beside this stack: 4.6.0 pins
# transformers<5.20, peft<0.21, trl<1.0; 3.12.6 pins transformers<4.58.


def parse_swift(run_sh: str) -> dict:
    """The options of the `swift sft` line in run.sh, typed as ms-swift's parser types them."""
    import shlex

    body = "\n".join(line for line in run_sh.splitlines() if not line.startswith(("#", "set ")))
    words = shlex.split(body.replace("\\\n", " "))
    assert words[:2] == ["swift", "sft"], words[:2]
    table = option_table("swift_sft")["options"]
    opts: dict = {}
    key = None
    for w in words[2:]:
        if w.startswith("--"):
            key = w[2:]
            opts[key] = []
        else:
            assert key is not None
            opts[key].append(w)
    typed: dict = {}
    for k, vals in opts.items():
        kind = table.get(k, {}).get("type", "str")
        if kind == "list":
            typed[k] = vals
            continue
        assert len(vals) == 1, (k, vals)
        v = vals[0]
        if kind == "bool":
            assert v in ("true", "false"), (k, v)
            typed[k] = v == "true"
        elif kind == "int":
            typed[k] = int(v)
        elif kind == "float":
            typed[k] = float(v)
        else:
            typed[k] = v
    return typed


def swift_setup(o: dict, num_layers: int) -> Setup:
    dtype = o["torch_dtype"]
    if dtype == "float32":
        precision = "amp-bf16" if o["bf16"] else "amp-fp16" if o["fp16"] else "fp32"
    else:
        precision = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
    fields: dict = dict(
        precision=precision,
        seq_len=o["max_length"],
        micro_batch=o["per_device_train_batch_size"],
        grad_accum=o["gradient_accumulation_steps"],
        grad_checkpointing=o["gradient_checkpointing"],
        attention={"eager": "eager", "sdpa": "sdpa", "flash_attn": "flash-attn-2"}[o["attn_impl"]],
        optimizer=HF_OPTIM_BACK[o["optim"]],
    )
    if o["train_type"] == "lora":
        if o.get("quant_method") == "bnb":
            if o["quant_bits"] == 8:
                quant = "bnb-int8"
            elif o["bnb_4bit_quant_type"] == "fp4":
                quant = "bnb-fp4"
            else:
                quant = "bnb-nf4-dq" if o["bnb_4bit_use_double_quant"] else "bnb-nf4"
            fields.update(method="qlora", quant=quant)
        else:
            fields["method"] = "lora"
        fields.update(
            lora_rank=o["lora_rank"],
            lora_alpha=o["lora_alpha"],
            lora_dropout=o["lora_dropout"],
            lora_targets=",".join(o["target_modules"]),
            trainable_extra=tuple("lm_head" if t == "lm_head" else "embeddings" for t in o.get("modules_to_save", [])),
        )
    elif o.get("trainable_parameters_regex"):
        layers = re.findall(r"\d+", o["trainable_parameters_regex"])
        assert o["freeze_parameters_ratio"] == 1.0
        assert [int(x) for x in layers] == list(range(num_layers - len(layers), num_layers))
        fields.update(method="freeze", freeze_trainable_layers=len(layers))
    else:
        fields["method"] = "full"
    return make_setup(**fields)


@pytest.mark.parametrize("name", list(SETUPS))
def test_swift_command_validates_against_schema(name: str) -> None:
    """Validated against: SCHEMA (see above)."""
    p = _plan(SETUPS[name])
    out = emit(p, "swift")
    run_sh = out.files["run.sh"]
    assert run_sh.startswith("#!/usr/bin/env bash\n# vramplan plan for swift:")
    o = parse_swift(run_sh)
    assert check("swift_sft", o) == []
    assert o["use_hf"] in (True, "true") and o["dataset"] == ["data.jsonl"]
    if o.get("quant_method") == "bnb":
        assert o["quant_bits"] in (4, 8)
    assert swift_setup(o, 24) == out.setup
    if not out.adjustments:
        assert out.setup.model_copy(update={"lora_dropout": p.setup.lora_dropout}) == p.setup


def test_scenario_3_swift_command_matches_the_write_up() -> None:
    """shared/SCENARIOS.md case 3: the options the write-up passes come out the same."""
    p = plan(
        "Qwen/Qwen2.5-7B-Instruct",
        gpu="4090d",
        method="lora",
        precision="bf16",
        lora_rank=8,
        lora_alpha=32,
        lora_targets="all-linear",
        micro_batch=1,
        grad_accum=16,
        seq_len=2048,
    )
    o = parse_swift(emit(p, "swift").files["run.sh"])
    assert o["model"] == "Qwen/Qwen2.5-7B-Instruct"
    expect = {
        "train_type": "lora",
        "torch_dtype": "bfloat16",
        "lora_rank": 8,
        "lora_alpha": 32,
        "target_modules": ["all-linear"],
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 16,
        "max_length": 2048,
    }
    assert {k: o[k] for k in expect} == expect
