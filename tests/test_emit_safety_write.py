"""--out is written as a set, all or nothing (vramplan.emit.write): a process SIGKILLed before
any of its filesystem calls leaves the emitted names with the old contents or the new ones,
never a mix, and the folder's other entries (the user's data, a folder, a link) as they were.

The kill test runs the writer in a child that counts its own filesystem calls (mkdir, open,
write-fsync, chmod, link, symlink, rename, renameat2, unlink, rmdir) and kills itself with
SIGKILL at the n-th; n goes up until the child finishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan.emit import write
from vramplan.emit.write import write_set
from vramplan.errors import VramplanError

OLD = {"train.py": "old train\n", "run.sh": "old run\n"}
NEW = {
    "train.py": "new train\n",
    "run.sh": "new run\n",
    "accelerate_config.yaml": "new accelerate\n",
    "ds_config.json": "new ds\n",
}
USER_FILE = ("data.jsonl", '{"instruction": "mine"}\n')

CHILD = r"""
import json, os, signal, sys
from vramplan.emit import write

out, kill_at = sys.argv[1], int(sys.argv[2])
files = json.loads(sys.argv[3])
calls = 0

def counted(fn):
    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper

for name in ("mkdir", "open", "fsync", "chmod", "link", "symlink", "rename", "replace", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
write.exchange = counted(write.exchange)
write.open = counted(open)  # the text files (builtins.open)
write.write_set(out, files, overwrite=True)
print(calls)
"""


def make_user_folder(out: Path, old: dict[str, str]) -> None:
    out.mkdir(parents=True)
    for name, text in old.items():
        (out / name).write_text(text)
    (out / USER_FILE[0]).write_text(USER_FILE[1])
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step-1.bin").write_bytes(b"\x00weights")
    (out / "latest").symlink_to("checkpoints/step-1.bin")


def state(out: Path, names: list[str]) -> dict[str, str | None]:
    return {n: (out / n).read_text() if (out / n).exists() else None for n in names}


def check_whole(out: Path, old: dict[str, str], existed: bool) -> str:
    """'old' or 'new' (and the user's entries untouched), else the assertion says what mixed."""
    names = sorted(NEW)
    now = state(out, names) if out.exists() else dict.fromkeys(names)
    was = {n: old.get(n) for n in names}
    new = {n: NEW[n] for n in names}
    assert now in (was, new), f"a mix of old and new: {now}"
    if existed:
        assert (out / USER_FILE[0]).read_text() == USER_FILE[1]
        assert (out / "checkpoints" / "step-1.bin").read_bytes() == b"\x00weights"
        assert os.readlink(out / "latest") == "checkpoints/step-1.bin"
        visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        assert visible <= set(NEW) | set(old) | {USER_FILE[0], "checkpoints", "latest"}
    return "old" if now == was else "new"


@pytest.mark.e2e  # a writer process SIGKILLed at each of its filesystem calls: 49 processes
@pytest.mark.parametrize("existed", [False, True], ids=["out-is-new", "out-has-old-set-and-user-files"])
def test_a_kill_at_any_call_leaves_the_old_set_or_the_new_one(tmp_path: Path, existed: bool) -> None:
    seen = []
    for kill_at in range(1, 400):
        root = tmp_path / str(kill_at)
        out = root / "run1"
        root.mkdir()
        if existed:
            make_user_folder(out, OLD)
        inode = (out / USER_FILE[0]).stat().st_ino if existed else None
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), str(kill_at), json.dumps(NEW)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        finished = done.returncode == 0
        assert finished or done.returncode == -9, done.stderr
        seen.append(check_whole(out, OLD if existed else {}, existed))
        if existed and seen[-1] == "new":
            assert (out / USER_FILE[0]).stat().st_ino == inode  # carried by a hard link, not copied
        # the next write completes and removes what the killed one left beside --out
        write_set(str(out), NEW, overwrite=True)
        assert check_whole(out, OLD if existed else {}, existed) == "new"
        assert [p.name for p in root.iterdir()] == ["run1"]
        if finished:
            break
    else:
        raise AssertionError("the writer never finished")
    assert "old" in seen and "new" in seen and len(seen) > 5
    assert seen == sorted(seen, key=["old", "new"].index)  # one switch from old to new


def test_the_swap_is_what_writes_an_existing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On this Linux the one-step swap is taken (the file-by-file fallback is not reached)."""
    out = tmp_path / "run1"
    make_user_folder(out, OLD)
    before = out.stat().st_ino

    def no_fallback(*args: object) -> None:
        raise AssertionError("fell back to renaming file by file")

    monkeypatch.setattr(write, "_rename_each", no_fallback)
    write_set(str(out), NEW, overwrite=True)
    assert state(out, sorted(NEW)) == NEW
    assert out.stat().st_ino != before  # a new folder took the old one's place
    assert os.access(out / "train.py", os.X_OK) and not os.access(out / "ds_config.json", os.X_OK)


def test_without_renameat2_the_files_are_still_written_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run1"
    make_user_folder(out, OLD)

    def unsupported(a: Path, b: Path) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(write, "exchange", unsupported)
    write_set(str(out), NEW, overwrite=True)
    assert check_whole(out, OLD, True) == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["run1"]


def test_writing_into_the_current_directory_keeps_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out .``: swapping the folder would leave the shell in the removed one, so the files
    are renamed in place."""
    out = tmp_path / "run1"
    make_user_folder(out, OLD)
    before = out.stat().st_ino
    monkeypatch.chdir(out)
    write_set(".", NEW, overwrite=True)
    assert out.stat().st_ino == before
    assert check_whole(out, OLD, True) == "new"


def test_a_symlinked_out_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    make_user_folder(real, OLD)
    (tmp_path / "link").symlink_to("real")
    write_set(str(tmp_path / "link"), NEW, overwrite=True)
    assert (tmp_path / "link").is_symlink()
    assert check_whole(real, OLD, True) == "new"


def test_existing_files_need_overwrite_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run1"
    make_user_folder(out, OLD)
    with pytest.raises(VramplanError, match="--overwrite"):
        write_set(str(out), NEW, overwrite=False)
    assert check_whole(out, OLD, True) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run1"]


def test_the_cli_replaces_a_set_and_keeps_the_users_data(tmp_path: Path) -> None:
    out = tmp_path / "my run; $(x)"
    out.mkdir()
    data = out / USER_FILE[0]
    data.write_text(USER_FILE[1])
    inode = data.stat().st_ino
    base = [sys.executable, "-m", "vramplan", "qwen2.5-0.5b", "--gpu", "h100", "--method", "lora", "--emit", "trl"]
    for extra in ([], ["--gpus", "2", "--parallel", "zero2", "--overwrite"]):
        done = subprocess.run(
            [*base, *extra, "--data", f"{out.name}/{data.name}", "--out", out.name],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        command = done.stderr.split("run: ", 1)[1].strip()
        assert command.startswith("cd 'my run; $(x)' && ")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["accelerate_config.yaml", "ds_config.json", "run.sh", "train.py", "vramplan-setup.json", USER_FILE[0]]
    )
    assert data.read_text() == USER_FILE[1] and data.stat().st_ino == inode
    assert f"--data '{data}'" in (out / "run.sh").read_text()  # the existing data file, by its absolute path
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_shared_sticky_folder_is_not_swapped(tmp_path: Path) -> None:
    """A folder like /tmp (sticky: shared by users) keeps its inode; the files are renamed in."""
    out = tmp_path / "shared"
    make_user_folder(out, OLD)
    out.chmod(0o1777)
    before = out.stat().st_ino
    write_set(str(out), NEW, overwrite=True)
    assert out.stat().st_ino == before
    assert check_whole(out, OLD, True) == "new"
