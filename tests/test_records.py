"""Records (a user's --record file, the project's tables/measured/*.jsonl): an append writes
the whole line or nothing, never inside the installed package, a run killed mid-append never
costs an earlier line, and readers skip what is not a JSON object."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vramplan import records
from vramplan.errors import VramplanError
from vramplan.records import append_row, read_records, read_rows

ROOT = Path(__file__).resolve().parents[1]


def whole_lines(path: Path) -> list[dict]:
    """The file as a sequence of whole JSON-object lines (fails on anything else)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    out = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert all(isinstance(o, dict) for o in out)
    return out


def test_rows_round_trip_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"  # the folder is made
    append_row({"key": "a", "n": 1, "text": "line\nbreak"}, path)
    append_row({"key": "b", "n": 2}, path)
    assert whole_lines(path) == [{"key": "a", "n": 1, "text": "line\nbreak"}, {"key": "b", "n": 2}]
    assert read_records(path) == (whole_lines(path), 0)


def test_huge_row_is_one_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_row({"key": "small"}, path)
    big = {"key": "big", "blob": "x" * (16 << 20)}
    append_row(big, path)
    append_row({"key": "after"}, path)
    assert [r["key"] for r in read_rows(path)] == ["small", "big", "after"]
    assert read_rows(path)[1] == big
    assert path.read_bytes().count(b"\n") == 3


def test_short_writes_are_continued(tmp_path: Path, monkeypatch) -> None:
    """os.write may take less than it is given; the append goes on until the line is whole."""
    path = tmp_path / "r.jsonl"
    append_row({"key": "a"}, path)
    real = os.write
    calls = []

    def short(fd: int, data) -> int:
        calls.append(len(data))
        return real(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short)
    append_row({"key": "b", "blob": "y" * 100}, path)
    assert len(calls) > 10
    assert [r["key"] for r in whole_lines(path)] == ["a", "b"]


@pytest.mark.parametrize("failure", ["enospc", "zero", "interrupt", "fsync"])
def test_a_failed_append_leaves_nothing(tmp_path: Path, monkeypatch, failure: str) -> None:
    """Part of the line written, then the write fails (disk full), takes nothing, is
    interrupted, or the fsync fails: the file is as it was before the append."""
    path = tmp_path / "r.jsonl"
    append_row({"key": "a"}, path)
    append_row({"key": "b"}, path)
    before = path.read_bytes()
    real = os.write
    calls = {"n": 0}

    def failing(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data[: len(data) // 2]))
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "interrupt":
            raise KeyboardInterrupt
        return 0 if failure == "zero" else real(fd, data)

    def bad_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", failing)
    if failure == "fsync":
        monkeypatch.setattr(os, "fsync", bad_fsync)
    if failure == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            append_row({"key": "c", "blob": "z" * 5000}, path)
    else:
        with pytest.raises(VramplanError) as err:
            append_row({"key": "c", "blob": "z" * 5000}, path)
        assert err.value.field == "record" and str(path) in err.value.message
    assert path.read_bytes() == before
    monkeypatch.undo()
    append_row({"key": "d"}, path)
    assert [r["key"] for r in whole_lines(path)] == ["a", "b", "d"]


def test_a_row_that_is_not_json_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_row({"key": "a"}, path)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        append_row({"key": "nan", "peak": float("nan")}, path)
    assert path.read_bytes() == before


def test_unwritable_target_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(VramplanError) as err:
        append_row({"key": "a"}, tmp_path)  # a directory
    assert err.value.field == "record" and "cannot append" in err.value.message


def test_readers_skip_what_is_not_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"key":"a"}\n'
        b"\n"  # blank: ignored, not counted
        b"[1, 2]\n"
        b'"text"\n'
        b"5\n"
        b"null\n"
        b'{"key":"torn","n"\n'
        b'{"key":"caf\xe9"}\n'  # not UTF-8
        b'{"key":"nan","v":NaN}\n'
        b'{"key":"b"}\r\n'  # a CRLF line is still a line
        b"not json at all\n"
        b'{"key":"unterminated"}'  # an append still in progress: not committed
    )
    rows, skipped = read_records(path)
    assert [r["key"] for r in rows] == ["a", "b"]
    assert skipped == 9
    assert read_records(tmp_path / "missing.jsonl") == ([], 0)


def test_next_append_cuts_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    append_row({"key": "a"}, path)
    with path.open("ab") as fh:
        fh.write(b'{"key":"torn","blob":"xxxx')
    assert [r["key"] for r in read_rows(path)] == ["a"]
    append_row({"key": "b"}, path)
    assert [r["key"] for r in whole_lines(path)] == ["a", "b"]


@pytest.mark.parametrize(
    "tail, kept",
    [(b'{"key":"no-newline"}', {"key": "no-newline"}), (b"a note someone typed", None)],
    ids=["whole-object", "text"],
)
def test_a_tail_that_is_no_torn_record_is_kept(tmp_path: Path, tail: bytes, kept) -> None:
    """Only a tail that starts like a record and does not parse is cut: a whole object that
    lost its newline, or text that never was a record, stays and gets a newline."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"key":"a"}\n' + tail)
    append_row({"key": "b"}, path)
    assert path.read_bytes() == b'{"key":"a"}\n' + tail + b'\n{"key":"b"}\n'
    assert [r["key"] for r in read_rows(path)] == ["a", *([kept["key"]] if kept else []), "b"]


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from vramplan import records

    path, ready = Path(sys.argv[1]), Path(sys.argv[2])
    real = os.write

    def half_then_stall(fd, data):
        n = real(fd, bytes(data[: len(data) // 2]))
        ready.write_text("half")
        time.sleep(600)
        return n

    os.write = half_then_stall
    records.append_row({"key": "killed", "blob": "k" * 100000}, path)
    """
)


def test_sigkill_mid_append_costs_no_whole_line(tmp_path: Path) -> None:
    """A process killed while it holds half a line on disk: readers see only the earlier
    whole lines; the lock it held dies with it; the next append cuts the half line, so the
    file is again a sequence of whole JSON lines."""
    import fcntl

    path, ready = tmp_path / "r.jsonl", tmp_path / "ready"
    append_row({"key": "a"}, path)
    append_row({"key": "b"}, path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(ready)], env=env)
    try:
        for _ in range(600):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), "the child never wrote its half line"
        assert len(path.read_bytes()) > 50_000  # the half line is on disk
        assert [r["key"] for r in read_rows(path)] == ["a", "b"]
        with path.open("rb") as fh:  # the child holds the append lock
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert [r["key"] for r in read_rows(path)] == ["a", "b"]
    append_row({"key": "c"}, path)
    assert [r["key"] for r in whole_lines(path)] == ["a", "b", "c"]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from vramplan.records import append_row

    for i in range(int(sys.argv[3])):
        append_row({"key": f"{sys.argv[2]}-{i}", "blob": sys.argv[2] * 200_000}, Path(sys.argv[1]))
    """
)


def test_concurrent_appends_stay_whole(tmp_path: Path) -> None:
    """Four processes appending 200 kB rows at once: every line whole, none lost."""
    path = tmp_path / "r.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "20"], env=env) for name in "wxyz"]
    for p in procs:
        assert p.wait(timeout=300) == 0
    rows = whole_lines(path)
    assert sorted(r["key"] for r in rows) == sorted(f"{n}-{i}" for n in "wxyz" for i in range(20))
    assert all(r["blob"] == r["key"][0] * 200_000 for r in rows)


def test_reading_defaults_to_the_table(monkeypatch, tmp_path: Path) -> None:
    target = tmp_path / "t.jsonl"
    append_row({"key": "x"}, target)
    monkeypatch.setattr(records, "records_path", lambda name=records.DEFAULT_FILE: target)
    assert read_rows() == [{"key": "x"}]


def test_user_records_default_to_the_working_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert records.user_records_path() == tmp_path / "vramplan-runs.jsonl"
    assert records.user_records_path("") == tmp_path / "vramplan-runs.jsonl"
    assert records.user_records_path("runs/mine.jsonl") == Path("runs/mine.jsonl")


def test_a_record_never_goes_into_the_installed_package(monkeypatch, tmp_path: Path) -> None:
    """A wheel keeps its tables inside the package folder: an append there is refused, and the
    file is not created; a checkout's tables/ (beside the package) stays writable for benchmarks."""
    package = tmp_path / "site-packages" / "vramplan"
    (package / "tables" / "measured").mkdir(parents=True)
    monkeypatch.setattr(records, "package_dir", lambda: package.resolve())
    inside = package / "tables" / "measured" / "traces.jsonl"
    for target in (inside, package / "x.jsonl", package / ".." / "vramplan" / "y.jsonl"):
        with pytest.raises(VramplanError) as err:
            append_row({"key": "x"}, target)
        assert err.value.field == "record" and "inside the installed vramplan package" in str(err.value)
        assert not target.exists()
    beside = tmp_path / "site-packages" / "vramplan-runs.jsonl"
    append_row({"key": "x"}, beside)
    assert read_rows(beside) == [{"key": "x"}]


def test_the_checkout_table_is_not_inside_the_package() -> None:
    """In this source tree the tables sit beside the package, so the benchmarks' appends are allowed."""
    records.refuse_package_path(records.records_path())
    with pytest.raises(VramplanError):
        records.refuse_package_path(records.package_dir() / "tables" / "measured" / "traces.jsonl")
