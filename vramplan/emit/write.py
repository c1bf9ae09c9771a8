"""Write an emitted set of files into ``--out`` all or nothing.

A trainer's files go together (train.py names ds_config.json, run.sh starts train.py): a run
killed half-way must leave the folder with the old set or the new one, never a mix.

How (Linux): the new set is written into a staging folder beside ``--out``
(``.<name>.vramplan-<pid>``, same filesystem), and

- ``--out`` does not exist yet: the staging folder is renamed to it (``rename(2)`` is atomic);
- ``--out`` exists: everything else in it (the user's data, other folders) is carried into the
  staging folder as hard links (folders re-made, symbolic links re-made: no file's data is
  copied), then the two folders are swapped in one step with ``renameat2(RENAME_EXCHANGE)``
  (Linux >= 3.15, glibc >= 2.28), and the old folder, now under the staging name, is removed.

Whatever instant a kill lands, the path ``--out`` names either the old folder or the new one.
A kill leaves a staging folder behind; the next write into the same ``--out`` removes the ones
whose process is gone.

Limits, said here because the swap replaces the folder itself: the folder is a new directory
with the same permission bits, but not its ACLs or extended attributes; a file another
process creates in or removes from ``--out`` during the write is not carried over; a shell
elsewhere whose current directory is ``--out`` is left in the removed folder. Where the swap
cannot be made or should not be (no ``renameat2``, a filesystem without RENAME_EXCHANGE, a
hard link refused; ``--out`` someone else's, shared (sticky, like /tmp) or a mount point; this
process's current directory inside ``--out``), the files are written under temporary names
inside ``--out`` and renamed one by one: each file is whole, but a kill between two renames
leaves a mix.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import stat
from pathlib import Path

from vramplan.errors import VramplanError

#: ``renameat2`` arguments (linux/fcntl.h AT_FDCWD, linux/fs.h RENAME_EXCHANGE)
AT_FDCWD = -100
RENAME_EXCHANGE = 2
STAGE_TAG = ".vramplan-"


def write_set(out_dir: str, files: dict[str, str], *, overwrite: bool) -> list[str]:
    """Write ``files`` (name -> text; ``.py``/``.sh`` executable) into ``out_dir`` all or
    nothing; files already there are replaced only with ``overwrite``. Returns the paths."""
    out = Path(out_dir)
    _check(out, files, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VramplanError("out", f"cannot create {out}: {exc.strerror}") from None
    target = out.resolve() if out.exists() else out.absolute()
    _sweep(target)
    stage = target.parent / f".{target.name}{STAGE_TAG}{os.getpid()}"
    try:
        staged = _stage(stage, files)
    except OSError:  # a parent we cannot write in (``--out /tmp``), a full disk: the fallback says which
        shutil.rmtree(stage, ignore_errors=True)
        staged = False
    try:
        if staged and _swap(stage, target, files):
            return [str(out / name) for name in files]
    finally:
        if staged:
            shutil.rmtree(stage, ignore_errors=True)
    return _rename_each(out, files)


def _check(out: Path, files: dict[str, str], overwrite: bool) -> None:
    for name in files:
        if "/" in name or name.startswith("."):
            raise AssertionError(f"an emitted file is named {name!r}: names are plain, in the folder itself")
    if out.exists() and not out.is_dir():
        raise VramplanError("out", f"{out} exists and is not a directory")
    clash = sorted(name for name in files if os.path.lexists(out / name))
    not_files = [name for name in clash if not (out / name).is_file()]
    if not_files:
        raise VramplanError("out", f"{out} has {', '.join(not_files)} as something other than a file; remove it first")
    if clash and not overwrite:
        raise VramplanError("out", f"{out} already has {', '.join(clash)}; pass --overwrite to replace them")


def _sweep(target: Path) -> None:
    """Remove staging folders of ``target`` left by killed runs (their process is gone)."""
    pattern = re.compile(re.escape(f".{target.name}{STAGE_TAG}") + r"(\d+)")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass  # alive under another user, or unknown: leave it


def _write(path: Path, text: str, name: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if name.endswith((".sh", ".py")):
        os.chmod(path, 0o755)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(stage: Path, files: dict[str, str]) -> bool:
    """The new set, complete and on disk, in ``stage``."""
    if os.path.lexists(stage):  # a folder of this pid's earlier life
        shutil.rmtree(stage)
    os.mkdir(stage, 0o700)
    for name, text in files.items():
        _write(stage / name, text, name)
    return True


def _swap(stage: Path, target: Path, files: dict[str, str]) -> bool:
    """Put the staged set at ``target`` in one step; False when that cannot be done here
    (nothing at ``target`` has changed then)."""
    try:
        if not target.exists():
            _fsync_dir(stage)
            os.chmod(stage, 0o777 & ~_umask())
            os.rename(stage, target)  # fails if a folder with files appeared meanwhile
            _fsync_dir(target.parent)
            return True
        if not _swappable(target):
            return False
        _carry(target, stage, skip=set(files))
        os.chmod(stage, stat.S_IMODE(os.stat(target).st_mode))
        _fsync_dir(stage)
        exchange(stage, target)
    except OSError:
        return False
    try:
        _fsync_dir(target.parent)
    except OSError:
        pass
    return True


def _swappable(target: Path) -> bool:
    """A folder the swap may replace: the user's own, not shared (sticky, like /tmp), not a
    mount point, and not the current directory or above it."""
    info = os.stat(target)
    if info.st_uid != os.geteuid() or info.st_mode & stat.S_ISVTX or os.path.ismount(target):
        return False
    return not _inside(Path.cwd(), target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inside(path: Path, folder: Path) -> bool:
    try:
        path = path.resolve()
    except OSError:
        return False
    return path == folder or folder in path.parents


def _carry(src: Path, dst: Path, skip: set[str]) -> None:
    """Re-make ``src``'s entries (except ``skip``) in ``dst``: files as hard links, folders
    as new folders with the same permission bits, symbolic links as the same links."""
    for entry in os.scandir(src):
        if entry.name in skip:
            continue
        to = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), to)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(to)
            _carry(Path(entry.path), to, skip=set())
            os.chmod(to, stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
        else:
            os.link(entry.path, to, follow_symlinks=False)


def exchange(a: Path, b: Path) -> None:
    """Swap two paths in one step: ``renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)``
    (Linux rename(2); glibc's wrapper since 2.28). OSError when it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _rename_each(out: Path, files: dict[str, str]) -> list[str]:
    """The fallback: every file to a temporary name inside ``out``, then each renamed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VramplanError("out", f"cannot create {out}: {exc.strerror}") from None
    tmp: list[tuple[Path, Path]] = []
    try:
        for name, text in files.items():
            final = out / name
            part = final.with_name(f".{final.name}.vramplan-tmp")
            tmp.append((part, final))
            _write(part, text, name)
        for part, final in tmp:
            os.replace(part, final)
    except OSError as exc:
        for part, _ in tmp:
            part.unlink(missing_ok=True)
        raise VramplanError("out", f"cannot write into {out}: {exc.strerror}") from None
    return [str(final) for _, final in tmp]
