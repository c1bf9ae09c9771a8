"""`vramplan validate` never aborts on a row: a row it cannot express is listed as excluded
with a code and a reason naming the field, the summary counts it, the statistics use only
the usable rows; only a problem with the file as a whole is bad input (exit 2, one line)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_CONFIG, measured_row
from vramplan import published
from vramplan.cli import main
from vramplan.published import COLUMNS, compare_csv, summarize

GOOD = measured_row()
OOM = dict(outcome="oom", measured_value="", gpu="rtx-4090", seq_len="32768", micro_batch="64")

#: (id, fields over GOOD, code, text in the reason); the issue's examples come first
BAD = [
    ("gptq-int8", dict(method="qlora", quant="gptq-int8"), "unknown quant", "unknown quant 'gptq-int8'; allowed: none"),
    ("chatglm", dict(model="glm/config.json"), "bad model config", "model_type: 'chatglm' is not supported"),
    ("unknown-gpu", OOM | dict(gpu="tpu-v5e"), "unknown gpu", "unknown gpu 'tpu-v5e'"),
    ("blank-field", dict(seq_len=""), "not stated", "not stated: seq_len"),
    ("zero", dict(measured_value="0"), "invalid measured_value", "invalid measured_value '0'"),
    ("inf", dict(measured_value="inf"), "invalid measured_value", "invalid measured_value 'inf'"),
    ("1e400", dict(measured_value="1e400"), "invalid measured_value", "invalid measured_value '1e400'"),
    ("negative", dict(measured_value="-3.5"), "invalid measured_value", "invalid measured_value '-3.5'"),
    ("nan", dict(measured_value="nan"), "invalid measured_value", "must be a positive finite number"),
    ("words", dict(measured_value="about 20"), "invalid measured_value", "'about 20': not a number"),
    ("comma", dict(measured_value="4,5"), "invalid measured_value", "'4,5': not a number"),
    ("tiny-value", dict(measured_value="1e-9"), "invalid measured_value", "1 MiB..16 TiB"),
    ("huge-value", dict(measured_value="1e300"), "invalid measured_value", "1 MiB..16 TiB"),
    ("method", dict(method="dpo"), "unknown method", "unknown method 'dpo'"),
    ("precision", dict(precision="fp8"), "unknown precision", "unknown precision 'fp8'"),
    ("optimizer", dict(optimizer="muon"), "unknown optimizer", "unknown optimizer 'muon'"),
    ("parallel", dict(parallel="tp"), "unknown parallel", "unknown parallel 'tp'"),
    ("offload", dict(offload="nvme"), "unknown offload", "unknown offload 'nvme'"),
    ("attention", dict(attention="flash3"), "unknown attention", "unknown attention 'flash3'"),
    ("measurement", dict(measurement="peak"), "unknown measurement", "unknown measurement 'peak'"),
    ("unit", dict(measured_unit="MB"), "unknown measured_unit", "unknown measured_unit 'MB'"),
    ("outcome", dict(outcome="crashed"), "unknown outcome", "unknown outcome 'crashed'"),
    ("checkpointing", dict(grad_checkpointing="yes"), "unknown grad_checkpointing", "'yes'; allowed: true, false"),
    ("model", dict(model="Qwen/Qwen1.5-72B"), "unknown model", "unknown model 'Qwen/Qwen1.5-72B'"),
    ("long-model", dict(model="x" * 300), "unknown model", "(302 characters)"),
    ("missing-config", dict(model="nowhere/config.json"), "unknown model", "no config.json"),
    ("seq-zero", dict(seq_len="0"), "invalid seq_len", "invalid seq_len"),
    ("seq-float", dict(seq_len="2.5"), "invalid seq_len", "invalid seq_len"),
    ("seq-1e400", dict(seq_len="1e400"), "invalid seq_len", "invalid seq_len"),
    ("batch-negative", dict(micro_batch="-2"), "invalid micro_batch", "invalid micro_batch"),
    ("gpus-huge", dict(num_gpus="99999"), "invalid num_gpus", "invalid num_gpus"),
    ("rank-nan", dict(lora_rank="nan"), "invalid lora_rank", "invalid lora_rank"),
    ("alpha-inf", dict(lora_alpha="inf"), "invalid lora_alpha", "invalid lora_alpha"),
    ("extra", dict(trainable_extra="vision_tower"), "invalid trainable_extra", "'vision_tower'"),
    ("qlora-unquantized", dict(method="qlora", quant="none"), "invalid quant", "invalid quant"),
    ("gpu-auto", OOM | dict(gpu="auto"), "unknown gpu", "unknown gpu 'auto'"),
    ("oom-no-gpu", OOM | dict(gpu=""), "not stated", "not stated: gpu"),
    ("oom-blank", OOM | dict(grad_checkpointing=""), "not stated", "not stated: grad_checkpointing"),
    ("no-value", dict(measured_value=""), "no measured value", "no measured value"),
    ("noted", dict(notes="excluded: a screenshot reading. More text."), "excluded in notes", "a screenshot reading"),
    ("escape", dict(model="\x1b[31mred"), "invalid model", "'\\x1b[31mred': a control character"),
    ("nul", dict(gpu="a\x00b"), "invalid gpu", "'a\\x00b': a control character"),
]


def write_csv(folder: Path, rows: list[dict[str, str]], name: str = "runs.csv") -> Path:
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with a chatglm config beside the CSV (a model_type the planner does not model)."""
    (tmp_path / "glm").mkdir()
    (tmp_path / "glm" / "config.json").write_text(json.dumps(TINY_CONFIG | {"model_type": "chatglm"}))
    return tmp_path


def good_rows() -> list[dict[str, str]]:
    return [GOOD | dict(id="good-1"), GOOD | dict(id="good-2", seq_len="1024", measured_value="6")]


def mixed_csv(folder: Path) -> Path:
    return write_csv(folder, [good_rows()[0], *(GOOD | over | dict(id=i) for i, over, _, _ in BAD), good_rows()[1]])


def run_json(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["validate", "--csv", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("row_id, over, code, text", BAD, ids=[b[0] for b in BAD])
def test_each_bad_row_is_excluded_with_its_reason(folder: Path, row_id, over, code, text) -> None:
    rows = compare_csv(write_csv(folder, [*good_rows(), GOOD | over | dict(id=row_id)]))
    bad = rows[-1]
    assert bad.id == row_id and bad.excluded
    assert bad.code == code, bad.reason
    assert text in bad.reason
    assert bad.line == 4
    assert bad.estimate_bytes is None and bad.error_pct is None
    assert all(c.isprintable() for c in bad.reason)
    assert not rows[0].excluded and not rows[1].excluded


def test_mixed_file_runs_on_and_counts_exclusions(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(mixed_csv(folder), capsys)
    assert code == 0
    rows = {r["id"]: r for r in data["rows"]}
    assert len(rows) == len(BAD) + 2
    for row_id, _, reason_code, text in BAD:
        assert rows[row_id]["excluded"] is True and rows[row_id]["code"] == reason_code
        assert text in rows[row_id]["reason"]
    for good in ("good-1", "good-2"):
        assert rows[good]["excluded"] is False and rows[good]["reason"] == "" and rows[good]["error_pct"] is not None
    s = data["summary"]
    assert s["rows"] == len(BAD) + 2 and s["excluded"] == len(BAD) and s["compared"] == 2
    want: dict[str, int] = {}
    for _, _, reason_code, _ in BAD:
        want[reason_code] = want.get(reason_code, 0) + 1
    assert s["exclusions"] == want
    assert list(s["exclusions"].values()) == sorted(want.values(), reverse=True)


def test_statistics_use_only_usable_rows(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same two good rows give the same statistics alone and among every kind of bad row
    (a negative measured value used to be counted)."""
    alone = summarize(compare_csv(write_csv(folder, good_rows(), "good.csv")))
    _, data = run_json(mixed_csv(folder), capsys)
    assert data["summary"]["overall"] == alone.overall.model_dump()
    assert alone.overall.rows == 2


def test_table_lists_reasons_and_summary(folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["validate", "--csv", str(mixed_csv(folder))]) == 0
    out = capsys.readouterr().out
    assert "excluded: unknown gpu 'tpu-v5e'" in out
    assert "excluded: unknown quant 'gptq-int8'" in out
    assert "excluded: invalid measured_value '1e400'" in out
    assert f"{len(BAD) + 2} rows: 2 compared, {len(BAD)} excluded (invalid measured_value 9," in out
    assert "\x1b[31mred" not in out and "\\x1b[31mred" in out  # a user's escape sequence is shown, not run


def test_markup_in_a_cell_is_shown_as_written(folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    path = write_csv(folder, [*good_rows(), GOOD | dict(id="[bold]x[/bold]", model="[red]m")])
    assert main(["validate", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[bold]x[/bold]" in out and "[red]m" in out


def test_shape_and_id_problems_are_rows_too(folder: Path) -> None:
    header = ",".join(COLUMNS)
    good = [GOOD | dict(id="good-1")]
    line = ",".join(GOOD[c] if c != "id" else "{id}" for c in COLUMNS)
    text = "\n".join(
        [
            header,
            line.format(id="good-1"),
            line.format(id="good-1"),  # a duplicate id
            line.format(id=""),  # no id
            line.format(id="long") + ",surplus",  # one field too many: an unquoted comma
            ",".join(line.format(id="short").split(",")[:10]),  # cut short
        ]
    )
    path = folder / "shape.csv"
    path.write_text(text + "\n")
    rows = compare_csv(path)
    assert [r.code for r in rows] == ["", "duplicate id", "blank id", "malformed row", "malformed row"]
    assert rows[1].reason == "duplicate id 'good-1' (first on line 2)"
    assert rows[2].reason == "blank id (line 4)"
    assert rows[3].reason == f"malformed row: {len(COLUMNS) + 1} fields, the header has {len(COLUMNS)}"
    assert rows[4].reason == f"malformed row: 10 fields, the header has {len(COLUMNS)}"
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    assert good  # the first row is compared
    assert rows[0].error_pct is not None


def test_bad_quoting_excludes_its_record_only(folder: Path) -> None:
    """What the csv module refuses in a record (a stray quote, a field over its 128 KiB
    limit, a quote never closed) excludes that record; the records after it are read."""
    line = ",".join(GOOD[c] if c != "id" else "{id}" for c in COLUMNS)
    text = "\n".join(
        [
            ",".join(COLUMNS),
            line.format(id="a"),
            line.format(id="b").replace("my lab notebook", '"my" lab'),
            line.format(id="c"),
            line.format(id="d").replace("my lab notebook", "x" * 200_000),
            line.format(id="e"),
            line.format(id="f").replace("my lab notebook", '"never closed'),
            line.format(id="g"),
        ]
    )
    path = folder / "quotes.csv"
    path.write_text(text + "\n")
    rows = compare_csv(path)
    assert [(r.id, r.code) for r in rows] == [
        ("a", ""),
        ("", "malformed row"),
        ("c", ""),
        ("", "malformed row"),
        ("e", ""),
        ("", "malformed row"),
    ]
    assert [r.line for r in rows[:5]] == [2, 3, 4, 5, 6]
    assert "field larger than field limit" in rows[3].reason and "unexpected end of data" in rows[5].reason


def test_a_quoted_newline_keeps_line_numbers(folder: Path) -> None:
    rows = [GOOD | dict(id="a", notes="two\nlines"), GOOD | dict(id="b", quant="gptq-int8")]
    out = compare_csv(write_csv(folder, rows))
    assert [r.line for r in out] == [2, 4]


FIELD_VALUES = {
    "model": ["qwen2.5-0.5b", "llama-3.1-8b", "glm/config.json", "Qwen/Qwen1.5-72B"],
    "method": ["full", "freeze", "lora", "qlora", "inference", "dpo"],
    "quant": ["none", "bnb-nf4", "bnb-int8", "gptq-int4", "gptq-int8", ""],
    "precision": ["bf16", "fp16", "amp-bf16", "fp8"],
    "seq_len": ["1", "512", "4096", "0", "-1", "1e400", "2.5", "99999999999"],
    "micro_batch": ["1", "4", "0", "nan"],
    "num_gpus": ["1", "2", "8", "", "0"],
    "parallel": ["none", "ddp", "zero3", "fsdp", "device_map", "tp"],
    "offload": ["none", "optimizer", "optimizer+params", "nvme"],
    "grad_checkpointing": ["true", "false", "TRUE", "yes", ""],
    "gpu": ["rtx-4090", "a100-80g", "tpu-v5e", "auto", ""],
    "measured_value": ["4.5", "80", "0", "-1", "inf", "1e400", "1e-9", "x", ""],
    "measured_unit": ["GiB", "GB", "MB", ""],
    "measurement": ["allocated", "reserved", "device", "unknown", "peak", ""],
    "outcome": ["ok", "oom", "crashed", ""],
    "lora_targets": ["all-linear", "q_proj,v_proj", "nothing_here", ""],
    "trainable_extra": ["", "embed_tokens", "lm_head", "vision_tower"],
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.fixed_dictionaries({f: st.sampled_from(v) for f, v in FIELD_VALUES.items()}),
    noise=st.dictionaries(st.sampled_from(COLUMNS), st.text(max_size=30), max_size=3),
)
def test_any_row_is_compared_or_excluded(folder: Path, picks: dict[str, str], noise: dict[str, str]) -> None:
    """Whatever a row holds, it comes back compared or excluded with a printable reason;
    nothing raises (a planner bug would, and would fail this test)."""
    row = GOOD | picks | noise | dict(id="r")
    (c,) = compare_csv(write_csv(folder, [row], "any.csv"))
    assert c.excluded == bool(c.code) == bool(c.reason)
    assert c.reason.isprintable()
    if not c.excluded and c.outcome == "ok":
        assert c.error_pct is not None and c.estimate_bytes and c.estimate_bytes > 0


def test_a_genuine_bug_is_not_swallowed(folder: Path, monkeypatch) -> None:
    """Only a bad input (VramplanError) becomes an exclusion: any other exception propagates
    (the CLI reports it as an internal error)."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug in a memory term")

    monkeypatch.setattr(published, "estimate", broken)
    with pytest.raises(ZeroDivisionError):
        compare_csv(write_csv(folder, good_rows()))


def test_oom_row_is_checked_against_its_card(folder: Path) -> None:
    rows = compare_csv(write_csv(folder, [*good_rows(), GOOD | OOM | dict(id="oom")]))
    oom = rows[-1]
    assert not oom.excluded and oom.fits is False and oom.error_pct is None
    assert summarize(rows).oom_rows == 1


# ---- the file as a whole: exit 2, one line naming the field and what is allowed ----


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("vramplan: error: csv: ")
    assert all(c.isprintable() for c in captured.err.rstrip("\n"))
    return captured.err


def test_missing_file(tmp_path: Path, capsys) -> None:
    err = _refused(["validate", "--csv", str(tmp_path / "none.csv")], capsys)
    assert "cannot read" in err and "No such file" in err


def test_directory(tmp_path: Path, capsys) -> None:
    assert "cannot read" in _refused(["validate", "--csv", str(tmp_path)], capsys)


def test_control_characters_in_the_path_are_escaped(tmp_path: Path, capsys) -> None:
    err = _refused(["validate", "--csv", str(tmp_path / "a\nb\x1b.csv")], capsys)
    assert "a\\nb\\x1b.csv" in err


def test_not_utf8(folder: Path, capsys) -> None:
    path = write_csv(folder, good_rows())
    path.write_bytes(path.read_bytes().replace(b"my lab notebook", b"caf\xe9"))
    assert "is not UTF-8 text" in _refused(["validate", "--csv", str(path)], capsys)


@pytest.mark.parametrize(
    "content, text",
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b'{"rows": [1, 2]}\n', "is not a CSV of the published-measurements schema"),
        (b"\x89PNG\r\n\x1a\n", "is not UTF-8 text"),
        (b"\x00\x01\x02\x03", "is not a CSV of the published-measurements schema"),
        (b"id,model\n1,qwen2.5-7b\n", "lacks column(s) source, method"),
        (",".join(COLUMNS).encode() + b"\n", "has a header but no rows"),
        (b'"id,source\n', "is not a readable CSV"),
    ],
    ids=["empty", "blank", "json", "png", "nul", "missing-columns", "header-only", "header-quote"],
)
def test_not_a_usable_csv(tmp_path: Path, capsys, content: bytes, text: str) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    assert text in _refused(["validate", "--csv", str(path)], capsys)


def test_huge_file_and_too_many_rows(folder: Path, capsys, monkeypatch) -> None:
    path = write_csv(folder, good_rows() * 3)
    monkeypatch.setattr(published, "MAX_CSV_BYTES", path.stat().st_size - 1)
    assert "is larger than" in _refused(["validate", "--csv", str(path)], capsys)
    monkeypatch.setattr(published, "MAX_CSV_BYTES", 16 << 20)
    monkeypatch.setattr(published, "MAX_CSV_ROWS", 5)
    assert "has more than 5 rows" in _refused(["validate", "--csv", str(path)], capsys)
    monkeypatch.setattr(published, "MAX_CSV_ROWS", 6)  # exactly at the bound is fine
    assert len(compare_csv(path)) == 6


def test_bound_is_read_not_trusted(tmp_path: Path, capsys) -> None:
    """An endless input is refused after the bound, not read to its end."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    assert "is larger than 16 MiB" in _refused(["validate", "--csv", "/dev/zero"], capsys)


def test_no_usable_row(folder: Path, capsys) -> None:
    rows = [GOOD | over | dict(id=i) for i, over, _, _ in BAD[:8]]
    err = _refused(["validate", "--csv", str(write_csv(folder, rows))], capsys)
    assert "none of its 8 rows can be compared" in err
    assert "invalid measured_value 4" in err
    assert "row 'gptq-int8' on line 2: unknown quant 'gptq-int8'" in err


def test_subprocess_exit_codes(folder: Path) -> None:
    """The real command line: the mixed file exits 0, a missing one 2 with one line."""
    env_run = [sys.executable, "-m", "vramplan", "validate", "--csv"]
    ok = subprocess.run([*env_run, str(mixed_csv(folder))], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*env_run, str(folder / "none.csv")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_shared_real_reports_run_on(capsys) -> None:
    """The real user reports (shared/data/real_reports.csv) used to abort on their first
    row (a hub id outside the catalog); now each such row is listed as excluded."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_reports.csv"
    if not path.exists():
        pytest.skip("shared/data not beside the checkout")
    code, data = run_json(path, capsys)
    assert code == 0
    s = data["summary"]
    assert s["compared"] >= 10 and s["excluded"] >= 5
    assert "not stated" in s["exclusions"]  # (every card the reports name now resolves: "v100-32g" too)


# ---- validate --traced: records it cannot compare are skipped and counted ----


@pytest.fixture
def traces(tmp_path: Path, monkeypatch) -> Path:
    """A records file with two real traces from tables/measured/traces.jsonl and every kind of bad line,
    standing in for the table."""
    from vramplan import records

    real = [json.loads(line) for line in records.records_path().read_text().splitlines()]
    good = [r for r in real if r["model"] == "qwen2.5-0.5b"][:2]
    assert len(good) == 2
    base = good[0]
    bad = [
        base | {"setup": "not a dict"},
        {k: v for k, v in base.items() if k != "setup"},
        {k: v for k, v in base.items() if k != "model"},
        base | {"peak_bytes": "big"},
        base | {"peak_bytes": 0},
        base | {"peak_bytes": -5},
        base | {"peak_bytes": True},
        base | {"by_kind": {"weights": "lots"}},
        base | {"versions": ["torch"]},
        base | {"setup": base["setup"] | {"method": "dpo"}},
        base | {"model": "no-such-model"},  # passes the reader, refused by the planner
        base | {"backend": "cuda"},  # another backend: not compared, not counted
    ]
    path = tmp_path / "traces.jsonl"
    lines = [json.dumps(r) for r in (good[0], *bad, good[1])]
    lines[3:3] = ["[1, 2, 3]", "not json", '{"torn": ']
    path.write_text("\n".join(lines) + "\n" + '{"model": "unterminated"')
    monkeypatch.setattr(records, "records_path", lambda name=records.DEFAULT_FILE: path)
    return path


def test_traced_skips_and_counts(traces: Path, capsys) -> None:
    assert main(["validate", "--traced", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["count"] == 2
    assert data["skipped"] == {
        "not a JSON object": 4,
        "invalid peak_bytes": 4,
        "no setup": 2,
        "no model": 1,
        "invalid by_kind": 1,
        "invalid versions": 1,
        "invalid setup": 1,
        "invalid model": 1,
    }


def test_traced_table_says_what_was_skipped(traces: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["validate", "--traced"]) == 0
    out = capsys.readouterr().out.replace("\n", " ")
    assert "2 configurations:" in out
    assert "15 records skipped (not a JSON object 4, invalid peak_bytes 4, no setup 2," in out


def test_traced_nothing_comparable_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from vramplan import records

    path = tmp_path / "traces.jsonl"
    path.write_text("not json\n[1]\n")
    monkeypatch.setattr(records, "records_path", lambda name=records.DEFAULT_FILE: path)
    assert main(["validate", "--traced"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no recorded trace to compare (2 records skipped: not a JSON object 2)" in err
