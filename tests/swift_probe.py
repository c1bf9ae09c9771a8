"""Run by ms-swift's own venv (VRAMPLAN_SWIFT_PYTHON) from tests/test_swift_parse.py: parse an emitted
``swift sft`` command with swift's own parser and print, as JSON, the settings swift ends up with.

stdin: a JSON list of jobs ``{"words": [...], "model_dir": "..."}``, stdout a JSON list of results (one
per job, ``{"error": ...}`` where swift raised) where ``words`` is the shell-split command
(``NPROC_PER_NODE=2 swift sft --opt value ...``) and ``model_dir`` a local folder standing in for
``--model`` (config.json only: swift reads the config to pick model type and dtype, no weights).

Everything printed is read from swift's objects after ``SftArguments.__post_init__`` (which builds the
transformers ``TrainingArguments`` swift trains with), never from the emitted words. The only change
to the environment: transformers' bf16 check is told a bf16 GPU exists (this is a CPU machine).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    jobs = json.load(sys.stdin)
    import transformers.training_args as ta

    ta.is_torch_bf16_gpu_available = lambda: True
    results = []
    for job in jobs:
        try:
            results.append(parsed(job))
        except Exception as e:  # swift's own validation refusing the command
            results.append({"error": f"{type(e).__name__}: {e}"})
    print(json.dumps(results))


def parsed(job: dict) -> dict:
    saved = dict(os.environ)
    try:
        return _parsed(job)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _parsed(job: dict) -> dict:
    words = list(job["words"])
    env = {}
    while "=" in words[0]:
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    assert words[:2] == ["swift", "sft"], words[:2]
    argv = words[2:]
    i = argv.index("--model")
    argv[i + 1] = job["model_dir"]
    os.environ.update(env)
    from swift.arguments import SftArguments
    from swift.cli.main import get_torchrun_args
    from swift.utils import parse_args

    a, rest = parse_args(SftArguments, argv)
    if rest:  # what SwiftPipeline._parse_args raises on (swift/pipelines/base.py)
        return {"error": f"ValueError: remaining_argv: {rest}"}
    t = a.training_args
    q = a.get_quantization_config()
    torchrun = get_torchrun_args() or []
    out = {
        "tuner_type": a.tuner_type,
        "torch_dtype": str(a.torch_dtype).replace("torch.", ""),
        "bf16": t.bf16,
        "fp16": t.fp16,
        "quant": None
        if q is None
        else {
            "load_in_4bit": q.load_in_4bit,
            "load_in_8bit": q.load_in_8bit,
            "bnb_4bit_quant_type": q.bnb_4bit_quant_type,
            "bnb_4bit_use_double_quant": q.bnb_4bit_use_double_quant,
            "bnb_4bit_compute_dtype": str(q.bnb_4bit_compute_dtype).replace("torch.", ""),
        },
        "lora_rank": a.lora_rank,
        "lora_alpha": a.lora_alpha,
        "lora_dropout": a.lora_dropout,
        "target_modules": a.target_modules,
        "modules_to_save": a.modules_to_save,
        "freeze_parameters_ratio": a.freeze_parameters_ratio,
        "trainable_parameters_regex": a.trainable_parameters_regex,
        "attn_impl": a.attn_impl,
        "max_length": a.max_length,
        "truncation_strategy": a.truncation_strategy,
        "use_logits_to_keep": a.use_logits_to_keep,
        "per_device_train_batch_size": t.per_device_train_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "optim": str(getattr(t.optim, "value", t.optim)),
        "gradient_checkpointing": t.gradient_checkpointing,
        "gradient_checkpointing_kwargs": t.gradient_checkpointing_kwargs,
        "nproc_per_node": int(torchrun[torchrun.index("--nproc_per_node") + 1]) if torchrun else 1,
        "model_type": a.model_type,
        "template": a.template,
        "dataset": a.dataset,
        "packing": a.packing,
        "padding_free": a.padding_free,
        "split_dataset_ratio": a.split_dataset_ratio,
        "eval_strategy": str(getattr(t.eval_strategy, "value", t.eval_strategy)),
        "eval_steps": t.eval_steps,
        "per_device_eval_batch_size": t.per_device_eval_batch_size,
        "eval_accumulation_steps": t.eval_accumulation_steps,
        "eval_metric": a.eval_metric,
        "predict_with_generate": t.predict_with_generate,
        "max_new_tokens": a.max_new_tokens,
    }
    return out


if __name__ == "__main__":
    main()
