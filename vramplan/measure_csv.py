"""The CSV ``vramplan measure -- COMMAND`` adds its rows to (vramplan/measure_run.py): the whole
new file written beside the old one, fsynced and renamed over it (``os.replace``), under an
exclusive ``flock`` of its folder, so a reader sees the old file or the new one and two runs
ending together both land. Torch-free."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from vramplan.errors import VramplanError, one_line
from vramplan.measure_rows import EXTRA
from vramplan.row_setup import COLUMNS

try:
    import fcntl
except ImportError:  # not on Windows: the file is replaced unlocked there
    fcntl = None  # type: ignore[assignment]


def _serialize(rows: list[dict[str, str]], header: list[str], with_header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore", restval="")
    if with_header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def append_rows(target: Path, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Add ``rows`` to the CSV at ``target`` by writing the whole new file beside it and renaming
    it over the old one, under an exclusive lock of the folder; ids already in the file get a
    suffix. Returns the rows as written. A file whose header lacks a column of the rows is
    rewritten with the columns added (its rows blank in them); otherwise its bytes are kept. A
    symbolic link is followed: the file it names is replaced, the link stays."""
    target = Path(os.path.realpath(target))
    folder = target.parent
    lock = os.open(folder, os.O_RDONLY)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:
                pass  # a filesystem without locks: replaced unlocked
        old = target.read_bytes() if target.exists() else b""
        text = old.decode("utf-8-sig")
        existing = list(csv.DictReader(io.StringIO(text, newline=""))) if text.strip() else []
        header = next(csv.reader(io.StringIO(text, newline="")), []) if text.strip() else []
        rows = _unique_ids(rows, {r.get("id", "") for r in existing})
        ours = [*COLUMNS, *EXTRA]
        if header and all(c in header for c in ours):
            body = old + (b"" if old.endswith(b"\n") else b"\n") + _serialize(rows, header, False).encode()
        elif header:
            merged = [*header, *(c for c in ours if c not in header)]
            body = _serialize([*existing, *rows], merged, True).encode()
        else:
            body = _serialize(rows, ours, True).encode()
        _replace(target, body)
    except OSError as exc:
        raise VramplanError("out", f"cannot write {one_line(str(target))}: {exc.strerror or exc}") from None
    finally:
        os.close(lock)
    return rows


def _unique_ids(rows: list[dict[str, str]], taken: set[str]) -> list[dict[str, str]]:
    out = []
    for row in rows:
        ident, n = row["id"], 1
        while ident in taken:
            n += 1
            ident = f"{row['id']}-{n}"
        taken.add(ident)
        out.append({**row, "id": ident})
    return out


def _replace(target: Path, body: bytes) -> None:
    """``body`` as the whole of ``target``: a temporary beside it, fsynced, renamed over it."""
    fd, name = tempfile.mkstemp(dir=target.parent if str(target.parent) else ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
        os.chmod(name, mode)
        os.replace(name, target)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(target.parent if str(target.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
