"""`vramplan MODEL --emit TARGET`: bad input, not fitting, existing files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=300)


def _one_line_error(out: subprocess.CompletedProcess[str]) -> None:
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


@pytest.mark.e2e
def test_unknown_target_lists_the_targets(tmp_path: Path) -> None:
    out = run("qwen2.5-7b", "--gpu", "4090", "--emit", "megatron", "--out", str(tmp_path / "x"))
    assert out.returncode == 2
    _one_line_error(out)
    assert "trl, swift, llamafactory, axolotl" in out.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_out_without_emit_is_bad_input(tmp_path: Path) -> None:
    out = run("qwen2.5-7b", "--out", str(tmp_path))
    assert out.returncode == 2 and "emit:" in out.stderr


@pytest.mark.e2e
def test_no_fit_emits_only_with_force(tmp_path: Path) -> None:
    args = ("qwen2.5-72b", "--gpu", "4090", "--method", "full", "--emit", "trl", "--out", str(tmp_path / "r"))
    out = run(*args)
    assert out.returncode == 1
    _one_line_error(out)
    assert "does not fit" in out.stderr and "--force" in out.stderr
    assert not (tmp_path / "r").exists()
    forced = run(*args, "--force")
    assert forced.returncode == 1, forced.stderr
    text = (tmp_path / "r" / "train.py").read_text()
    assert "# WILL NOT FIT: needs" in text and "over); emitted on request (--force)" in text


@pytest.mark.e2e
def test_existing_files_need_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "r"
    target.mkdir()
    (target / "train.py").write_text("mine\n")
    args = ("qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--emit", "trl", "--out", str(target))
    out = run(*args)
    assert out.returncode == 2
    _one_line_error(out)
    assert "--overwrite" in out.stderr and "train.py" in out.stderr
    assert (target / "train.py").read_text() == "mine\n"
    assert not (target / "run.sh").exists()  # nothing written half-way
    again = run(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    head = "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n# vramplan plan for trl"
    assert (target / "train.py").read_text().startswith(head)
    assert not list(target.glob(".*vramplan-tmp"))


@pytest.mark.parametrize("target", ["trl"])
@pytest.mark.e2e
def test_emit_prints_without_out(target: str) -> None:
    out = run("qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--emit", target)
    assert out.returncode == 0, out.stderr
    assert "==> " in out.stdout and "run: " in out.stdout


@pytest.mark.e2e
def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = run("qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--emit", "trl", "--out", str(blocker / "sub"))
    assert out.returncode == 2
    _one_line_error(out)
    assert "out:" in out.stderr


@pytest.mark.e2e
def test_a_directory_in_the_way_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "r"
    (target / "run.sh").mkdir(parents=True)
    out = run("qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--emit", "trl", "--out", str(target), "--overwrite")
    assert out.returncode == 2
    _one_line_error(out)
    assert not (target / "train.py").exists() and not list(target.glob(".*vramplan-tmp"))


@pytest.mark.e2e
def test_existing_data_path_is_made_absolute(tmp_path: Path) -> None:
    data = tmp_path / "my data.jsonl"
    data.write_text("{}\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vramplan",
            "qwen2.5-0.5b",
            "--gpu",
            "4090",
            "--method",
            "lora",
            "--emit",
            "trl",
            "--data",
            "my data.jsonl",
            "--out",
            "run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    run_sh = (tmp_path / "run" / "run.sh").read_text()
    assert f"--data '{data}'" in run_sh


@pytest.mark.parametrize(
    "args",
    [
        ["qwen-7b", "--emit", "trl"],  # remote code
        ["qwen2-vl-2b", "--emit", "swift"],  # VLMs: the trl target only (text-only training)
        ["qwen2-vl-2b", "--emit", "axolotl", "--image-size", "448x448"],  # images: the trl target only
    ],
)
@pytest.mark.e2e
def test_models_the_trainers_cannot_load_are_refused(args: list[str]) -> None:
    out = run(*args, "--gpu", "h100", "--method", "lora")
    assert out.returncode == 2
    _one_line_error(out)


@pytest.mark.e2e
def test_swift_multi_gpu_sets_nproc() -> None:
    out = run(
        "qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--gpus", "2", "--parallel", "ddp", "--emit", "swift"
    )
    assert out.returncode == 0, out.stderr
    assert "NPROC_PER_NODE=2 swift sft" in out.stdout
