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
(``device_map="auto"`` with a ``max_memory`` per card). See :mod:`vramplan.frameworks.files.launch`.

The script is ``templates/sft.py`` (``templates/grpo.py`` for ``--rl grpo``), rendered by
:mod:`vramplan.frameworks.files.templating`: the values below are written at its markers and the layout
keeps or drops its blocks (:func:`vramplan.frameworks.files.launch.script_blocks`).
"""

from __future__ import annotations

from typing import Any

from vramplan.errors import VramplanError
from vramplan.frameworks.files import launch, run_options, templating
from vramplan.frameworks.files.common import (
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
    # a VLM's images add their tokens to the language model's sequence (the plan's seq_len is the text)
    max_length = s.seq_len + (ctx.images["per_prompt"] * ctx.images["tokens_per_image"] if ctx.images else 0)
    training: dict[str, Any] = {
        "per_device_train_batch_size": s.micro_batch,
        "gradient_accumulation_steps": s.grad_accum,
        "max_length": max_length,
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
        "packing": s.lengths == "packed",
    }
    evaluation = None
    if s.rl == "none":
        training.update(sft_lengths(ctx, max_length))
        evaluation = run_options.evaluation(ctx)
        training.update(sft_evaluation(evaluation))
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
        "evaluation": {"held_out": evaluation.held_out()} if evaluation else None,
    }
    if s.parallel != "none":
        out["parallel"] = launch.parallel_constant(ctx)
    return out


def sft_lengths(ctx: Context, max_length: int) -> dict[str, Any]:
    """SFTConfig's lengths options (trl 1.16.0 trainer/sft_config.py ``SFTConfig``; trainer/sft_trainer.py
    ``SFTTrainer.__init__``): ``fixed`` pads every batch to ``max_length`` (``pad_to_multiple_of``, which
    ``DataCollatorForLanguageModeling.torch_call`` hands to ``pad``: every sample is truncated to
    ``max_length`` first, so the multiple is ``max_length`` itself); ``variable`` leaves the default
    (``"auto"``, None off Neuron: each batch padded to its longest sample); ``packed``: ``packing=True``
    with ``packing_strategy="bfd"`` (``pack_dataset``: rows of at most ``max_length`` tokens), which turns
    ``padding_free`` on: each micro-batch flattened into one row of ``micro_batch x max_length`` tokens at
    most, the samples kept apart by position ids, which only flash-attention reads (SFTConfig's
    ``padding_free`` help: "only supported with the FlashAttention 2 or 3"). Vision datasets are not packed
    (``SFTTrainer.__init__`` raises)."""
    s = ctx.setup
    run_options.needs_flash_for_packing(ctx, "trl", "padding-free packing reads position ids")
    if s.lengths == "packed" and ctx.images:
        raise VramplanError("lengths", "trl: packing is not supported for vision datasets (SFTTrainer refuses it)")
    if s.lengths == "fixed":
        return {"pad_to_multiple_of": max_length}
    if s.lengths == "packed":
        return {"packing_strategy": "bfd"}
    return {}


def sft_evaluation(ev: run_options.Evaluation | None) -> dict[str, Any]:
    """SFTConfig's evaluation options (transformers 5.25 ``TrainingArguments``: ``eval_strategy``,
    ``eval_steps``, ``per_device_eval_batch_size``, ``prediction_loss_only``); the script holds out
    ``EVALUATION["held_out"]`` samples (a count, or a fraction of the data) with
    ``Dataset.train_test_split``. Loss only: the script passes no ``compute_metrics``; TRL's fused head
    returns no logits, and kept ones cost a second forward that ``SFTTrainer.compute_loss`` deprecates
    (the plan counts them, memory/run.py); ``generate``: SFTTrainer is no ``Seq2SeqTrainer`` (refused
    by the plan already)."""
    if ev is None:
        return {"eval_strategy": "no"}
    if ev.mode != "loss":
        raise run_options.refuse_evaluation(
            "trl",
            ev.mode,
            "the script passes no compute_metrics (trl 1.16 deprecates it: its fused head makes no logits,"
            " a second forward recomputes them); plan with --evaluation loss",
        )
    return {
        "eval_strategy": "steps",
        "eval_steps": run_options.EVAL_STEPS,
        "per_device_eval_batch_size": ev.batch,
        "prediction_loss_only": True,
    }


#: the SFTConfig keys that say how long the batches are / what the evaluation runs
LENGTH_KEYS = ("packing", "packing_strategy", "pad_to_multiple_of")
EVAL_KEYS = ("eval_strategy", "eval_steps", "per_device_eval_batch_size", "prediction_loss_only")


def _run_reasons(ctx: Context, t: dict[str, Any]) -> dict[str, str]:
    """Why the lengths and evaluation options are what they are, with the plan's numbers."""
    s = ctx.setup
    how = {
        "fixed": f"every batch padded to {t['max_length']} tokens a sample, the length the plan counts",
        "variable": "each batch padded to its longest sample; the plan counts the allocator's cache of the"
        " shorter batches (memory/lengths.py)",
        "packed": f"samples packed into rows of {t['max_length']} tokens, {s.micro_batch} row(s) a micro-batch"
        " flattened padding-free: the fixed-length numbers",
    }[s.lengths]
    ev = run_options.evaluation(ctx)
    return {"lengths": run_options.padding_line(ctx, how), "evaluation": run_options.evaluation_reason(ctx, ev)}


def _py(value: Any) -> str:
    return py_literal(value)


def render(ctx: Context) -> tuple[dict[str, str], str]:
    s = ctx.setup
    if launch.pure_16bit(s) and "precision" in ctx.reasons:
        why = ctx.reasons["precision"].replace("under autocast", "trained as they are (no mixed precision under FSDP)")
        ctx = ctx.model_copy(update={"reasons": {**ctx.reasons, "precision": why}})
    settings = trl_settings(ctx)
    t = settings["training"]
    if s.rl == "none":
        ctx = ctx.model_copy(update={"reasons": {**ctx.reasons, **_run_reasons(ctx, t)}})
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
    if s.rl == "none":
        options["lengths"] = ", ".join(f"{k}={t[k]!r}" for k in LENGTH_KEYS if k in t)
        options["evaluation"] = ", ".join(f"{k}={t[k]!r}" for k in EVAL_KEYS if k in t)
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
        "packing": "lengths",
        "eval_strategy": "evaluation",
    }
    values = {"__IMAGES__": _py(ctx.images)}
    if s.rl == "grpo":
        from vramplan.frameworks.files import grpo

        values["__PROMPT__"] = _py(prompt)
        t = grpo.grpo_training(ctx, t)
        inline["max_completion_length"] = "seq_len"
        inline["vllm_gpu_memory_utilization"] = "vllm"
    body_lines = []
    for k, v in t.items():
        why = ctx.reasons.get(inline.get(k, ""), "")
        body_lines.append(f"    {_py(k)}: {_py(v)}," + (f"  # {printable(why)}" if why else ""))
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
    if s.rl == "none":
        template, blocks = "sft.py", launch.script_blocks(ctx)
        values["__EVALUATION__"] = _py(settings["evaluation"])
        if s.parallel != "none":
            values["__PARALLEL__"] = launch.parallel_entries(ctx, settings["parallel"])
    else:  # GRPO runs one process on one GPU
        template, blocks = "grpo.py", {"placement_per_process": True, "placement_device_map": False}
    script = templating.render(template, blocks, values)
    # line 2 declares the encoding: PEP 263 reads a coding declaration from line 1 or 2, and the
    # header's first line holds the model's name (``coding: utf-7`` there would re-decode the file)
    train_py = "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n" + head + "\n\n" + script
    args = f"train.py --model {sh_quote(ctx.model_path)} --data {sh_quote(ctx.data)}"
    prelude, launcher = launch.launcher(ctx)
    command = f"{launcher} {args}"
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + prelude + command + ' "$@"\n'
    files = {"train.py": train_py, "run.sh": run_sh}
    files.update(launch.config_files(ctx, comment))
    return files, command
