"""Regenerate tables/measured/published.csv from shared/data/published_measurements.csv.

Each source row is mapped to the normalised schema by the rules below, one block per
publishing source; the published number, its unit and its measurement kind are carried
over, never adjusted (a per-GPU average of a multi-GPU total stays as published). Rows
that the schema cannot describe (a feature outside it, a configuration the source does
not state, a capacity bound instead of a peak) are kept with ``excluded:`` and the reason
at the start of ``notes``, and left out of the statistics.

    python3 benchmarks/curate_published.py [SHARED_CSV]
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tables" / "measured" / "published.csv"
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "published_measurements.csv"

COLUMNS = (
    "id source trainer trainer_version model method quant precision lora_rank lora_alpha lora_targets trainable_extra "
    "optimizer seq_len lengths micro_batch grad_accum grad_checkpointing attention num_gpus parallel offload gpu "
    "measured_value measured_unit measurement outcome settings notes"
).split()

KIND = {"max_memory_allocated": "allocated", "max_memory_reserved": "reserved", "nvidia-smi": "device"}
QWEN1 = {"Qwen-1.8B": "qwen-1.8b", "Qwen-7B": "qwen-7b", "Qwen-14B": "qwen-14b", "Qwen-72B": "qwen-72b"}
LLAMA = {
    "Llama 3.1 8B": "llama-3.1-8b",
    "Llama 3.1 70B": "llama-3.1-70b",
    "Llama 3.1 405B": "llama-3.1-405b",
    "Llama 3.2 3B": "llama-3.2-3b",
    "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "Llama-2-7B": "llama-2-7b",
    "LLaMA2-7B": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "Llama-3.3-70B-Instruct": "llama-3.3-70b",
    "Mistral-7B": "mistral-7b-v0.3",
    "Qwen2-7B-Instruct": "qwen2-7b",
    "Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen2.5-14B-Instruct": "qwen2.5-14b",
    "Qwen2.5-32B-Instruct": "qwen2.5-32b",
    "Qwen2.5-72B-Instruct": "qwen2.5-72b",
}
LLAMA_ALL = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _base(r: dict[str, str]) -> dict[str, Any]:
    gpu = r["gpu"]
    return {
        "id": r["id"],
        "source": f"{r['source_repo_or_url']} {r['source_path_or_section']}",
        "trainer": "",
        "trainer_version": "",
        "lora_rank": r["lora_rank"],
        "lora_alpha": "",
        "lora_targets": "",
        "trainable_extra": "",
        "optimizer": "adamw",
        "grad_accum": r["grad_accum"] or "1",
        "num_gpus": r["num_gpus"],
        "parallel": "none",
        "offload": "none",
        "gpu": _gpu(gpu),
        "measured_value": r["measured_gib_per_gpu"],
        "measured_unit": "GiB",
        "measurement": KIND.get(r["measurement_kind"], "unknown"),
        "outcome": "ok",
        "micro_batch": r["micro_batch"],
    }


def _gpu(text: str) -> str:
    t = text.lower()
    if "a100" in t and "40" in t:
        return "a100-sxm-40gb"
    if "a100" in t:
        return "a100-sxm-80gb"
    for key, name in (("h100", "h100-sxm-80gb"), ("4090", "rtx-4090"), ("a6000", "rtx-a6000"), ("l40s", "l40s")):
        if key in t:
            return name
    return ""


def _note(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def qwen1(r: dict[str, str]) -> dict[str, Any]:
    """QwenLM/Qwen README profiling (finetune.py + finetune/*.sh, A100-SXM4-80G).

    Trainer: ``hf``. finetune.py builds ``transformers.Trainer`` and calls ``trainer.train()``
    (its ``train()``, with PEFT's LoRA/Q-LoRA and DeepSpeed through the Trainer); the inference
    rows come from profile.py, transformers' ``model.generate``. The README's requirements ask
    for transformers 4.32 or later; the profiling table does not state the version."""
    d = _base(r)
    d["trainer"] = "hf"
    size = re.match(r"Qwen-(\d+(?:\.\d+)?B)", r["model"]).group(1)  # type: ignore[union-attr]
    d["model"] = QWEN1[f"Qwen-{size}"]
    int4 = "Int4" in r["model"]
    base = "(base)" in r["model"]
    unit = "unit: the table prints 'G' and the README's text says 'We profile the memory (GB)'; read as GB."
    d["measured_unit"] = "GB"
    if r["method"] == "inference":
        d.update(method="inference", quant="gptq-int4" if int4 else "none", precision="fp16" if int4 else "bf16")
        d.update(seq_len="2048", micro_batch="1", grad_checkpointing="false", attention="flash-attn-2")
        d.update(lora_rank="", optimizer="", grad_accum="1")
        if r["num_gpus"] == "2":
            d["parallel"] = "device_map"
        d["notes"] = _note(
            "profile.py generates 2048 tokens from a short prompt; seq_len counts the generated tokens only.",
            "unit printed 'GB'.",
            r["notes"],
        )
        d["measured_unit"] = "GB"
        return d
    d.update(seq_len=r["seq_len"], grad_checkpointing="true", attention="flash-attn-2")
    if r["method"] == "full":
        d.update(method="full", quant="none", precision="bf16", lora_rank="", parallel="zero3")
        d["notes"] = _note(
            "Full-parameter runs go through finetune_ds.sh, whose default DeepSpeed config is ds_config_zero3.json",
            "(no offload); the table does not restate it.",
            unit,
            r["notes"],
        )
        return d
    d.update(lora_alpha="16", lora_targets="c_attn,c_proj,w1,w2")
    if int4:
        d.update(method="qlora", quant="gptq-int4", precision="fp16", parallel="zero2")
        d["notes"] = _note(
            "Q-LoRA on the GPTQ Int4 chat model via finetune_qlora_single_gpu.sh (DeepSpeed ZeRO-2 config, fp16).",
            unit,
            r["notes"],
        )
        return d
    d.update(method="lora", quant="none", precision="bf16")
    if base:
        d["trainable_extra"] = "wte,lm_head"
    if r["num_gpus"] == "4" and "ZeRO-3" in r["parallelism"]:
        d["parallel"] = "zero3"
    elif r["num_gpus"] == "4":
        d["parallel"] = "zero2"
    d["notes"] = _note(unit, r["notes"])
    return d


def qwen_vl(r: dict[str, str]) -> dict[str, Any]:
    """QwenLM/Qwen-VL README profiling: one 448x448 image (256 visual tokens) per sample.

    Trainer: ``hf``. Qwen-VL's finetune.py is Qwen's: ``transformers.Trainer`` built in its
    ``train()``; the inference rows come from profile_mm.py (transformers' ``generate``)."""
    d = _base(r)
    d["trainer"] = "hf"
    d["model"] = "qwen-vl-chat"
    int4 = "Int4" in r["model"]
    base = "(base)" in r["model"]
    attn = (
        "attention: the config's use_flash_attn 'auto' picks flash-attn when installed, as the README's"
        " set-up asks; the table does not restate it."
    )
    if r["method"] == "inference":
        total = re.match(r"(\d+)", r["seq_len"]).group(1)  # type: ignore[union-attr]
        d.update(method="inference", quant="gptq-int4" if int4 else "none", precision="fp16" if int4 else "bf16")
        d.update(seq_len=total, micro_batch="1", grad_checkpointing="false", attention="flash-attn-2", optimizer="")
        d.update(lora_rank="", measured_unit="GB")
        d["notes"] = _note(f"seq_len = total tokens ({r['seq_len']}).", attn, r["notes"])
        return d
    d.update(seq_len=r["seq_len"], grad_checkpointing="true", attention="flash-attn-2")
    d.update(lora_alpha="16", lora_targets="c_attn,attn.c_proj,w1,w2")
    unit = "unit: the table prints 'G' and the README's text says 'We profile the memory (GB)'; read as GB."
    d["measured_unit"] = "GB"
    if int4:
        d.update(method="qlora", quant="gptq-int4", precision="fp16", parallel="zero2")
    else:
        d.update(method="lora", quant="none", precision="bf16")
        if base:
            d["trainable_extra"] = "wte,lm_head"
    d["notes"] = _note(attn, unit, r["notes"])
    return d


def qwen25(r: dict[str, str]) -> dict[str, Any]:
    """QwenLM/Qwen2.5: LLaMA-Factory example table and the transformers speed benchmark.

    Trainer: ``llamafactory`` for the training rows (examples/llama-factory/finetune-zh.md runs
    ``llamafactory-cli train qwen2-7b-*-sft.yaml``; the source names LLaMA-Factory 0.8.x), ``hf``
    for the inference rows (speed_benchmark.rst: transformers 4.46.0 ``generate``)."""
    d = _base(r)
    d["model"] = LLAMA[r["model"]]
    d.update(trainer="llamafactory", trainer_version="0.8")
    if r["method"] == "inference":
        d.update(trainer="hf", trainer_version="4.46.0")
        m = re.match(r"input (\d+) \+ generate (\d+)", r["seq_len"])
        assert m, r["seq_len"]
        quant = {"GPTQ-Int4": "gptq-int4", "AWQ": "awq-int4"}.get(r["precision"], "none")
        d.update(method="inference", quant=quant, precision="fp16" if quant != "none" else "bf16")
        d.update(seq_len=str(int(m.group(1)) + int(m.group(2))), micro_batch="1", grad_checkpointing="false")
        d.update(attention="flash-attn-2", optimizer="", lora_rank="")
        if r["num_gpus"] == "2":
            d["parallel"] = "device_map"
        d["notes"] = _note(f"seq_len = prompt + generated ({r['seq_len']}).", r["notes"])
        return d
    d.update(seq_len="1024", grad_checkpointing="true", attention="sdpa", precision="bf16", measured_unit="GB")
    why = (
        "LLaMA-Factory defaults: gradient checkpointing on, flash_attn 'auto' (sdpa under its transformers),"
        " quantization_type nf4 with double quantization. seq_len is cutoff_len, the longest a sample may be."
    )
    if r["method"] == "full":
        d.update(method="full", quant="none", lora_rank="", num_gpus="", parallel="zero3")
        d["notes"] = _note(
            "excluded: the DeepSpeed config ('PATH-TO-DS-CONFIG') and the GPU count are not stated.", why, r["notes"]
        )
        return d
    d.update(lora_alpha="16", lora_targets="all-linear")
    if r["method"] == "qlora":
        d.update(method="qlora", quant="bnb-nf4-dq")
    else:
        d.update(method="lora", quant="none")
    d["notes"] = _note(why, r["notes"])
    return d


def torchtune(r: dict[str, str]) -> dict[str, Any]:
    """pytorch/torchtune READMEs and tutorials (torchtune's own Llama, not transformers).

    Trainer: ``torchtune``: its recipes (recipes/full_finetune_single_device.py,
    lora_finetune_single_device.py, ...) run torchtune's own model code, loss and loop; the
    tables name the recipe configs, not a torchtune release."""
    d = _base(r)
    d["trainer"] = "torchtune"
    d["model"] = LLAMA[r["model"]]
    d.update(precision="bf16", attention="sdpa", quant="none", lora_alpha="")
    i = int(r["id"])
    notes = r["notes"]
    gib = "GiB" if i < 249 else "GB"
    d["measured_unit"] = gib
    if i == 238:
        d["measured_unit"] = "GB"
    method = r["method"]
    d["method"] = method
    if method == "qlora":
        d["quant"] = "bnb-nf4-dq"
        notes = _note(
            "torchtune's NF4 (torchao) stores 64-weight blocks with scalers quantized in blocks of 256:"
            " the storage of bitsandbytes nf4 with double quantization.",
            notes,
        )
    if i <= 238:  # 'Memory and training speed' table
        d.update(seq_len="2048", micro_batch="2", grad_accum="1", grad_checkpointing="true")
        if i in (233, 234):
            d.update(lora_rank="8", lora_alpha="16", lora_targets="q_proj,v_proj")
        elif i == 235:
            d.update(lora_rank="8", lora_alpha="16", lora_targets=LLAMA_ALL)
        elif i == 237:
            d.update(lora_rank="16", lora_alpha="32", lora_targets="q_proj,k_proj,v_proj")
        elif i == 238:
            d.update(lora_rank="8", lora_alpha="16", lora_targets=LLAMA_ALL)
        if i in (231, 232, 236):
            d["optimizer"] = "paged-adamw-8bit"
        if r["parallelism"] == "FSDP":
            d["parallel"] = "fsdp"
        if r["offload"] == "CPU offload":
            d["offload"] = "optimizer+params"
        d["notes"] = _note("excluded: torch.compile on (changes what is saved and fused; not in the schema).", notes)
        return d
    if i <= 248:  # 'Optimization flags' table, cumulative techniques
        d.update(seq_len="4096", micro_batch="2", grad_accum="1", optimizer="adamw-fused", measurement="allocated")
        d["grad_checkpointing"] = "true" if r["grad_checkpointing"].startswith("yes") else "false"
        if method == "lora":
            d.update(lora_rank="8", lora_alpha="16", lora_targets="q_proj,v_proj")
        if method == "qlora":
            d.update(lora_rank="8", lora_alpha="16", lora_targets="q_proj,v_proj")
        reason = {
            239: "excluded: unpacked batches padded to each batch's longest sample; the lengths are not stated.",
            240: "",
        }.get(
            i,
            "excluded: includes torch.compile and later techniques (chunked cross-entropy, optimizer in"
            " backward, activation offloading) that the schema cannot express.",
        )
        d["notes"] = _note(
            reason,
            "full_finetune_single_device defaults: torch AdamW fused, bf16 weights and optimizer state.",
            notes,
        )
        return d
    # 2024 tables: alpaca with max_seq_len 512, batch 2
    d.update(seq_len="512", micro_batch="2")
    gc = r["grad_checkpointing"]
    d["grad_checkpointing"] = "false" if gc.startswith("no") else "true"
    targets = r["lora_targets"]
    if method in ("lora", "qlora"):
        if "all layers" in targets:
            d["lora_targets"] = LLAMA_ALL + ",lm_head"
        elif "q,k,v,o + MLP" in targets:
            d["lora_targets"] = LLAMA_ALL
        else:
            d["lora_targets"] = "q_proj,v_proj"
        m = re.search(r"alpha (\d+)", targets) or re.search(r"a(\d+)\)", targets)
        d["lora_alpha"] = m.group(1) if m else "16"
    reason = ""
    if r["parallelism"] == "FSDP":
        d["parallel"] = "fsdp"
        reason = (
            "excluded: torchtune's distributed recipes of this time wrapped the model with FSDP1"
            " (FullyShardedDataParallel, flat parameters, torchtune/utils/distributed.py); the schema's fsdp and"
            " the estimate are FSDP2 (fully_shard), checked against FSDP2 traces (tests/test_fsdp_trace.py)."
        )
    if "optimizer_in_bwd" in r["optimizer"]:
        d["optimizer"] = "paged-adamw-32bit"
        reason = "excluded: optimizer step fused into backward (optimizer_in_bwd), outside the schema."
    if method == "qlora":
        reason = (
            "excluded: the reserved pool is inflated while loading, before training. torchtune then pinned torchao 0.1,"
            " whose NF4 quantization worked on the whole tensor at once (a bf16 intermediate 16x the weight:"
            " about 3 GB for an 11008x4096 MLP weight, pytorch/ao #196 and #315), and its recipe logged reserved"
            " memory without emptying the cache after init: the QLoRA tutorial of the same month"
            " (docs/source/tutorials/qlora_finetune.rst) shows 9.13 GB reserved at model init against 9.29 GB"
            " in training. The schema and the estimate describe the training step."
        )
    d["notes"] = _note(
        reason,
        "seq_len 512 is the dataset's max_seq_len; batches are padded to their longest sample, and the peak"
        " over an epoch meets the cap.",
        notes,
    )
    return d


def peft(r: dict[str, str]) -> dict[str, Any]:
    """huggingface/peft README, accelerate docs and MetaMathQA method comparison.

    Trainer, read from each row's script: the README's table (rows 259-265) comes from
    examples/*/peft_lora_*_accelerate_ds_zero3_offload.py, a loop written out with accelerate
    (``model(**batch).loss``, ``accelerator.backward``, ``optimizer.step``); the MetaMathQA rows
    (271-275) from method_comparison/MetaMathQA/run.py ``train()``, a loop written out with torch
    (``model(**batch).loss``, ``backward``, ``optimizer.step``; transformers 5.13.1). Both step
    the model exactly as the Trainer's ``training_step`` does (the model's own full-logits loss,
    nothing kept beside it), so they are ``hf``. The accelerate docs' rows (266-270) run
    examples/sft/train.py, TRL's ``SFTTrainer`` (``trl``); its requirements.txt installs TRL
    from the main branch, so the version is not stated."""
    d = _base(r)
    i = int(r["id"])
    d["trainer"] = "hf"
    if i <= 265:
        d.update(model="", method=r["method"], quant="none", precision="fp32", optimizer="adamw")
        d.update(seq_len="", grad_checkpointing="false", attention="eager", measured_unit="GB")
        if r["method"] == "lora":
            d.update(lora_alpha="32")
        if "ZeRO-3" in r["parallelism"]:
            d.update(parallel="zero3", offload="optimizer+params")
        d["notes"] = _note(
            f"excluded: {r['model']} is an architecture the catalog does not model ({r['architecture_note']});"
            " sequence lengths are dynamic.",
            r["notes"],
        )
        return d
    if i <= 270:
        d.update(trainer="trl", trainer_version="0")  # PEFT's docs of 2024: a TRL before 1.0
        d.update(model="llama-2-70b", method=r["method"], seq_len="2048", grad_checkpointing="true")
        d.update(attention="flash-attn-2", lora_alpha="16", lora_targets="all-linear", measured_unit="GB")
        d["num_gpus"] = r["num_gpus"]
        if r["method"] == "qlora":
            d.update(quant="bnb-nf4-dq", precision="bf16")
        else:
            d.update(quant="none", precision="amp-bf16")
        d["parallel"] = "zero3" if "ZeRO-3" in r["parallelism"] else "fsdp"
        if "CPU offload" in r["offload"]:
            d["offload"] = "optimizer+params"
        reason = ""
        if i in (266, 268):
            reason = "excluded: read off a GPU-usage screenshot (nvidia-smi-like, whole device) as a range."
        d["notes"] = _note(
            reason,
            "TRL SFTTrainer, packed to 2048, use_reentrant False; bf16 quant_storage for QLoRA.",
            r["notes"],
        )
        if i in (267, 269, 270):
            d["measurement"] = "unknown"
        return d
    d.update(model="llama-3.2-3b", method=r["method"], quant="none", precision="bf16", seq_len="768")
    d["trainer_version"] = "5.13.1"
    d.update(grad_checkpointing="false", attention="sdpa", measurement="reserved")
    m = re.search(r"r(?:ank)?(\d+) a(\d+)", r["notes"])
    if r["method"] == "lora":
        d["lora_targets"] = {
            272: "q_proj,v_proj",
            273: "q_proj,v_proj",
            274: "q_proj,v_proj",
            275: "gate_proj,up_proj,down_proj",
        }[i]
        d["lora_alpha"] = m.group(2) if m else ""
    reason = "excluded: DoRA (weight-decomposed LoRA) is outside the schema." if i == 274 else ""
    d["notes"] = _note(
        reason,
        "seq_len 768 is max_seq_length; the peak over the run (incl. eval) meets the longest batches.",
        r["notes"],
    )
    return d


def unsloth(r: dict[str, str]) -> dict[str, Any]:
    """unslothai/unsloth README benchmark tables.

    Trainer, by the column the row was read from: 'Hugging Face' and '+ Flash Attention 2'
    (rows 293-295) are TRL's ``SFTTrainer`` without Unsloth (huggingface/blog unsloth-trl.md,
    'Unsloth + TRL integration' and its notebooks; transformers 4.36); the 'Llama-Factory 3rd
    party benchmarking' rows (296-300) are LLaMA-Factory runs (its wiki's Performance
    Comparison), the Unsloth+FA2 ones through its ``use_unsloth`` (``unsloth``); the context
    length table's 'Hugging Face + FA2' rows are transformers without Unsloth (``hf``: the
    README names no trainer), its Unsloth rows ``unsloth``."""
    d = _base(r)
    i = int(r["id"])
    unsloth_kernels = "Unsloth" in r["attention_impl"]
    if i <= 295:
        d.update(trainer="trl", trainer_version="0")  # the README before 2025-01-14: a TRL before 1.0
    elif i <= 300:
        d["trainer"] = "llamafactory"
    else:
        d["trainer"] = "hf"
    if unsloth_kernels:
        d["trainer"] = "unsloth"
    d["model"] = {"CodeLlama-34B": "", "Mistral-7B": "mistral-7b-v0.3"}.get(r["model"], LLAMA.get(r["model"], ""))
    d["method"] = r["method"]
    d["quant"] = "bnb-nf4" if r["method"] == "qlora" else "none"
    d["precision"] = "bf16"
    d["attention"] = "flash-attn-2" if "flash" in r["attention_impl"] else "sdpa"
    if i <= 295:
        d.update(lora_alpha="16", lora_targets=LLAMA_ALL, seq_len="", grad_checkpointing="true")
        d["notes"] = _note("excluded: sequence length and batch size not stated (Slim Orca).", r["notes"])
        return d
    if i <= 300:
        d.update(lora_targets="q_proj,v_proj", seq_len="1024", grad_checkpointing="", measured_unit="GB")
        d["notes"] = _note(
            "excluded: gradient checkpointing and LoRA targets not stated; values integer-rounded.", r["notes"]
        )
        return d
    d.update(lora_targets=LLAMA_ALL, seq_len=r["seq_len"], grad_checkpointing="", measurement="device")
    d["measured_unit"] = "GB"
    d["notes"] = _note("excluded: a capacity bound (the card's size), not a peak reading.", r["notes"])
    return d


def hf_blog(r: dict[str, str]) -> dict[str, Any]:
    """huggingface/blog optimize-llm.md: transformers' pipeline generation (``hf``)."""
    d = _base(r)
    d["trainer"] = "hf"
    quant = {"bnb int8 (load_in_8bit)": "bnb-int8", "bnb 4-bit (load_in_4bit)": "bnb-fp4"}.get(r["precision"], "none")
    d.update(model="", method="inference", quant=quant, precision="bf16", seq_len="80", micro_batch="1")
    d.update(optimizer="", grad_checkpointing="false", attention="eager", lora_rank="", parallel="device_map")
    d["notes"] = _note(
        f"excluded: {r['model']} is GPTBigCode (multi-query attention), an architecture the catalog does not model.",
        r["notes"],
    )
    return d


SOURCES = {
    "github.com/QwenLM/Qwen": qwen1,
    "github.com/QwenLM/Qwen-VL": qwen_vl,
    "github.com/QwenLM/Qwen2.5": qwen25,
    "github.com/pytorch/torchtune": torchtune,
    "github.com/huggingface/peft": peft,
    "github.com/unslothai/unsloth": unsloth,
    "github.com/huggingface/blog": hf_blog,
}

#: Qwen-72B LoRA under the ZeRO-2 script, reported out of memory on 4xA100-80G.
OOM_ZERO2 = {
    "id": "q72-lora-zero2-oom",
    "source": "github.com/QwenLM/Qwen README.md @2df8e8ac 'Finetuning > Profiling of Memory and Speed'",
    "trainer": "hf",
    "trainer_version": "",
    "model": "qwen-72b",
    "method": "lora",
    "quant": "none",
    "precision": "bf16",
    "lora_rank": "64",
    "lora_alpha": "16",
    "lora_targets": "c_attn,c_proj,w1,w2",
    "trainable_extra": "",
    "optimizer": "adamw",
    "seq_len": "256",
    "micro_batch": "1",
    "grad_accum": "8",
    "grad_checkpointing": "true",
    "attention": "flash-attn-2",
    "num_gpus": "4",
    "parallel": "zero2",
    "offload": "none",
    "gpu": "a100-sxm-80gb",
    "measured_value": "",
    "measured_unit": "GiB",
    "measurement": "unknown",
    "outcome": "oom",
    "notes": "README: 'LoRA w/o ZeRO-3 OOM on 4xA100-80G' for Qwen-72B (the ZeRO-2 script); shortest length.",
}
#: Runs the sources report as out of memory, stated in words beside their tables.
OOM_ROWS = [
    OOM_ZERO2,
    {
        **OOM_ZERO2,
        "id": "q72-lora-emb-zero3-oom",
        "trainable_extra": "wte,lm_head",
        "parallel": "zero3",
        "notes": "excluded: the README does not say which layout the LoRA(emb) run used (ZeRO-3 assumed here)."
        " README: 'LoRA(emb) and LoRA w/o ZeRO-3 OOM on 4xA100-80G' for Qwen-72B: LoRA with trainable"
        " embedding and lm_head (base model); shortest length.",
    },
]


#: the ``lengths`` column, read from each row's source (blank: fixed, every sample at seq_len).
#: packed: torchtune's 'Memory and training speed' table (dataset packed to 2048) and the
#: 'Optimization flags' rows from '+ Packed Dataset' on; PEFT's accelerate docs (SFTTrainer,
#: packed to 2048). variable: torchtune's unpacked row and its 2024 tables (batches padded to
#: their longest sample), PEFT's README table (dynamic lengths). PEFT's MetaMathQA rows and
#: Qwen2.5's LLaMA-Factory example stay blank: PEFT_BUCKETS, LF_UNSTATED.
LENGTHS_BY_ID = {
    **{i: "packed" for i in (*range(231, 239), *range(240, 244), *range(266, 271))},
    **{i: "variable" for i in (239, *range(249, 266))},
}
LF_UNSTATED = (
    "lengths: compared as fixed. cutoff_len is a cap and LLaMA-Factory pads each batch to its longest,"
    " but neither the custom data's lengths nor the tool that measured ('实测') is stated; as variable"
    " with lengths uniform up to the cap (memory/lengths.py) the reserved tier would read +35% (216)"
    " and +61% (217)."
)
PEFT_BUCKETS = (
    "lengths: compared as fixed. The batches' lengths vary, but method_comparison/MetaMathQA/run.py (@026d1e01)"
    " batches samples of like length (BucketIterator) and empties the cache every 10 steps"
    " (ACCELERATOR_EMPTY_CACHE_SCHEDULE), so the shorter batches' loss chains are never kept; the"
    " peak is the longest batches'."
)


def curate(src: Path) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(src.open(newline="")))
    out = [SOURCES[r["source_repo_or_url"]](r) for r in rows]
    out += OOM_ROWS
    for row in out:
        rid = int(row["id"]) if row["id"].isdigit() else 0
        row["lengths"] = LENGTHS_BY_ID.get(rid, "")
        if 271 <= rid <= 275:
            row["notes"] = _note(row["notes"], PEFT_BUCKETS)
        if 215 <= rid <= 217:
            row["notes"] = _note(row["notes"], LF_UNSTATED)
        row.setdefault("settings", "")  # nothing the published rows state lies beyond the columns
    for row in out:
        missing = set(COLUMNS) - set(row)
        assert not missing, (row["id"], missing)
    return [{k: row[k] for k in COLUMNS} for row in out]


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC
    rows = curate(src)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} rows -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
