"""LLaMA-Factory target: ``train.yaml`` for ``llamafactory-cli train`` and the
``dataset_info.json`` that registers the local dataset (alpaca columns).

Setup -> LLaMA-Factory 0.9.5 (its parser reads the file back: tests/test_llamafactory_parse.py):
finetuning_type lora/freeze/full (QLoRA: lora + quantization_bit); ``bf16``/``fp16`` load
16-bit weights and upcast what trains to fp32 (LoRA adapters; full/freeze: fp32 master =
our amp-*), ``pure_bf16`` keeps trained weights bf16 (our bf16 for full/freeze);
``flash_attn`` disabled/sdpa/fa2; ``disable_gradient_checkpointing``; ``cutoff_len``;
``optim`` (transformers names). Not expressible: pure fp16 full/freeze (no ``pure_fp16``:
emitted as AMP fp16, re-estimated); a fractional lora_alpha (integer option).
"""

from __future__ import annotations

import json

from vramplan.frameworks.files.common import (
    HF_OPTIM,
    Context,
    comment_block,
    header_lines,
    why_lines,
    yaml_scalar,
    yaml_text,
)

DATASET = "vramplan_data"
FLASH = {"eager": "disabled", "sdpa": "sdpa", "flash-attn-2": "fa2"}


def template_for(ctx: Context) -> str:
    """LLaMA-Factory's registered template name the model's family declares ("default" if none)."""
    return dict(ctx.spec.chat_templates).get("llamafactory", "default")


def options(ctx: Context) -> list[tuple[str, object, str]]:
    """(key, value, reason) in file order."""
    s = ctx.setup
    r = ctx.reasons
    items: list[tuple[str, object, str]] = [
        ("model_name_or_path", ctx.model_path, ""),
        ("stage", "sft", ""),
        ("do_train", True, ""),
        ("finetuning_type", "lora" if s.is_lora else s.method, r.get("method", "")),
    ]
    if s.is_lora:
        targets = s.lora_target_list()
        items += [
            ("lora_rank", s.lora_rank, r.get("lora_rank", "")),
            ("lora_alpha", int(s.lora_alpha), ""),
            ("lora_dropout", s.lora_dropout, ""),
            ("lora_target", "all" if targets is None else ",".join(targets), ""),
        ]
        if s.trainable_extra:
            extra = [ctx.spec.embedding_name if m == "embeddings" else "lm_head" for m in s.trainable_extra]
            items.append(("additional_target", ",".join(extra), "trained in full beside the adapters"))
    if s.method == "freeze":
        items += [("freeze_trainable_layers", s.freeze_trainable_layers, ""), ("freeze_trainable_modules", "all", "")]
    if s.method == "qlora":
        if s.quant in ("gptq-int4", "awq-int4"):
            items.append(("quantization_method", s.quant.split("-")[0], r.get("quant", "")))
        else:
            items += [
                ("quantization_bit", 8 if s.quant == "bnb-int8" else 4, r.get("quant", "")),
                ("quantization_method", "bnb", ""),
            ]
            if s.quant != "bnb-int8":
                items += [
                    ("quantization_type", "fp4" if s.quant == "bnb-fp4" else "nf4", ""),
                    ("double_quantization", s.quant == "bnb-nf4-dq", ""),
                ]
    pure = s.method in ("full", "freeze") and s.precision == "bf16"
    items += [
        ("bf16", s.precision in ("bf16", "amp-bf16"), r.get("precision", "")),
        ("fp16", s.precision in ("fp16", "amp-fp16"), ""),
    ]
    if pure:
        items.append(("pure_bf16", True, "trained weights stay bf16 (no fp32 master)"))
    items += [
        ("flash_attn", FLASH[s.attention], r.get("attention", "")),
        ("disable_gradient_checkpointing", not s.grad_checkpointing, r.get("grad_checkpointing", "")),
        ("dataset", DATASET, "registered in dataset_info.json beside this file"),
        ("dataset_dir", ".", ""),
        ("template", template_for(ctx), "the model family's chat template"),
        ("cutoff_len", s.seq_len, r.get("seq_len", "")),
        ("per_device_train_batch_size", s.micro_batch, r.get("micro_batch", "")),
        ("gradient_accumulation_steps", s.grad_accum, r.get("grad_accum", "")),
        ("optim", HF_OPTIM[s.optimizer], r.get("optimizer", "")),
        ("learning_rate", 1.0e-4 if s.is_lora else 1.0e-5, ""),
        ("num_train_epochs", 3.0, ""),
        ("output_dir", "output", ""),
        ("overwrite_output_dir", True, ""),
        ("logging_steps", 10, ""),
        ("save_steps", 500, ""),
        ("report_to", "none", ""),
    ]
    return items


def render(ctx: Context) -> tuple[dict[str, str], str]:
    items = options(ctx)
    spell = {k: f"{k}: {yaml_scalar(v)}" for k, v, _ in items}
    by_field = {
        "method": spell["finetuning_type"],
        "quant": spell.get("quantization_bit", spell.get("quantization_method", "")),
        "precision": spell["bf16"] if ctx.setup.precision.endswith("bf16") else spell["fp16"],
        "grad_checkpointing": spell["disable_gradient_checkpointing"],
        "micro_batch": spell["per_device_train_batch_size"],
        "grad_accum": spell["gradient_accumulation_steps"],
        "seq_len": spell["cutoff_len"],
        "optimizer": spell["optim"],
        "attention": spell["flash_attn"],
    }
    head = comment_block(header_lines(ctx, "llamafactory") + why_lines(ctx, by_field))
    yaml = head + "\n" + yaml_text(items)
    info = {DATASET: {"file_name": ctx.data}}
    command = "llamafactory-cli train train.yaml"
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + command + "\n"
    return {"train.yaml": yaml, "dataset_info.json": json.dumps(info, indent=2) + "\n", "run.sh": run_sh}, command
