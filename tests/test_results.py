"""Results as data (vramplan/results.py): the public names, emit as a function of a plan, notes
with codes and numbers."""

from __future__ import annotations

import pytest

import vramplan
from vramplan import plan
from vramplan.emit import emit
from vramplan.results import Alternative, CardEstimate, Estimate, Note, Peak, Plan


def test_old_paths_are_the_results_classes() -> None:
    from vramplan import memory, planner
    from vramplan.memory import phases

    assert memory.Estimate is phases.Estimate is vramplan.Estimate is Estimate
    assert phases.CardEstimate is CardEstimate
    assert (planner.Plan, planner.Alternative, planner.Peak) == (Plan, Alternative, Peak)
    assert (vramplan.Plan, vramplan.Alternative, vramplan.Peak, vramplan.Note) == (Plan, Alternative, Peak, Note)


def test_a_plan_does_not_emit_itself_emit_does() -> None:
    """A plan is data: its files come from vramplan.emit.emit (results.py imports no emitter)."""
    p = plan("qwen2.5-0.5b", gpu="a100-80g", method="lora", seq_len=256)
    assert not hasattr(p, "emit")
    out = emit(p, "swift", data="d.jsonl")
    assert out.target == "swift" and out.setup == p.setup and "d.jsonl" in out.command


def _codes_documented() -> set[str]:
    import re

    from vramplan import results

    return set(re.findall(r"^- ``([a-z0-9_]+\.[a-z0-9_]+)``", results.__doc__ or "", re.M))


NOTED = [
    ("gemma-2-9b", "4090", {}),  # family.attention, rank.fitting
    ("qwen3-30b-a3b", "h100", {"lora_targets": "all-linear"}),  # moe.lora_dropout
    ("qwen3-30b-a3b", "h100", {}),  # moe.lora_targets
    ("qwen2.5-7b", "h100", {}),  # gpu.resolved
    ("qwen2.5-7b", "t4", {"method": "lora", "seq_len": 512}),  # gpu.no_bf16
    ("qwen2.5-7b", "4090", {"method": "full"}),  # fit.short_by, fit.suggestion
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": "auto"}),  # gpus.auto_fewest
    ("llama-3.1-405b", "3060", {"method": "full", "num_gpus": "auto", "num_nodes": 2}),  # gpus.auto_none
    ("qwen2.5-7b", "4090", {"parallel": "zero3", "num_gpus": 1}),  # parallel.zero3_one_gpu
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": 2, "offload": "optimizer", "host_ram_gib": 16}),
    ("qwen2-vl-7b", "a100-80g", {"method": "lora", "image_size": "1024x1024"}),  # media.tokens
    ("qwen2.5-0.5b", "a100-80g", {"rl": "grpo", "vllm": "colocate"}),  # rl.phases, rl.vllm
    ("llama-2-7b", "a100-80g", {"method": "qlora", "seq_len": 16384}),  # model.context
    ("qwen2.5-7b", "4090", {"method": "lora", "seq_len": 5000, "micro_batch": 2}),  # fit.tight
    ("qwen2.5-7b", "4090", {"method": "full", "num_gpus": 4}),  # rank.offload
    ("qwen2.5-7b", "a100-80g", {"method": "lora", "lengths": "variable"}),  # lengths.cache
    ("qwen2.5-0.5b", "a100-80g", {"method": "lora", "seq_len": 2048, "avg_tokens": 300}),  # lengths.padding
    ("qwen2.5-7b", "a100-80g", {"method": "full", "num_gpus": 4, "parallel": "fsdp"}),  # fsdp.stream_pools
]


@pytest.fixture(scope="module")
def noted_plans(tmp_path_factory: pytest.TempPathFactory) -> list[Plan]:
    """The plans of NOTED, the first of them also with another trl release installed (trainer.version),
    and a model no family module reads (model.approximate)."""
    import json

    from tests.conftest import TINY_CONFIG

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("vramplan.advice.installed_version", lambda package: "0.1.0")
        other_release = plan(*NOTED[0][:2], **NOTED[0][2])
    unread = tmp_path_factory.mktemp("helium") / "config.json"
    unread.write_text(json.dumps({**TINY_CONFIG, "model_type": "helium"}))
    return [plan(m, g, **f) for m, g, f in NOTED] + [other_release, plan(str(unread), "4090")]


def test_every_note_has_a_documented_code_and_plain_data(noted_plans: list[Plan]) -> None:
    """The plans in NOTED write every code results.py's docstring lists, and no other."""
    documented = _codes_documented()
    seen = {n.code for p in noted_plans for n in p.notes}
    assert seen == documented, (sorted(seen - documented), sorted(documented - seen))
    for p in noted_plans:
        for n in p.notes:
            assert n.text and n.data, n
            for v in n.data.values():
                items = v if isinstance(v, list) else [v]
                assert all(x is None or isinstance(x, (bool, int, float, str)) for x in items), (n.code, v)


def test_note_data_holds_the_numbers_of_its_text(noted_plans: list[Plan]) -> None:
    """Byte counts in a note's data are the plan's own, and the sentence prints them."""
    short = noted_plans[5]
    note = next(n for n in short.notes if n.code == "fit.short_by")
    assert note.data["device_bytes"] == short.peak.device_bytes > note.data["memory_bytes"] == short.gpu.memory_bytes
    assert note.data["short_bytes"] == short.peak.device_bytes - short.gpu.memory_bytes
    assert f"{short.peak.device_bytes / 2**30:.2f} GiB" in note.text
    suggestion = next(n for n in short.notes if n.code == "fit.suggestion")
    assert suggestion.data["change"] == "release" and suggestion.data["field"] == "method"
    assert suggestion.text.startswith(f"would fit without pinning method=full: {suggestion.data['setup']}")
    auto = noted_plans[6].notes[0]
    assert auto.code == "gpus.auto_fewest" and auto.data["world_size"] == noted_plans[6].setup.world_size
    rl = next(n for n in noted_plans[11].notes if n.code == "rl.phases")
    assert rl.data["peak_phase"] == noted_plans[11].peak.phase
    assert rl.data["generate_bytes"] == noted_plans[11].phases["generate"]


def test_alternatives_carry_a_verdict(noted_plans: list[Plan]) -> None:
    verdicts = {a.verdict for p in noted_plans for a in p.alternatives}
    assert {"chosen", "does_not_fit", "fits_slower", "ranks_below"} <= verdicts
    for p in noted_plans:
        assert [a.verdict == "chosen" for a in p.alternatives] == [a.chosen for a in p.alternatives]
        for a in p.alternatives:
            assert (a.verdict == "does_not_fit") == (not a.fits and not a.chosen)


def test_a_plan_and_its_alternatives_print_as_one_line_each() -> None:
    """repr in a notebook or a log: the verdict and the numbers, not the whole model."""
    p = plan("qwen2.5-7b", "4090")
    text = repr(p)
    assert "\n" not in text and len(text) < 200
    assert text.startswith(f"Plan(qwen2.5-7b on {p.gpu.name}, trl: fits, ")
    assert f"{p.peak.device_bytes / 2**30:.2f} of {p.gpu.memory_bytes / 2**30:.2f} GiB" in text
    alts = repr(p.alternatives)
    assert (
        alts.count("Alternative(") == len(p.alternatives)
        and "does_not_fit" in alts
        and len(alts) < 150 * len(p.alternatives)
    )
