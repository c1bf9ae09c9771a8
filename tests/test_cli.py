"""The command line, run as a user runs it: exit codes, one-line errors, --json = the model dump."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vramplan.planner import Plan, plan


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_main_job_prints_named_terms() -> None:
    out = run("qwen2.5-7b", "--gpu", "4090")
    assert out.returncode == 0, out.stderr
    # trl (the default trainer) builds no full logits: no loss/* term (tests/test_trl_policy.py)
    for term in ("weights/frozen", "activations/saved", "overhead/cuda_context", "FITS"):
        assert term in out.stdout
    assert "loss/log_softmax" in run("qwen2.5-7b", "--gpu", "4090", "--trainer", "hf").stdout


@pytest.mark.e2e
def test_json_is_the_model_dump() -> None:
    out = run("qwen2.5-7b", "--gpu", "4090", "--method", "lora", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    parsed = Plan.model_validate(data)
    assert parsed == plan("qwen2.5-7b", gpu="4090", method="lora")
    for key in ("fits", "setup", "terms"):
        assert key in data
    assert data["peak"]["allocated_bytes"] <= data["peak"]["reserved_bytes"] <= data["peak"]["device_bytes"]
    assert data["gpu"]["driver_memory_bytes"] == 24564 * 2**20 > data["gpu"]["memory_bytes"]  # what torch can use


@pytest.mark.e2e
def test_does_not_fit_exits_1() -> None:
    out = run("qwen2.5-72b", "--gpu", "4090", "--method", "full")
    assert out.returncode == 1
    assert "DOES NOT FIT" in out.stdout


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["qwen9-7b", "--gpu", "4090"], "model"),
        (["qwen2.5-7b", "--gpu", "rtx9090"], "gpu"),
        (["qwen2.5-7b", "--seq-len", "0"], "seq_len"),
        (["qwen2.5-7b", "--lora-rank", "-1"], "lora_rank"),
        (["qwen2.5-7b", "--micro-batch", str(10**12)], "micro_batch"),
        (["qwen2.5-7b", "--method", "qlora", "--quant", "none"], "quant"),
        (["qwen2.5-7b", "--lora-targets", "q_proj,wings"], "lora_targets"),
        (["qwen2.5-7b", "--gpu", "t4", "--precision", "bf16"], "precision"),
        (["qwen2.5-7b", "--method", "sideways"], "--method"),
        (["qwen2.5-7b", "--seq-len", "many"], "--seq-len"),
        (["/nonexistent/config.json"], "model"),
    ],
)
@pytest.mark.e2e
def test_bad_input_exits_2_with_one_line(args: list[str], field: str) -> None:
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert field in lines[0]
    assert "Traceback" not in out.stderr
    assert out.stdout == ""


@pytest.mark.e2e
def test_unknown_model_suggests_closest() -> None:
    out = run("qwen2.5-8b")
    assert "qwen2.5-7b" in out.stderr


@pytest.mark.e2e
def test_malformed_config_exits_2(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "hidden_size": 64}')
    out = run(str(path))
    assert out.returncode == 2
    assert "num_attention_heads" in out.stderr


@pytest.mark.e2e
def test_gpus_and_models_listings() -> None:
    gpus = run("gpus")
    assert gpus.returncode == 0 and "RTX 4090" in gpus.stdout
    models = run("models", "qwen2.5")
    assert models.returncode == 0 and "qwen2.5-7b" in models.stdout and "llama" not in models.stdout
    assert run("models", "zzzz").returncode == 2


@pytest.mark.e2e
def test_plain_cli_imports_no_torch() -> None:
    code = (
        "import sys, vramplan.cli as c, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    c.main(['qwen2.5-7b', '--gpu', '4090'])\n"
        "print([m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
