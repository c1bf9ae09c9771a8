"""Every card either has the figures the time model needs or is refused in one line
(vramplan/timing.py): no card is timed at a made-up throughput."""

from __future__ import annotations

import pytest

from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.gpus import gpu_catalog, resolve_gpu
from vramplan.models import load_model
from vramplan.planner import plan
from vramplan.setup import Setup, make_setup
from vramplan.timing import missing_figure, step_time, wall_time

CARDS = sorted(gpu_catalog())
#: a card with no published dense tensor TFLOPs in tables/gpus.csv (an AWS-only part).
REFUSED = "a10g"
#: a card whose figure is published (the GA102 whitepaper's RTX 3080 column).
TIMED = "rtx-3080-10gb"


def _setup(card: str) -> Setup:
    precision = "bf16" if gpu_catalog()[card].bf16_supported else "fp16"
    return make_setup(method="lora", precision=precision, seq_len=512, micro_batch=1)


@pytest.mark.parametrize("card", CARDS)
def test_every_card_has_its_figures_or_is_refused_in_one_line(card: str) -> None:
    gpu = gpu_catalog()[card]
    setup = _setup(card)
    spec = load_model("qwen2.5-0.5b")
    missing = missing_figure(gpu, setup)
    if missing is None:
        t = step_time(spec, setup, gpu)
        assert t.tokens_per_second > 0
        return
    assert getattr(gpu, missing) is None
    with pytest.raises(VramplanError) as err:
        step_time(spec, setup, gpu)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("gpu: ")
    assert gpu.name in text and card in text and missing in text


def test_the_relative_model_only_orders_setups_on_a_refused_card() -> None:
    gpu, spec = gpu_catalog()[REFUSED], load_model("qwen2.5-0.5b")
    small, big = _setup(REFUSED), _setup(REFUSED).model_copy(update={"micro_batch": 4})
    assert missing_figure(gpu, small) == "bf16_tflops_dense"
    fast = step_time(spec, big, gpu, relative=True).tokens_per_second
    assert fast > step_time(spec, small, gpu, relative=True).tokens_per_second
    with pytest.raises(VramplanError, match="^gpu: A10G"):
        wall_time(spec, small, gpu, samples=100, avg_tokens=256)


def test_a_plan_on_a_card_with_figures_prints_tok_s() -> None:
    p = plan("qwen2.5-0.5b", gpu=TIMED)
    assert resolve_gpu(TIMED).bf16_tflops_dense == 59.5
    assert any(a.tokens_per_second for a in p.alternatives)
    note = next(n for n in p.notes if n.code == "rank.fitting")
    assert "tok/s" in note.text and note.data["tokens_per_second"]
    assert "missing_figure" not in note.data


def test_a_plan_on_a_refused_card_shows_no_speed() -> None:
    p = plan("qwen2.5-0.5b", gpu=REFUSED)
    assert p.fits
    assert all(a.tokens_per_second is None and a.seconds_per_step is None for a in p.alternatives)
    note = next(n for n in p.notes if n.code == "rank.fitting")
    assert note.text.startswith("fitting setups, ranked by the relative time model: no published TFLOPs for A10G: ")
    assert "tok/s" not in note.text
    assert note.data["tokens_per_second"] == [] and note.data["missing_figure"] == "bf16_tflops_dense"


@pytest.mark.parametrize(
    "run",
    [
        ["--samples", "1000", "--avg-tokens", "512"],
        ["--dataset-tokens", "1000000"],
        ["--dataset-tokens", "1000000", "--price-per-hour", "1.2"],
    ],
    ids=["samples", "dataset_tokens", "cost"],
)
def test_wall_time_and_cost_on_a_refused_card_exit_2_in_one_line(run: list[str], capsys) -> None:
    assert main(["qwen2.5-0.5b", "--gpu", REFUSED, *run]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1
    assert out.err.startswith("vramplan: error: gpu: A10G (a10g) has no published bf16_tflops_dense")


def test_wall_time_on_a_card_with_figures_still_prints(capsys) -> None:
    assert main(["qwen2.5-0.5b", "--gpu", TIMED, "--samples", "1000", "--avg-tokens", "512"]) == 0
    assert "tokens/s" in capsys.readouterr().out
