"""`vramplan trace` as a user runs it: a normal run leaves stderr empty (the libraries'
warnings are noise there), while its own refusals still reach it; --plot and --report come
out together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "vramplan", "trace", *args], capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.parametrize("flags", [["--method", "lora"], ["--method", "qlora"], ["--method", "full"]])
def test_a_normal_trace_leaves_stderr_empty(tiny_config_file: str, flags: list[str]) -> None:
    """bitsandbytes' kernel-download warning and transformers' deprecation warnings
    (is_gradient_checkpointing, read by PEFT) used to reach stderr on every trace."""
    out = run(tiny_config_file, "--seq-len", "32", "--steps", "2", "--json", *flags)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr == ""


def test_plot_and_report_come_out_together(tiny_config_file: str, tmp_path: Path) -> None:
    png, page = tmp_path / "t.png", tmp_path / "t.html"
    out = run(tiny_config_file, "--seq-len", "32", "--steps", "2", "--plot", str(png), "--report", str(page))
    assert out.returncode == 0, out.stderr[-3000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.html", "t.png"]  # no temporaries left
