"""Emitted files hold user values as data: a model folder or a data path with line breaks,
quotes, ``$()``, backticks, ``#``, Unicode line separators or YAML specials reads back as the
same string from every file, through that format's own parser, and adds no code, command or
key. What no format can hold is refused with exit 2 naming the field.

Each file is checked against the same emit for a plain folder name: the Python module has the
same syntax tree once the two paths are named alike, every file has as many lines (Python's
``str.splitlines``, which breaks on every Unicode line break), YAML has the same keys and
run.sh passes ``bash -n``. tests/test_emit_safety_run.py runs the emitted scripts.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_CONFIG
from vramplan import plan
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.frameworks.files.common import printable, py_literal, sh_quote, yaml_quote, yaml_scalar

HOSTILE = {
    "newline_code": "m\nimport os; os.system('touch pwned')\n#",
    "quotes": "m'\"q\\",
    "subshell": "$(touch pwned)",
    "backticks": "`touch pwned`",
    "hash": "a # b",
    "unicode_breaks": "m\u2028import os\u2029x\x85y\x0bz\x0c",
    "yaml_specials": "- a: &x *y !tag {z} [w] | > % @ ~ ,",
    "pep263": "x coding: utf-7 +AAo-import os",
    "bidi_tab": "a\u202eb\tc\r",
    "marker": "__DATA____TRAINING__",
    "yaml_bool": "on",
}
#: (target, plan arguments): every file kind the targets write
TARGETS = {
    "trl": {"method": "lora"},
    "trl-zero2": {"method": "lora", "num_gpus": 2, "parallel": "zero2"},
    "trl-grpo": {"method": "lora", "rl": "grpo", "num_generations": 4, "completion_len": 64, "seq_len": 256},
    "swift": {"method": "lora"},
    "llamafactory": {"method": "lora", "lora_targets": "q_proj,v_proj"},
    "axolotl": {"method": "qlora", "lora_targets": "q_proj,up_proj"},
}


def model_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def emitted(folder: Path, key: str, data: str) -> dict[str, str]:
    target = key.split("-")[0]
    return emit(plan(str(folder), gpu="h100", **TARGETS[key]), target, data=data).files


def write(files: dict[str, str], out: Path) -> Path:
    out.mkdir(parents=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return out


def neutral_tree(text: str, values: dict[str, str]) -> str:
    """The module's syntax tree with the string constants in ``values`` renamed."""
    tree = ast.parse(text.encode("utf-8"))  # bytes: the parser honours the coding line as a file would
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in values:
            node.value = values[node.value]
    return ast.dump(tree)


@pytest.mark.parametrize("key", sorted(TARGETS))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_model_folder_and_data_read_back_exactly(tmp_path: Path, key: str, kind: str) -> None:
    value = HOSTILE[kind]
    bad_folder = model_folder(tmp_path / "bad", value)
    plain_folder = model_folder(tmp_path / "plain", "m")
    bad_data = f"{value}.jsonl"
    bad = emitted(bad_folder, key, bad_data)
    plain = emitted(plain_folder, key, "data.jsonl")
    assert sorted(bad) == sorted(plain)
    names = {str(bad_folder.resolve()): "MODEL", str(plain_folder.resolve()): "MODEL", bad_data: "DATA"}
    names["data.jsonl"] = "DATA"
    out = write(bad, tmp_path / "out")
    for name, text in bad.items():
        assert len(text.splitlines()) == len(plain[name].splitlines()), f"{name}: a value broke a line"
        if name.endswith(".py"):
            assert neutral_tree(text, names) == neutral_tree(plain[name], names), f"{name}: code from a value"
        elif name.endswith((".yaml", ".yml")):
            got, want = yaml.safe_load(text), yaml.safe_load(plain[name])
            assert sorted(got) == sorted(want)
            model = got.get("base_model", got.get("model_name_or_path"))
            assert model in (None, str(bad_folder.resolve()))
            if "datasets" in got:
                assert got["datasets"][0]["path"] == bad_data
        elif name.endswith(".json"):
            got = json.loads(text)
            if "vramplan_data" in got:
                assert got["vramplan_data"]["file_name"] == bad_data
        elif name.endswith(".sh"):
            assert subprocess.run(["bash", "-n", str(out / name)], capture_output=True).returncode == 0
    assert not (out / "pwned").exists() and not Path("pwned").exists()


def test_escapers_round_trip_every_character_class() -> None:
    text = "".join(chr(c) for c in range(1, 0x250)) + "\u2028\u2029\ufeff\ufffe\uffff\U0001f600\u202e"
    assert ast.literal_eval(py_literal(text)) == text
    assert yaml.safe_load(f"k: {yaml_quote(text)}")["k"] == text
    assert yaml.safe_load(f"k: {yaml_scalar(text)}")["k"] == text
    for locale in ("C", "C.UTF-8"):  # the octal escapes are bytes: the same in any locale
        env = {**os.environ, "LC_ALL": locale}
        printed = subprocess.run(["bash", "-c", f"printf %s {sh_quote(text)}"], capture_output=True, env=env).stdout
        assert printed == text.encode()
    assert "\n" not in sh_quote(text)
    assert len(("# " + printable(text)).splitlines()) == 1


YAML_WORDS = ["on", "off", "y", "n", "yes", "no", "null", "~", ".inf", ".nan", "true", ".5", ".5e3", "."]


@pytest.mark.parametrize("word", YAML_WORDS)
def test_yaml_words_that_resolve_to_other_types_stay_strings(word: str) -> None:
    assert yaml.safe_load(f"k: {yaml_scalar(word)}")["k"] == word
    assert yaml.safe_load(f"k: {yaml_scalar(word.upper())}")["k"] == word.upper()


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--lora-targets", "q_proj,v_proj;import os"], "lora_targets"),
        (["--lora-targets", "q_proj,v$(x)"], "lora_targets"),
        (["--data", "a\x01b\udcff.jsonl"], "data"),
    ],
)
def test_values_no_format_holds_are_refused_naming_the_field(tmp_path: Path, args: list[str], field: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vramplan", "qwen2.5-0.5b", "--method", "lora", "--emit", "trl", *args],
        capture_output=True,
        timeout=300,
        cwd=tmp_path,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and f"error: {field}:" in err


def test_swift_refuses_a_data_path_it_would_strip(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "m")
    with pytest.raises(VramplanError, match="^data: "):
        emit(plan(str(folder), gpu="h100", method="lora"), "swift", data=" data.jsonl")


def test_a_nan_option_is_refused() -> None:
    done = cli("qwen2.5-0.5b", "--method", "lora", "--lora-dropout", "nan", "--emit", "axolotl")
    assert done.returncode == 2 and "--lora-dropout" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("spelled", "target"),
    [
        ("mymodel", "trl"),
        ("./mymodel", "trl"),
        ("mymodel/config.json", "trl"),
        ("mymodel", "swift"),
        ("mymodel", "llamafactory"),
        ("mymodel", "axolotl"),
    ],
)
def test_a_local_folder_is_written_as_a_path_that_loads_from_the_run_folder(
    tmp_path: Path, spelled: str, target: str
) -> None:
    """``vramplan mymodel`` with ``mymodel/`` here is the local folder (as the plan reads
    it), not a hub id: every file names it by a path that resolves from inside --out, where
    the printed command runs."""
    folder = model_folder(tmp_path, "mymodel")
    done = cli(spelled, "--gpu", "h100", "--method", "lora", "--emit", target, "--out", "run1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "run: cd run1 && " in done.stderr
    out = tmp_path / "run1"
    found = []
    for name in os.listdir(out):
        text = (out / name).read_text()
        if name == "train.py":
            found.append(ast.literal_eval(text.split("\nMODEL = ", 1)[1].split("\n", 1)[0]))
        elif name.endswith((".yaml", ".yml")):
            got = yaml.safe_load(text)
            found.append(got.get("base_model") or got.get("model_name_or_path"))
        elif name == "run.sh" and target == "swift":
            assert "--use_hf" not in text  # a local folder is not looked up on the hub
            found.append(text.split("--model ", 1)[1].split(" ", 1)[0])
    assert found
    for path in found:
        assert (out / path).resolve() == folder.resolve(), path
        assert (out / path / "config.json").is_file()


def test_a_hub_id_is_kept_as_written(tmp_path: Path) -> None:
    files = emit(plan("Qwen/Qwen2.5-7B-Instruct", gpu="h100", method="qlora"), "axolotl").files
    assert yaml.safe_load(files["config.yml"])["base_model"] == "Qwen/Qwen2.5-7B-Instruct"
