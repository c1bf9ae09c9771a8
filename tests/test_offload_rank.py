"""Several GPUs: CPU offload needs pinned host RAM the user has not stated, so a faster layout of
the same method that fits without it is taken first, saying the trade; a suggestion never
'releases' a pinned layout only to bring it back."""

from __future__ import annotations

from vramplan import plan
from vramplan.models import load_model
from vramplan.search import throughput


def test_a_faster_layout_without_offload_is_taken_and_the_trade_said() -> None:
    p = plan("qwen2.5-7b", "4090", num_gpus=4, method="full")
    assert p.fits and p.setup.offload == "none"
    note = next(n for n in p.notes if n.code == "rank.offload")
    assert note.data["taken_tokens_per_second"] > note.data["offloaded_tokens_per_second"]
    assert note.data["host_bytes"] > 50 * 2**30  # what the offloaded layout would have pinned
    assert "offload" in str(note.data["offloaded"])


def test_offload_stays_when_pinned_or_the_host_ram_is_given() -> None:
    pinned = plan("qwen2.5-7b", "4090", num_gpus=4, method="full", offload="optimizer")
    assert pinned.setup.offload == "optimizer"
    given = plan("qwen2.5-7b", "4090", num_gpus=4, method="full", host_ram_gib=512)
    assert not any(n.code == "rank.offload" for n in given.notes)
    assert given.setup.offload != "none"


def test_offload_kept_when_nothing_without_it_is_faster() -> None:
    p = plan("qwen2.5-14b", "4090", num_gpus=4, method="full")
    assert p.setup.offload != "none" and not any(n.code == "rank.offload" for n in p.notes)


def test_no_suggestion_releases_a_pin_only_to_bring_it_back() -> None:
    p = plan("llama-3.1-8b", "4090", num_gpus=2, method="full", parallel="zero3")
    assert not p.fits
    fixes = [n.data for n in p.notes if n.code == "fit.suggestion"]
    assert not [f for f in fixes if f["change"] == "release" and f["field"] == "parallel"]
    offload = [f for f in fixes if f["field"] == "offload"]
    assert offload and offload[0]["change"] == "set" and "zero3+offload" in str(offload[0]["setup"])


def test_the_taken_layout_is_the_fastest_without_offload() -> None:
    p = plan("qwen2.5-7b", "a100-40g", num_gpus=4, method="full")
    ranked = next(n for n in p.notes if n.code == "rank.fitting")
    assert "offload" not in " ".join(ranked.data["setups"])  # type: ignore[arg-type]
    speeds = ranked.data["tokens_per_second"]
    assert speeds == sorted(speeds, reverse=True)  # type: ignore[type-var]
    assert speeds[0] == throughput(load_model("qwen2.5-7b"), p.gpu, p.setup)  # type: ignore[index]
