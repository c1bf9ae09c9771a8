"""`vramplan trace` / `measure` as a user runs them, records and pictures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import error_line, requires
from vramplan.records import append_row, read_rows, record_key

needs_torch = requires("torch", "transformers", "peft")


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


@pytest.fixture
def tiny(tiny_config_file: str) -> str:
    return tiny_config_file


@pytest.mark.e2e
@needs_torch
def test_trace_json_reports_peak_phase_split(tiny: str, tmp_path) -> None:
    png, page = tmp_path / "t.png", tmp_path / "t.html"
    out = run("trace", tiny, "--method", "lora", "--seq-len", "32", "--json", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("peak_bytes", "peak_phase", "by_kind", "phases", "seconds", "versions", "not_included"):
        assert key in data
    assert data["peak_phase"] in ("forward", "backward", "optimizer")
    assert sum(data["by_kind"].values()) == data["peak_bytes"]
    assert data["versions"]["torch"] and data["versions"]["transformers"] and data["versions"]["peft"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run("trace", tiny, "--seq-len", "32", "--plot", str(page)).returncode == 0
    assert "<svg" in page.read_text() and "peak" in page.read_text()


@pytest.mark.e2e
@needs_torch
def test_trace_table_for_people(tiny: str) -> None:
    out = run("trace", tiny, "--seq-len", "32", "--steps", "1")
    assert out.returncode == 0, out.stderr
    assert "peak per phase" in out.stdout and "by kind" in out.stdout and "not included" in out.stdout


@pytest.mark.e2e
@needs_torch
@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["trace", "qwen-7b"], "remote-code"),
        (["trace", "qwen2-vl-2b"], "give --image-size"),
        (["trace", "qwen-vl-chat", "--images-per-sample", "1"], "Qwen (v1) is a remote-code"),
        (["trace", "qwen2.5-0.5b", "--image-size", "448x448"], "images need a VLM"),
        (["trace", "qwen9-7b"], "model"),
        (["trace", "qwen2.5-0.5b", "--optimizer", "paged-adamw-8bit"], "optimizer"),
        (["trace", "qwen2.5-0.5b", "--steps", "0"], "steps"),
        (["trace", "qwen2.5-0.5b", "--plot", "t.pdf"], "plot"),
        (["trace", "qwen2.5-72b", "--real-cpu", "--method", "full"], "real CPU run needs"),
    ],
)
def test_trace_refusals_exit_2(args: list[str], field: str) -> None:
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    assert field in error_line(out.stderr)
    assert "Traceback" not in out.stderr


@pytest.mark.e2e
@needs_torch
def test_measure_without_cuda_exits_2(tiny: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = run("measure", tiny)
    assert out.returncode == 2
    assert "no CUDA device" in error_line(out.stderr)


def test_records_append_whole_lines_and_keep_old_ones(tmp_path) -> None:
    path = tmp_path / "traces.jsonl"
    append_row({"key": "a", "n": 1}, path)
    with open(path, "ab") as fh:  # a run killed mid-write elsewhere
        fh.write(b'{"key": "torn", "n"')
    append_row({"key": "b", "n": 2}, path)
    rows = read_rows(path)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n")


def test_record_key_is_stable() -> None:
    setup = {"method": "lora", "seq_len": 2048}
    versions = {"torch": "2.13.0"}
    assert record_key("m", setup, "trace", versions) == record_key(
        "m", dict(reversed(setup.items())), "trace", versions
    )
    assert record_key("m", setup, "trace", versions) != record_key("m", setup, "cuda", versions)


@pytest.mark.trace
@needs_torch
def test_trace_record_flag_appends(tiny: str, tmp_path) -> None:
    from vramplan import records

    target = tmp_path / "rows.jsonl"
    table = records.records_path()
    before = table.read_bytes()
    from vramplan.cli import main

    assert main(["trace", tiny, "--seq-len", "16", "--steps", "1", "--record", str(target), "--json"]) == 0
    assert table.read_bytes() == before  # the project's table is never appended to
    rows = read_rows(target)
    assert len(rows) == 1
    assert rows[0]["backend"] == "trace" and rows[0]["key"] and rows[0]["date"] and rows[0]["machine"]


@pytest.mark.trace
@needs_torch
def test_trace_record_defaults_to_the_working_directory(tiny: str, tmp_path, monkeypatch, capsys) -> None:
    """``--record`` alone appends to ./vramplan-runs.jsonl and says so (on stderr under --json)."""
    from vramplan.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["trace", tiny, "--seq-len", "16", "--steps", "1", "--record", "--json"]) == 0
    out = capsys.readouterr()
    target = tmp_path / "vramplan-runs.jsonl"
    assert json.loads(out.out)["backend"] == "trace"  # stdout is the result alone
    assert f"recorded in {target}" in out.err
    assert [r["backend"] for r in read_rows(target)] == ["trace"]


@pytest.mark.e2e
@needs_torch
def test_trace_report_of_a_plain_setup(tiny: str, tmp_path) -> None:
    """trace --report plans the traced Setup again: its default GRPO fields must not be refused."""
    out = tmp_path / "t.html"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vramplan",
            "trace",
            tiny,
            "--method",
            "lora",
            "--seq-len",
            "64",
            "--steps",
            "1",
            "--report",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.stat().st_size > 10_000
    assert 'aria-label="the estimate beside the trace"' in out.read_text()  # the estimate by phase beside the trace


@pytest.mark.e2e
@needs_torch
def test_trace_says_what_it_wrote_and_which_card_the_report_plans_for(tiny: str, tmp_path) -> None:
    png, page = tmp_path / "t.png", tmp_path / "t.html"
    out = run("trace", tiny, "--method", "lora", "--seq-len", "32", "--plot", str(png), "--report", str(page))
    assert out.returncode == 0, out.stderr
    assert f"wrote {png}" in out.stdout and f"wrote {page}" in out.stdout
    assert "(--gpu's default): pass --gpu for your card" in " ".join(out.stdout.split())
