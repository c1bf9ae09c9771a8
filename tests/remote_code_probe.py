"""Run by a trainer's own venv from tests/test_remote_code_parse.py: parse the emitted configs of a
remote-code family (Qwen v1, Qwen-VL) with the trainer's own parser, and prove no model code ran.

``python remote_code_probe.py swift|llamafactory`` reads a JSON list of jobs on stdin (swift:
``{"words": [...], "model_dir": ...}`` as tests/swift_probe.py takes; llamafactory: ``{"yaml": path,
"model_dir": ...}``) and prints one JSON list: per job the settings read back from the trainer's parsed
arguments, or ``{"error": ...}`` where its parser refused. ``model_dir`` holds the catalog's config.json
and nothing else, so there is no repository code to run; on top of that the probe

- refuses every way transformers loads a repository's code (``get_class_from_dynamic_module``,
  ``get_class_in_module``, ``get_cached_module_file``, wherever a loaded module holds them) and
  records each attempt,
- records, through an audit hook, any import of ``transformers_modules.*`` (where transformers
  puts a repository's code) and any file opened under ``model_dir`` other than config.json,
- runs with ``HF_HUB_OFFLINE=1``,

and every result carries ``remote_code_attempts`` and ``model_dir_files`` for the test to check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
ATTEMPTS: list[str] = []
LOADERS = ("get_class_from_dynamic_module", "get_class_in_module", "get_cached_module_file")
MODEL_DIRS: list[str] = []


def _refuse(name: str):
    def refuse(*args, **kwargs):
        ATTEMPTS.append(f"{name}{args[:2]!r}")
        raise RuntimeError(f"remote code refused by the probe: {name}")

    return refuse


def _audit(event: str, args: tuple) -> None:
    if event == "import" and str(args[0]).startswith("transformers_modules"):
        ATTEMPTS.append(f"import {args[0]}")
    if event == "open" and isinstance(args[0], str) and any(args[0].startswith(d) for d in MODEL_DIRS):
        if Path(args[0]).name != "config.json":
            ATTEMPTS.append(f"open {args[0]}")


def guard() -> None:
    """Replace transformers' remote-code loaders in every module loaded so far that holds them."""
    for mod in list(sys.modules.values()):
        held = getattr(mod, "__dict__", {})  # not getattr(mod, name): lazy modules import on access
        for name in LOADERS:
            if callable(held.get(name)):
                held[name] = _refuse(name)


def swift_jobs(jobs: list[dict]) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    import swift_probe  # tests/swift_probe.py: swift's own parse, read back
    import transformers.training_args as ta
    from swift.arguments import SftArguments  # noqa: F401  (import swift's modules before guarding them)

    ta.is_torch_bf16_gpu_available = lambda: True
    guard()
    out = []
    for job in jobs:
        try:
            out.append(swift_probe.parsed(job))
        except Exception as e:
            out.append({"error": f"{type(e).__name__}: {e}"})
    return out


def llamafactory_jobs(jobs: list[dict]) -> list[dict]:
    import llamafactory.hparams.parser as parser
    import yaml
    from llamafactory.data.template import TEMPLATES

    parser.is_torch_bf16_gpu_available = lambda: True
    guard()
    out = []
    for job in jobs:
        args = yaml.safe_load(open(job["yaml"]))
        args["model_name_or_path"] = job["model_dir"]
        args["use_cpu"] = True
        try:
            model, data, training, finetuning, _ = parser.get_train_args(args)
        except Exception as e:
            out.append({"error": f"{type(e).__name__}: {e}"})
            continue
        out.append(
            {
                "trust_remote_code": model.trust_remote_code,
                "finetuning_type": finetuning.finetuning_type,
                "lora_rank": finetuning.lora_rank,
                "lora_alpha": finetuning.lora_alpha,
                "lora_target": list(finetuning.lora_target),
                "quantization_bit": model.quantization_bit,
                "flash_attn": str(getattr(model.flash_attn, "value", model.flash_attn)),
                "cutoff_len": data.cutoff_len,
                "template": data.template,
                "template_registered": data.template in TEMPLATES,
                "bf16": training.bf16,
                "per_device_train_batch_size": training.per_device_train_batch_size,
            }
        )
    return out


def main() -> None:
    trainer = sys.argv[1]
    jobs = json.load(sys.stdin)
    for j in jobs:
        MODEL_DIRS.extend({j["model_dir"], str(Path(j["model_dir"]).resolve())})
    sys.addaudithook(_audit)
    results = (swift_jobs if trainer == "swift" else llamafactory_jobs)(jobs)
    for job, r in zip(jobs, results, strict=True):
        r["model_dir_files"] = sorted(p.name for p in Path(job["model_dir"]).iterdir())
        r["remote_code_attempts"] = list(ATTEMPTS)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
