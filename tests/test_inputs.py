"""Every input answered: bad input exits 2 with one line naming the field and what is allowed,
an internal error exits 3 with one line (the traceback only under --debug), never 1.

One named test per example of the fuzz that found them (issue 16), plus the paths, bounds and
library entry (``plan()``) around them. In-process: ``vramplan.cli.main(argv)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import TINY_CONFIG
from vramplan import cli, limits
from vramplan.errors import VramplanError, one_line, shown
from vramplan.models import load_config, load_model
from vramplan.planner import plan
from vramplan.setup import make_setup
from vramplan.spec import spec_from_config


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own exits (parse errors, --help)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def bad_input(argv: list[str], capsys: pytest.CaptureFixture[str], field: str, *says: str) -> str:
    """Exit 2, nothing on stdout, one printable line on stderr naming ``field``; returns it."""
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    line = err[:-1]
    assert line.startswith("vramplan: error: "), line
    assert line.isprintable(), line
    assert "Traceback" not in err
    assert field in line, line
    for text in says:
        assert text in line, line
    return line


def config_file(tmp_path: Path, content: bytes | str | dict, name: str = "config.json") -> str:
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def tiny_with(**changes: object) -> dict:
    return {**TINY_CONFIG, **changes}


# --- the fuzz's examples, one test each --------------------------------------------------------


def test_non_utf8_config(tmp_path, capsys) -> None:
    path = config_file(tmp_path, b'{"model_type": "qwen2", "hidden_act": "\xff\xfe"}')
    bad_input([path], capsys, "model", "not UTF-8")


def test_json_nested_100k_deep(tmp_path, capsys) -> None:
    path = config_file(tmp_path, "[" * 100_000 + "]" * 100_000)
    bad_input([path], capsys, "model", "too deeply")


def test_5001_digit_integer(tmp_path, capsys) -> None:
    path = config_file(tmp_path, '{"model_type": "qwen2", "hidden_size": ' + "9" * 5001 + "}")
    bad_input([path], capsys, "model", "digits")


def test_model_type_a_list(tmp_path, capsys) -> None:
    path = config_file(tmp_path, tiny_with(model_type=["qwen2"]))
    bad_input([path], capsys, "model_type", "not supported", "qwen2_vl")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", '"abc"'])
def test_max_position_embeddings_not_a_number(tmp_path, capsys, value: str) -> None:
    text = json.dumps(tiny_with(max_position_embeddings=0)).replace(
        '"max_position_embeddings": 0', f'"max_position_embeddings": {value}'
    )
    bad_input([config_file(tmp_path, text)], capsys, "max_position_embeddings", "from 0 to 1,073,741,824")


def test_final_logit_softcapping_a_string(tmp_path, capsys) -> None:
    path = config_file(tmp_path, tiny_with(final_logit_softcapping="x"))
    bad_input([path], capsys, "final_logit_softcapping", "a number from 0 to")


def test_num_hidden_layers_2_to_the_63(tmp_path, capsys) -> None:
    path = config_file(tmp_path, tiny_with(num_hidden_layers=2**63))
    line = bad_input([path], capsys, "num_hidden_layers")
    assert "must be an integer from 1 to 1,024, got 9223372036854775808" in line


def test_path_with_unknown_user(capsys) -> None:
    bad_input(["~nosuchuser/config.json"], capsys, "model", "no such user")


def test_300_character_name(capsys) -> None:
    line = bad_input(["a" * 300], capsys, "model", "unknown model", "characters")
    assert len(line) < 300  # the echo is cut


def test_300_character_json_path(capsys) -> None:
    bad_input(["a" * 300 + ".json"], capsys, "model", "File name too long")


def test_epochs_1e308(capsys) -> None:
    argv = ["qwen2.5-0.5b", "--samples", "10", "--avg-tokens", "10", "--epochs", "1e308"]
    bad_input(argv, capsys, "epochs", "at most 10,000")


@pytest.mark.parametrize("size", ["²x²", "１２x１２", "1_024x768", " 1024x768", "0x10", "99999x10", "10x", "x"])
def test_image_size_ascii_digits_only(capsys, size: str) -> None:
    bad_input(["qwen2-vl-2b", "--image-size", size], capsys, "image_size", "WIDTHxHEIGHT", "32768")


def test_video_size_names_its_field(capsys) -> None:
    argv = ["qwen2-vl-2b", "--video-frames", "8", "--video-size", "²x²"]
    bad_input(argv, capsys, "video_size", "WIDTHxHEIGHT")


# --- config.json: types, bounds, odd keys --------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("num_hidden_layers", True, "from 1 to 1,024"),
        ("num_hidden_layers", "2", "from 1 to 1,024"),
        ("num_hidden_layers", [2], "from 1 to 1,024"),
        ("num_hidden_layers", 1025, "from 1 to 1,024"),
        ("hidden_size", 2**17 + 1, "from 1 to 131,072"),
        ("intermediate_size", 0, "from 1 to 1,048,576"),
        ("vocab_size", 2**22 + 1, "from 1 to 4,194,304"),
        ("num_attention_heads", 1.5, "from 1 to 4,096"),
        ("num_key_value_heads", 3, "multiple"),
        ("head_dim", {"a": 1}, "from 1 to 8,192"),
        ("tie_word_embeddings", "yes", "true or false"),
        ("hidden_act", ["silu"], "string"),
        ("torch_dtype", 16, "string"),
    ],
)
def test_config_field_type_and_bound(tmp_path, capsys, key: str, value: object, says: str) -> None:
    bad_input([config_file(tmp_path, tiny_with(**{key: value}))], capsys, key, says)


def test_config_bounds_are_inclusive() -> None:
    spec = spec_from_config(tiny_with(num_hidden_layers=limits.MAX_LAYERS, vocab_size=limits.MAX_VOCAB))
    assert (spec.num_layers, spec.vocab_size) == (1024, 4194304)
    assert spec_from_config(tiny_with(max_position_embeddings=4096.0)).max_position_embeddings == 4096


def test_moe_fields_checked(tmp_path, capsys) -> None:
    moe = tiny_with(model_type="qwen3_moe", num_experts=8, num_experts_per_tok=9, moe_intermediate_size=32)
    bad_input([config_file(tmp_path, moe)], capsys, "num_experts_per_tok", "from 1 to 8")
    moe.update(num_experts_per_tok=2, mlp_only_layers=[[0]])
    bad_input([config_file(tmp_path, moe)], capsys, "mlp_only_layers")
    moe.update(mlp_only_layers=None, num_experts=2**14 + 1)
    bad_input([config_file(tmp_path, moe)], capsys, "num_experts", "16,384")


def test_vision_fields_checked(tmp_path, capsys) -> None:
    vl = tiny_with(model_type="qwen2_vl", vision_config={"depth": 2, "embed_dim": 32, "num_heads": 2})
    vl["vision_config"]["mlp_ratio"] = float("nan")
    bad_input([config_file(tmp_path, json.dumps(vl))], capsys, "vision_config.mlp_ratio", "a number from 0 to 64")
    vl["vision_config"].update(mlp_ratio=4, fullatt_block_indexes=[0, 5])
    bad_input([config_file(tmp_path, vl)], capsys, "vision_config.fullatt_block_indexes", "from 0 to 1")
    vl["vision_config"] = [1]
    bad_input([config_file(tmp_path, vl)], capsys, "model", "vision_config")


def test_odd_keys_are_ignored(tmp_path, capsys) -> None:
    odd = tiny_with(__class__="x", __dict__={"a": 1}, __init__=None, model_config=5)
    code, _, err = run([config_file(tmp_path, odd), "--json"], capsys)
    assert code in (0, 1) and err == ""


def test_top_level_not_an_object(tmp_path, capsys) -> None:
    bad_input([config_file(tmp_path, "[1, 2]")], capsys, "model", "JSON object, not a list")


def test_byte_order_mark_is_read(tmp_path) -> None:
    path = config_file(tmp_path, b"\xef\xbb\xbf" + json.dumps(TINY_CONFIG).encode())
    assert load_model(path).num_layers == 2


def test_config_over_16_mib_refused_unread(tmp_path, capsys) -> None:
    path = tmp_path / "config.json"
    with path.open("wb") as fh:  # sparse: the size is there, the bytes are not
        fh.truncate(limits.MAX_CONFIG_BYTES + 1)
    bad_input([str(path)], capsys, "model", "16,777,216")


def test_folder_without_config(tmp_path, capsys) -> None:
    bad_input([str(tmp_path)], capsys, "model", "no config.json")


def test_fifo_and_device_are_not_files(tmp_path, capsys) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    bad_input([str(fifo)], capsys, "model", "not a regular file")
    bad_input(["/dev/null"], capsys, "model", "not a regular file")


def test_permission_denied(tmp_path, capsys, monkeypatch) -> None:
    path = config_file(tmp_path, TINY_CONFIG)

    def denied(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)
    bad_input([path], capsys, "model", "cannot read", "Permission denied")


def test_nul_in_path(capsys) -> None:
    bad_input(["conf\x00ig.json"], capsys, "model", "NUL")


# --- the CLI's own numbers and echoes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field", "says"),
    [
        (["--samples", "0", "--avg-tokens", "5"], "samples", "from 1 to 1,000,000,000,000"),
        (["--samples", "9" * 25, "--avg-tokens", "5"], "samples", "from 1 to"),
        (["--samples", "5", "--avg-tokens", "2000000"], "avg_tokens", "from 1 to 1,048,576"),
        (["--dataset-tokens", "10000000000000000"], "dataset_tokens", "1,000,000,000,000,000"),
        (["--dataset-tokens", "5", "--price-per-hour", "1e7"], "price_per_hour", "at most 1,000,000"),
        (["--host-ram", "2e6"], "host_ram", "at most 1,048,576"),
        (["--epochs", "nan"], "--epochs", "finite number"),
        (["--lora-alpha", "1e300"], "lora_alpha", "1048576"),
        (["--lora-dropout", "1"], "lora_dropout", "less than 1"),
        (["--beta", "1e9", "--rl", "grpo"], "beta", "1000"),
        (["--vllm-memory", "2", "--rl", "grpo", "--vllm", "colocate"], "vllm_gpu_memory_utilization", "less than 1"),
        (["--freeze-trainable-layers", "5000", "--method", "freeze"], "freeze_trainable_layers", "1024"),
        (["--seq-len", "1_000"], "--seq-len", "ASCII digits"),
        (["--seq-len", "１２"], "--seq-len", "ASCII digits"),
        (["--gpus", "٣"], "--gpus", "integer or auto"),
    ],
)
def test_flag_bounds_said(capsys, argv: list[str], field: str, says: str) -> None:
    bad_input(["qwen2.5-0.5b", *argv], capsys, field, says)


def test_control_characters_escaped(capsys) -> None:
    line = bad_input(["qwen\x1b[31m\n2"], capsys, "model")
    assert "\\x1b[31m\\n2" in line
    line = bad_input(["qwen2.5-0.5b", "--bogus\x07\u200b"], capsys, "unrecognized")
    assert "\\x07\\u200b" in line


def test_shown_cuts_and_names() -> None:
    assert shown("a\nb") == "'a\\nb'"
    assert "characters" in shown("x" * 1000) and len(shown("x" * 1000)) < 120
    assert shown(10**5000) == "an integer of about 5,000 digits"
    assert one_line("plain text") == "plain text"


# --- exit 3, --debug, Ctrl-C, a closed pipe ----------------------------------------------------


def _broken(argv: list[str]) -> int:
    raise ZeroDivisionError("a bug\nin two lines")


def test_internal_error_exits_3_with_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "_cmd_plan", _broken)
    code, out, err = run(["qwen2.5-0.5b"], capsys)
    assert code == 3
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("vramplan: internal error: ZeroDivisionError: a bug\\nin two lines; please report it")
    assert "--debug" in err


def test_debug_anywhere_prints_the_traceback(capsys, monkeypatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "models", _broken)
    code, _, err = run(["models", "--debug"], capsys)
    assert code == 3
    assert "Traceback" in err and "ZeroDivisionError" in err


def test_debug_is_not_a_plan_error(capsys) -> None:
    code, _, err = run(["--debug", "qwen2.5-0.5b", "--json"], capsys)
    assert code == 0, err


def test_keyboard_interrupt_exits_130_quietly(capsys, monkeypatch) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_plan", interrupted)
    code, out, err = run(["qwen2.5-0.5b"], capsys)
    assert (code, out, err) == (130, "", "")


def test_closed_pipe_exits_141_quietly(capsys, monkeypatch) -> None:
    def closed(argv: list[str]) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_plan", closed)
    code, _, err = run(["qwen2.5-0.5b"], capsys)
    assert (code, err) == (141, "")


def test_piped_into_head_prints_no_traceback() -> None:
    """A real pipe closed after one line (``vramplan models | head -1``); plain planner, no torch."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m vramplan qwen2.5-0.5b --json | head -c 1; exit ${{PIPESTATUS[0]}}"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode in (0, 141)


# --- the library: plan() raises VramplanError naming the field -----------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((["qwen2.5-0.5b"],), {}, "model"),
        ((None,), {}, "model"),
        (("qwen2.5-0.5b", 4090), {}, "gpu"),
        (("qwen2.5-0.5b",), {"seq_len": "abc"}, "seq_len"),
        (("qwen2.5-0.5b",), {"seq_len": True}, "seq_len"),
        (("qwen2.5-0.5b",), {"num_gpus": [2]}, "num_gpus"),
        (("qwen2.5-0.5b",), {"num_gpus": "auto", "micro_batch": "x"}, "micro_batch"),
        (("qwen2.5-0.5b",), {"host_ram_gib": float("nan")}, "host_ram"),
        (("qwen2.5-0.5b",), {"host_ram_gib": True}, "host_ram"),
        (("qwen2.5-0.5b",), {"image_size": 448}, "image_size"),
        (("qwen2.5-0.5b",), {"lora_targets": ["q_proj"]}, "lora_targets"),
        (("qwen2.5-0.5b",), {"wings": 2}, "wings"),
    ],
)
def test_plan_library_raises_naming_the_field(args: tuple, kwargs: dict, field: str) -> None:
    with pytest.raises(VramplanError) as err:
        plan(*args, **kwargs)
    assert err.value.field == field
    assert "\n" not in str(err.value)


def test_plan_takes_a_pathlike(tmp_path) -> None:
    path = Path(config_file(tmp_path, TINY_CONFIG))
    assert plan(path, "4090").source == str(path)
    assert load_config(path)[1]["hidden_size"] == 64


def test_make_setup_image_size_names_the_field() -> None:
    with pytest.raises(VramplanError) as err:
        make_setup(image_size="²x²")
    assert err.value.field == "image_size"


def test_unencodable_name_on_an_ascii_terminal(tmp_path) -> None:
    """A config folder named in CJK, printed where stdout is ASCII: escaped, not exit 3."""
    import subprocess
    import sys

    folder = tmp_path / "模型"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    out = subprocess.run(
        [sys.executable, "-m", "vramplan", str(folder)], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode in (0, 1), out.stderr
    assert "\\u6a21\\u578b" in out.stdout
