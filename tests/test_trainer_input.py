"""The trainer is an input (issue 18, item 1): ``plan(trainer=...)`` and ``--trainer``, trl by
default; ``--emit`` plans for the trainer it writes for; the plan names the trainer and the
release its policy was read from, and warns when another release is installed."""

from __future__ import annotations

import json

import pytest

from tests.conftest import error_line
from vramplan import plan
from vramplan.cli import main
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.frameworks import TARGETS, framework, names
from vramplan.frameworks.base import outside_established


def _note(p: object, code: str) -> object | None:
    return next((n for n in p.notes if n.code == code), None)  # type: ignore[attr-defined]


def test_trl_is_planned_by_default_and_named() -> None:
    p = plan("qwen2.5-0.5b", "4090", method="lora")
    assert p.trainer == "trl"
    note = _note(p, "trainer.policy")
    assert note is not None and note.data == {"trainer": "trl", "package": "trl", "established": "1.16"}
    assert "trl 1.16" in note.text


@pytest.mark.parametrize("name", sorted({*TARGETS, "hf"}))
def test_every_built_in_trainer_says_what_it_is_read_from(name: str) -> None:
    fw = framework(name)
    assert fw.package and fw.established and fw.title
    p = plan("qwen2.5-0.5b", "4090", method="lora", trainer=name)
    assert p.trainer == name and _note(p, "trainer.policy").data["package"] == fw.package  # type: ignore[union-attr]


def test_an_unknown_trainer_is_one_line_naming_the_trainers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(VramplanError) as exc:
        plan("qwen2.5-0.5b", "4090", trainer="unsloth")
    assert exc.value.field == "trainer" and all(n in str(exc.value) for n in names())
    assert main(["qwen2.5-0.5b", "--trainer", "unsloth"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("vramplan: error: trainer: unknown trainer 'unsloth'")


def test_emit_plans_for_the_trainer_it_writes_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qwen2.5-0.5b", "--gpu", "a100-80g", "--method", "lora", "--emit", "swift"]) == 0
    out = capsys.readouterr().out
    assert "CHANGED FOR swift: planned for" not in out
    # the Python API may emit a plan for another trainer: said, and re-estimated as that one runs it
    files = emit(plan("qwen2.5-0.5b", "a100-80g", method="lora", trainer="trl"), "swift").files
    assert "planned for trl; these files run swift" in "".join(files.values())


def test_emit_for_another_trainer_than_the_one_named_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qwen2.5-0.5b", "--trainer", "trl", "--emit", "axolotl"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("vramplan: error: trainer: --trainer 'trl' and --emit axolotl disagree")
    assert main(["qwen2.5-0.5b", "--gpu", "a100-80g", "--trainer", "axolotl", "--emit", "axolotl"]) == 0


@pytest.mark.parametrize(
    ("installed", "outside"), [("1.16.0", False), ("1.16.3", False), ("1.17.0", True), ("0.16.0", True), (None, False)]
)
def test_a_release_outside_the_series_is_outside(installed: str | None, outside: bool) -> None:
    assert outside_established(framework("trl"), installed) is outside


def test_another_installed_release_warns_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("vramplan.advice.installed_version", lambda package: "1.17.2")
    p = plan("qwen2.5-0.5b", "4090", method="lora")
    note = _note(p, "trainer.version")
    assert note is not None and note.data["installed"] == "1.17.2"  # type: ignore[attr-defined]
    assert main(["qwen2.5-0.5b", "--method", "lora", "--json"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if line]
    assert warning == [
        "vramplan: warning: trl 1.17.2 is installed; the trl policy was read from trl 1.16.x, so its memory"
        " behaviour may differ"
    ]
    assert json.loads(captured.out)["trainer"] == "trl"
