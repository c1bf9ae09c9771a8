"""The HTML report and the PNG: content, self-containment, bad input, and a headless
Chromium run that lays the page out, screenshots it and checks the charts rendered."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vramplan import plan
from vramplan.report import report_html

CASE3 = [
    "qwen2.5-7b",
    "--gpu",
    "4090d",
    "--method",
    "lora",
    "--lora-rank",
    "8",
    "--lora-alpha",
    "32",
    "--micro-batch",
    "1",
    "--grad-accum",
    "16",
    "--seq-len",
    "2048",
    "--grad-checkpointing",
    "--samples",
    "500",
    "--avg-tokens",
    "300",
    "--epochs",
    "10",
]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "report-qwen2.5-7b-lora-4090d.html"


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vramplan", *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.mark.e2e
def test_page_has_the_verdict_charts_and_config(tmp_path: Path) -> None:
    r = _cli(*CASE3, "--price-per-hour", "0.5", "--report", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    assert "FITS" in page and "RTX 4090 D" in page
    assert page.count('<svg class="chart"') == 3  # by term, by phase, alternatives
    assert "weights/frozen" in page and "SFTTrainer" in page  # a term and the trl script
    # the script is folded away, after the charts
    assert page.index("<details><summary>train.py") > page.rindex('<svg class="chart"')
    assert "0:22:" in page and "cost 0.18" in page  # wall time and cost (22 min at 0.5/h)
    # self-contained: nothing to fetch
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_device_map_report_has_a_bar_per_card() -> None:
    p = plan("qwen2.5-7b", "4090", method="lora", num_gpus=3, parallel="device_map")
    page = report_html(p)
    assert all(f"card {i}:" in page for i in range(3))


@pytest.mark.e2e
def test_report_bad_paths_exit_2(tmp_path: Path) -> None:
    (tmp_path / "d.html").mkdir()
    for target in (tmp_path / "r.txt", tmp_path / "missing" / "r.html", tmp_path / "d.html"):
        r = _cli("qwen2.5-0.5b", "--report", str(target))
        assert r.returncode == 2 and "Traceback" not in r.stderr and "report" in r.stderr
        assert not target.is_file()


@pytest.mark.e2e
def test_a_failed_plot_leaves_no_page(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    page = tmp_path / "r.html"
    r = _cli("qwen2.5-0.5b", "--report", str(page), "--plot", str(tmp_path / "missing" / "p.png"))
    assert r.returncode == 2 and "plot" in r.stderr and not page.exists()
    r = _cli("qwen2.5-0.5b", "--emit", "trl", "--report", str(page))
    assert r.returncode == 2 and not page.exists()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--price-per-hour", "1"], "price_per_hour"),
        (["--dataset-tokens", "1000", "--samples", "5", "--avg-tokens", "9"], "dataset_tokens"),
        (["--dataset-tokens", "0"], "dataset_tokens"),
        (["--dataset-tokens", "1000", "--price-per-hour", "-1"], "price_per_hour"),
    ],
)
@pytest.mark.e2e
def test_time_flags_bad_input(args: list[str], field: str) -> None:
    r = _cli("qwen2.5-0.5b", *args)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr


@pytest.mark.e2e
def test_dataset_tokens_packs_into_sequences() -> None:
    r = _cli("qwen2.5-0.5b", "--method", "lora", "--seq-len", "1024", "--dataset-tokens", "1048576", "--json")
    import json

    t = json.loads(r.stdout)["time"]
    assert t["tokens"] == 1048576 and t["cost"] is None


@pytest.mark.e2e
def test_plot_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = _cli(*CASE3, "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.e2e
def test_example_report_is_current(tmp_path: Path) -> None:
    """examples/ holds the report of SCENARIOS.md case 3; regenerating it gives the same page."""
    r = _cli(*CASE3, "--report", str(tmp_path / "r.html"))
    assert r.returncode == 0
    assert (tmp_path / "r.html").read_text() == EXAMPLE.read_text()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.e2e
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium (Debian's package; .ci/run installs it) lays the example page out: the
    page's own script finds both charts with a non-empty box and marks the body, no
    console error is logged, and the screenshot of the chart area is not blank."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed here")
    from PIL import Image

    page = tmp_path / "r.html"
    page.write_text(EXAMPLE.read_text())
    common = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-charts="3"' in dom.stdout, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, "--window-size=1100,1000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1100, 1000)
    chart = img.crop((0, 250, 1100, 450))  # the stacked bar under "Peak memory by term"
    raw = chart.tobytes()
    pixels = zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
    coloured = sum(1 for r, g, b in pixels if abs(r - g) > 40 or abs(g - b) > 40)
    assert coloured > 5000  # the bar's coloured segments, not a blank area
