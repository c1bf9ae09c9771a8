"""Measured rows know their trainer: the curated table's ``trainer`` column, and `validate`
estimating each row under that trainer's policy (issue 18, item 6)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import measured_row
from vramplan.comparison import summarize
from vramplan.frameworks import framework, names
from vramplan.models import load_model
from vramplan.published import (
    COLUMNS,
    NO_POLICY,
    compare,
    compare_csv,
    exclusion,
    published_csv,
    row_estimate,
    row_setup,
)

pytestmark = pytest.mark.analytic

KNOWN = set(names()) | set(NO_POLICY)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with published_csv().open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_curated_row_names_a_known_trainer(rows: list[dict[str, str]]) -> None:
    assert COLUMNS[2:4] == ["trainer", "trainer_version"]
    for row in rows:
        assert row["trainer"] in KNOWN, (row["id"], row["trainer"])


def test_rows_per_trainer_as_their_sources_say(rows: list[dict[str, str]]) -> None:
    by = {r["id"]: r["trainer"] for r in rows}
    assert Counter(by.values()) == {"hf": 133, "torchtune": 28, "trl": 8, "llamafactory": 6, "unsloth": 5}
    assert {by[i] for i in ("1", "86", "218", "271", "q72-lora-zero2-oom")} == {"hf"}  # Trainer, generate, loops
    assert {by[i] for i in ("215", "216", "217")} == {"llamafactory"}  # Qwen2.5's llamafactory-cli example
    assert {by[i] for i in ("266", "267", "268", "269", "270")} == {"trl"}  # PEFT's examples/sft/train.py
    assert {r["trainer"] for r in rows if "torchtune" in r["source"]} == {"torchtune"}
    assert {by[i] for i in ("298", "300", "304", "305", "307")} == {"unsloth"}


def test_a_row_from_a_trainer_without_a_policy_is_excluded_with_its_reason(tmp_path: Path) -> None:
    for name, code in (("torchtune", "no trainer policy"), ("unsloth", "no trainer policy")):
        row = measured_row(id="x", trainer=name)
        c = compare(row, tmp_path)
        assert c.excluded and c.code == code and c.estimate_bytes is None
        assert c.reason.startswith(f"trainer {name}: no policy for it")
        assert exclusion(row).startswith(f"trainer {name}")
        assert not exclusion(row, trainer=False)  # the other checks pass: only the trainer is wanting
    c = compare(measured_row(id="y", trainer="tune"), tmp_path)
    assert c.code == "unknown trainer" and "unknown trainer 'tune'" in c.reason and "torchtune" in c.reason


def test_the_curated_torchtune_rows_are_excluded_for_their_trainer() -> None:
    comps = compare_csv(published_csv())
    tune = [c for c in comps if c.trainer == "torchtune"]
    assert len(tune) == 28 and all(c.excluded for c in tune)
    # the 7 rows that no note excludes are left out for having no policy, shown as such
    assert sum(c.code == "no trainer policy" for c in tune) == 7
    s = summarize(comps)
    assert s.exclusions["no trainer policy"] == 7
    assert s.rows_by_trainer == {"hf": 133, "llamafactory": 6, "torchtune": 28, "trl": 8, "unsloth": 5}
    assert "torchtune" not in s.by_trainer and set(s.by_trainer) == {"hf", "llamafactory", "trl"}


def test_validate_picks_the_policy_by_row(tmp_path: Path) -> None:
    """The same QLoRA row marked swift and blank: swift keeps embeddings, head and norms in bf16
    (no k-bit upcast), the hf loop upcasts them to fp32, so the estimates differ, each equal to
    the estimate under its own trainer's policy."""
    over = dict(method="qlora", quant="bnb-nf4", model="qwen2.5-7b", seq_len="2048", micro_batch="1")
    blank = measured_row(id="a", **over)
    swift = measured_row(id="b", trainer="swift", **over)
    spec, setup = load_model("qwen2.5-7b"), row_setup(blank)
    from vramplan.memory import estimate

    for row, name in ((blank, "hf"), (swift, "swift")):
        want = estimate(spec, setup, policy=framework(name).policy(setup))
        assert row_estimate(row, tmp_path).allocated_bytes == want.allocated_bytes
        assert compare(row, tmp_path).trainer == name
    assert row_estimate(swift, tmp_path).allocated_bytes < row_estimate(blank, tmp_path).allocated_bytes


def test_a_csv_without_the_trainer_columns_reads_as_hf(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    cols = [c for c in COLUMNS if c not in ("trainer", "trainer_version")]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerow({k: v for k, v in measured_row(id="1").items() if k in cols})
    (c,) = compare_csv(path)
    assert not c.excluded and c.trainer == "hf"


def test_the_published_gate_holds_with_rows_under_their_trainers() -> None:
    s = summarize(compare_csv(published_csv()))
    assert s.overall.rows >= 115
    assert s.overall.median_abs_pct is not None and s.overall.median_abs_pct <= 5.0
    assert s.overall.p90_abs_pct is not None and s.overall.p90_abs_pct <= 15.0


def test_trl_before_1_0_is_estimated_as_the_transformers_step(tmp_path: Path) -> None:
    """TRL 0.x's SFTTrainer is the transformers Trainer's step (full logits): a row marked trl 0
    is estimated under hf's policy, one marked trl 1.16 under trl's fused head (less, for Qwen's
    152k vocabulary); both stay trl rows in the comparison."""
    from vramplan.memory import estimate

    over = dict(method="lora", model="qwen2.5-7b", seq_len="2048", micro_batch="1", trainer="trl")
    old, new = measured_row(id="a", trainer_version="0", **over), measured_row(id="b", trainer_version="1.16", **over)
    spec, setup = load_model("qwen2.5-7b"), row_setup(old)
    assert row_estimate(old, tmp_path) == estimate(spec, setup, policy=framework("hf").policy(setup))
    assert row_estimate(new, tmp_path).allocated_bytes < row_estimate(old, tmp_path).allocated_bytes
    assert compare(old, tmp_path).trainer == compare(new, tmp_path).trainer == "trl"
