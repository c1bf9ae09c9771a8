"""``vramplan MODEL --gpu auto`` as a user runs it, on a machine whose nvidia-smi is a stand-in
script and whose torch sees no GPU (CUDA_VISIBLE_DEVICES empty): never a real GPU."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import error_line

pytestmark = pytest.mark.e2e


def _run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": str(path), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "vramplan", "qwen2.5-7b", "--method", "lora", "--gpu", "auto", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_auto_plans_for_the_card_nvidia_smi_names(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "NVIDIA L40S, 46068 MiB"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    done = _run(tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert '"key":"l40s"' in done.stdout.replace(" ", "") and '"resolved_from":"auto"' in done.stdout.replace(" ", "")


def test_auto_without_a_gpu_is_one_line_exit_2(tmp_path: Path) -> None:
    done = _run(tmp_path)
    assert done.returncode == 2
    assert error_line(done.stderr).startswith("vramplan: error: gpu: auto found no GPU")
