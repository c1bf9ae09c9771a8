"""TRL target: one self-contained Python script (SFTTrainer + PEFT + bitsandbytes) and
the command line that starts it.

Setup -> TRL/transformers: precision -> the load dtype and ``bf16``/``fp16`` (AMP loads
fp32 weights and trains under autocast); quant -> ``BitsAndBytesConfig``; LoRA ->
``LoraConfig`` (``modules_to_save`` for extra trained embeddings/lm_head); freeze -> the top
layers left trainable by the script; optimizer -> ``optim``; attention ->
``attn_implementation``. GPTQ/AWQ bases need a pre-quantized checkpoint, which the script
does not make: it quantizes with bitsandbytes nf4 instead (said in the header).

Several GPUs (``Setup.parallel``): DDP, DeepSpeed ZeRO-1/2/3 and FSDP start through
``accelerate launch --config_file accelerate_config.yaml`` (MULTI_GPU, DEEPSPEED or FSDP2, one
process per GPU on every node); ZeRO adds ``ds_config.json`` (stage, CPU offload, the bucket
sizes the memory model counts, bf16/fp16, batch sizes), which the script hands to its
SFTConfig before loading the model so that ZeRO-3 loads each GPU's partition only.
``device_map`` is one ``python train.py`` process that splits the layers across its GPUs
(``device_map="auto"`` with a ``max_memory`` per card). See :mod:`vramplan.emit.launch`.
"""

from __future__ import annotations

import re
from typing import Any

from vramplan.emit import launch
from vramplan.emit.common import (
    HF_ATTN,
    HF_OPTIM,
    Context,
    comment_block,
    header_lines,
    layout_lines,
    printable,
    py_literal,
    sh_quote,
    why_lines,
)

LOAD_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "amp-bf16": "float32", "amp-fp16": "float32"}


def trl_settings(ctx: Context) -> dict[str, Any]:
    """The values the script is built from (what ``--dry-run`` prints)."""
    s = ctx.setup
    half = "bfloat16" if s.precision.endswith("bf16") else "float16"
    quant: dict[str, Any] | None = None
    if s.method == "qlora":
        if s.quant == "bnb-int8":
            quant = {"load_in_8bit": True}
        else:
            quant = {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "fp4" if s.quant == "bnb-fp4" else "nf4",
                "bnb_4bit_use_double_quant": s.quant == "bnb-nf4-dq",
                "bnb_4bit_compute_dtype": half,
            }
    lora: dict[str, Any] | None = None
    if s.is_lora:
        targets = s.lora_target_list()
        extra = [ctx.spec.embedding_name if m == "embeddings" else "lm_head" for m in s.trainable_extra]
        modules: Any = "all-linear" if targets is None else targets
        if ctx.spec.vision is not None:
            # PEFT's all-linear would also wrap the vision tower's linears: the plan trains the
            # language model's only (a regular expression PEFT matches against module names)
            names = [t for t in (targets or ctx.lm_linears) if t != "lm_head"]
            modules = r".*language_model.*\.(" + "|".join(names) + r")$"
            if targets and "lm_head" in targets:
                modules = modules[:-1] + r"|lm_head)$"
        lora = {
            "r": s.lora_rank,
            "lora_alpha": s.lora_alpha,
            "lora_dropout": s.lora_dropout,
            "target_modules": modules,
            "modules_to_save": extra or None,
            "task_type": "CAUSAL_LM",
        }
    # under FSDP the checkpointing is FSDP's own (accelerate_config.yaml): transformers refuses both
    checkpointing = s.grad_checkpointing and s.parallel != "fsdp"
    training = {
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        # a VLM's images add their tokens to the language model's sequence (the plan's seq_len is the text)
        "max_length": s.seq_len + (ctx.images["per_prompt"] * ctx.images["tokens_per_image"] if ctx.images else 0),
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "optim": HF_OPTIM[s.optimizer],
        # FSDP full/freeze of 16-bit weights: pure 16-bit (FSDP2 mixed precision would upcast the trained weights)
        "bf16": s.precision in ("bf16", "amp-bf16") and not launch.pure_16bit(s),
        "fp16": s.precision in ("fp16", "amp-fp16") and not launch.pure_16bit(s),
        "learning_rate": 1e-4 if s.is_lora else 1e-5,
        "num_train_epochs": 3,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "packing": False,
    }
    out = {
        "model": ctx.model_path,
        "auto_class": "AutoModelForImageTextToText" if ctx.spec.vision is not None else "AutoModelForCausalLM",
        "method": s.method,
        "dtype": LOAD_DTYPE[s.precision],
        "attn_implementation": HF_ATTN[s.attention],
        "quantization": quant,
        "lora": lora,
        "freeze_top_layers": s.freeze_trainable_layers if s.method == "freeze" else None,
        "freeze_vision": [s.freeze_vision, s.freeze_projector] if s.freeze_vision or s.freeze_projector else None,
        "training": training,
    }
    if s.parallel != "none":
        out["parallel"] = launch.parallel_constant(ctx)
    return out


def _py(value: Any) -> str:
    return py_literal(value)


#: model loading shared by the SFT and GRPO scripts (``__PLACEMENT__``: where the weights go).
LOAD_MODEL = """    load = {"dtype": getattr(torch, DTYPE), "attn_implementation": ATTN_IMPLEMENTATION}
    if QUANTIZATION:
        q = dict(QUANTIZATION)
        if "bnb_4bit_compute_dtype" in q:
            q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
        load["quantization_config"] = BitsAndBytesConfig(**q)
__PLACEMENT__
    model = getattr(transformers, AUTO_CLASS).from_pretrained(args.model, **load)
    if QUANTIZATION:
        from peft import prepare_model_for_kbit_training

        # fp32 norms, embeddings and lm_head, as the plan counts them (TRL does not call this itself)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=TRAINING["gradient_checkpointing"],
            gradient_checkpointing_kwargs=TRAINING["gradient_checkpointing_kwargs"],
        )
    if FREEZE_TOP_LAYERS:
        model.requires_grad_(False)
        for layer in model.get_decoder().layers[-FREEZE_TOP_LAYERS:]:
            layer.requires_grad_(True)
    if FREEZE_VISION:
        tower, projector = FREEZE_VISION
        for name, p in model.named_parameters():
            in_merger = ".merger." in name
            if ".visual." in f".{name}" and ((in_merger and projector) or (not in_merger and tower)):
                p.requires_grad_(False)
    peft_config = None
    if LORA:
        from peft import LoraConfig

        peft_config = LoraConfig(**LORA)
"""

SCRIPT = '''
"""Fine-tune with TRL's SFTTrainer, as planned by vramplan (see the comment block above).

    python train.py --model MODEL --data DATA [--output DIR] [--epochs N] [--max-steps N] [--dry-run]

MODEL is a hub id or a local model folder. DATA is a local JSON or JSONL file with one
example per record: {"instruction": ..., "input": ..., "output": ...} (input optional) or
{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}.
With IMAGES below, each record also names its image files: {"image": "a.png"} or
{"images": [...]}, paths relative to DATA's folder; the model's processor loads them (for
Qwen2-VL it needs torchvision) and puts them ahead of the first user message's text.
--dry-run prints the settings as JSON and exits without loading anything.
"""

import argparse
import json
import math
import os

MODEL = __MODEL__
AUTO_CLASS = __AUTO__  # the transformers class that loads the model
METHOD = __METHOD__
DTYPE = __DTYPE__  # weights as loaded
ATTN_IMPLEMENTATION = __ATTN__
QUANTIZATION = __QUANT__  # BitsAndBytesConfig(**QUANTIZATION), or None
LORA = __LORA__  # peft.LoraConfig(**LORA), or None
FREEZE_TOP_LAYERS = __FREEZE__  # freeze: only the top N decoder layers train
FREEZE_VISION = __FREEZE_VISION__  # VLM full fine-tuning: [tower, projector] kept frozen, or None
IMAGES = __IMAGES__  # images per sample and the pixels the plan counts per image (larger ones are shrunk), or None
TRAINING = {
__TRAINING__
}
__PARALLEL__


__IMAGE_FUNCTIONS__


def to_record(example, tokenizer, folder=""):
    """One training record: chat messages when the tokenizer has a chat template (and always
    with images), else text."""
    if example.get("messages"):
        messages = example["messages"]
    else:
        prompt = example.get("instruction") or ""
        if example.get("input"):
            prompt = prompt + "\\n\\n" + example["input"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": example.get("output") or ""}]
    if IMAGES:
        return {"messages": messages, "images": image_paths(example, folder)}
    if getattr(tokenizer, "chat_template", None):
        return {"messages": messages}
    text = "".join(f"### {m['role'].capitalize()}:\\n{m['content']}\\n\\n" for m in messages)
    return {"text": text + (tokenizer.eos_token or "")}

__PARALLEL_FUNCTION__

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="hub id or local model folder (default: %(default)s)")
    parser.add_argument("--data", default=__DATA__, help="local JSON/JSONL dataset (default: %(default)s)")
    parser.add_argument("--output", default="output", help="where the trained adapter/model is saved")
    parser.add_argument("--epochs", type=float, default=TRAINING["num_train_epochs"])
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="print the settings as JSON and exit")
    args = parser.parse_args()
    settings = {
        "model": args.model,
        "auto_class": AUTO_CLASS,
        "method": METHOD,
        "dtype": DTYPE,
        "attn_implementation": ATTN_IMPLEMENTATION,
        "quantization": QUANTIZATION,
        "lora": LORA,
        "freeze_top_layers": FREEZE_TOP_LAYERS,
        "freeze_vision": FREEZE_VISION,
        "images": IMAGES,
        "training": {**TRAINING, "num_train_epochs": args.epochs, "max_steps": args.max_steps},
__PARALLEL_SETTING__
    }
    if args.dry_run:
        print(json.dumps(settings, indent=1))
        return

    import torch
    from datasets import load_dataset
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

__CONFIG_EARLY__
    if IMAGES:
        from datasets import Image
        from transformers import AutoProcessor

        # max_pixels: the processor shrinks any larger image to the pixels (and tokens) the plan counts
        processing_class = AutoProcessor.from_pretrained(args.model, max_pixels=IMAGES["max_pixels"])
        tokenizer = processing_class.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        processing_class = tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
__LOAD_MODEL__

    raw = load_dataset("json", data_files=args.data, split="train")
    folder = data_folder(args.data)
    dataset = raw.map(lambda ex: to_record(ex, tokenizer, folder), remove_columns=raw.column_names)
    if IMAGES:
        dataset = dataset.cast_column("images", [Image()])
__CONFIG_LATE__
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=processing_class, peft_config=peft_config
    )
    result = trainer.train()
    trainer.save_model(args.output)
    loss = result.training_loss
    print(json.dumps({"train_loss": loss, "steps": trainer.state.global_step, "finite": math.isfinite(loss)}))


if __name__ == "__main__":
    main()
'''


#: reading a record's image files, shared by the SFT and GRPO scripts.
IMAGE_FUNCTIONS = '''def data_folder(path):
    return os.path.dirname(os.path.abspath(path))


def image_paths(example, folder):
    """The record's image files (or URLs), relative to the data file's folder. Messages carry
    text only: the images come from the record's own fields, as the plan counts them."""
    messages = example.get("prompt") or example.get("messages") or []
    if not isinstance(messages, str) and any(
        isinstance(c, dict) and c.get("type") == "image" for m in messages for c in (m.get("content") or [])
        if not isinstance(m.get("content"), str)
    ):
        raise SystemExit("give a record's images in its 'image' or 'images' field and keep its messages to text")
    paths = example.get("images") or ([example["image"]] if example.get("image") else [])
    if len(paths) != IMAGES["per_prompt"]:
        raise SystemExit(f"a record has {len(paths)} images; the plan counts {IMAGES['per_prompt']} per sample")
    return [p if os.path.isabs(p) or "://" in p else os.path.join(folder, p) for p in paths]
'''


def render(ctx: Context) -> tuple[dict[str, str], str]:
    s = ctx.setup
    if launch.pure_16bit(s) and "precision" in ctx.reasons:
        why = ctx.reasons["precision"].replace("under autocast", "trained as they are (no mixed precision under FSDP)")
        ctx = ctx.model_copy(update={"reasons": {**ctx.reasons, "precision": why}})
    settings = trl_settings(ctx)
    t = settings["training"]
    checkpointing = (
        f"fsdp_activation_checkpointing: {str(s.grad_checkpointing).lower()} (accelerate_config.yaml)"
        if s.parallel == "fsdp"
        else f"gradient_checkpointing={t['gradient_checkpointing']}"
    )
    options = {
        "method": f"METHOD = {s.method!r}" + (f"; LORA r={s.lora_rank}" if s.is_lora else ""),
        "quant": f"QUANTIZATION = {settings['quantization']}",
        "precision": f"DTYPE = {settings['dtype']!r}, bf16={t['bf16']}, fp16={t['fp16']}",
        "grad_checkpointing": checkpointing,
        "micro_batch": f"per_device_train_batch_size={t['per_device_train_batch_size']}",
        "grad_accum": f"gradient_accumulation_steps={t['gradient_accumulation_steps']}",
        "seq_len": f"max_length={t['max_length']}",
        "optimizer": f"optim={t['optim']!r}",
        "attention": f"ATTN_IMPLEMENTATION = {settings['attn_implementation']!r}",
    }
    prompt = (
        s.seq_len - s.completion_len + (ctx.images["per_prompt"] * ctx.images["tokens_per_image"] if ctx.images else 0)
    )
    if s.rl == "grpo":
        options["seq_len"] = f"max_completion_length={s.completion_len}, MAX_PROMPT_TOKENS={prompt}"
    if s.vllm != "none":
        options["vllm"] = (
            f"use_vllm=True, vllm_mode='colocate', vllm_gpu_memory_utilization={s.vllm_gpu_memory_utilization:g},"
            f" vllm_enable_sleep_mode={s.vllm_sleep}"
        )
    if ctx.images:
        options["image_size"] = (
            f"IMAGES = {ctx.images}: {s.images_per_sample} x {s.image_size} image(s) per prompt,"
            f" {ctx.images['tokens_per_image']} tokens each, inside"
            + (" MAX_PROMPT_TOKENS" if s.rl == "grpo" else " max_length")
        )
    comment = header_lines(ctx, "trl") + layout_lines(ctx) + why_lines(ctx, options)
    head = comment_block(comment)
    inline = {
        "per_device_train_batch_size": "micro_batch",
        "gradient_accumulation_steps": "grad_accum",
        "max_length": "seq_len",
        "gradient_checkpointing": "grad_checkpointing",
        "optim": "optimizer",
        "bf16": "precision",
    }
    template = SCRIPT
    values = {"__IMAGES__": _py(ctx.images)}
    if s.rl == "grpo":
        from vramplan.emit import grpo

        template = grpo.SCRIPT
        values["__PROMPT__"] = _py(prompt)
        t = grpo.grpo_training(ctx, t)
        inline["max_completion_length"] = "seq_len"
        inline["vllm_gpu_memory_utilization"] = "vllm"
    body_lines = []
    for k, v in t.items():
        why = ctx.reasons.get(inline.get(k, ""), "")
        body_lines.append(f"    {_py(k)}: {_py(v)}," + (f"  # {printable(why)}" if why else ""))
    # the blocks first (fixed text), then every value in one pass: a value is never searched for markers
    script = template.replace("__LOAD_MODEL__\n", LOAD_MODEL).replace("__IMAGE_FUNCTIONS__\n", IMAGE_FUNCTIONS)
    if s.rl == "none":
        for marker, block in launch.script_blocks(ctx, settings).items():
            script = _fill(script, marker, block)
    else:  # GRPO runs one process on one GPU
        script = _fill(script, "__PLACEMENT__", launch.PLACEMENT)
    values.update(
        {
            "__MODEL__": _py(ctx.model_path),
            "__AUTO__": _py(settings["auto_class"]),
            "__METHOD__": _py(s.method),
            "__DTYPE__": _py(settings["dtype"]),
            "__ATTN__": _py(settings["attn_implementation"]),
            "__QUANT__": _py(settings["quantization"]),
            "__LORA__": _py(settings["lora"]),
            "__FREEZE__": _py(settings["freeze_top_layers"]),
            "__FREEZE_VISION__": _py(settings["freeze_vision"]),
            "__TRAINING__": "\n".join(body_lines),
            "__DATA__": _py(ctx.data),
        }
    )
    script = substitute(script, values)
    # line 2 declares the encoding: PEP 263 reads a coding declaration from line 1 or 2, and the
    # header's first line holds the model's name (``coding: utf-7`` there would re-decode the file)
    train_py = "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n" + head + "\n" + script
    args = f"train.py --model {sh_quote(ctx.model_path)} --data {sh_quote(ctx.data)}"
    prelude, launcher = launch.launcher(ctx)
    command = f"{launcher} {args}"
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + prelude + command + ' "$@"\n'
    files = {"train.py": train_py, "run.sh": run_sh}
    files.update(launch.config_files(ctx, comment))
    return files, command


def substitute(template: str, values: dict[str, str]) -> str:
    """Every marker of ``values`` replaced in one pass, so a value that happens to hold a
    marker's text (a folder named ``__DATA__``) is left as it is."""
    missing = [m for m in values if m not in template]
    if missing:
        raise AssertionError(f"template has no {', '.join(missing)}")
    pattern = re.compile("|".join(re.escape(m) for m in sorted(values, key=len, reverse=True)))
    return pattern.sub(lambda m: values[m.group(0)], template)


def _fill(script: str, marker: str, block: str) -> str:
    """Put ``block`` on the marker's line; an empty block removes the line."""
    line = marker + "\n"
    if line not in script:
        raise AssertionError(f"template has no {marker}")
    return script.replace(line, block + ("\n" if block and not block.endswith("\n") else ""))
