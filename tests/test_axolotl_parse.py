"""axolotl 0.19.0 validates every emitted config.yml as ``axolotl train`` does (its pydantic
schema through ``validate_config``, then ``normalize_config``), and the settings read back from
the validated config, not from the emitter, are the Setup the plan was estimated for.

The validation runs in axolotl's own venv (it pins transformers==5.16.1), named by
VRAMPLAN_AXOLOTL_PYTHON (.ci/venv-axolotl.sh makes it). Outside CI the tests skip without it; in
CI they fail."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OPTIM_BACK, TINY_CONFIG, requires, tiny_causal_lm
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.setup import Setup, make_setup

pytestmark = pytest.mark.e2e

PYTHON = os.environ.get("VRAMPLAN_AXOLOTL_PYTHON", "")
if not PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_AXOLOTL_PYTHON (python with axolotl 0.19.0) is not set", allow_module_level=True)

READBACK = Path(__file__).with_name("axolotl_readback.py")
NUM_LAYERS = 24  # qwen2.5-0.5b


PLANS = {
    "lora": dict(
        method="lora", lora_rank=16, lora_alpha=32, lora_targets="q_proj,v_proj", seq_len=1024, grad_checkpointing=True
    ),
    "lora-all-extra": dict(method="lora", trainable_extra=("embeddings", "lm_head"), seq_len=512, grad_accum=8),
    "qlora-nf4": dict(
        method="qlora", quant="bnb-nf4", optimizer="paged-adamw-8bit", seq_len=2048, grad_checkpointing=True
    ),
    "qlora-nf4-dq": dict(method="qlora", quant="bnb-nf4-dq", attention="eager", seq_len=1024, micro_batch=2),
    "qlora-fp4": dict(method="qlora", quant="bnb-fp4", seq_len=512),
    "lora-int8": dict(method="qlora", quant="bnb-int8", seq_len=512),
    "full-bf16": dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=512),
    "full-fp32": dict(method="full", precision="fp32", optimizer="adamw-fused", grad_checkpointing=False, seq_len=256),
    "freeze": dict(method="freeze", freeze_trainable_layers=4, seq_len=512, grad_checkpointing=True),
    "lora-accum": dict(method="lora", micro_batch=2, grad_accum=16, lora_rank=8, lora_alpha=32, seq_len=2048),
    "lora-ddp": dict(method="lora", num_gpus=2, parallel="ddp", seq_len=512),
    # the run around the step: lengths and evaluation
    "packed-loss": dict(method="lora", attention="flash-attn-2", lengths="packed", evaluation="loss", eval_batch=4),
    "variable": dict(method="lora", lengths="variable", seq_len=512),
    "fixed-loss": dict(method="full", precision="bf16", evaluation="loss", seq_len=512, avg_tokens=100),
}
#: the Setup fields of the run around the step, checked by test_validated_lengths_and_evaluation
RUN_DEFAULTS = dict(lengths="fixed", avg_tokens=0, evaluation="auto", eval_batch=0, eval_samples=0)


def setup_from_validated(r: dict) -> Setup:
    """The Setup axolotl's validated config describes."""
    precision = "bf16" if r["bf16"] is True else "fp16" if r["fp16"] is True else "fp32"
    fields: dict = dict(
        precision=precision,
        seq_len=r["sequence_len"],
        micro_batch=r["micro_batch_size"],
        grad_accum=r["gradient_accumulation_steps"],
        grad_checkpointing=bool(r["gradient_checkpointing"]),
        attention={"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash-attn-2"}[r["attn_implementation"]],
        optimizer=OPTIM_BACK[r["optimizer"]],
    )
    if r["adapter"]:
        if r["load_in_8bit"]:
            fields.update(method="qlora", quant="bnb-int8")
        elif r["adapter"] == "qlora":
            kw = r["bnb_config_kwargs"] or {}
            dq = kw.get("bnb_4bit_use_double_quant", True)
            fp4 = kw.get("bnb_4bit_quant_type", "nf4") == "fp4"
            fields.update(method="qlora", quant="bnb-fp4" if fp4 else ("bnb-nf4-dq" if dq else "bnb-nf4"))
        else:
            fields["method"] = "lora"
        targets = "all-linear" if r["lora_target_linear"] else ",".join(r["lora_target_modules"])
        fields.update(
            lora_rank=r["lora_r"],
            lora_alpha=r["lora_alpha"],
            lora_dropout=r["lora_dropout"],
            lora_targets=targets,
            trainable_extra=tuple(
                "lm_head" if t == "lm_head" else "embeddings" for t in r["lora_modules_to_save"] or []
            ),
        )
    elif r["unfrozen_parameters"]:
        layers = [int(x) for x in re.findall(r"\d+", r["unfrozen_parameters"][0])]
        assert layers == list(range(NUM_LAYERS - len(layers), NUM_LAYERS))
        fields.update(method="freeze", freeze_trainable_layers=len(layers))
    else:
        fields["method"] = "full"
    return make_setup(**fields)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, dict]]:
    """Every plan emitted, and all of them validated by one run of axolotl's config code."""
    root = tmp_path_factory.mktemp("axolotl")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_CONFIG))
    emitted = {}
    for name, fields in PLANS.items():
        out = emit(plan("qwen2.5-0.5b", gpu="a100-80g", **fields), "axolotl")
        path = root / f"{name}.yml"
        path.write_text(out.files["config.yml"])
        emitted[str(path)] = (name, out)
    if not PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_AXOLOTL_PYTHON")
    proc = subprocess.run(
        [PYTHON, str(READBACK), str(model), *emitted], capture_output=True, text=True, timeout=600, cwd=root
    )
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
def test_validated_settings_are_the_planned_setup(validated: dict, name: str) -> None:
    out, r = validated[name]
    assert "refused" not in r, r.get("refused")
    assert setup_from_validated(r) == out.setup.model_copy(update={"num_gpus": 1, "parallel": "none", **RUN_DEFAULTS})


@pytest.mark.parametrize("name", list(PLANS))
def test_validated_lengths_and_evaluation(validated: dict, name: str) -> None:
    """Padding, packing and evaluation as axolotl's validated config holds them are the plan's: every batch at
    sequence_len for fixed and packed rows, each batch at its longest for variable; the evaluation's set,
    steps and batch (memory/run.py eval_batch: axolotl's default is the micro-batch)."""
    from vramplan.frameworks import framework
    from vramplan.memory import run
    from vramplan.memory.policy import with_policy

    out, r = validated[name]
    s = out.setup
    assert r["sample_packing"] is (s.lengths == "packed")
    assert bool(r["pad_to_sequence_len"]) is (s.lengths != "variable")
    run_setup = with_policy(s, framework("axolotl").policy(s))
    if run.evaluation(run_setup) == "none":
        assert not r["val_set_size"] and r["eval_strategy"] in (None, "no")
        return
    assert run.evaluation(run_setup) == "loss" and r["val_set_size"] == 0.05
    assert (r["eval_strategy"], r["eval_steps"]) == ("steps", 100)
    assert r["eval_batch_size"] == run.eval_batch(run_setup) == (s.eval_batch or s.micro_batch)


@pytest.mark.parametrize("name", [n for n in PLANS if PLANS[n]["method"] in ("lora", "qlora")])
def test_fused_lora_kernels_stay_off(validated: dict, name: str) -> None:
    """axolotl would turn its fused LoRA kernels on (``check_auto_enable_lora_kernels``); the
    emitted config keeps PEFT's path, which the estimate counts."""
    _, r = validated[name]
    kernels = [r[k] for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")]
    assert kernels == [False] * 4


@pytest.mark.parametrize("name", ["lora", "qlora-nf4", "freeze"])
def test_checkpointing_reentrancy(validated: dict, name: str) -> None:
    """What the policy reads (frameworks/axolotl.py): reentrant for adapters and full
    (``normalize_config``), non-reentrant for ``unfrozen_parameters`` (the trainer builder's default)."""
    out, r = validated[name]
    kwargs = r["gradient_checkpointing_kwargs"]
    assert r["gradient_checkpointing"] is True
    if name == "freeze":
        assert kwargs is None
    else:
        assert kwargs == {"use_reentrant": True}


def test_amp_is_adjusted_and_said() -> None:
    p = plan("qwen2.5-0.5b", gpu="a100-80g", method="full", precision="amp-bf16", seq_len=256)
    out = emit(p, "axolotl")
    assert out.setup.precision == "bf16" and "CHANGED FOR axolotl" in out.files["config.yml"]
    assert out.allocated_bytes != p.peak.allocated_bytes  # re-estimated


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_causal_lm(tmp_path_factory.mktemp("ax-tiny"))


@requires("torch", "transformers")
@pytest.mark.parametrize("method", ["lora", "full", "qlora", "lora-eval"])
def test_emitted_config_trains_two_steps(tiny_model: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    """``axolotl train config.yml`` as emitted (fp32: no bf16 on this CPU), with three
    overrides on its command line: ``--max-steps=2``, a log line each step and the output folder
    (with evaluation a fourth, ``--eval-steps=1``, so both steps evaluate)."""
    model, data = tiny_model
    evaluating = method == "lora-eval"
    method = method.removesuffix("-eval")
    fields: dict = dict(seq_len=64, micro_batch=2, method=method, precision="fp32")
    if evaluating:
        fields.update(evaluation="loss", eval_batch=1)
    if method == "qlora":
        fields["quant"] = "bnb-nf4"  # bitsandbytes' CPU 4-bit
    p = plan(str(model / "config.json"), gpu="4090", **fields)
    out = emit(p, "axolotl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    if not PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_AXOLOTL_PYTHON")
    out_dir = tmp_path / "o"
    bin_dir = Path(PYTHON).parent  # axolotl train starts `accelerate launch` from PATH
    proc = subprocess.run(
        [
            str(bin_dir / "axolotl"),
            "train",
            "config.yml",
            "--max-steps=2",
            "--logging-steps=1",
            f"--output-dir={tmp_path / 'o'}",
        ]
        + (["--eval-steps=1"] if evaluating else []),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path / "run",
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HF_HUB_OFFLINE": "1",
            "AXOLOTL_DO_NOT_TRACK": "1",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    evals = {row["step"]: row["eval_loss"] for row in state["log_history"] if "eval_loss" in row}
    # at steps 1 and 2, and before the first (core/builders/base.py sets eval_on_start with eval_steps)
    assert ({1, 2} <= set(evals)) is evaluating and all(math.isfinite(x) for x in evals.values())
    if method == "qlora":
        assert "prepare_model_for_kbit_training" in proc.stdout + proc.stderr
