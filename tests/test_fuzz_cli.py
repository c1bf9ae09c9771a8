"""A fuzz of the command line, in process: odd flags, values, model names, paths and
config.json contents. Every run exits 0, 1 or 2 with no traceback, and an exit 2 is one
printable line on stderr starting ``vramplan: error: ``.

Bounded: a fixed number of examples per test, and a guard that fails an example taking longer
than ``EXAMPLE_SECONDS`` instead of letting it hang CI. ``trace``/``measure`` (torch) are not
fuzzed here. Failures found by wider local runs are pinned as ``@example`` cases and in
tests/test_inputs.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_CONFIG
from vramplan import cli
from vramplan.setup import (
    ATTENTIONS,
    FSDP_SHARDINGS,
    KV_CACHES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PARALLELS,
    PRECISIONS,
    QUANTS,
    RLS,
    VLLMS,
)

pytestmark = pytest.mark.e2e

#: longest one example may take (the planner answers every input within a few seconds)
EXAMPLE_SECONDS = 30
#: examples per test; VRAMPLAN_FUZZ_EXAMPLES widens a local run
EXAMPLES = int(os.environ.get("VRAMPLAN_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the planner's first call builds caches; the guard below bounds each example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- values ------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "-1",
        "0",
        "1e308",
        "-1e308",
        "1e-320",
        "nan",
        "inf",
        "-inf",
        "1_000",
        "１２",
        "²",
        "٣",
        "0x10",
        "9" * 30,
        "9" * 5001,
        "a\nb",
        "\x1b[31m",
        "\x00",
        "\u200b",
        "x" * 300,
        "~nosuchuser",
        "auto",
        "all-linear",
        "q_proj,,v",
        "1024x768",
        "²x²",
        "0x0",
        "99999x1",
        "448X448",
    ]
)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([0, 1, 2, 3, 7, 8, 64, 256, 1024, 4096, 65536, 2**20, 2**20 + 1, 2**63]).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 2).map(lambda x: f"{x:.3g}"),
)
TEXT = st.text(max_size=40)
VALUE = st.one_of(ODD_TEXT, NUMBERS, TEXT)

CHOICES = {
    "--method": METHODS,
    "--quant": QUANTS,
    "--precision": PRECISIONS,
    "--optimizer": OPTIMIZERS,
    "--attention": ATTENTIONS,
    "--parallel": PARALLELS,
    "--offload": OFFLOADS,
    "--fsdp-sharding": FSDP_SHARDINGS,
    "--kv-cache": KV_CACHES,
    "--rl": RLS,
    "--vllm": VLLMS,
}
#: numeric or free-text flags, each with a range of sane values besides the odd ones
VALUED = {
    "--lora-rank": st.integers(1, 64),
    "--lora-alpha": st.integers(1, 64),
    "--lora-dropout": st.sampled_from([0, 0.05, 0.5]),
    "--lora-targets": st.sampled_from(["all-linear", "q_proj,v_proj", "gate"]),
    "--trainable-extra": st.sampled_from(["embeddings", "lm_head", "embeddings,lm_head", "wings"]),
    "--freeze-trainable-layers": st.integers(1, 4),
    "--seq-len": st.integers(1, 4096),
    "--micro-batch": st.integers(1, 16),
    "--grad-accum": st.integers(1, 16),
    "--gpus": st.integers(1, 16),
    "--nodes": st.integers(1, 4),
    "--image-size": st.sampled_from(["448x448", "1024x768", "28x28"]),
    "--images-per-sample": st.integers(0, 4),
    "--video-frames": st.integers(0, 16),
    "--video-size": st.sampled_from(["448x448", "640x360"]),
    "--num-generations": st.integers(2, 16),
    "--completion-len": st.integers(1, 1024),
    "--beta": st.sampled_from([0, 0.04, 1]),
    "--vllm-memory": st.sampled_from([0.1, 0.3, 0.9]),
    "--host-ram": st.integers(1, 2048),
    "--samples": st.integers(1, 10**6),
    "--avg-tokens": st.integers(1, 4096),
    "--epochs": st.sampled_from([0.5, 1, 3]),
    "--dataset-tokens": st.integers(1, 10**9),
    "--price-per-hour": st.sampled_from([0.5, 2, 40]),
    "--gpu": st.sampled_from(["4090", "a100-80g", "h100", "t4", "v100", "rtx9090"]),
}
SWITCHES = ["--grad-checkpointing", "--no-grad-checkpointing", "--freeze-vision", "--freeze-projector"]
SWITCHES += ["--vllm-sleep", "--json", "--force", "--overwrite", "--bogus", "--", "-x"]


SANE = st.integers(0, 3).map(bool)  # three times in four a flag gets a value it could mean


@st.composite
def flag(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["choice", "valued", "switch"]))
    if kind == "switch":
        return [draw(st.sampled_from(SWITCHES))]
    if kind == "choice":
        name = draw(st.sampled_from(sorted(CHOICES)))
        return [name, draw(st.sampled_from(CHOICES[name]) if draw(SANE) else ODD_TEXT)]
    name = draw(st.sampled_from(sorted(VALUED)))
    return [name, draw(VALUED[name].map(str) if draw(SANE) else VALUE)]


CATALOG = ["qwen2.5-0.5b", "llama-3.2-1b", "qwen2-vl-2b", "gemma-2-9b", "phi-3-mini", "qwen3-30b-a3b", "qwen-vl-chat"]

# --- config.json contents ------------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**63, 10**400, math.nan, math.inf, -math.inf, 1.5, 4096.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["qwen2", "llama", "x", "NaN", "\x00", "__class__"]),
)
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
)
FAMILIES = [
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma2",
    "phi3",
    "qwen",
    "qwen2_vl",
    "qwen2_5_vl",
]
KEYS = [
    *TINY_CONFIG,
    "head_dim",
    "kv_channels",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "torch_dtype",
    "seq_length",
    "no_bias",
    "bf16",
    "text_config",
    "vision_config",
    "visual",
    "__class__",
    "__dict__",
]
VISION = {
    "depth": 2,
    "embed_dim": 32,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "out_hidden_size": 64,
}
VISION_KEYS = [*VISION, "mlp_ratio", "patch_size", "in_channels", "in_chans", "temporal_patch_size"]
VISION_KEYS += ["spatial_merge_size", "window_size", "fullatt_block_indexes"]


@st.composite
def config_text(draw: st.DrawFn) -> bytes:
    """A config.json: the tiny config of some family with a few keys changed to odd values, or
    bytes that are no such thing."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "raw", "nested"]))
    if kind == "raw":
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from([b"", b"{", b"null", b"[]", b'"x"', b"1e999", b"\xef\xbb\xbf{}", b'{"a": NaN}']),
            )
        )
    if kind == "nested":
        depth = draw(st.sampled_from([10, 900, 1100, 100_000]))
        return (
            ("[" * depth + "]" * depth).encode()
            if draw(st.booleans())
            else ('{"a":' * depth + "1" + "}" * depth).encode()
        )
    cfg: dict[str, Any] = {**TINY_CONFIG, "model_type": draw(st.sampled_from(FAMILIES))}
    cfg.update(num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    cfg.update(vision_config=dict(VISION), visual={"width": 32, "mlp_ratio": 2, "layers": 2, "heads": 2})
    cfg["visual"].update(patch_size=14, image_size=448, output_dim=64)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()) or not isinstance(cfg.get("vision_config"), dict):
            cfg[draw(st.sampled_from(KEYS))] = draw(JSON_VALUE)
        else:
            cfg["vision_config"][draw(st.sampled_from(VISION_KEYS))] = draw(JSON_VALUE)
    if draw(st.booleans()):
        del cfg[draw(st.sampled_from(sorted(cfg)))]
    try:
        return json.dumps(cfg).encode()  # NaN and Infinity as Python's json writes them
    except ValueError:  # an integer past the int-str limit: written by hand
        return b'{"model_type": "qwen2", "hidden_size": ' + b"7" * 5000 + b"}"


# --- the harness ---------------------------------------------------------------------------------


class TookTooLong(Exception):
    pass


@contextmanager
def time_guard(seconds: int):
    def alarm(signum: int, frame: Any) -> None:
        raise TookTooLong(f"one CLI run took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    """Run ``vramplan argv`` in process and check what every run must satisfy."""
    with time_guard(EXAMPLE_SECONDS):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    event(f"exit {code}")
    assert code in (0, 1, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err + out, (argv, err[-2000:])
    if code == 2:
        assert err.endswith("\n") and err.count("\n") == 1, (argv, err)
        assert err.startswith("vramplan: error: "), (argv, err)
        assert err[:-1].isprintable(), (argv, err)
    return code


@pytest.fixture(scope="module")
def fuzz_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="vramplan-fuzz-") as d:
        yield Path(d)


@FUZZ
@given(
    model=SANE.flatmap(lambda sane: st.sampled_from(CATALOG) if sane else st.one_of(ODD_TEXT, TEXT)),
    flags=st.lists(flag(), max_size=5),
)
@example(model="qwen2.5-0.5b", flags=[["--samples", "10"], ["--avg-tokens", "10"], ["--epochs", "1e308"]])
@example(model="qwen2-vl-2b", flags=[["--image-size", "²x²"]])
@example(model="a" * 300, flags=[])
@example(model="~nosuchuser/config.json", flags=[])
def test_fuzz_plan_flags(capsys: pytest.CaptureFixture[str], model: str, flags: list[list[str]]) -> None:
    check_run([model, *(part for f in flags for part in f)], capsys)


@FUZZ
@given(content=config_text(), flags=st.lists(flag(), max_size=2))
@example(content=b'{"model_type": "\xff"}', flags=[])
@example(content=b"[" * 100_000 + b"]" * 100_000, flags=[])
@example(content=json.dumps({**TINY_CONFIG, "num_hidden_layers": 2**63}).encode(), flags=[])
@example(content=json.dumps({**TINY_CONFIG, "model_type": ["qwen2"]}).encode(), flags=[])
@example(content=json.dumps({**TINY_CONFIG, "max_position_embeddings": math.nan}).encode(), flags=[])
@example(content=json.dumps({**TINY_CONFIG, "final_logit_softcapping": "x"}).encode(), flags=[])
def test_fuzz_config_json(
    capsys: pytest.CaptureFixture[str], fuzz_dir: Path, content: bytes, flags: list[list[str]]
) -> None:
    path = fuzz_dir / "config.json"
    path.write_bytes(content)
    check_run([str(path), *(part for f in flags for part in f)], capsys)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@given(
    command=st.sampled_from(["models", "gpus", "validate"]),
    args=st.lists(st.one_of(ODD_TEXT, st.sampled_from(["--json", "--traced", "--csv", "qwen", "--bogus"])), max_size=3),
)
def test_fuzz_listings(capsys: pytest.CaptureFixture[str], command: str, args: list[str]) -> None:
    if command == "validate" and "--csv" in args:
        args = [a for a in args if a != "--csv"] + ["--csv", "/nonexistent/runs.csv"]
    check_run([command, *args], capsys)


def _published_rows() -> tuple[list[str], list[str]]:
    import csv

    from vramplan.tables import tables_dir

    with open(tables_dir() / "measured" / "published.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1]


@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
@example(cells=[(20, "0")])
@given(cells=st.lists(st.tuples(st.integers(0, 24), st.one_of(VALUE, JSON_LEAF.map(str))), min_size=1, max_size=3))
def test_fuzz_validate_csv(capsys: pytest.CaptureFixture[str], fuzz_dir: Path, cells: list[tuple[int, str]]) -> None:
    """One measured row of the published-measurements schema with a few cells made odd: the
    exit code and the one-line error only (validate's row handling is tested with it)."""
    import csv
    import io

    header, row = _published_rows()
    row = list(row)
    for index, value in cells:
        row[index % len(row)] = value
    buf = io.StringIO()
    csv.writer(buf).writerows([header, row])
    path = fuzz_dir / "runs.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogateescape")
    check_run(["validate", "--csv", str(path), "--json"], capsys)
