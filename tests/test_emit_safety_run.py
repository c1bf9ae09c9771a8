"""The emitted scripts, run: run.sh with stub trainers on PATH passes a hostile model folder
and data path as one argument each, and ``python train.py --help`` / ``--dry-run`` (which
import no trainer, so no torch) run only the script's own code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_emit_safety import HOSTILE, emitted, model_folder, write

pytestmark = pytest.mark.e2e

STUBS = ("python", "accelerate", "swift", "llamafactory-cli", "axolotl")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trainers that print their arguments as JSON and start nothing."""
    bin_dir = tmp_path_factory.mktemp("stubs")
    for name in STUBS:
        stub = bin_dir / name
        stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        stub.chmod(0o755)
    return bin_dir


def run_sh(out: Path, bin_dir: Path) -> list[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "run.sh"], cwd=out, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("key", ["trl", "trl-zero2", "swift"])
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_run_sh_passes_each_value_as_one_argument(tmp_path: Path, bin_dir: Path, key: str, kind: str) -> None:
    value = HOSTILE[kind]
    folder = model_folder(tmp_path / "models", value)
    data = f"{value}.jsonl"
    out = write(emitted(folder, key, data), tmp_path / "out")
    argv = run_sh(out, bin_dir)
    assert argv[argv.index("--model") + 1] == str(folder.resolve())
    assert argv[argv.index("--dataset" if key == "swift" else "--data") + 1] == data
    assert not (out / "pwned").exists()


@pytest.mark.parametrize("kind", ["newline_code", "pep263", "unicode_breaks"])
def test_the_emitted_script_runs_only_its_own_code(tmp_path: Path, kind: str) -> None:
    """The issue's case: ``python train.py --help`` (and ``--dry-run``, which prints the
    settings) from a folder named with a line break and code; the script imports no trainer
    for either, so this runs without torch."""
    folder = model_folder(tmp_path, HOSTILE[kind])
    out = write(emitted(folder, "trl", "data.jsonl"), tmp_path / "out")
    for flag in ("--help", "--dry-run"):
        done = subprocess.run(
            [sys.executable, "train.py", flag], cwd=out, capture_output=True, text=True, timeout=60, encoding="utf-8"
        )
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == str(folder.resolve())
    assert not (out / "pwned").exists()
