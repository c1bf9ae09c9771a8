"""Remote-code families (Qwen v1, Qwen-VL) emitted for ms-swift and LLaMA-Factory: each trainer's own
parser accepts the emitted LoRA command / train.yaml in its venv, and no model code runs while it does
(tests/remote_code_probe.py: a model folder with the catalog's config.json only, transformers'
remote-code loaders refused and watched, the hub offline).

How far the parse goes: swift's ``SftArguments.__post_init__`` reads the model's config through
swift/model/model_meta.py ``_get_model_info``, which calls ``AutoConfig.from_pretrained(model_dir,
trust_remote_code=True)`` at parse time. Where config.json has an ``auto_map`` (the catalog's Qwen-VL-Chat
copy does; the real Qwen-7B repository does too) transformers asks for the repository's
``configuration_qwen.QWenConfig``: in the user's run that file is there and swift's parse runs it; here the
folder has no .py file and the probe refuses the loader, swift falls back to the raw config dict
(``PretrainedConfig.get_config_dict``) and the parse completes; the test checks that this refused
request is the only one. The model type comes from ``--model_type``. LLaMA-Factory's ``get_train_args``
validates the options without reading the model: no request at all. Neither builds the tokenizer or the
model (that would run the repository's code): what that code does under each trainer's transformers is
not tested here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from vramplan import plan
from vramplan.emit import emit
from vramplan.tables import tables_dir

pytestmark = pytest.mark.e2e

PROBE = Path(__file__).with_name("remote_code_probe.py")
ENVS = {"swift": "VRAMPLAN_SWIFT_PYTHON", "llamafactory": "VRAMPLAN_LLAMAFACTORY_PYTHON"}
MODELS = ("qwen-7b", "qwen-vl-chat")


def python_for(trainer: str) -> str:
    exe = os.environ.get(ENVS[trainer], "")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs these tests: .ci/run sets {ENVS[trainer]}")
        pytest.skip(f"{ENVS[trainer]} (python with {trainer}) is not set")
    return exe


CONFIG_CLASS = "get_class_from_dynamic_module('configuration_qwen.QWenConfig'"


def has_auto_map(catalog: str) -> bool:
    return "auto_map" in json.loads((tables_dir() / "models" / catalog / "config.json").read_text())


def config_only(root: Path, catalog: str) -> str:
    folder = root / catalog
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tables_dir() / "models" / catalog / "config.json", folder / "config.json")
    return str(folder)


def probe(trainer: str, jobs: list[dict], cwd: Path) -> list[dict]:
    proc = subprocess.run(
        [python_for(trainer), str(PROBE), trainer],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def words(run_sh: str) -> list[str]:
    body = "\n".join(line for line in run_sh.splitlines() if not line.startswith(("#", "set ")))
    return shlex.split(body.replace("\\\n", " "))


def test_swift_parses_the_qwen_v1_and_qwen_vl_commands_without_running_model_code(tmp_path: Path) -> None:
    python_for("swift")
    (tmp_path / "data.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    outs = [emit(plan(m, gpu="a100-80g", method="lora", trainer="swift"), "swift") for m in MODELS]
    jobs = [
        {"words": words(o.files["run.sh"]), "model_dir": config_only(tmp_path / "models", m)}
        for m, o in zip(MODELS, outs, strict=True)
    ]
    results = probe("swift", jobs, tmp_path)
    attempts = results[-1]["remote_code_attempts"]  # the whole run's, in order
    want = [f"{CONFIG_CLASS}, {jobs[i]['model_dir']!r})" for i, m in enumerate(MODELS) if has_auto_map(m)]
    assert attempts == want  # swift asked for the config class of each model whose config names one, refused
    for model, out, r in zip(MODELS, outs, results, strict=True):
        assert "error" not in r, r["error"]
        assert r["model_dir_files"] == ["config.json"]
        assert [a for a in attempts if not a.startswith(CONFIG_CLASS)] == []  # nothing imported, nothing opened
        assert r["model_type"] == {"qwen-7b": "qwen", "qwen-vl-chat": "qwen_vl"}[model]
        s = out.setup
        assert (r["tuner_type"], r["lora_rank"], r["lora_alpha"], r["target_modules"]) == (
            "lora",
            s.lora_rank,
            s.lora_alpha,
            ["all-linear"],
        )
        assert (r["max_length"], r["per_device_train_batch_size"], r["torch_dtype"]) == (
            s.seq_len,
            s.micro_batch,
            "bfloat16",
        )


def test_llamafactory_parses_the_qwen_v1_and_qwen_vl_yaml_without_running_model_code(tmp_path: Path) -> None:
    python_for("llamafactory")
    outs = [emit(plan(m, gpu="a100-80g", method="lora", trainer="llamafactory"), "llamafactory") for m in MODELS]
    jobs = []
    for m, o in zip(MODELS, outs, strict=True):
        folder = tmp_path / "emit" / m
        folder.mkdir(parents=True)
        for name, text in o.files.items():
            (folder / name).write_text(text)
        jobs.append({"yaml": str(folder / "train.yaml"), "model_dir": config_only(tmp_path / "models", m)})
    results = probe("llamafactory", jobs, tmp_path)
    for model, out, r in zip(MODELS, outs, results, strict=True):
        assert "error" not in r, r["error"]
        assert r["remote_code_attempts"] == [] and r["model_dir_files"] == ["config.json"]
        assert r["trust_remote_code"] is True and r["template"] == "qwen" and r["template_registered"]
        assert (r["finetuning_type"], r["lora_rank"], r["cutoff_len"]) == ("lora", out.setup.lora_rank, 2048)
        if model == "qwen-7b":
            assert r["lora_target"] == ["all"]
        else:  # the tower's mlp.c_proj is not reached: the language model's are named in full
            assert "mlp.c_proj" not in r["lora_target"] and "all" not in r["lora_target"]
            assert sum(t.endswith(".mlp.c_proj") for t in r["lora_target"]) == 32
            assert all(t.startswith("transformer.h.") for t in r["lora_target"] if t.endswith("mlp.c_proj"))
