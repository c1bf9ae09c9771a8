"""Traces that used to crash on setups the planner accepts, now run as the planner plans them
(tiny models of the same families, traced with fake tensors in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG
from vramplan.planner import plan
from vramplan.trace.preflight import resolve_setup

pytestmark = pytest.mark.trace

# The shared tiny Qwen2 shape (conftest), made a Gemma-2 (its own default, tied embeddings) and a Qwen3-MoE.
TINY_GEMMA2 = {k: v for k, v in TINY_CONFIG.items() if k != "tie_word_embeddings"} | {
    "model_type": "gemma2",
    "head_dim": 16,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "query_pre_attn_scalar": 16,
    "sliding_window": 32,
    "hidden_activation": "gelu_pytorch_tanh",
}

TINY_MOE = TINY_CONFIG | {
    "model_type": "qwen3_moe",
    "head_dim": 16,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}


def _config(tmp_path: Path, config: dict, name: str) -> str:
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    return str(path)


def _trace(model: str, **flags: object) -> tuple[object, list[str]]:
    from vramplan.trace import run

    setup, notes = resolve_setup(model, {"seq_len": 32, **flags})
    return run.trace(model, setup, steps=2), notes


def test_gemma2_traces_with_eager_as_planned(tmp_path: Path) -> None:
    """Crashed: the trace asked transformers for sdpa, which Gemma2PreTrainedModel refuses
    (_supports_sdpa = False, models/gemma2/modeling_gemma2.py)."""
    model = _config(tmp_path, TINY_GEMMA2, "gemma2")
    result, notes = _trace(model)
    assert result.setup.attention == "eager" == plan(model, "4090", seq_len=32, method="lora").setup.attention
    assert result.peak_bytes > 0 and any("attention eager" in n for n in notes)


def test_moe_traces_with_the_planners_lora_targets(tmp_path: Path) -> None:
    """Crashed: the trace left LoRA on all-linear with dropout 0.05, which PEFT's ParamWrapper
    refuses (peft/tuners/lora/layer.py, ParamWrapper.__init__); the planner puts LoRA on the
    attention."""
    model = _config(tmp_path, TINY_MOE, "moe")
    result, _ = _trace(model)
    planned = plan(model, "4090", seq_len=32, method="lora").setup
    assert (result.setup.lora_targets, result.setup.lora_dropout) == (planned.lora_targets, planned.lora_dropout)


def test_moe_all_linear_traces_with_dropout_zero(tmp_path: Path) -> None:
    """Crashed the same way with --lora-targets all-linear: the planner sets dropout 0 there."""
    model = _config(tmp_path, TINY_MOE, "moe")
    result, notes = _trace(model, lora_targets="all-linear")
    assert result.setup.lora_dropout == 0.0 and any("ParamWrapper" in n for n in notes)
    assert result.peak_bytes > 0


@pytest.mark.parametrize("key", ["__class__", "__dict__"])
def test_config_with_dunder_keys_traces(tmp_path: Path, tiny_config_file: str, key: str) -> None:
    """Crashed: PretrainedConfig.__init__ setattr()s every unknown key (``__class__``:
    TypeError, ``__dict__``: the instance's attributes replaced); such keys are left out and
    the trace says so."""
    config = {**json.loads(Path(tiny_config_file).read_text()), key: {}, "to_dict": 1, "a-b": 2}
    result, _ = _trace(_config(tmp_path, config, "odd"))
    plain, _ = _trace(tiny_config_file)
    assert result.peak_bytes == plain.peak_bytes
    note = next(n for n in result.notes if n.startswith("config keys left out"))
    assert key in note and "to_dict" in note and "a-b" in note


@pytest.mark.parametrize(
    "flags",
    [
        {"method": "qlora"},  # prepare_model_for_kbit_training upcasts the (unquantized) experts to fp32
        {"method": "full", "precision": "amp-bf16"},  # fp32 master weights
        {"precision": "fp16"},
    ],
)
def test_moe_experts_outside_bf16_trace(tmp_path: Path, flags: dict) -> None:
    """Crashed: transformers sends MoE experts to torch's grouped_mm, whose meta kernel takes
    bf16 only (torch/_meta_registrations.py _meta_grouped_mm_common); fake tensors now take
    transformers' grouped_mm fallback op, which has a fake kernel and saves the same tensors."""
    model = _config(tmp_path, TINY_MOE, "moe")
    result, _ = _trace(model, **flags)
    assert result.peak_bytes > 0
    assert any("grouped_mm fallback" in n for n in result.notes)


def test_a_library_trace_is_bounded_in_steps(tiny_config_file: str) -> None:
    """trace() from Python refuses an unbounded run as the command line does (it would never end)."""
    from vramplan.errors import VramplanError
    from vramplan.limits import MAX_STEPS
    from vramplan.trace import run

    setup, _ = resolve_setup(tiny_config_file, {"seq_len": 32})
    with pytest.raises(VramplanError, match=f"^steps: run 1 to {MAX_STEPS}"):
        run.trace(tiny_config_file, setup, steps=MAX_STEPS + 1)


def test_moe_bf16_keeps_grouped_mm(tmp_path: Path) -> None:
    """In bf16 the experts run torch's grouped_mm as on a GPU: no stand-in, no note."""
    model = _config(tmp_path, TINY_MOE, "moe")
    result, _ = _trace(model)
    assert not any("grouped_mm" in n for n in result.notes)
