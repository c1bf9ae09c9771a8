"""Run inside the LLaMA-Factory venv: parse each train.yaml named on the command line with
LLaMA-Factory's own ``get_train_args`` (what ``llamafactory-cli train`` calls,
llamafactory/hparams/parser.py) and print, one JSON line per file, the settings read back from
the parsed dataclasses (``READBACK {...}``) or the parser's refusal (``REFUSED {...}``).

Two device checks a CPU fails are answered here, nothing else: transformers refuses ``bf16``
without a GPU unless ``use_cpu`` is set (added to the parsed options, not to the file), and
``pure_bf16`` asks ``is_torch_bf16_gpu_available()`` (answered true); and the metric packages a
generating evaluation needs are taken as installed."""

import json
import sys

import llamafactory.hparams.parser as parser
import yaml
from llamafactory.data.template import TEMPLATES

parser.is_torch_bf16_gpu_available = lambda: True
# predict_with_generate's metric packages (jieba, nltk, rouge_chinese: hparams/parser.py check_dependencies)
# are not in this venv; the emitted header says a generating evaluation needs them
_check_version = parser.check_version
METRIC_PACKAGES = ("jieba", "nltk", "rouge_chinese")
parser.check_version = lambda req, mandatory=False: (
    None if req in METRIC_PACKAGES else _check_version(req, mandatory=mandatory)
)


def value(x):
    return str(getattr(x, "value", x)) if x is not None else None


for path in sys.argv[1:]:
    args = yaml.safe_load(open(path))
    args["use_cpu"] = True
    try:
        model, data, training, finetuning, _ = parser.get_train_args(args)
    except Exception as exc:  # reported per file: one refusal does not hide the others
        print("REFUSED " + json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}))
        continue
    out = {
        "file": path,
        "finetuning_type": finetuning.finetuning_type,
        "lora_rank": finetuning.lora_rank,
        "lora_alpha": finetuning.lora_alpha,
        "lora_dropout": finetuning.lora_dropout,
        "lora_target": list(finetuning.lora_target),
        "additional_target": list(finetuning.additional_target or []),
        "freeze_trainable_layers": finetuning.freeze_trainable_layers,
        "freeze_trainable_modules": list(finetuning.freeze_trainable_modules),
        "pure_bf16": finetuning.pure_bf16,
        "quantization_bit": model.quantization_bit,
        "quantization_method": value(model.quantization_method),
        "quantization_type": model.quantization_type,
        "double_quantization": model.double_quantization,
        "compute_dtype": str(model.compute_dtype),
        "flash_attn": value(model.flash_attn),
        "disable_gradient_checkpointing": model.disable_gradient_checkpointing,
        "use_reentrant_gc": model.use_reentrant_gc,
        "upcast_layernorm": model.upcast_layernorm,
        "upcast_lmhead_output": model.upcast_lmhead_output,
        "model_max_length": model.model_max_length,
        "cutoff_len": data.cutoff_len,
        "template": data.template,
        "template_registered": data.template in TEMPLATES,
        "dataset": list(data.dataset or []),
        "bf16": training.bf16,
        "fp16": training.fp16,
        "optim": value(training.optim),
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "packing": data.packing,
        "neat_packing": data.neat_packing,
        "val_size": data.val_size,
        "eval_strategy": value(training.eval_strategy),
        "eval_steps": training.eval_steps,
        "per_device_eval_batch_size": training.per_device_eval_batch_size,
        "eval_accumulation_steps": training.eval_accumulation_steps,
        "compute_accuracy": finetuning.compute_accuracy,
        "predict_with_generate": training.predict_with_generate,
    }
    print("READBACK " + json.dumps(out))
