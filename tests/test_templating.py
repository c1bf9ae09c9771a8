"""The emitted scripts' templates (vramplan/frameworks/files/templates/) and their renderer
(vramplan/frameworks/files/templating.py): every marker a renderer fills is in its template and every
marker in a template is filled, every block has a choice, a renamed marker or block fails
loudly, values are written in one pass, and no directive reaches an emitted file.
tests/test_templates.py runs ruff and mypy on the templates."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vramplan
from vramplan import plan
from vramplan.emit import emit
from vramplan.frameworks.files import templating

TEMPLATES = Path(templating.__file__).parent / "templates"
NAMES = ["grpo.py", "sft.py"]
#: one plan per layout and script: together they choose every block and fill every marker
PLANS: dict[str, dict[str, Any]] = {
    "sft": {"method": "lora"},
    "sft-qlora": {"method": "qlora", "quant": "bnb-nf4"},
    "ddp": {"method": "full", "num_gpus": 2, "parallel": "ddp"},
    "zero2": {"method": "full", "num_gpus": 2, "parallel": "zero2"},
    "fsdp": {"method": "full", "num_gpus": 2, "parallel": "fsdp"},
    "device_map": {"method": "lora", "num_gpus": 2, "parallel": "device_map"},
    "grpo": {"method": "lora", "rl": "grpo", "num_generations": 4, "completion_len": 64, "seq_len": 256},
}


def rendered_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, bool], dict[str, str], str]]:
    """(template, blocks, values, script) for each plan of PLANS, as trl's renderer calls it."""
    calls: list[tuple[str, dict[str, bool], dict[str, str]]] = []
    real = templating.render

    def spy(name: str, blocks: dict[str, bool], values: dict[str, str]) -> str:
        calls.append((name, dict(blocks), dict(values)))
        return real(name, blocks, values)

    monkeypatch.setattr(templating, "render", spy)
    for fields in PLANS.values():
        files = emit(plan("qwen2.5-0.5b", gpu="a100-80g", **fields), "trl").files
        name, blocks, values = calls[-1]
        yield name, blocks, values, files["train.py"]


def if_blocks(name: str) -> set[str]:
    out = set()
    for line in templating.expanded(name):
        m = templating.DIRECTIVE.fullmatch(line.rstrip("\n"))
        if m and m["kind"] == "if" and not m["close"]:
            out.add(m["args"].strip())
    return out


def stand_ins(name: str) -> tuple[set[str], str]:
    """(the markers the template-only block declares, the template's text outside it)."""
    text = templating.source(name)
    begin, end = "# <template-only>\n", "# </template-only>\n"
    assert text.count(begin) == 1 and text.count(end) == 1, name
    head, rest = text.split(begin)
    stubs, tail = rest.split(end)
    declared = {
        node.target.id
        for node in ast.parse(stubs).body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    return declared, head + tail


def test_every_marker_and_block_is_filled_and_every_fill_has_its_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    filled: dict[str, set[str]] = {n: set() for n in NAMES}
    chosen: dict[str, set[str]] = {n: set() for n in NAMES}
    for name, blocks, values, script in rendered_calls(monkeypatch):
        filled[name] |= set(values)
        chosen[name] |= set(blocks)
        assert set(blocks) == if_blocks(name), name
        assert not templating.MARKER.search(script), name
    for name in NAMES:
        text = "".join(templating.expanded(name))
        assert filled[name] == set(templating.MARKER.findall(text)), name
        assert chosen[name] == if_blocks(name), name


def test_every_marker_has_a_typed_stand_in_for_the_checkers() -> None:
    for name in NAMES:
        declared, body = stand_ins(name)
        assert declared == set(templating.MARKER.findall(body)), name


def test_a_renamed_marker_fails_loudly() -> None:
    blocks = {"placement_per_process": True, "placement_device_map": False}
    text = templating.select("grpo.py", templating.expanded("grpo.py"), blocks)
    values = {m: "0" for m in templating.MARKER.findall(text)}
    assert templating.fill("grpo.py", text, values)
    missing = dict(values)
    del missing["__DATA__"]
    with pytest.raises(AssertionError, match="__DATA__"):
        templating.fill("grpo.py", text, missing)
    with pytest.raises(AssertionError, match="__DATASET__"):
        templating.fill("grpo.py", text, {**values, "__DATASET__": "0"})


def test_a_block_without_a_choice_or_a_choice_without_a_block_fails_loudly() -> None:
    lines = templating.expanded("grpo.py")
    with pytest.raises(AssertionError, match="placement_device_map"):
        templating.select("grpo.py", lines, {"placement_per_process": True})
    with pytest.raises(AssertionError, match="deepspeed_config"):
        templating.select(
            "grpo.py", lines, {"placement_per_process": True, "placement_device_map": False, "deepspeed_config": True}
        )


def test_blocks_are_kept_or_dropped_whole_and_directives_never_reach_the_output() -> None:
    lines = [
        "a = 1\n",
        "# <if x>\n",
        "b = 2\n",
        "    # <if y>\n",
        "    c = 3\n",
        "    # </if y>\n",
        "# </if x>\n",
        "# <template-only>\n",
        "d = 4\n",
        "# </template-only>\n",
        "# fmt: off\n",
        "e = 5\n",
        "# fmt: on\n",
    ]
    assert templating.select("t", lines, {"x": True, "y": True}) == "a = 1\nb = 2\n    c = 3\ne = 5\n"
    assert templating.select("t", lines, {"x": True, "y": False}) == "a = 1\nb = 2\ne = 5\n"
    assert templating.select("t", lines, {"x": False, "y": True}) == "a = 1\ne = 5\n"
    with pytest.raises(AssertionError, match="closes no open block"):
        templating.select("t", ["# <if x>\n", "# </if y>\n"], {"x": True, "y": True})
    with pytest.raises(AssertionError, match="not closed"):
        templating.select("t", ["# <if x>\n"], {"x": True})


def test_values_are_written_in_one_pass() -> None:
    text = "A = __A__\nB = {\n    **__B__,\n}\n"
    values = {"__A__": "'__B__'", "__B__": "    'k': '__A__',"}
    assert templating.fill("t", text, values) == "A = '__B__'\nB = {\n    'k': '__A__',\n}\n"


def test_an_emitted_script_holds_no_directive(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _, _, script in rendered_calls(monkeypatch):
        for directive in ("# <", "# </", "# fmt:", "# isort:", "import typing", "template-only"):
            assert directive not in script, (name, directive)
        ast.parse(script)


def test_the_templates_stay_out_of_the_import_graph() -> None:
    """They import torch and trl: read as data by templating.source, never imported."""
    assert sorted(p.name for p in TEMPLATES.glob("*.py")) == NAMES
    assert not (TEMPLATES / "__init__.py").exists()
    package = Path(vramplan.__file__).parent
    for py in package.rglob("*.py"):
        if TEMPLATES in py.parents:
            continue
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            assert not any("templates" in n.split(".") for n in names), py
    assert templating.source("sft.py") == (TEMPLATES / "sft.py").read_text(encoding="utf-8")
