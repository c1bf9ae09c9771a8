"""The emitted scripts' templates (vramplan/frameworks/files/templates/*.py) pass ruff (lint and format,
with the project's configuration in pyproject.toml) and mypy (``check_untyped_defs`` for them,
from pyproject.toml), both with torch, transformers, peft and trl's own types and without them
(``--no-site-packages``: every third-party name is Any). A lint or type error added to a
template fails here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # ruff and mypy as subprocesses

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "vramplan" / "frameworks" / "files" / "templates"
FILES = sorted(str(p.relative_to(ROOT)) for p in TEMPLATES.glob("*.py"))


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def mypy(*extra: str, cwd: Path = ROOT, files: list[str] = FILES) -> subprocess.CompletedProcess[str]:
    # follow-imports=silent: an error in vramplan itself (reached through the templates' parent
    # packages) is `mypy vramplan`'s to report, not this test's
    return run("mypy", "--follow-imports=silent", "--no-error-summary", *extra, *files, cwd=cwd)


def test_there_are_templates() -> None:
    assert FILES == ["vramplan/frameworks/files/templates/grpo.py", "vramplan/frameworks/files/templates/sft.py"]


def test_ruff_checks_the_templates() -> None:
    shown = run("ruff", "check", "--show-files", "vramplan")
    assert shown.returncode == 0, shown.stderr
    for f in FILES:  # the project's configuration does not exclude them
        assert str(ROOT / f) in shown.stdout, f
    lint = run("ruff", "check", "--no-cache", *FILES)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_ruff_format_leaves_the_templates_as_they_are() -> None:
    out = run("ruff", "format", "--check", "--no-cache", *FILES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(FILES)} files already formatted" in out.stdout


@pytest.mark.parametrize("site_packages", [True, False], ids=["with-library-types", "without"])
def test_mypy_passes_the_templates(site_packages: bool) -> None:
    out = mypy(*([] if site_packages else ["--no-site-packages"]))
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_template_error_fails_the_checkers(tmp_path: Path) -> None:
    """A copy of the tree with one lint error and one type error inside a template's function
    (an unannotated one, as they all are): ruff and mypy report both."""
    for part in (
        "pyproject.toml",
        "vramplan/__init__.py",
        "vramplan/frameworks/__init__.py",
        "vramplan/frameworks/files/__init__.py",
    ):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).write_text("" if part.endswith("__init__.py") else (ROOT / part).read_text())
    shutil.copytree(TEMPLATES, tmp_path / "vramplan/frameworks/files/templates")
    sft = tmp_path / "vramplan/frameworks/files/templates/sft.py"
    text = sft.read_text()
    line = "    args = parser.parse_args()\n"
    broken = text.replace(line, line + '    steps: int = "3"\n', 1)
    assert broken != text
    sft.write_text(broken)
    lint = run("ruff", "check", "--no-cache", "vramplan/frameworks/files/templates", cwd=tmp_path)
    assert lint.returncode == 1 and "F841" in lint.stdout, lint.stdout
    types = mypy("--no-site-packages", cwd=tmp_path, files=["vramplan/frameworks/files/templates/sft.py"])
    assert types.returncode == 1 and re.search(r"sft\.py:\d+: error: Incompatible types", types.stdout), types.stdout
