"""``vramplan trace --trainer NAME``: a trainer's own step traced in the Python that has the
trainer (this one, or the one its ``python_env`` variable names: trace/trainer.py), with the
plan's figure beside it; and what it refuses, each in one line before anything runs. The
toy trainer's tracer (tests/toy_tracer.py) stands in for a real one: no torch needed."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import error_line
from vramplan.cli import main
from vramplan.frameworks import framework


def error(stderr: str) -> str:
    return error_line(stderr).removeprefix("vramplan: error: ")


MODEL = "qwen2.5-0.5b"
LORA = ["--method", "lora", "--seq-len", "64"]


@pytest.fixture
def toy(toy_trainer, monkeypatch: pytest.MonkeyPatch):
    fw = framework("toy")
    monkeypatch.setattr(fw, "tracer", "tests.toy_tracer")
    monkeypatch.setattr(fw, "package", "pydantic")  # "installed here": traced in this process
    return fw


def test_the_trainer_step_runs_here_with_the_plan_beside_it(toy, capsys) -> None:
    assert main(["trace", MODEL, "--trainer", "toy", *LORA]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert "traced with fake tensors on the CPU: toy's own training step, 2 step(s)" in out
    assert "the plan under toy's policy" in out and "+0.0% against this trace" in out


def test_json_names_the_trainer(toy, capsys) -> None:
    assert main(["trace", MODEL, "--trainer", "toy", *LORA, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainer"] == "toy"
    assert data["setup"]["method"] == "lora" and data["setup"]["seq_len"] == 64


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["--plot", "t.png"], "plot"), (["--record"], "record"), (["--real-cpu"], "real-cpu")],
)
def test_what_a_trainer_trace_cannot_serve_is_refused(toy, extra: list[str], field: str, capsys) -> None:
    assert main(["trace", MODEL, "--trainer", "toy", *LORA, *extra]) == 2
    assert error(capsys.readouterr().err).startswith(f"{field}: not with --trainer toy")


def test_no_tracer_yet_is_refused(toy_trainer, capsys) -> None:
    assert main(["trace", MODEL, "--trainer", "toy", *LORA]) == 2
    assert "its own step is not traced yet" in error(capsys.readouterr().err)


def test_a_trainer_installed_nowhere_is_refused_naming_the_variable(toy, monkeypatch, capsys) -> None:
    monkeypatch.setattr(toy, "package", "no-such-trainer-dist")
    monkeypatch.setattr(toy, "python_env", "VRAMPLAN_TOY_PYTHON")
    monkeypatch.delenv("VRAMPLAN_TOY_PYTHON", raising=False)
    assert main(["trace", MODEL, "--trainer", "toy", *LORA]) == 2
    line = error(capsys.readouterr().err)
    assert "pip install no-such-trainer-dist" in line and "VRAMPLAN_TOY_PYTHON" in line


def test_a_variable_naming_no_python_is_refused(toy, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(toy, "python_env", "VRAMPLAN_TOY_PYTHON")
    monkeypatch.setenv("VRAMPLAN_TOY_PYTHON", str(tmp_path / "python"))
    assert main(["trace", MODEL, "--trainer", "toy", *LORA]) == 2
    assert "is not an executable Python" in error(capsys.readouterr().err)


def test_an_unknown_trainer_is_refused(capsys) -> None:
    assert main(["trace", MODEL, "--trainer", "nope", *LORA]) == 2
    assert error(capsys.readouterr().err).startswith("trainer: unknown trainer 'nope'")


@pytest.mark.e2e
class TestInItsOwnPython:
    """The trainer's venv stands in as this interpreter, run as a child process."""

    @pytest.fixture
    def venv(self, toy, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(toy, "package", "no-such-trainer-dist")
        monkeypatch.setattr(toy, "python_env", "VRAMPLAN_TOY_PYTHON")
        monkeypatch.setenv("VRAMPLAN_TOY_PYTHON", sys.executable)
        return toy

    def test_the_result_comes_back(self, venv, capsys) -> None:
        assert main(["trace", MODEL, "--trainer", "toy", *LORA, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["trainer"] == "toy" and data["versions"] == {"toy": "1"}
        assert data["peak_bytes"] > 0

    def test_the_childs_refusal_is_one_line(self, venv, capsys) -> None:
        assert main(["trace", MODEL, "--trainer", "toy", "--method", "lora", "--seq-len", "13"]) == 2
        assert error(capsys.readouterr().err) == "seq_len: the toy trainer refuses 13 tokens"

    def test_the_childs_crash_is_a_bug(self, venv, capsys) -> None:
        assert main(["trace", MODEL, "--trainer", "toy", "--method", "lora", "--seq-len", "17"]) == 3
        assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_missing_trace_extra_is_named_with_its_install(monkeypatch, capsys) -> None:
    """After a plain ``pip install vramplan``, trace names what it needs instead of a traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    assert main(["trace", MODEL, *LORA]) == 2
    assert error(capsys.readouterr().err) == (
        "trace: needs peft: pip install 'vramplan[trace]' (install the torch build you want first)"
    )
