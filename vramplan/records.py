"""Append-only records of traced and measured runs: the user's file, or the project's own tables.

``vramplan trace/measure --record [PATH]`` appends to PATH, by default ``./vramplan-runs.jsonl``
in the working directory (:func:`user_records_path`); a record never goes into the installed
package (a wheel's ``vramplan/tables/``, in site-packages for a pip user): :func:`append_row`
refuses any path inside the package's folder. The project's own traced grids live in
``tables/measured/*.jsonl`` of a source checkout (:func:`records_path`, which the benchmarks
pass explicitly and ``vramplan validate --traced`` reads).

One JSON object a line; a record is committed by its newline. An append holds an exclusive
lock on the file (``flock``, where the platform and the filesystem have it), writes the
whole line through a file opened ``O_APPEND`` in a loop that checks what each ``os.write``
took, and fsyncs; if the write or the fsync fails it truncates the file back to its length
before the append and raises, so it leaves the whole line or nothing. A run killed
mid-append leaves an unterminated tail: readers skip it, and the next append (under the
lock, so no writer is still at work) cuts it; a tail that is not a torn record (a whole
JSON object, or text that never was one) is kept and ended with a newline instead. Readers
skip every line that is not a JSON object, and the final line until its newline is there.
Each row carries a stable ``key`` (model + Setup + backend + library versions) by which
duplicates are recognised.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from vramplan.errors import VramplanError, one_line
from vramplan.tables import tables_dir

try:
    import fcntl
except ImportError:  # not on Windows: appends there are not locked
    fcntl = None  # type: ignore[assignment]

#: the project's table of traced steps (tables/measured/), read by ``vramplan validate --traced``
DEFAULT_FILE = "traces.jsonl"
#: where ``--record`` appends when no path is given: this file in the working directory
RUNS_FILE = "vramplan-runs.jsonl"


def records_path(name: str = DEFAULT_FILE) -> Path:
    """The project's own table ``tables/measured/<name>`` (read it; a checkout's benchmarks append to it)."""
    return tables_dir() / "measured" / name


def package_dir() -> Path:
    """The folder of the installed ``vramplan`` package (site-packages/vramplan for a pip user)."""
    return Path(__file__).resolve().parent


def user_records_path(given: str | Path | None = None) -> Path:
    """Where ``--record`` appends: ``given``, else ``./vramplan-runs.jsonl`` in the working directory."""
    return Path(given) if given else Path.cwd() / RUNS_FILE


def refuse_package_path(target: Path) -> None:
    """A record inside the installed package would be lost on upgrade and shared by every user
    of the environment: refused (field ``record``). A source checkout keeps its tables beside the
    package (``<repo>/tables``), which is not inside it."""
    resolved = target.resolve()
    if resolved == package_dir() or package_dir() in resolved.parents:
        raise VramplanError(
            "record",
            f"{one_line(str(target))} is inside the installed vramplan package: give a path of your own"
            f" (default ./{RUNS_FILE})",
        )


def record_key(model: str, setup: dict[str, Any], backend: str, versions: dict[str, str]) -> str:
    """Stable identity of a run: the same model, Setup, backend and library versions."""
    blob = json.dumps([model, setup, backend, versions], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_row(result: Any) -> dict[str, Any]:
    """A result (TraceResult) as a record row: no timeline, plus key, date and machine."""
    data = result.model_dump(exclude={"timeline"})
    data["key"] = record_key(data["model"], data["setup"], data["backend"], data["versions"])
    data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["machine"] = {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count() or 0}
    return data


def append_row(row: dict[str, Any], path: Path) -> Path:
    """Append one row to ``path`` as one whole line, or nothing; returns the file written. A
    failed write, or a path inside the installed package, raises VramplanError (field
    ``record``) naming the file and the reason."""
    target = Path(path)
    refuse_package_path(target)
    line = (json.dumps(row, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()
    where = one_line(str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise VramplanError("record", f"cannot append to {where}: {exc.strerror or exc}") from None
    try:
        _lock(fd)
        start = _cut_torn_tail(fd)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)  # nothing of this line stays
            raise
    except OSError as exc:
        raise VramplanError("record", f"cannot append to {where}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return target


def _lock(fd: int) -> None:
    """An exclusive lock on the whole file, released by close or by the kernel when the
    process dies; where the platform or the filesystem has none (Windows, some network
    mounts), appends go on unlocked."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _write_all(fd: int, data: bytes) -> None:
    """``data`` through ``os.write`` until all of it is written; a write that takes nothing raises."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, f"write took {n} of {len(view)} bytes")
        view = view[n:]


def _cut_torn_tail(fd: int) -> int:
    """Make the file end at a line end (called under the lock); returns its length. An
    unterminated tail that starts like a record (``{``) but does not parse is an append that
    did not finish, and is cut; any other tail (a whole JSON object, text that was never a
    record) is kept and ended with a newline."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size
    back = min(size, 1 << 16)
    while True:
        chunk = os.pread(fd, back, size - back)
        cut = chunk.rfind(b"\n")
        if cut >= 0 or back == size:
            break
        back = min(size, back * 4)
    keep = size - back + cut + 1  # just after the last newline (0 when there is none)
    tail = os.pread(fd, size - keep, keep)
    if tail.lstrip().startswith(b"{") and _json_object(tail) is None:
        os.ftruncate(fd, keep)
        return keep
    _write_all(fd, b"\n")
    return size + 1


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The line as a JSON object, or None when it is not one (torn, not UTF-8, NaN, a list)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_records(path: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """``(rows, skipped)``: every whole line that is a JSON object, and how many non-blank
    lines were not (torn, not UTF-8, not an object, the final line without its newline)."""
    target = path or records_path()
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise VramplanError("records", f"cannot read {one_line(str(target))}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or an append still in progress or cut short
    rows: list[dict[str, Any]] = []
    skipped = 1 if tail.strip() else 0
    for raw in lines:
        if not raw.strip():
            continue
        obj = _json_object(raw)
        if obj is None:
            skipped += 1
        else:
            rows.append(obj)
    return rows, skipped


def read_rows(path: Path | None = None) -> list[dict[str, Any]]:
    """Every whole row; a line that is not a JSON object (a torn write) is skipped."""
    return read_records(path)[0]
