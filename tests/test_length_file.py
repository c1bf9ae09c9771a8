"""``--lengths-file``: a dataset's token counts as the distribution variable lengths are drawn
from (vramplan/length_file.py, memory/lengths.py), read in each format, refused in one line when
unreadable, and the records' cache it gives held to orders of the file's own samples."""

from __future__ import annotations

import bisect
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from vramplan import plan
from vramplan.errors import VramplanError
from vramplan.length_file import bin_top, from_lengths, read_file
from vramplan.memory import lengths
from vramplan.setup import Setup

pytestmark = pytest.mark.analytic

GIB = 2**30
V = 151936  # Qwen's vocabulary
#: a loss chain of three fp32 blocks of t x V (memory/lengths.py CHAIN_BLOCKS)
PER_TOKEN = 3 * 4 * V


def _lognormal(n: int, mu: float, sigma: float, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(mu, sigma))) for _ in range(n)]


def test_each_format_reads_the_same_counts(tmp_path: Path) -> None:
    counts = [5, 700, 1024, 3000, 2]
    files = {
        "a.txt": "# token counts\n5\n700\n\n1024\n3000\n2\n",
        "b.csv": "id,text_chars,num_tokens\n1,20,5\n2,3000,700\n3,4000,1024\n4,9000,3000\n5,8,2\n",
        "c.tsv": "length\n5\n700\n1024\n3000\n2\n",
        "f.csv": "5\n700\n1024\n3000\n2\n",  # one column, no header
        "d.jsonl": "".join(json.dumps({"input_ids": [0] * n, "labels": [0] * n}) + "\n" for n in counts),
        "e.json": json.dumps([5, {"length": 700}, {"n_tokens": 1024}, {"input_ids": [1] * 3000}, 2]),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        dist = read_file(str(tmp_path / name))
        assert (dist.samples, dist.mean) == (5, sum(counts) / 5), name
        assert dist.at_most(1024) == 4 and dist.at_most(1023) == 3 and dist.at_most(3000) == 5, name


def test_bins_are_exact_below_512_tokens_then_0_4_percent_wide() -> None:
    assert [bin_top(n) for n in (1, 256, 511, 512, 513)] == [1, 256, 511, 512, 514]
    for n in (512, 513, 1025, 2047, 2049, 50_001, 1_000_000):
        top = bin_top(n)
        assert n <= top < n * (1 + 1 / 256), n
        assert bin_top(top) == top  # a bin's top is its own bin
    # a sample one token past a power-of-two cap stays past it
    assert bin_top(2049) > 2048 and bin_top(4097) > 4096


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("w.txt", "12\nabc\n", "w.txt line 2: one token count a line"),
        ("w.txt", "1,2\n", "(a CSV needs a .csv name"),
        ("z.txt", "0\n", "at least 1 token"),
        ("e.txt", "# nothing\n\n", "holds no sample lengths"),
        ("t.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "vramplan does not tokenize"),
        ("f.jsonl", '{"length": 12.5}\n', "a whole number"),
        ("b.jsonl", "{not json\n", "b.jsonl line 1 is not JSON"),
        ("c.csv", "a,b\n1,2\n", "no column named length"),
    ],
)
def test_an_unreadable_file_is_refused_naming_the_field(tmp_path: Path, name: str, text: str, says: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(VramplanError) as err:
        read_file(str(tmp_path / name))
    assert err.value.field == "lengths_file" and says in err.value.message, err.value.message


def test_the_cli_refuses_in_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vramplan.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text("100\ntwo hundred\n")
    for argv, field in (
        (["qwen2.5-0.5b", "--lengths-file", str(bad)], "lengths_file"),
        (["qwen2.5-0.5b", "--lengths-file", str(tmp_path / "missing.txt")], "lengths_file"),
        (["qwen2.5-0.5b", "--lengths-file", str(tmp_path / "bad.txt"), "--avg-tokens", "300"], "lengths_file"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"error: {field}:" in err, err
    good = tmp_path / "good.txt"
    good.write_text("100\n200\n")
    assert main(["qwen2.5-0.5b", "--lengths-file", str(good), "--avg-tokens", "300"]) == 2
    assert "error: avg_tokens: give --avg-tokens or --lengths-file, not both" in capsys.readouterr().err


def test_a_file_means_variable_lengths_unless_told_otherwise() -> None:
    assert Setup(lengths_file=[100, 200]).lengths == "variable"
    assert Setup(lengths_file=[100, 200], lengths="fixed").lengths == "fixed"
    assert Setup().lengths == "fixed"


def test_the_plan_json_carries_the_distribution_back() -> None:
    p = plan("qwen2.5-0.5b", gpu="4090", lengths_file=_lognormal(500, 6.5, 0.7, 3))
    again = Setup.model_validate(json.loads(p.setup.model_dump_json()))
    assert again == p.setup and again.lengths_file is not None and again.lengths_file.samples == 500


@pytest.mark.parametrize(("mu", "sigma"), [(6.8, 0.6), (5.5, 1.0), (7.2, 0.4)])
@pytest.mark.parametrize("over_cap", ["truncate", "drop"])
def test_the_records_cache_is_the_mean_over_orders_of_the_file_s_samples(
    mu: float, sigma: float, over_cap: lengths.OverCap
) -> None:
    """One sample a batch, 2,000 samples, 2,048 tokens: the plan's expected records' cache against
    400 shuffles of the same samples through the record rule (a batch longer than every one
    before takes new segments for its chain), within 8% (the shuffles' own error is about 3%)."""
    xs = _lognormal(2000, mu, sigma, seed=int(mu * 10))
    cap = 2048
    expected, _ = lengths.records_cache_bytes(PER_TOKEN, cap, 1, lengths.FileLengths(from_lengths(xs, "x"), over_cap))
    kept = [min(x, cap) for x in xs] if over_cap == "truncate" else [x for x in xs if x <= cap]
    block = PER_TOKEN / lengths.CHAIN_BLOCKS
    step = max(1, math.ceil(lengths.ROUND_LARGE / block))
    final = lengths.CHAIN_BLOCKS * lengths._segment(block * cap)
    rng = random.Random(7)
    sums = []
    for _ in range(400):
        rng.shuffle(kept)
        longest = total = 0
        for x in kept:
            top = min(cap, -(-bin_top(x) // step) * step)
            if top > longest:
                longest, total = top, total + lengths.CHAIN_BLOCKS * lengths._segment(block * top)
        sums.append(total - final)
    assert expected == pytest.approx(statistics.mean(sums), rel=0.08)


def test_a_file_drawn_from_a_mean_s_distribution_plans_as_that_mean() -> None:
    """Samples drawn from the maximum-entropy distribution of mean 900 on 1..2048 (what
    ``--avg-tokens 900`` assumes): the file's cache within 5% of the mean's (20,000 samples: the
    file's run is finite where the mean's is not, and its lengths are counted at their bins' tops)."""
    cap, avg = 2048, 900
    cdf = lengths.length_cdf(cap, avg)
    rng = random.Random(11)
    xs = [max(1, bisect.bisect_left(cdf, rng.random())) for _ in range(20_000)]
    from_file, _ = lengths.records_cache_bytes(PER_TOKEN, cap, 1, lengths.FileLengths(from_lengths(xs, "x"), "drop"))
    from_mean, _ = lengths.records_cache_bytes(PER_TOKEN, cap, 1, float(avg))
    assert from_file == pytest.approx(from_mean, rel=0.05)


def test_each_trainer_keeps_the_longer_samples_as_its_code_does(tmp_path: Path) -> None:
    """ms-swift and axolotl drop a sample past the cap, TRL and LLaMA-Factory cut it: on a file
    whose longer half is dropped, the kept samples' mean is lower, the cache different."""
    f = tmp_path / "l.txt"
    f.write_text("\n".join(map(str, _lognormal(3000, 7.6, 0.5, 5))))
    common = dict(gpu="a100-80g", method="lora", seq_len=2048, lengths_file=str(f))
    by = {t: plan("qwen2.5-7b", trainer=t, **common) for t in ("trl", "llamafactory", "swift", "axolotl")}
    notes = {t: next(n for n in p.notes if n.code == "lengths.cache") for t, p in by.items()}
    share = notes["swift"].data["over_cap_share"]
    assert isinstance(share, float) and 0.3 < share < 0.7
    assert "dropped" in notes["swift"].text and "dropped" in notes["axolotl"].text
    assert "cut to it" in notes["llamafactory"].text
    mean = {t: n.data["avg_tokens"] for t, n in notes.items()}
    assert isinstance(mean["swift"], float) and isinstance(mean["llamafactory"], float)
    assert mean["swift"] == mean["axolotl"] < 1700 < mean["llamafactory"]


def test_every_sample_past_the_cap_under_a_dropping_trainer_is_refused() -> None:
    with pytest.raises(VramplanError) as err:
        plan("qwen2.5-0.5b", gpu="4090", trainer="swift", seq_len=512, lengths_file=[600, 900])
    assert err.value.field == "lengths_file" and "drops them all" in err.value.message


def test_the_file_times_the_run_and_sizes_the_padding_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vramplan.cli import main

    f = tmp_path / "l.txt"
    f.write_text("\n".join(["400"] * 90 + ["4000"] * 10))
    assert main(["qwen2.5-0.5b", "--gpu", "a100-80g", "--seq-len", "2048", "--lengths-file", str(f)]) == 0
    out = capsys.readouterr().out
    # truncating (the generic loop): 100 samples, (90 x 400 + 10 x 2048) / 100 tokens each
    assert "100 samples of" in out and "x 565 tokens on average" in out
    fixed = plan("qwen2.5-0.5b", gpu="a100-80g", seq_len=2048, lengths="fixed", lengths_file=str(f))
    (pad,) = [n for n in fixed.notes if n.code == "lengths.padding"]
    assert pad.data["avg_tokens"] == 565
