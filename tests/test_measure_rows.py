"""What `vramplan measure -- COMMAND` writes (vramplan/measure_rows.py, measure_run.append_rows):
rows of the published-measurements schema that `vramplan validate --csv` reads back, added to
the user's CSV as a whole new file. In this process: no torch, no subprocess."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.measure_csv import append_rows
from vramplan.measure_rows import (
    EXTRA,
    SETUP_FILE,
    make_rows,
    read_setup_document,
    resolve_setup,
    setup_columns,
)
from vramplan.measure_run import check_out
from vramplan.published import compare_csv
from vramplan.row_setup import COLUMNS, row_setup
from vramplan.setup import make_setup

MIB, GIB = 1 << 20, 1 << 30


def record(rank: int | None = 0, outcome: str = "ok", steps: int = 3, **extra: Any) -> dict[str, Any]:
    """A hook record as measure_hook.Hook.record writes it."""
    per = {"allocated": 9000 * MIB, "reserved": 9600 * MIB, "nvml": 10100 * MIB, "nvml_scope": "process"}
    return {
        "pid": 100 + (rank or 0),
        "rank": rank,
        "world_size": 2,
        "outcome": outcome,
        "error": "",
        "oom": {},
        "steps": steps,
        "trainer": "trl",
        "trainer_version": "1.16.0",
        "versions": {"torch": "2.13.0+cu130", "transformers": "5.25.0"},
        "devices": {"0": {"name": "NVIDIA GeForce RTX 4090", "total_memory": 25247965184, "num_ooms": 0}},
        "phases": {
            "load": {"0": {"allocated": 1000 * MIB, "reserved": 1024 * MIB}},
            "train": {"0": per},
            "eval": {"0": {**per, "allocated": 8000 * MIB}},
        },
        **extra,
    }


def run_meta(**over: Any) -> dict[str, Any]:
    setup = make_setup(method="lora", seq_len=512, micro_batch=2, grad_checkpointing=True, num_gpus=2, parallel="ddp")
    meta = {
        "id": "m20261207-120000",
        "source": "vramplan measure on host: torchrun train.py",
        "model": "qwen2.5-0.5b",
        "setup": setup,
        "trainer": "trl",
        "gpu": "",
        "measurement": "reserved",
        "exit_status": 0,
        "date": "2026-12-07T12:00:00+00:00",
        "notes": [],
        "num_gpus_given": True,
    }
    return {**meta, **over}


@pytest.mark.parametrize(
    "fields",
    [
        dict(method="lora", lora_rank=64, lora_alpha=128, lora_targets="q_proj,v_proj", trainable_extra="lm_head"),
        dict(method="qlora", quant="bnb-nf4-dq", optimizer="paged-adamw-8bit", lora_dropout=0.0, seq_len=4096),
        dict(method="full", precision="amp-bf16", num_gpus=4, parallel="zero3", zero3_init="off", eval_batch=8),
        dict(
            method="freeze",
            freeze_trainable_layers=4,
            lengths="packed",
            avg_tokens=300,
            num_nodes=2,
            num_gpus=8,
            parallel="ddp",
        ),
    ],
)
def test_a_row_reads_back_as_its_setup(fields: dict[str, Any]) -> None:
    setup = make_setup(**fields)
    assert row_setup({"model": "qwen2.5-0.5b", **setup_columns(setup)}) == setup


def test_a_run_planned_on_a_lengths_file_records_the_lengths_mean() -> None:
    """The row holds no file (a table cell cannot): it carries the file's mean, which validate
    draws the lengths from, and reads back as the same run but for the file."""
    setup = make_setup(lengths_file=[100] * 9 + [4000], seq_len=2048)
    row = setup_columns(setup)
    assert "avg_tokens=295" in row["settings"].split(";")  # (9 x 100 + 2048) / 10, the long one cut
    back = row_setup({"model": "qwen2.5-0.5b", **row})
    assert back.lengths == "variable" and back.avg_tokens == 295 and back.lengths_file is None


def test_one_row_per_rank_with_its_peaks() -> None:
    rows = make_rows([record(1), record(0)], run_meta())
    assert [r["id"] for r in rows] == ["m20261207-120000-r0", "m20261207-120000-r1"]
    row = rows[0]
    assert set(COLUMNS) | set(EXTRA) == set(row)
    assert row["measured_value"] == f"{9600 / 1024:.3f}" and row["measurement"] == "reserved"
    assert (row["allocated_gib"], row["device_gib"]) == (f"{9000 / 1024:.3f}", f"{10100 / 1024:.3f}")
    assert row["peak_phase"] == "train" and row["gpu"] == "rtx-4090"
    assert row["trainer"] == "trl" and row["trainer_version"] == "1.16.0"
    assert (row["torch_version"], row["transformers_version"]) == ("2.13.0+cu130", "5.25.0")
    assert row["phases_gib"].startswith("load 0.977/1.000/-; train 8.789/9.375/9.863; eval 7.812/")
    device = make_rows([record(0)], run_meta(measurement="device"))[0]
    assert device["measured_value"] == f"{10100 / 1024:.3f}" and device["measurement"] == "device"


def test_the_run_names_the_gpus_when_the_flags_did_not() -> None:
    ddp = make_setup(method="lora", parallel="ddp", num_gpus=2)
    rows = make_rows([record(0, world_size=4)], run_meta(setup=ddp, num_gpus_given=False))
    assert rows[0]["num_gpus"] == "4" and "WORLD_SIZE" not in rows[0]["notes"]
    rows = make_rows([record(0, world_size=4)], run_meta(setup=ddp, num_gpus_given=True))
    assert rows[0]["num_gpus"] == "2" and "WORLD_SIZE 4, the setup says 2 GPUs" in rows[0]["notes"]
    rows = make_rows([record(0)], run_meta(setup=make_setup(method="lora"), num_gpus_given=False))
    assert rows[0]["notes"].startswith("excluded: 2 ranks ran and the setup names no multi-GPU layout")


def test_device_map_takes_the_largest_card() -> None:
    rec = record(0)
    rec["devices"]["1"] = dict(rec["devices"]["0"])
    rec["phases"]["train"]["1"] = {"allocated": 9500 * MIB, "reserved": 9900 * MIB}
    setup = make_setup(method="lora", num_gpus=2, parallel="device_map")
    (row,) = make_rows([{**rec, "world_size": None}], run_meta(setup=setup))
    assert row["measured_value"] == f"{9900 / 1024:.3f}" and "2 devices in one process" in row["notes"]
    assert row["allocated_gib"] == f"{9500 / 1024:.3f}" and "WORLD_SIZE" not in row["notes"]


def test_outcomes() -> None:
    oom = {"tried_to_allocate": 2 * GIB, "total_capacity": 25247965184, "message": "CUDA out of memory."}
    row = make_rows([record(0, outcome="oom", steps=1, oom=oom)], run_meta())[0]
    assert row["outcome"] == "oom" and "tried to allocate 2.00 GiB" in row["notes"]
    killed = make_rows([record(0, outcome="killed", steps=0)], run_meta())[0]
    assert killed["notes"].startswith("excluded: killed by SIGTERM before its first optimizer step")
    later = make_rows([record(0, outcome="killed", steps=5)], run_meta())[0]
    assert later["outcome"] == "ok" and "killed by SIGTERM after 5 optimizer steps" in later["notes"]


def test_a_caught_oom_in_a_failed_run_is_an_oom() -> None:
    rec = record(0)
    rec["devices"]["0"]["num_ooms"] = 1
    failed = make_rows([rec], run_meta(exit_status=1))[0]
    assert failed["outcome"] == "oom" and "raised 1 out-of-memory error(s) and the command failed" in failed["notes"]
    retried = make_rows([rec], run_meta(exit_status=0))[0]  # accelerate's find_executable_batch_size retried
    assert retried["outcome"] == "ok" and "1 out-of-memory error(s) raised and caught" in retried["notes"]


def test_secrets_in_the_command_are_not_recorded() -> None:
    from vramplan.measure_run import shown_command

    words = ["env", "HF_TOKEN=hf_abc", "python", "t.py", "--hub_token", "hf_x", "--wandb-api-key=k", "--lr", "1e-4"]
    assert shown_command(words) == "env 'HF_TOKEN=***' python t.py --hub_token '***' '--wandb-api-key=***' --lr 1e-4"


def _write(tmp_path: Path, rows: list[dict[str, str]], name: str = "runs.csv") -> Path:
    target = tmp_path / name
    append_rows(target, rows)
    return target


def test_rows_are_what_validate_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows([record(0), record(1)], run_meta())
    oom = make_rows([record(0, outcome="oom", steps=0)], run_meta(id="m20261207-130000"))
    target = _write(tmp_path, [*rows, *oom])
    compared = compare_csv(target)
    assert [c.excluded for c in compared] == [False, False, False]
    assert all(c.error_pct is not None for c in compared[:2]) and compared[2].outcome == "oom"
    assert main(["validate", "--csv", str(target)]) == 0
    assert main(
        ["validate", "--csv", str(target), "--max-underestimate", "1000", "--junit", str(tmp_path / "j.xml")]
    ) in (
        0,
        1,
    )
    assert (tmp_path / "j.xml").read_text().count("<testcase") == 3


def test_rows_go_to_a_whole_new_file(tmp_path: Path) -> None:
    target = _write(tmp_path, make_rows([record(0)], run_meta()))
    first = target.read_bytes()
    append_rows(target, make_rows([record(0)], run_meta()))  # the same id again: a suffix
    text = target.read_bytes()
    assert text.startswith(first)  # the file's own bytes are kept when its header has every column
    ids = [r["id"] for r in csv.DictReader(text.decode().splitlines())]
    assert ids == ["m20261207-120000-r0", "m20261207-120000-r0-2"]
    assert not [p for p in tmp_path.iterdir() if p.name != "runs.csv"]  # no temporary left


def test_a_link_to_the_file_stays_a_link(tmp_path: Path) -> None:
    real = _write(tmp_path, make_rows([record(0)], run_meta()), "real.csv")
    link = tmp_path / "runs.csv"
    link.symlink_to(real.name)
    append_rows(link, make_rows([record(1)], run_meta()))
    assert link.is_symlink() and len(list(csv.DictReader(real.open(newline="")))) == 2


def test_a_users_csv_keeps_its_rows_and_gains_the_columns(tmp_path: Path) -> None:
    target = tmp_path / "runs.csv"
    header = [c for c in COLUMNS if c not in ("lengths", "settings")]
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerow({c: "" for c in header} | {"id": "mine", "notes": 'a "quoted", note'})
    append_rows(target, make_rows([record(0)], run_meta()))
    rows = list(csv.DictReader(target.open(newline="")))
    assert [r["id"] for r in rows] == ["mine", "m20261207-120000-r0"]
    assert rows[0]["notes"] == 'a "quoted", note' and rows[0]["rank"] == ""
    assert list(rows[0])[: len(header)] == header


def test_the_file_is_checked_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(VramplanError) as err:
        check_out(str(tmp_path / "other.csv"))
    assert err.value.field == "out"
    with pytest.raises(VramplanError):
        check_out(str(tmp_path))
    with pytest.raises(VramplanError):
        check_out(str(Path(__import__("vramplan").__file__).parent / "runs.csv"))
    assert check_out(str(tmp_path / "new.csv")) == tmp_path / "new.csv"


def test_emit_out_writes_the_setup_measure_reads(tmp_path: Path) -> None:
    out = tmp_path / "job"
    argv = ["qwen2.5-0.5b", "--gpu", "4090", "--method", "qlora", "--seq-len", "1024", "--emit", "trl"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = read_setup_document(str(out))
    assert (doc["model"], doc["gpu"], doc["trainer"]) == ("qwen2.5-0.5b", "rtx-4090", "trl")
    setup = resolve_setup(doc, {"micro_batch": 3})
    assert (setup.method, setup.seq_len, setup.micro_batch) == ("qlora", 1024, 3)
    assert json.loads((out / SETUP_FILE).read_text())["setup"]["quant"] == setup.quant
    with pytest.raises(VramplanError) as err:
        read_setup_document(str(tmp_path))
    assert err.value.field == "from"


def test_the_readme_shows_the_loop_in_five_lines() -> None:
    import shlex

    from vramplan.measure_run import measure_parser, split_command

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Against real GPUs", 1)[1].split("\n## ", 1)[0]
    block = section.split("Your own runs, measured and gated in CI", 1)[1].split("```console\n", 1)[1]
    lines = [line[2:] for line in block.split("\n```", 1)[0].splitlines()]
    assert len(lines) == 5
    assert "--emit" in lines[0] and "--out job" in lines[0]
    words = shlex.split(lines[1].split("#")[0].strip().strip("()"))
    own, command = split_command(words[words.index("measure") + 1 :])
    args = measure_parser().parse_args(own)
    assert (args.from_dir, args.out, command) == (".", "../runs.csv", ["bash", "run.sh"])
    assert lines[2].startswith("vramplan validate --csv runs.csv --max-median-error")
    assert "pytest" in lines[4]
