"""Run inside the axolotl venv: validate each config.yml named on the command line as
``axolotl train`` does (axolotl/cli/config.py ``load_cfg``: ``validate_config`` with the GPU's
capabilities, then ``normalize_config``) and print, one JSON line per file, the settings read
back from the validated config (``READBACK {...}``) or the refusal (``REFUSED {...}``).

argv[1] is a local model folder (a config.json) put in ``base_model``: ``normalize_config``
reads the model's config, and this machine reaches no model hub. There is no GPU here, so the
capabilities ``load_cfg`` would probe (``gpu_capabilities``) are those of one bf16 GPU (sm_80)."""

import json
import sys

import yaml
from axolotl.utils.config import normalize_config, validate_config
from axolotl.utils.dict import DictDefault

CAPABILITIES = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_80"}
ENV = {"torch_version": "2.13.0"}
KEYS = [
    "adapter",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_config_kwargs",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_linear",
    "lora_target_modules",
    "lora_modules_to_save",
    "unfrozen_parameters",
    "lora_mlp_kernel",
    "lora_qkv_kernel",
    "lora_o_kernel",
    "lora_embedding_kernel",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "bf16",
    "fp16",
    "sequence_len",
    "pad_to_sequence_len",
    "sample_packing",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "optimizer",
    "attn_implementation",
    "val_set_size",
    "eval_strategy",
    "eval_steps",
    "eval_batch_size",
]

for path in sys.argv[2:]:
    cfg = DictDefault(yaml.safe_load(open(path)))
    cfg.base_model = sys.argv[1]
    try:
        cfg = validate_config(cfg, capabilities=CAPABILITIES, env_capabilities=ENV)
        normalize_config(cfg)
    except Exception as exc:  # reported per file: one refusal does not hide the others
        print("REFUSED " + json.dumps({"file": path, "error": f"{type(exc).__name__}: {exc}"}))
        continue
    out = {k: cfg.get(k) for k in KEYS}
    out["optimizer"] = str(getattr(out["optimizer"], "value", out["optimizer"]))
    out["torch_dtype"] = str(cfg.torch_dtype)
    out["file"] = path
    print("READBACK " + json.dumps(out, default=str))
