"""The ``swift sft`` command vramplan writes, parsed by ms-swift's own parser (ms-swift 4.x in its own venv,
VRAMPLAN_SWIFT_PYTHON, made by .ci/venv-swift.sh), and the settings swift ends up with read back from swift's
parsed arguments (tests/swift_probe.py) — never from the emitter — equal the setup the plan estimated.

A local folder holding the catalog's config.json stands in for ``--model`` (swift reads the config to pick the
model type and dtype; no weights are loaded by the parse).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OPTIM_BACK
from vramplan import plan
from vramplan.emit import emit
from vramplan.setup import Setup, make_setup
from vramplan.tables import tables_dir

pytestmark = pytest.mark.e2e

SWIFT_PYTHON = os.environ.get("VRAMPLAN_SWIFT_PYTHON", "")
if not SWIFT_PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_SWIFT_PYTHON (python with ms-swift 4.x) is not set", allow_module_level=True)

PROBE = Path(__file__).with_name("swift_probe.py")


MODEL = "qwen2.5-0.5b"
GRID = {
    "lora": dict(method="lora", lora_rank=16, lora_alpha=32, lora_targets="q_proj,v_proj", seq_len=1024),
    "lora-all-extra": dict(method="lora", trainable_extra=("embeddings", "lm_head"), seq_len=512, grad_accum=8),
    "qlora-nf4": dict(method="qlora", quant="bnb-nf4", optimizer="paged-adamw-8bit", seq_len=2048),
    "qlora-nf4-dq": dict(method="qlora", quant="bnb-nf4-dq", attention="eager", seq_len=1024, micro_batch=2),
    "qlora-fp4": dict(method="qlora", quant="bnb-fp4", seq_len=512),
    "qlora-int8": dict(method="qlora", quant="bnb-int8", seq_len=512),
    "full-bf16": dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=512),
    "full-amp": dict(
        method="full", precision="amp-bf16", optimizer="adamw-fused", grad_checkpointing=False, seq_len=256
    ),
    "freeze": dict(method="freeze", freeze_trainable_layers=4, seq_len=512),
    "ddp-lora": dict(method="lora", num_gpus=2, parallel="ddp", grad_accum=4, seq_len=1024),
    # the run around the step: lengths and evaluation (a generating evaluation needs jieba, not in the venv)
    "packed-loss": dict(method="lora", attention="flash-attn-2", lengths="packed", evaluation="loss", eval_batch=4),
    "variable-logits": dict(method="lora", lengths="variable", evaluation="logits", eval_batch=2, eval_samples=64),
}
#: the Setup fields of the run around the step, checked by test_swift_parses_lengths_and_evaluation
RUN_DEFAULTS = dict(lengths="fixed", avg_tokens=0, evaluation="auto", eval_batch=0, eval_samples=0)


def swift_python() -> str:
    if not SWIFT_PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_SWIFT_PYTHON")
    return SWIFT_PYTHON


def command_words(run_sh: str) -> list[str]:
    body = "\n".join(line for line in run_sh.splitlines() if not line.startswith(("#", "set ")))
    return shlex.split(body.replace("\\\n", " "))


def model_dir(root: Path, words: list[str], catalog: str) -> str:
    """A folder named like the hub id after --model (swift matches its model type by name), with the
    catalog's config.json."""
    hub_id = words[words.index("--model") + 1]
    folder = root / hub_id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tables_dir() / "models" / catalog / "config.json", folder / "config.json")
    return str(folder)


def swift_parse(jobs: list[dict], cwd: Path) -> list[dict]:
    """swift's own parse of each job's command (tests/swift_probe.py in the swift venv)."""
    proc = subprocess.run(
        [swift_python(), str(PROBE)], input=json.dumps(jobs), capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def setup_from_swift(o: dict, num_layers: int) -> Setup:
    """The Setup swift will run, from swift's parsed arguments."""
    t = o["torch_dtype"]
    if t == "float32":
        precision = "amp-bf16" if o["bf16"] else "amp-fp16" if o["fp16"] else "fp32"
    else:
        precision = {"bfloat16": "bf16", "float16": "fp16"}[t]
    fields: dict = dict(
        precision=precision,
        seq_len=o["max_length"],
        micro_batch=o["per_device_train_batch_size"],
        grad_accum=o["gradient_accumulation_steps"],
        grad_checkpointing=o["gradient_checkpointing"],
        attention={"eager": "eager", "sdpa": "sdpa", "flash_attn": "flash-attn-2"}[o["attn_impl"]],
        optimizer=OPTIM_BACK[o["optim"]],
        num_gpus=o["nproc_per_node"],
    )
    if o["nproc_per_node"] > 1:
        fields["parallel"] = "ddp"
    q = o["quant"]
    if o["tuner_type"] == "lora":
        if q is None:
            fields["method"] = "lora"
        else:
            if q["load_in_8bit"]:
                quant = "bnb-int8"
            elif q["bnb_4bit_quant_type"] == "fp4":
                quant = "bnb-fp4"
            else:
                quant = "bnb-nf4-dq" if q["bnb_4bit_use_double_quant"] else "bnb-nf4"
            fields.update(method="qlora", quant=quant)
        targets = o["target_modules"]
        fields.update(
            lora_rank=o["lora_rank"],
            lora_alpha=o["lora_alpha"],
            lora_dropout=o["lora_dropout"],
            lora_targets=",".join(targets),
            trainable_extra=tuple("lm_head" if m == "lm_head" else "embeddings" for m in o["modules_to_save"]),
        )
    elif o["trainable_parameters_regex"]:
        assert o["freeze_parameters_ratio"] == 1.0
        layers = [int(x) for x in re.findall(r"\d+", o["trainable_parameters_regex"])]
        assert layers == list(range(num_layers - len(layers), num_layers))
        fields.update(method="freeze", freeze_trainable_layers=len(layers))
    else:
        assert o["tuner_type"] == "full" and q is None
        fields["method"] = "full"
    return make_setup(**fields)


@pytest.fixture(scope="module")
def parsed_grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, dict]]:
    root = tmp_path_factory.mktemp("swift")
    (root / "data.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    outs, jobs = {}, []
    for name, fields in GRID.items():
        out = emit(plan(MODEL, gpu="a100-80g", **fields), "swift")
        words = command_words(out.files["run.sh"])
        outs[name] = out
        jobs.append({"words": words, "model_dir": model_dir(root, words, MODEL)})
    return dict(zip(GRID, zip(outs.values(), swift_parse(jobs, root), strict=True), strict=True))


@pytest.mark.parametrize("name", list(GRID))
def test_swift_parses_the_command_into_the_planned_setup(name: str, parsed_grid: dict) -> None:
    out, o = parsed_grid[name]
    assert "error" not in o, o["error"]
    assert o["dataset"] == ["data.jsonl"] and o["model_type"] == "qwen2"
    assert setup_from_swift(o, 24) == out.setup.model_copy(update=RUN_DEFAULTS)


@pytest.mark.parametrize("name", list(GRID))
def test_swift_parses_lengths_and_evaluation(name: str, parsed_grid: dict) -> None:
    """Packing (and the padding-free batches it turns on), the evaluation's set, steps, batch and metric as
    swift parsed them are the plan's; with logits kept, the evaluation steps whose argmax stays on the card
    (memory/run.py kept_eval_steps)."""
    from vramplan.frameworks import framework
    from vramplan.memory import run
    from vramplan.memory.policy import with_policy

    out, o = parsed_grid[name]
    s = out.setup
    assert o["packing"] is o["padding_free"] is (s.lengths == "packed")
    run_setup = with_policy(s, framework("swift").policy(s))
    mode = run.evaluation(run_setup)
    if mode == "none":
        assert o["eval_strategy"] == "no" and o["split_dataset_ratio"] == 0.0
        return
    assert (o["eval_strategy"], o["eval_steps"], o["split_dataset_ratio"]) == ("steps", 100, 0.05)
    assert o["per_device_eval_batch_size"] == run.eval_batch(run_setup) == s.eval_batch
    assert o["eval_metric"] == ("acc" if mode == "logits" else None) and not o["predict_with_generate"]
    if mode == "logits":
        assert o["eval_accumulation_steps"] == run.kept_eval_steps(run_setup, s.eval_batch) == 32


def test_swift_4_rejects_the_3x_spelling(tmp_path: Path) -> None:
    """The failure the issue reports (--train_type), reproduced by the same probe: the probe can fail."""
    (tmp_path / "data.jsonl").write_text("{}\n")
    words = command_words(emit(plan(MODEL, gpu="a100-80g", method="lora"), "swift").files["run.sh"])
    words[words.index("--tuner_type")] = "--train_type"
    (o,) = swift_parse([{"words": words, "model_dir": model_dir(tmp_path, words, MODEL)}], tmp_path)
    assert o["error"].startswith("ValueError: remaining_argv: ['--train_type'")


def test_scenario_3_command_is_accepted_by_swift(tmp_path: Path) -> None:
    """shared/SCENARIOS.md case 3, through the CLI: the written run.sh is parsed by swift into the write-up's setup."""
    (tmp_path / "data.jsonl").write_text("{}\n")
    argv = "qwen2.5-7b --gpu 4090d --method lora --lora-rank 8 --lora-alpha 32 --lora-targets all-linear"
    argv += f" --grad-accum 16 --emit swift --out {tmp_path / 'out'}"
    done = subprocess.run(
        [sys.executable, "-m", "vramplan", *argv.split()], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    words = command_words((tmp_path / "out" / "run.sh").read_text())
    # and the shipped example of that case (examples/scenario3/swift/run.sh, trained on self_cognition.jsonl)
    shipped = command_words((Path(__file__).parents[1] / "examples/scenario3/swift/run.sh").read_text())
    (tmp_path / "self_cognition.jsonl").write_text("{}\n")
    jobs = [{"words": w, "model_dir": model_dir(tmp_path, w, "qwen2.5-7b")} for w in (words, shipped)]
    o, o_shipped = swift_parse(jobs, tmp_path)
    assert "error" not in o, o["error"]
    assert "error" not in o_shipped, o_shipped["error"]
    assert {k: v for k, v in o_shipped.items() if k not in ("dataset", "model_type", "template")} == {
        k: v for k, v in o.items() if k not in ("dataset", "model_type", "template")
    }
    expect = {
        "tuner_type": "lora",
        "torch_dtype": "bfloat16",
        "bf16": True,
        "lora_rank": 8,
        "lora_alpha": 32,
        "target_modules": ["all-linear"],
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 16,
        "max_length": 2048,
        "gradient_checkpointing": True,
        "nproc_per_node": 1,
    }
    assert {k: o[k] for k in expect} == expect


def test_llama_is_named_by_model_type_and_template(tmp_path: Path) -> None:
    """Llama-3.1-8B: swift 4.6.0 registers it under its old hub id (Meta-Llama-3.1-8B) and several of
    its model types share LlamaForCausalLM, so the command names the model type and template; without
    them swift refuses the command."""
    (tmp_path / "data.jsonl").write_text("{}\n")
    words = command_words(emit(plan("llama-3.1-8b", gpu="a100-80g", method="lora"), "swift").files["run.sh"])
    assert words[words.index("--model_type") + 1] == "llama" and words[words.index("--template") + 1] == "llama3_2"
    i = words.index("--model_type")
    bare = words[:i] + words[i + 4 :]  # without --model_type llama --template llama3_2
    assert "--template" not in bare
    jobs = [{"words": w, "model_dir": model_dir(tmp_path, w, "llama-3.1-8b")} for w in (words, bare)]
    o, o_bare = swift_parse(jobs, tmp_path)
    assert "error" not in o, o["error"]
    assert (o["model_type"], o["template"], o["tuner_type"]) == ("llama", "llama3_2", "lora")
    assert "error" in o_bare


TINY = """
import sys
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
from tests.conftest import TINY_CONFIG, write_samples
root, folder = Path(sys.argv[1]), Path(sys.argv[2])
turns = [("what is %d plus %d" % (i, i), "it is %d" % (2 * i)) for i in range(8)]
samples = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in turns]
write_samples(samples, root)
folder.parent.mkdir(parents=True, exist_ok=True)
(root / "model").rename(folder)
AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY_CONFIG)).save_pretrained(folder)
"""


@pytest.mark.parametrize(
    "fields",
    [dict(method="lora"), dict(method="full", precision="bf16"), dict(method="lora", evaluation="loss", eval_batch=1)],
    ids=["lora", "full", "lora-eval"],
)
def test_two_real_steps_on_a_tiny_model(fields: dict, tmp_path: Path) -> None:
    """The emitted command, with a tiny Qwen2-shaped model (tests/conftest.py TINY_CONFIG) for --model, runs two
    real optimizer steps of ``swift sft`` on the CPU. Added for this machine only: --max_steps 2 --use_cpu true
    --save_strategy no --report_to none, and with evaluation --eval_steps 1 (so both steps evaluate)."""
    words = command_words(emit(plan(MODEL, gpu="a100-80g", seq_len=256, **fields), "swift").files["run.sh"])
    folder = tmp_path / words[words.index("--model") + 1]
    made = subprocess.run(
        [sys.executable, "-c", TINY, str(tmp_path), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])),
    )
    assert made.returncode == 0, made.stderr[-2000:]
    argv = words[2:]
    argv[argv.index("--model") + 1] = str(folder)
    argv += ["--max_steps", "2", "--use_cpu", "true", "--save_strategy", "no", "--report_to", "none"]
    if fields.get("evaluation"):
        argv += ["--eval_steps", "1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run(
        [swift_python(), "-m", "swift.cli.sft", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
        env=env,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "'global_step/max_steps': '2/2'" in log and "train_loss" in log
    assert ("eval_loss" in log) is bool(fields.get("evaluation"))
