"""axolotl target: ``config.yml`` for ``axolotl train``.

Setup -> axolotl 0.19.0 (its config validation reads the file back: tests/test_axolotl_parse.py):
``adapter`` lora/qlora (qlora = 4-bit bitsandbytes; LoRA on LLM.int8 is ``adapter: lora`` +
``load_in_8bit``); axolotl's QLoRA defaults to nf4 with double quantization, so plain nf4 and
fp4 are set through ``bnb_config_kwargs``; ``lora_target_linear`` for all-linear (on a VLM, a
regular expression naming the language model's linears),
``lora_modules_to_save`` for extra trained embeddings/lm_head; freeze keeps the top layers
trainable through ``unfrozen_parameters`` regexes; ``bf16``/``fp16`` load 16-bit weights;
``attn_implementation``; ``gradient_checkpointing``; ``optimizer`` (transformers names);
``pad_to_sequence_len`` so every batch has the planned length; its fused LoRA kernels
(``lora_*_kernel``, on by default for LoRA/QLoRA) off, so PEFT's LoRA path runs, which the
estimate counts. Not expressible: fp32 master weights under 16-bit autocast (AMP), emitted as
the 16-bit run and re-estimated; GPTQ/AWQ bases (``gptq: true`` needs a GPTQ checkpoint) are
emitted as bitsandbytes nf4.
"""

from __future__ import annotations

from vramplan.frameworks.files import run_options
from vramplan.frameworks.files.common import (
    HF_ATTN,
    HF_OPTIM,
    Context,
    comment_block,
    header_lines,
    why_lines,
    yaml_scalar,
    yaml_text,
)

#: axolotl's fused LoRA kernels, which its schema turns on for every LoRA/QLoRA config that sets
#: none of them (utils/schemas/config.py ``check_auto_enable_lora_kernels``)
KERNEL_KEYS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")
KERNELS = "PEFT's LoRA forward, the one the estimate counts (axolotl's fused kernels save other activations)"


def options(ctx: Context) -> list[tuple[str, object, str]]:
    s = ctx.setup
    r = ctx.reasons
    items: list[tuple[str, object, str]] = [("base_model", ctx.model_path, "")]
    if s.is_lora:
        if s.quant == "bnb-int8":
            items += [("adapter", "lora", r.get("method", "")), ("load_in_8bit", True, r.get("quant", ""))]
        elif s.method == "qlora":
            items += [("adapter", "qlora", r.get("method", "")), ("load_in_4bit", True, r.get("quant", ""))]
            if s.quant != "bnb-nf4-dq":
                kwargs = {
                    "bnb_4bit_quant_type": "fp4" if s.quant == "bnb-fp4" else "nf4",
                    "bnb_4bit_use_double_quant": False,
                }
                items.append(("bnb_config_kwargs", kwargs, "axolotl's QLoRA default is nf4 with double quantization"))
        else:
            items.append(("adapter", "lora", r.get("method", "")))
        targets = s.lora_target_list()
        items += [
            ("lora_r", s.lora_rank, r.get("lora_rank", "")),
            ("lora_alpha", int(s.lora_alpha), ""),
            ("lora_dropout", s.lora_dropout, ""),
        ]
        if ctx.spec.vision is not None:
            # lora_target_linear would wrap the vision tower's linears too (and name the vision
            # merger's Sequential indices "0"/"2", which PEFT matches against the vision blocks and
            # refuses: loaders/adapter.py find_all_linear_names); the plan trains the language
            # model's only: a regular expression PEFT matches against module names
            names = [t for t in (targets or ctx.lm_linears) if t != "lm_head"]
            regex = r".*language_model.*\.(" + "|".join(names) + r")$"
            if targets and "lm_head" in targets:
                regex = regex[:-1] + r"|lm_head)$"
            items.append(("lora_target_modules", regex, "the language model's linear layers"))
        elif targets is None:
            items.append(("lora_target_linear", True, "all linear layers"))
        else:
            items.append(("lora_target_modules", targets, ""))
        if s.trainable_extra:
            extra = [ctx.spec.embedding_name if m == "embeddings" else "lm_head" for m in s.trainable_extra]
            items.append(("lora_modules_to_save", extra, "trained in full beside the adapters"))
        items += [(key, False, KERNELS if key == "lora_mlp_kernel" else "") for key in KERNEL_KEYS]
    elif s.method == "freeze":
        top = range(max(0, ctx.spec.num_layers - s.freeze_trainable_layers), ctx.spec.num_layers)
        pattern = r"^model\.layers\.(" + "|".join(str(i) for i in top) + r")\..*"
        items.append(
            ("unfrozen_parameters", [pattern], f"freeze: only the top {s.freeze_trainable_layers} layers train")
        )
    items += [
        ("bf16", s.precision == "bf16", r.get("precision", "")),
        ("fp16", s.precision == "fp16", ""),
        ("attn_implementation", HF_ATTN[s.attention], r.get("attention", "")),
        ("gradient_checkpointing", s.grad_checkpointing, r.get("grad_checkpointing", "")),
        ("sequence_len", s.seq_len, r.get("seq_len", "")),
        *length_items(ctx),
        ("micro_batch_size", s.micro_batch, r.get("micro_batch", "")),
        ("gradient_accumulation_steps", s.grad_accum, r.get("grad_accum", "")),
        ("optimizer", HF_OPTIM[s.optimizer], r.get("optimizer", "")),
        ("learning_rate", 1.0e-4 if s.is_lora else 1.0e-5, ""),
        ("num_epochs", 3.0, ""),
        ("datasets", [{"path": ctx.data, "type": "alpaca", "ds_type": "json"}], "instruction/input/output records"),
        *eval_items(ctx),
        ("output_dir", "./output", ""),
        ("logging_steps", 10, ""),
    ]
    return items


def length_items(ctx: Context) -> list[tuple[str, object, str]]:
    """axolotl 0.19.0's lengths keys (utils/schemas/config.py): ``pad_to_sequence_len`` pads every batch
    to ``sequence_len`` (``fixed``, and ``packed``: rows of ``sequence_len``, as its schema recommends
    with packing, ``hint_sample_packing_padding``); ``sample_packing`` packs samples into them (its
    multipack sampler), kept apart by flash-attention, sdpa or eager (``attn_decontaminates_packing``,
    utils/schemas/validation.py ``check_sample_packing_without_attention``); ``variable``: neither, each
    batch padded to its longest sample."""
    s = ctx.setup
    why = ctx.reasons.get("lengths", "")
    return [
        ("pad_to_sequence_len", s.lengths != "variable", why),
        ("sample_packing", s.lengths == "packed", ""),
    ]


def eval_items(ctx: Context) -> list[tuple[str, object, str]]:
    """axolotl 0.19.0's evaluation keys: ``val_set_size`` (a fraction of the dataset, utils/schemas/config.py),
    ``eval_strategy: steps`` with ``eval_steps`` and ``eval_batch_size`` (utils/schemas/training.py; None:
    the micro-batch); with ``eval_steps`` its trainer builder also sets ``eval_on_start`` (core/builders/base.py
    ``_configure_save_and_eval_strategy``): one evaluation before the first step. Loss only:
    ``AxolotlTrainer`` (core/trainers/base.py) gets no ``compute_metrics``;
    logits kept for a metric and generation are refused, naming ``evaluation``."""
    ev = run_options.evaluation(ctx)
    why = ctx.reasons.get("evaluation", "")
    if ev is None:
        return [("val_set_size", 0.0, why)]
    if ev.mode != "loss":
        raise run_options.refuse_evaluation(
            "axolotl", ev.mode, "axolotl's trainer computes no metric over kept logits; plan with --evaluation loss"
        )
    return [
        ("val_set_size", run_options.EVAL_FRACTION, why),
        ("eval_strategy", "steps", ""),
        ("eval_steps", run_options.EVAL_STEPS, ""),
        ("eval_batch_size", ev.batch, ""),
    ]


def _run_reasons(ctx: Context) -> Context:
    how = {
        "fixed": f"pad_to_sequence_len: every batch at {ctx.setup.seq_len} tokens a sample, the length counted",
        "variable": "each batch padded to its longest sample",
        "packed": f"sample_packing: samples packed into rows of {ctx.setup.seq_len} tokens: the fixed-length numbers",
    }[ctx.setup.lengths]
    ev = run_options.evaluation(ctx)
    text = run_options.evaluation_reason(ctx, ev)
    if ev is not None and ev.samples:
        text += f" (val_set_size takes a fraction only: {run_options.EVAL_FRACTION} of the data)"
    why = {"lengths": run_options.padding_line(ctx, how), "evaluation": text}
    return ctx.model_copy(update={"reasons": {**ctx.reasons, **why}})


def render(ctx: Context) -> tuple[dict[str, str], str]:
    ctx = _run_reasons(ctx)
    items = options(ctx)
    spell = {k: f"{k}: {yaml_scalar(v)}" for k, v, _ in items}
    by_field = {
        "method": spell.get("adapter", "(full fine-tuning: no adapter)"),
        "quant": spell.get("load_in_4bit", spell.get("load_in_8bit", "")),
        "precision": spell["bf16"] if ctx.setup.precision == "bf16" else spell["fp16"],
        "grad_checkpointing": spell["gradient_checkpointing"],
        "micro_batch": spell["micro_batch_size"],
        "grad_accum": spell["gradient_accumulation_steps"],
        "seq_len": spell["sequence_len"],
        "optimizer": spell["optimizer"],
        "attention": spell["attn_implementation"],
        "lengths": spell["pad_to_sequence_len"] + ", " + spell["sample_packing"],
        "evaluation": spell["val_set_size"],
    }
    head = comment_block(header_lines(ctx, "axolotl") + why_lines(ctx, by_field))
    command = "axolotl train config.yml"
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + command + "\n"
    return {"config.yml": head + "\n" + yaml_text(items), "run.sh": run_sh}, command
