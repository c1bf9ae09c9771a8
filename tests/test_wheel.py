"""The wheel a user installs carries the tables: build it, install it into a fresh venv,
run the CLI from outside the source tree."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # builds the wheel and installs it in a new venv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return next(out.glob("vramplan-*.whl"))


def test_wheel_holds_the_tables(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "vramplan/tables/gpus.csv" in names
    assert "vramplan/tables/overheads.json" in names
    assert "vramplan/tables/models/qwen2.5-7b/config.json" in names
    assert "vramplan/tables/models/qwen2.5-7b/source.json" in names
    # the emitted scripts' templates, read by vramplan.frameworks.files.templating
    assert "vramplan/frameworks/files/templates/sft.py" in names
    assert "vramplan/frameworks/files/templates/grpo.py" in names


def test_installed_wheel_runs_the_main_job(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    where = subprocess.run(
        [str(py), "-c", "import vramplan; print(vramplan.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    out = subprocess.run(
        [str(venv / "bin" / "vramplan"), "qwen2.5-7b", "--gpu", "4090", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == "qwen2.5-7b"
    # the trl script's template, read from the installed package (vramplan.frameworks.files.templating)
    emitted = subprocess.run(
        [str(venv / "bin" / "vramplan"), "qwen2.5-0.5b", "--gpu", "4090", "--method", "lora", "--emit", "trl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert emitted.returncode == 0, emitted.stderr
    assert "\ndef main():\n" in emitted.stdout
