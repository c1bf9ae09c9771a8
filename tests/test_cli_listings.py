"""The catalogs as a user lists them: whole names piped, on a narrow terminal and as JSON;
``--version`` and the commands named in ``--help``."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from vramplan import __version__
from vramplan.cli import COMMANDS, main
from vramplan.gpus import gpu_catalog
from vramplan.models import catalog_names
from vramplan.render import gpus_table, models_table


def test_models_piped_are_one_whole_row_a_line(capsys) -> None:
    assert main(["models", "vl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["name", "hub id", "type", "family", "params", "published"]
    names = [line.split("\t")[0] for line in lines[1:]]
    assert names == [n for n in catalog_names() if "vl" in n]  # every VL entry matches "vl" by its name
    assert all(len(line.split("\t")) == 6 for line in lines)


def test_models_json(capsys) -> None:
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == catalog_names()
    assert all(isinstance(r["params"], int) and r["params"] > 0 and "/" in r["hub_id"] for r in rows)
    family = {r["name"]: r["family"] for r in rows}
    assert family["qwen3-30b-a3b"] == "moe" and family["qwen3-8b"] == "qwen2" and family["olmo-2-13b"] == "olmo2"


def test_gpus_piped_and_json(capsys) -> None:
    assert main(["gpus"]) == 0
    keys = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert keys == list(gpu_catalog())
    assert main(["gpus", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["key"]: r["memory_mib"] for r in rows}["rtx-4090"] == 24564


@pytest.mark.parametrize("width", [60, 80, 120])
def test_a_narrow_terminal_keeps_names_whole(width: int) -> None:
    console = Console(width=width, record=True)
    rows = [(n, "Org/" + n, "t", "f", 1, "") for n in catalog_names()]
    console.print(models_table(rows))
    text = console.export_text()
    assert all(f" {n} " in text for n in catalog_names())
    if width >= 80:
        console = Console(width=width, record=True)
        console.print(gpus_table(list(gpu_catalog().values()), width))
        text = console.export_text()
        assert all(f" {k} " in text for k in gpu_catalog())
        assert max(len(line) for line in text.splitlines()) <= width


def test_version_and_the_commands_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"vramplan {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"'vramplan {c}" in text for c in COMMANDS)
