"""ms-swift target: the ``swift sft`` command line, in ``run.sh``.

Setup -> ms-swift 4.x (``swift sft``; its argument dataclasses ``swift/arguments/sft_args.py``
``SftArguments``, ``tuner_args.py``, ``base_args/*.py``; the command is parsed by swift's own parser in
tests/test_swift_parse.py): ``--tuner_type`` lora/full (QLoRA: lora + ``--quant_method bnb --quant_bits 4|8``; a
GPTQ/AWQ checkpoint is detected from the model and needs no quant options); freeze: full
with ``--freeze_parameters_ratio 1`` and the top layers re-activated by
``--trainable_parameters_regex``; ``--torch_dtype`` with ``--bf16``/``--fp16`` spelled out
(ms-swift turns fp16 on for float32 weights unless told otherwise; AMP = float32 weights +
a 16-bit flag); ``--attn_impl``; ``--gradient_checkpointing``; ``--optim`` (transformers
names); ``--max_length``. Every option is given explicitly: ms-swift's defaults differ from
transformers' (gradient accumulation, checkpointing, lora_alpha). ms-swift 4.0 renamed 3.x's
``--train_type`` to ``--tuner_type`` (3.x rejects the 4.x spelling and 4.x the 3.x one); of the other
options written here none was renamed or dropped in 4.x (checked against 4.6.0's dataclasses).

Llama (and Yi, a ``llama`` config): ``--model_type llama|yi --template ...`` (arch/llama.py): swift resolves
a model by its hub id, else by its config's architecture, which several of its llama model types share, and
4.6.0 registers Llama-3.1 only under its old id (Meta-Llama-3.1-8B), so ``meta-llama/Llama-3.1-8B`` alone is
refused (tests/test_swift_parse.py).

Remote-code families (Qwen v1, Qwen-VL): ``--model_type qwen|qwen_vl`` names swift's registry entry
(swift/model/models/qwen.py registers both under ``architectures ['QWenLMHeadModel']``, so a local
folder's config does not say which). swift needs no option to run the repository's code: its
``ModelLoader.default_trust_remote_code`` is True (swift/model/register.py), and model_meta.py
``_get_model_info`` reads the config with ``trust_remote_code`` on while parsing, so it loads config,
tokenizer and model trusting the repository's code whatever the command says; ``run.sh`` says so in
its header. Qwen-VL trains as text only (no images: refused before), its tower frozen by swift's
``freeze_vit`` default, and ``all-linear`` reaches the language model only (swift's
``get_multimodal_target_regex`` over model_arch qwen_vl's ``transformer.h``).
"""

from __future__ import annotations

import re

from vramplan.errors import VramplanError
from vramplan.frameworks.files import run_options
from vramplan.frameworks.files.common import (
    HF_OPTIM,
    Context,
    comment_block,
    header_lines,
    remote_code_lines,
    sh_quote,
    why_lines,
)

EVAL_OPTIONS = (
    "split_dataset_ratio",
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "eval_metric",
    "eval_accumulation_steps",
    "predict_with_generate",
    "max_new_tokens",
)
ATTN = {"eager": "eager", "sdpa": "sdpa", "flash-attn-2": "flash_attn"}
TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "amp-bf16": "float32", "amp-fp16": "float32"}


def arguments(ctx: Context) -> list[tuple[str, list[str]]]:
    """(option, values) in command-line order."""
    s = ctx.setup
    if ctx.data != ctx.data.strip():
        # ms-swift 4.x swift/dataset/dataset_syntax.py DatasetSyntax.parse: an existing file is taken as it is
        # (so '#' and ':' in its name are safe), but the value is strip()ped on the way
        raise VramplanError("data", f"{ctx.data!r}: ms-swift strips spaces around --dataset; rename the file")
    args: list[tuple[str, list[str]]] = [("model", [ctx.model_path])]
    model_type = dict(ctx.spec.trainer_model_types).get("swift")
    if model_type:
        args.append(("model_type", [model_type]))
    template = dict(ctx.spec.chat_templates).get("swift")
    if template:
        args.append(("template", [template]))
    if "/" in ctx.model_path and not ctx.model_path.startswith((".", "/")):
        args.append(("use_hf", ["true"]))
    args += [
        ("dataset", [ctx.data]),
        ("tuner_type", ["lora" if s.is_lora else "full"]),
        ("torch_dtype", [TORCH_DTYPE[s.precision]]),
        ("bf16", ["true" if s.precision in ("bf16", "amp-bf16") else "false"]),
        ("fp16", ["true" if s.precision in ("fp16", "amp-fp16") else "false"]),
    ]
    if s.method == "qlora" and s.quant.startswith("bnb-"):
        half = "float16" if s.precision.endswith("fp16") else "bfloat16"
        args += [("quant_method", ["bnb"]), ("quant_bits", ["8" if s.quant == "bnb-int8" else "4"])]
        if s.quant != "bnb-int8":
            args += [
                ("bnb_4bit_quant_type", ["fp4" if s.quant == "bnb-fp4" else "nf4"]),
                ("bnb_4bit_use_double_quant", ["true" if s.quant == "bnb-nf4-dq" else "false"]),
                ("bnb_4bit_compute_dtype", [half]),
            ]
    if s.is_lora:
        targets = s.lora_target_list()
        args += [
            ("lora_rank", [str(s.lora_rank)]),
            ("lora_alpha", [str(int(s.lora_alpha))]),
            ("lora_dropout", [f"{s.lora_dropout:g}"]),
            ("target_modules", ["all-linear"] if targets is None else targets),
        ]
        if s.trainable_extra:
            extra = [ctx.spec.embedding_name if m == "embeddings" else "lm_head" for m in s.trainable_extra]
            args.append(("modules_to_save", extra))
    if s.method == "freeze":
        top = range(max(0, ctx.spec.num_layers - s.freeze_trainable_layers), ctx.spec.num_layers)
        layers = re.escape(ctx.spec.layer_module or "model.layers")
        args += [
            ("freeze_parameters_ratio", ["1"]),
            ("trainable_parameters_regex", ["^" + layers + r"\.(" + "|".join(str(i) for i in top) + r")\."]),
        ]
    args += [
        ("attn_impl", [ATTN[s.attention]]),
        ("gradient_checkpointing", ["true" if s.grad_checkpointing else "false"]),
        ("max_length", [str(s.seq_len)]),
        ("per_device_train_batch_size", [str(s.micro_batch)]),
        ("gradient_accumulation_steps", [str(s.grad_accum)]),
        ("optim", [HF_OPTIM[s.optimizer]]),
    ]
    args += run_arguments(ctx)
    args += [
        ("learning_rate", ["1e-4" if s.is_lora else "1e-5"]),
        ("num_train_epochs", ["3"]),
        ("output_dir", ["output"]),
        ("logging_steps", ["10"]),
    ]
    return args


def run_arguments(ctx: Context) -> list[tuple[str, list[str]]]:
    """The lengths and evaluation options (ms-swift 4.6.0).

    Lengths: ``--packing true`` packs samples into rows of ``--max_length`` (arguments/base_args/base_args.py
    ``packing``, ``packing_length`` None: the max length) and turns ``padding_free`` on, which
    ``SftArguments._check_padding_free`` (arguments/sft_args.py) refuses without a flash-attention
    ``--attn_impl``. Without packing swift pads each batch to its longest sample: ``SwiftMixin._get_data_collator``
    (trainers/mixin.py) passes ``padding_to`` only for longlora, and no option pads to ``--max_length``; a
    ``fixed`` plan counts the batch whose samples reach the cap.

    Evaluation: ``--split_dataset_ratio`` holds out a fraction of ``--dataset`` (arguments/base_args/data_args.py;
    a ratio only, so ``--eval-samples`` is not written); ``--eval_strategy steps --eval_steps``
    (``SftArguments._init_eval_strategy``; without a validation set ``__post_init__`` sets 'no'),
    ``--per_device_eval_batch_size``. Loss only by default (``_init_metric``: no ``eval_metric`` for causal_lm);
    ``logits``: ``--eval_metric acc`` (metrics/acc.py keeps each step's argmax) with ``--eval_accumulation_steps``
    bounding the kept steps; ``generate``: ``--predict_with_generate true --max_new_tokens`` (``eval_metric``
    'nlg', which needs jieba installed)."""
    s = ctx.setup
    run_options.needs_flash_for_packing(ctx, "swift", "SftArguments._check_padding_free refuses the others")
    args: list[tuple[str, list[str]]] = [("packing", ["true"])] if s.lengths == "packed" else []
    ev = run_options.evaluation(ctx)
    if ev is None:
        return args + [("eval_strategy", ["no"])]
    args += [
        ("split_dataset_ratio", [str(run_options.EVAL_FRACTION)]),
        ("eval_strategy", ["steps"]),
        ("eval_steps", [str(run_options.EVAL_STEPS)]),
        ("per_device_eval_batch_size", [str(ev.batch)]),
    ]
    if ev.mode == "logits":
        args += [("eval_metric", ["acc"]), ("eval_accumulation_steps", [str(ev.kept_steps)])]
    if ev.mode == "generate":
        args += [("predict_with_generate", ["true"]), ("max_new_tokens", [str(ev.new_tokens)])]
    return args


def render(ctx: Context) -> tuple[dict[str, str], str]:
    args = arguments(ctx)
    spell = {k: f"--{k} {' '.join(v)}" for k, v in args}
    by_field = {
        "method": spell["tuner_type"],
        "quant": spell.get("quant_bits", ""),
        "precision": spell["torch_dtype"] + " " + (spell["bf16"] if "bf16" in ctx.setup.precision else spell["fp16"]),
        "grad_checkpointing": spell["gradient_checkpointing"],
        "micro_batch": spell["per_device_train_batch_size"],
        "grad_accum": spell["gradient_accumulation_steps"],
        "seq_len": spell["max_length"],
        "optimizer": spell["optim"],
        "attention": spell["attn_impl"],
        "lengths": spell.get("packing", "(no option: each batch padded to its longest sample)"),
        "evaluation": " ".join(spell[k] for k in EVAL_OPTIONS if k in spell),
    }
    ev = run_options.evaluation(ctx)
    how = {
        "fixed": "ms-swift pads each batch to its longest sample (no option pads to --max_length): a batch whose"
        " samples reach the cap is the one counted",
        "variable": "each batch padded to its longest sample (ms-swift's collator)",
        "packed": f"--packing true: rows of {ctx.setup.seq_len} tokens, padding-free under flash-attention",
    }[ctx.setup.lengths]
    why = {"lengths": run_options.padding_line(ctx, how), "evaluation": run_options.evaluation_reason(ctx, ev)}
    if ev is not None and ev.samples:
        why["evaluation"] += f" (--split_dataset_ratio takes a fraction only: {run_options.EVAL_FRACTION} of the data)"
    ctx = ctx.model_copy(update={"reasons": {**ctx.reasons, **why}})
    lines = header_lines(ctx, "swift") + why_lines(ctx, by_field)
    lines.append("ms-swift 4.x options (--tuner_type; ms-swift 3.x spelled it --train_type)")
    if ctx.spec.remote_code:
        lines += remote_code_lines(ctx, "ms-swift loads every model with trust_remote_code on (its default)")
    head = comment_block(lines)
    env = f"NPROC_PER_NODE={ctx.setup.num_gpus} " if ctx.setup.num_gpus > 1 else ""
    parts = [env + "swift sft"] + [f"--{k} " + " ".join(sh_quote(v) for v in vals) for k, vals in args]
    command = " \\\n    ".join(parts)
    run_sh = "#!/usr/bin/env bash\n" + head + "\nset -euo pipefail\n" + command + "\n"
    return {"run.sh": run_sh}, command.replace(" \\\n    ", " ")
