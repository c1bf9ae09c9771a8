"""Append-only records of traced and measured runs (``tables/measured/*.jsonl``).

One JSON object a line. An append writes the whole line with one ``os.write`` on a file
opened ``O_APPEND`` and fsyncs it, so a killed run leaves either the whole line or nothing,
and never touches earlier lines. Each row carries a stable ``key`` (model + Setup + backend
+ library versions) by which duplicates are recognised.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from vramplan.tables import tables_dir

DEFAULT_FILE = "traces.jsonl"


def records_path(name: str = DEFAULT_FILE) -> Path:
    return tables_dir() / "measured" / name


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


def append_row(row: dict[str, Any], path: Path | None = None) -> Path:
    """Append one row atomically; returns the file written."""
    target = path or records_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(target):
            line = b"\n" + line  # a torn tail from elsewhere stays its own (skipped) line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def read_rows(path: Path | None = None) -> list[dict[str, Any]]:
    """Every whole row; a line that does not parse (a torn write) is skipped."""
    target = path or records_path()
    if not target.exists():
        return []
    rows = []
    for line in target.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
