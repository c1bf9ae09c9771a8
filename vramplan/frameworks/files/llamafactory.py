"""LLaMA-Factory target: ``train.yaml`` for ``llamafactory-cli train`` and the
``dataset_info.json`` that registers the local dataset (alpaca columns).

Setup -> LLaMA-Factory 0.9.5 (its parser reads the file back: tests/test_llamafactory_parse.py):
finetuning_type lora/freeze/full (QLoRA: lora + quantization_bit); ``bf16``/``fp16`` load
16-bit weights and upcast what trains to fp32 (LoRA adapters; full/freeze: fp32 master =
our amp-*), ``pure_bf16`` keeps trained weights bf16 (our bf16 for full/freeze);
``flash_attn`` disabled/sdpa/fa2; ``disable_gradient_checkpointing``; ``cutoff_len``;
``optim`` (transformers names). Not expressible: pure fp16 full/freeze (no ``pure_fp16``:
emitted as AMP fp16, re-estimated); a fractional lora_alpha (integer option).

Remote-code families (Qwen v1, Qwen-VL): ``trust_remote_code: true`` (hparams/model_args.py
``ModelArguments.trust_remote_code``, default false, passed to every from_pretrained by model/loader.py
``_get_init_kwargs``), template ``qwen`` (chatml, as Qwen's chat models), and LLaMA-Factory's own
handling of model_type ``qwen`` (model/patcher.py ``patch_config`` sets ``use_flash_attn`` and the
bf16/fp16/fp32 flags). Qwen-VL is not one of LLaMA-Factory's composite models
(model/model_utils/visual.py ``COMPOSITE_MODELS``), so neither ``lora_target: all``
(model/model_utils/misc.py ``find_all_linear_modules`` collects every Linear's last name) nor a short
name its tower shares (``mlp.c_proj``) keeps LoRA off the tower: such targets are written as the
language model's full module names, layer by layer.
"""

from __future__ import annotations

import json

from vramplan.frameworks.files import run_options
from vramplan.frameworks.files.common import (
    HF_OPTIM,
    Context,
    comment_block,
    header_lines,
    remote_code_lines,
    why_lines,
    yaml_scalar,
    yaml_text,
)

DATASET = "vramplan_data"
FLASH = {"eager": "disabled", "sdpa": "sdpa", "flash-attn-2": "fa2"}


def template_for(ctx: Context) -> str:
    """LLaMA-Factory's registered template name the model's family declares ("default" if none)."""
    return dict(ctx.spec.chat_templates).get("llamafactory", "default")


def lora_target(ctx: Context) -> str:
    """``lora_target``: ``all``, or the planned targets; on a model whose vision tower shares a
    target's short name and is not frozen by LLaMA-Factory (Qwen-VL), the language model's modules
    that target reaches, each by its full name (PEFT matches a name equal to the module's)."""
    s, spec = ctx.setup, ctx.spec
    targets = s.lora_target_list()
    if spec.vision is None or not spec.remote_code or not spec.layer_module:
        return "all" if targets is None else ",".join(targets)
    tower = [lin.name for lin in spec.vision.blocks]
    lm = [lin for lin in spec.attention + spec.mlp if lin.nn_linear]
    wanted = [lin.name for lin in lm] if targets is None else targets
    out: list[str] = []
    for t in wanted:
        if not any(n == t or n.endswith("." + t) for n in tower):
            out.append(t)
            continue
        hits = [lin.name for lin in lm if lin.name == t or lin.name.endswith("." + t)]
        out += [f"{spec.layer_module}.{i}.{name}" for i in range(spec.num_layers) for name in hits]
    return ",".join(out)


def options(ctx: Context) -> list[tuple[str, object, str]]:
    """(key, value, reason) in file order."""
    s = ctx.setup
    r = ctx.reasons
    items: list[tuple[str, object, str]] = [("model_name_or_path", ctx.model_path, "")]
    if ctx.spec.remote_code:
        items.append(("trust_remote_code", True, "the model is built by its repository's own code (see above)"))
    items += [
        ("stage", "sft", ""),
        ("do_train", True, ""),
        ("finetuning_type", "lora" if s.is_lora else s.method, r.get("method", "")),
    ]
    if s.is_lora:
        items += [
            ("lora_rank", s.lora_rank, r.get("lora_rank", "")),
            ("lora_alpha", int(s.lora_alpha), ""),
            ("lora_dropout", s.lora_dropout, ""),
            ("lora_target", lora_target(ctx), ""),
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
    ]
    items += run_items(ctx)
    items += [
        ("learning_rate", 1.0e-4 if s.is_lora else 1.0e-5, ""),
        ("num_train_epochs", 3.0, ""),
        ("output_dir", "output", ""),
        ("overwrite_output_dir", True, ""),
        ("logging_steps", 10, ""),
        ("save_steps", 500, ""),
        ("report_to", "none", ""),
    ]
    return items


def run_items(ctx: Context) -> list[tuple[str, object, str]]:
    """The lengths and evaluation keys (LLaMA-Factory 0.9.5).

    Lengths: ``packing: true`` packs samples into rows of ``cutoff_len`` (hparams/data_args.py ``packing``;
    ``DataArguments.__post_init__`` then takes one token off ``cutoff_len``); ``neat_packing: true`` keeps
    the packed samples apart, through flash-attention's varlen kernel (data/collator.py
    ``SFTDataCollatorWith4DAttentionMask``: under ``flash_attention_2`` it asserts one row a batch;
    under sdpa/eager it builds a ``(b, 1, s, s)`` mask in the compute dtype the plan does not count),
    so it is written for flash-attn-2 at micro-batch 1 and plain ``packing`` (samples of a row attend
    to each other) otherwise. Without packing the collator pads each batch to its longest sample (a
    multiple of 8: train/sft/workflow.py ``run_sft``); no option pads to ``cutoff_len``.

    Evaluation: ``val_size`` (a count, or a fraction of the dataset: hparams/data_args.py),
    ``eval_strategy: steps``, ``eval_steps``, ``per_device_eval_batch_size``; loss only unless
    ``compute_accuracy`` (``logits``: train/sft/metric.py ``eval_logit_processor`` keeps the argmax),
    with ``eval_accumulation_steps`` bounding the kept steps; ``generate``: ``predict_with_generate``
    with ``max_new_tokens`` (hparams/generating_args.py; the parser refuses it under ZeRO-3)."""
    s = ctx.setup
    items: list[tuple[str, object, str]] = []
    if s.lengths == "packed":
        neat = s.attention == "flash-attn-2" and s.micro_batch == 1
        why = (
            "samples kept apart by flash-attention's varlen kernel"
            if neat
            else "neat_packing needs flash-attn-2 at micro-batch 1 here: the samples of a row attend to each other"
        )
        items += [("packing", True, ctx.reasons.get("lengths", "")), ("neat_packing", neat, why)]
    ev = run_options.evaluation(ctx)
    if ev is None:
        return items + [("eval_strategy", "no", ctx.reasons.get("evaluation", ""))]
    items += [
        ("val_size", ev.held_out(), "held out of the dataset for evaluation"),
        ("eval_strategy", "steps", ctx.reasons.get("evaluation", "")),
        ("eval_steps", run_options.EVAL_STEPS, ""),
        ("per_device_eval_batch_size", ev.batch, ""),
    ]
    if ev.mode == "logits":
        items += [("compute_accuracy", True, ""), ("eval_accumulation_steps", ev.kept_steps, "")]
    if ev.mode == "generate":
        needs = "its metric needs jieba, nltk and rouge_chinese installed (hparams/parser.py check_dependencies)"
        items += [("predict_with_generate", True, needs), ("max_new_tokens", ev.new_tokens, "")]
    return items


def _run_reasons(ctx: Context) -> Context:
    how = {
        "fixed": "LLaMA-Factory pads each batch to its longest sample (no option pads to cutoff_len): a batch"
        " whose samples reach the cap is the one counted",
        "variable": "each batch padded to its longest sample (a multiple of 8)",
        "packed": f"samples packed into rows of cutoff_len ({ctx.setup.seq_len}; LLaMA-Factory keeps one token"
        " of it back): the fixed-length numbers",
    }[ctx.setup.lengths]
    why = {
        "lengths": run_options.padding_line(ctx, how),
        "evaluation": run_options.evaluation_reason(ctx, run_options.evaluation(ctx)),
    }
    return ctx.model_copy(update={"reasons": {**ctx.reasons, **why}})


def render(ctx: Context) -> tuple[dict[str, str], str]:
    ctx = _run_reasons(ctx)
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
        "lengths": spell.get("packing", "(no option: each batch padded to its longest sample)"),
        "evaluation": spell["eval_strategy"],
    }
    lines = header_lines(ctx, "llamafactory") + why_lines(ctx, by_field)
    if ctx.spec.remote_code:
        lines += remote_code_lines(ctx, "trust_remote_code: true below tells LLaMA-Factory to")
    head = comment_block(lines)
    yaml = head + "\n" + yaml_text(items)
    info = {DATASET: {"file_name": ctx.data}}
    command = "llamafactory-cli train train.yaml"
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + command + "\n"
    return {"train.yaml": yaml, "dataset_info.json": json.dumps(info, indent=2) + "\n", "run.sh": run_sh}, command
