"""LLaMA-Factory 0.9.5 parses every emitted train.yaml with its own ``get_train_args`` (what
``llamafactory-cli train`` calls), and the settings read back from its parsed dataclasses, not
from the emitter, are the Setup the plan was estimated for.

The parser runs in its own venv (llamafactory pins transformers<=5.6.0, peft<=0.18.1,
trl<=0.24), named by VRAMPLAN_LLAMAFACTORY_PYTHON (.ci/venv-llamafactory.sh makes it).
Outside CI the tests skip without it; in CI they fail."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OPTIM_BACK, requires, tiny_causal_lm
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.setup import Setup, make_setup

pytestmark = pytest.mark.e2e

PYTHON = os.environ.get("VRAMPLAN_LLAMAFACTORY_PYTHON", "")
if not PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_LLAMAFACTORY_PYTHON (python with llamafactory 0.9.5) is not set", allow_module_level=True)

READBACK = Path(__file__).with_name("llamafactory_readback.py")


PLANS = {
    "lora": dict(method="lora", lora_rank=16, lora_alpha=32, lora_targets="q_proj,v_proj", seq_len=1024),
    "lora-all-extra": dict(method="lora", trainable_extra=("embeddings", "lm_head"), seq_len=512, grad_accum=8),
    "qlora-nf4": dict(method="qlora", quant="bnb-nf4", optimizer="paged-adamw-8bit", seq_len=2048),
    "qlora-nf4-dq": dict(method="qlora", quant="bnb-nf4-dq", attention="eager", seq_len=1024, micro_batch=2),
    "qlora-fp4": dict(method="qlora", quant="bnb-fp4", seq_len=512),
    "lora-int8": dict(method="qlora", quant="bnb-int8", seq_len=512),
    "full-bf16": dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=512),
    "full-amp": dict(
        method="full", precision="amp-bf16", optimizer="adamw-fused", grad_checkpointing=False, seq_len=256
    ),
    "full-amp-fp16": dict(method="full", precision="fp16", seq_len=256),
    "freeze": dict(method="freeze", freeze_trainable_layers=4, seq_len=512),
    "lora-accum": dict(method="lora", micro_batch=2, grad_accum=16, lora_rank=8, lora_alpha=32, seq_len=2048),
    "lora-ddp": dict(method="lora", num_gpus=2, parallel="ddp", seq_len=512),
    # the run around the step: lengths and evaluation (tests/test_emit_run.py checks the others' files)
    "packed-neat-loss": dict(
        method="lora", attention="flash-attn-2", micro_batch=1, lengths="packed", evaluation="loss", eval_batch=4
    ),
    "packed-plain": dict(method="lora", attention="flash-attn-2", micro_batch=2, lengths="packed", seq_len=512),
    "variable-logits": dict(method="lora", lengths="variable", evaluation="logits", eval_batch=2, eval_samples=64),
    "fixed-generate": dict(
        method="lora", evaluation="generate", eval_batch=1, seq_len=512, avg_tokens=200, trainer="llamafactory"
    ),
}
#: the Setup fields of the run around the step (lengths, evaluation), checked by test_parsed_lengths_and_evaluation
RUN_DEFAULTS = dict(lengths="fixed", avg_tokens=0, evaluation="auto", eval_batch=0, eval_samples=0)


def setup_from_parsed(r: dict) -> Setup:
    """The Setup LLaMA-Factory's parsed arguments describe."""
    ft = r["finetuning_type"]
    if ft == "lora":
        precision = "bf16" if r["bf16"] else "fp16" if r["fp16"] else "fp32"
    elif r["pure_bf16"]:
        precision = "bf16"
    else:  # trainable weights upcast to fp32 (llamafactory/model/adapter.py init_adapter), autocast forward
        precision = "amp-bf16" if r["bf16"] else "amp-fp16" if r["fp16"] else "fp32"
    fields: dict = dict(
        precision=precision,
        seq_len=r["cutoff_len"] + (1 if r["packing"] else 0),  # DataArguments keeps one token back when packing
        micro_batch=r["per_device_train_batch_size"],
        grad_accum=r["gradient_accumulation_steps"],
        grad_checkpointing=not r["disable_gradient_checkpointing"],
        attention={"disabled": "eager", "sdpa": "sdpa", "fa2": "flash-attn-2"}[r["flash_attn"]],
        optimizer=OPTIM_BACK[r["optim"]],
    )
    if ft == "lora":
        bits = r["quantization_bit"]
        if bits == 8:
            fields.update(method="qlora", quant="bnb-int8")
        elif bits == 4:
            if r["quantization_type"] == "fp4":
                quant = "bnb-fp4"
            else:
                quant = "bnb-nf4-dq" if r["double_quantization"] else "bnb-nf4"
            fields.update(method="qlora", quant=quant)
        else:
            fields["method"] = "lora"
        target = r["lora_target"]
        fields.update(
            lora_rank=r["lora_rank"],
            lora_alpha=r["lora_alpha"],
            lora_dropout=r["lora_dropout"],
            lora_targets="all-linear" if target == ["all"] else ",".join(target),
            trainable_extra=tuple("lm_head" if t == "lm_head" else "embeddings" for t in r["additional_target"]),
        )
    else:
        fields["method"] = ft
        if ft == "freeze":
            assert r["freeze_trainable_modules"] == ["all"]
            fields["freeze_trainable_layers"] = r["freeze_trainable_layers"]
    return make_setup(**fields)


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, dict]]:
    """Every plan emitted, and all of them parsed by one run of LLaMA-Factory's parser."""
    root = tmp_path_factory.mktemp("lf")
    emitted = {}
    paths = []
    for name, fields in PLANS.items():
        out = emit(plan("qwen2.5-0.5b", gpu="a100-80g", **fields), "llamafactory")
        folder = root / name
        folder.mkdir()
        for fname, text in out.files.items():
            (folder / fname).write_text(text)
        emitted[str(folder / "train.yaml")] = (name, out)
        paths.append(str(folder / "train.yaml"))
    if not PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_LLAMAFACTORY_PYTHON")
    proc = subprocess.run([PYTHON, str(READBACK), *paths], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = {}
    for line in proc.stdout.splitlines():
        kind, _, body = line.partition(" ")
        if kind in ("READBACK", "REFUSED"):
            r = json.loads(body)
            name, out = emitted[r["file"]]
            result[name] = (out, r if kind == "READBACK" else {"refused": r["error"]})
    assert set(result) == set(PLANS), proc.stdout[-2000:] + proc.stderr[-2000:]
    return result


@pytest.mark.parametrize("name", list(PLANS))
def test_parsed_settings_are_the_planned_setup(parsed: dict, name: str) -> None:
    out, r = parsed[name]
    assert "refused" not in r, r.get("refused")
    assert setup_from_parsed(r) == out.setup.model_copy(update={"num_gpus": 1, "parallel": "none", **RUN_DEFAULTS})
    assert r["cutoff_len"] == r["model_max_length"] == out.setup.seq_len - (out.setup.lengths == "packed")
    assert r["dataset"] == ["vramplan_data"]
    assert r["template_registered"], r["template"]


@pytest.mark.parametrize("name", list(PLANS))
def test_parsed_lengths_and_evaluation(parsed: dict, name: str) -> None:
    """Packing, evaluation and its batch as LLaMA-Factory parsed them are the plan's: packed rows (neat, the
    samples kept apart, under flash-attention at micro-batch 1), the evaluation mode, batch and held-out set,
    and, with logits kept, the evaluation steps whose argmax stays on the card (memory/run.py kept_eval_steps)."""
    from vramplan.frameworks import framework
    from vramplan.memory import run
    from vramplan.memory.policy import with_policy

    out, r = parsed[name]
    s = out.setup
    assert r["packing"] is (s.lengths == "packed")
    assert r["neat_packing"] is (s.lengths == "packed" and s.attention == "flash-attn-2" and s.micro_batch == 1)
    mode = (
        "none"
        if r["eval_strategy"] == "no"
        else "generate"
        if r["predict_with_generate"]
        else ("logits" if r["compute_accuracy"] else "loss")
    )
    run_setup = with_policy(s, framework("llamafactory").policy(s))
    assert mode == run.evaluation(run_setup)
    if mode == "none":
        assert r["val_size"] == 0.0
        return
    assert r["eval_strategy"] == "steps" and r["eval_steps"] == 100
    assert r["per_device_eval_batch_size"] == run.eval_batch(run_setup) == s.eval_batch
    assert r["val_size"] == (s.eval_samples or 0.05)
    if mode == "logits":
        assert r["eval_accumulation_steps"] == run.kept_eval_steps(run_setup, s.eval_batch) == 32


@pytest.mark.parametrize("name", [n for n in PLANS if PLANS[n]["method"] == "qlora"])
def test_qlora_runs_without_kbit_upcast(parsed: dict, name: str) -> None:
    """What the policy reads (frameworks/llamafactory.py): norms and lm_head stay in the
    compute dtype (``upcast_layernorm``/``upcast_lmhead_output`` false), reentrant checkpoints."""
    out, r = parsed[name]
    assert r["compute_dtype"] == "torch.bfloat16"
    assert (r["upcast_layernorm"], r["upcast_lmhead_output"], r["use_reentrant_gc"]) == (False, False, True)


def test_pure_fp16_full_is_adjusted_and_said() -> None:
    """No ``pure_fp16`` in LLaMA-Factory: fp16 full fine-tuning is emitted as AMP fp16."""
    out = emit(plan("qwen2.5-0.5b", gpu="a100-80g", method="full", precision="fp16", seq_len=256), "llamafactory")
    assert out.setup.precision == "amp-fp16"
    assert "CHANGED FOR llamafactory: no pure fp16" in out.files["train.yaml"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_causal_lm(tmp_path_factory.mktemp("lf-tiny"))


@requires("torch", "transformers")
@pytest.mark.parametrize("method", ["lora", "full", "qlora", "lora-eval"])
def test_emitted_yaml_trains_two_steps(tiny_model: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    """``llamafactory-cli train train.yaml`` as emitted (fp32: no bf16 on this CPU), with two
    overrides on its command line: ``max_steps=2`` and the output folder (with evaluation a third,
    ``eval_steps=1``, so both steps evaluate their held-out samples)."""
    model, data = tiny_model
    evaluating = method == "lora-eval"
    method = method.removesuffix("-eval")
    fields: dict = dict(seq_len=64, micro_batch=2, method=method, precision="fp32")
    if evaluating:
        fields.update(evaluation="loss", eval_batch=1, eval_samples=2)
    if method == "qlora":
        fields["quant"] = "bnb-nf4"  # bitsandbytes' CPU 4-bit
    p = plan(str(model / "config.json"), gpu="4090", **fields)
    out = emit(p, "llamafactory", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    if not PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_LLAMAFACTORY_PYTHON")
    cli = Path(PYTHON).with_name("llamafactory-cli")
    proc = subprocess.run(
        [str(cli), "train", "train.yaml", "max_steps=2", f"output_dir={tmp_path / 'o'}"]
        + (["eval_steps=1"] if evaluating else []),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path / "run",
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "o" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert math.isfinite(state["log_history"][-1]["train_loss"])
    evals = [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
    assert len(evals) == (2 if evaluating else 0) and all(math.isfinite(x) for x in evals)
    log = proc.stderr + proc.stdout
    assert f"Fine-tuning method: {'Full' if method == 'full' else 'LoRA'}" in log
    if method == "qlora":
        assert "Quantizing model to 4 bit with bitsandbytes" in log
