"""Output files written whole or not at all.

Each file is written to a temporary name in its own folder (the same filesystem, so the
rename is atomic: POSIX ``rename(2)``, which ``os.replace`` calls), and only once every file
of the set is complete are they renamed to their final names. A failure removes the
temporaries; a kill (even SIGKILL) before the renames leaves nothing under a final name, at
most a hidden ``.vramplan-*`` temporary beside it. The renames themselves take microseconds;
a kill between two of them is the one window in which a set is partly replaced.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from vramplan.errors import VramplanError

#: what to write: the text, the bytes, or a function that writes the whole file at the path
#: it is given (matplotlib's ``savefig``); the temporary path keeps the final suffix.
Content = str | bytes | Callable[[Path], None]

TEMP_PREFIX = ".vramplan-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temporary(target: Path, content: Content, field: str) -> Path:
    folder = target.parent
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=f"-{target.name}")
    except OSError as exc:
        raise VramplanError(field, f"cannot write into {folder}: {exc.strerror}") from None
    tmp = Path(name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would have made it (mkstemp gives 0600)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise VramplanError(field, f"cannot write {target}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_files_atomically(pairs: Iterable[tuple[str | Path, Content]], *, field: str = "out") -> list[Path]:
    """Write every ``(path, content)`` pair, all or nothing, and return the final paths.

    Nothing appears under a final name until all the contents are written; an error names
    ``field`` (the flag the path came from) in a :class:`VramplanError`."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, content in pairs:
            target = Path(path)
            done.append((_write_temporary(target, content, field), target))
        for tmp, target in done:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise VramplanError(field, f"cannot write {target}: {exc.strerror}") from None
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
    return [target for _, target in done]


def write_file_atomically(path: str | Path, content: Content, *, field: str = "out") -> Path:
    """One file, whole or not at all: see :func:`write_files_atomically`."""
    return write_files_atomically([(path, content)], field=field)[0]
