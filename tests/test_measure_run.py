"""`vramplan measure [flags] -- COMMAND` as a user runs it, over a stand-in torch (tests/measure_stub:
its CUDA counters, optimizer hook, OOM error; a stand-in TRL trainer and NVML) found first on the
command's PYTHONPATH, as the hook will find the real one on a machine with cards: ranks launched
as torchrun launches them, an out-of-memory error, a kill, the rows and the file they land in."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires
from vramplan.published import compare_csv
from vramplan.row_setup import COLUMNS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "measure_stub"
TRAIN = str(STUB / "train_stub.py")
LAUNCH = str(STUB / "launch_stub.py")
MIB = 1 << 20
SETUP = ["qwen2.5-0.5b", "--method", "lora", "--seq-len", "512", "--micro-batch", "2", "--no-grad-checkpointing"]


def gib(mib: int) -> str:
    return f"{mib * MIB / (1 << 30):.3f}"


def env(**extra: str) -> dict[str, str]:
    """vramplan from this checkout, then the stand-in torch: the user's PYTHONPATH, which the hook keeps."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(STUB)]), **extra}


def measure(tmp_path: Path, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vramplan", "measure", *argv]
    return subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120, **kw)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames is not None and list(reader.fieldnames[: len(COLUMNS)]) == list(COLUMNS)
        return list(reader)


def test_two_ranks_as_torchrun_runs_them(tmp_path: Path) -> None:
    done = measure(tmp_path, *SETUP, "--gpus", "2", "--parallel", "ddp", "--", sys.executable, LAUNCH, "2", TRAIN)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained") == 2 and "recorded 2 rows in" in done.stdout
    assert done.stdout.count(" GiB reserved, +") + done.stdout.count(" GiB reserved, -") == 2  # validate's error
    got = rows(tmp_path / "vramplan-runs.csv")  # the default file, in the working directory
    assert [(r["rank"], r["world_size"], r["outcome"]) for r in got] == [("0", "2", "ok"), ("1", "2", "ok")]
    r0, r1 = got
    # rank 0: weights 1000 MiB, a step's activations 500 and the optimizer's 200 MiB on top; reserved in
    # 64 MiB segments; NVML: reserved plus the stand-in's 500 MiB context (train_stub.py, torch/cuda.py)
    assert (r0["allocated_gib"], r0["reserved_gib"], r0["device_gib"]) == (gib(1700), gib(1728), gib(2228))
    assert (r1["allocated_gib"], r1["reserved_gib"], r1["device_gib"]) == (gib(1800), gib(1856), gib(2356))
    assert r0["measured_value"] == gib(1728) and r0["measurement"] == "reserved" and r0["measured_unit"] == "GiB"
    assert r0["phases_gib"].startswith(
        f"load {gib(1000)}/{gib(1024)}/{gib(1524)}; train {gib(1700)}/{gib(1728)}/{gib(2228)};"
        f" eval {gib(1500)}/{gib(1728)}/{gib(2228)}; save {gib(1300)}/"
    )
    assert r0["peak_phase"] == "train" and r0["steps"] == "3"
    assert (r0["trainer"], r0["trainer_version"]) == ("trl", "1.99.0+stub")
    assert (r0["torch_version"], r0["transformers_version"]) == ("2.99.0+stub", "5.99.0+stub")
    assert (r0["gpu"], r0["num_gpus"], r0["parallel"], r0["seq_len"], r0["micro_batch"]) == (
        "rtx-4090",
        "2",
        "ddp",
        "512",
        "2",
    )
    compared = compare_csv(tmp_path / "vramplan-runs.csv")
    assert [c.excluded for c in compared] == [False, False] and compared[0].error_pct is not None


def test_oom_is_recorded_and_the_status_passed_through(tmp_path: Path) -> None:
    out = tmp_path / "runs.csv"
    done = measure(tmp_path, *SETUP, "--out", str(out), "--", sys.executable, TRAIN, "--oom-at-step", "2")
    assert done.returncode == 1, done.stderr
    assert "OutOfMemoryError" in done.stderr  # the run's own traceback, untouched
    (row,) = rows(out)
    assert row["outcome"] == "oom" and row["steps"] == "1" and row["peak_phase"] == "train"
    assert "tried to allocate 30.00 GiB" in row["notes"] and "total capacity 23.51 GiB" in row["notes"]
    assert row["exit_status"] == "1" and row["rank"] == ""
    assert "the estimate says fits on rtx-4090" in done.stdout  # what validate's gate will fail
    (compared,) = compare_csv(out)
    assert compared.outcome == "oom" and not compared.excluded and compared.verdict is not None


@pytest.mark.parametrize("whom", ["training process", "vramplan", "vramplan over a shell"])
def test_a_killed_run_still_records(tmp_path: Path, whom: str) -> None:
    out = tmp_path / "runs.csv"
    cmd = [sys.executable, "-m", "vramplan", "measure", *SETUP, "--out", str(out), "--"]
    train = [sys.executable, TRAIN, "--hang"]
    if whom == "vramplan over a shell":  # run.sh: bash dies of SIGTERM at once, its python must still be told
        train = ["bash", "-c", f"{shlex.join(train)}; echo after"]
    proc = subprocess.Popen([*cmd, *train], cwd=tmp_path, env=env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("hanging "), line
    child = int(line.split()[1])
    try:
        os.kill(child if whom == "training process" else proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:  # nothing of a failed test left running
        for pid in (child, proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert proc.returncode == 128 + signal.SIGTERM
    (row,) = rows(out)
    assert row["outcome"] == "ok" and row["steps"] == "3" and row["exit_status"] == str(128 + signal.SIGTERM)
    assert "killed by SIGTERM after 3 optimizer steps" in row["notes"] and row["reserved_gib"] == gib(1728)
    assert "recorded 1 row" in rest


def test_a_loop_without_trainer_is_one_phase_and_runs_append(tmp_path: Path) -> None:
    out = tmp_path / "runs.csv"
    for _ in range(2):
        done = measure(tmp_path, *SETUP, "--out", str(out), "--", sys.executable, TRAIN, "--loop")
        assert done.returncode == 0, done.stderr
    got = rows(out)
    assert len(got) == 2 and got[0]["id"] != got[1]["id"]
    assert got[0]["peak_phase"] == "run" and got[0]["trainer"] == "" and got[0]["allocated_gib"] == gib(1700)
    assert out.read_text().count("id,source,") == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name != "runs.csv"]


def test_the_users_sitecustomize_still_runs(tmp_path: Path) -> None:
    mine = tmp_path / "site"
    mine.mkdir()
    (mine / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = 'yes'\n")
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys\nprint(os.environ.get('USER_SITE_RAN'), 'vramplan_measure_hook' in sys.modules)\n"
    )
    path = os.pathsep.join([str(ROOT), str(mine)])
    done = subprocess.run(
        [sys.executable, "-m", "vramplan", "measure", *SETUP, "--", sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.splitlines()[0] == "yes True", done.stdout + done.stderr
    assert "no process of the command used CUDA" in done.stderr
    assert not (tmp_path / "vramplan-runs.csv").exists()


def test_from_an_emitted_folder(tmp_path: Path) -> None:
    job = tmp_path / "job"
    emit = [sys.executable, "-m", "vramplan", "qwen2.5-0.5b", "--gpu", "4090", "--method", "qlora", "--emit", "trl"]
    subprocess.run([*emit, "--out", str(job)], cwd=tmp_path, env=env(), check=True, capture_output=True)
    done = measure(tmp_path, "--from", str(job), "--", sys.executable, TRAIN)
    assert done.returncode == 0, done.stderr
    (row,) = rows(tmp_path / "vramplan-runs.csv")
    assert (row["model"], row["method"], row["quant"]) == ("qwen2.5-0.5b", "qlora", "bnb-nf4")
    assert "setup from job/vramplan-setup.json" in row["notes"]


def test_bad_input_before_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    for argv in (
        [*SETUP, "--"],
        ["--", *touch],
        [*SETUP, "--out", str(tmp_path), "--", *touch],
        [*SETUP, "--from", str(tmp_path), "--", *touch],
        [*SETUP, "--", "no-such-command-here"],
        [*SETUP, "--trainer", "tune", "--", *touch],
        [*SETUP, "--gpu", "v100-99g", "--", *touch],
        [*SETUP, "--method", "lora", "--lora-rank", "0", "--", *touch],
    ):
        done = measure(tmp_path, *argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith("vramplan: error: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert not marker.exists()


REAL_TRAINER = """
import sys
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer, TrainingArguments

cfg = Qwen2Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                  intermediate_size=64, vocab_size=100)
data = [{"input_ids": torch.randint(0, 100, (8,)), "labels": torch.randint(0, 100, (8,))} for _ in range(4)]
args = TrainingArguments(output_dir="out", max_steps=2, per_device_train_batch_size=2, report_to=[], use_cpu=True,
                         eval_strategy="steps", eval_steps=1, save_steps=2)
Trainer(model=Qwen2ForCausalLM(cfg), args=args, train_dataset=data, eval_dataset=data).train()
hook = sys.modules["vramplan_measure_hook"]._HOOK
print("wrapped", Trainer.train.__vramplan_phase__, Trainer.evaluate.__vramplan_phase__,
      Trainer._save_checkpoint.__vramplan_phase__, torch.cuda.reset_peak_memory_stats.__qualname__)
print("seen", hook.steps, hook.trainer, hook.stack, type(torch.__spec__.loader).__name__)
"""


@requires("torch", "transformers")
def test_the_hook_in_a_real_trainer_run_on_cpu(tmp_path: Path) -> None:
    """The same hook under the real torch and transformers: Trainer's methods wrapped when
    transformers imports them, torch's optimizer hook counting the steps, the modules keeping
    their own loaders, the run's result unchanged; no CUDA, so nothing is recorded."""
    script = tmp_path / "real.py"
    script.write_text(REAL_TRAINER)
    done = subprocess.run(
        [sys.executable, "-m", "vramplan", "measure", *SETUP, "--", sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith(("wrapped", "seen"))]
    assert lines == ["wrapped train eval save Hook.user_reset", "seen 2 hf ['other'] SourceFileLoader"], done.stdout
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert "no process of the command used CUDA" in done.stderr


def test_a_config_path_is_written_as_validate_reads_it(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    config = ROOT / "tables" / "models" / "qwen2.5-0.5b" / "config.json"
    (tmp_path / "cfg" / "config.json").write_text(config.read_text())
    out = tmp_path / "data" / "runs.csv"
    done = measure(tmp_path, "cfg/config.json", *SETUP[1:], "--out", "data/runs.csv", "--", sys.executable, TRAIN)
    assert done.returncode == 0, done.stderr
    (row,) = rows(out)
    assert row["model"] == os.path.join("..", "cfg", "config.json")  # relative to the CSV, as validate reads it
    (compared,) = compare_csv(out)
    assert not compared.excluded and compared.error_pct is not None


SWIFT_TRAINER = """
import sys
from swift.trainers import Seq2SeqTrainer
hook = sys.modules["vramplan_measure_hook"]._HOOK
try:
    Seq2SeqTrainer.train(object.__new__(Seq2SeqTrainer))  # SwiftMixin.train's set-up fails on a bare object
except Exception:
    pass
print("seen", hook.trainer, hook.trainer_class, hook.stack, "vramplan" in sys.modules)
"""


@pytest.mark.skipif(
    not os.environ.get("VRAMPLAN_SWIFT_PYTHON") and not os.environ.get("CI"),
    reason="VRAMPLAN_SWIFT_PYTHON (python with ms-swift 4.x) is not set",
)
def test_the_hook_in_a_trainers_own_venv(tmp_path: Path) -> None:
    """ms-swift's Python (its own venv) runs the same standalone hook: swift's trainer
    class named from its MRO, its train() counted from its own set-up on."""
    script = tmp_path / "swift_check.py"
    script.write_text(SWIFT_TRAINER)
    python = os.environ["VRAMPLAN_SWIFT_PYTHON"]
    done = subprocess.run(
        [sys.executable, "-m", "vramplan", "measure", *SETUP, "--", python, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # vramplan for the parent; the run never imports it
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [line for line in done.stdout.splitlines() if line.startswith("seen")]
    assert seen == ["seen swift swift.trainers.seq2seq_trainer.Seq2SeqTrainer ['load', 'train'] False"], done.stdout


def test_a_rank_without_a_record_is_said(tmp_path: Path) -> None:
    rank2_quits = f"import os; exit(0) if os.environ['RANK'] == '2' else exec(open({TRAIN!r}).read())"
    argv = [*SETUP, "--gpus", "3", "--parallel", "ddp", "--", sys.executable, LAUNCH, "3", "-c", rank2_quits]
    done = measure(tmp_path, *argv)
    assert done.returncode == 0, done.stderr
    assert "2 of 3 ranks left a record" in done.stderr
    assert [r["rank"] for r in rows(tmp_path / "vramplan-runs.csv")] == ["0", "1"]
