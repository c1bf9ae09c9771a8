"""Setup's grouped views, its rules (vramplan/setup_rules.py) and the CLI flags generated from
its fields (vramplan/cli_parse.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from vramplan import setup_rules
from vramplan.cli import main
from vramplan.cli_parse import flag_name, plan_parser, run_parser
from vramplan.errors import VramplanError
from vramplan.gpus import resolve_gpu
from vramplan.limits import MAX_GPUS, MAX_GPUS_PER_NODE
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.setup import Setup, make_setup
from vramplan.setup_rules import GPU_RULES, RULES, RUN_RULES, Rule, RunRule, Views, check_against_gpu, first_broken
from vramplan.zero_config import parse

SETUPS = [
    make_setup(),
    make_setup(method="qlora", quant="bnb-nf4", lora_rank=32, lora_alpha=64, lora_dropout=0.1, lora_targets="q_proj"),
    make_setup(trainable_extra="embeddings,lm_head"),
    make_setup(method="full", parallel="fsdp", num_gpus=8, num_nodes=2, fsdp_sharding="hybrid_shard"),
    make_setup(method="full", parallel="zero3", num_gpus=4, offload="optimizer+params"),
    make_setup(method="full", image_size="640x480", images_per_sample=2, freeze_vision=True),
    make_setup(video_frames=8, video_size="320x240"),
    make_setup(rl="grpo", micro_batch=8, num_generations=4, completion_len=256, beta=0.04),
    make_setup(rl="grpo", micro_batch=8, vllm="colocate", vllm_gpu_memory_utilization=0.5, vllm_sleep=True),
]


@pytest.mark.parametrize("s", SETUPS)
def test_views_are_the_flat_fields(s: Setup) -> None:
    assert s.lora.on == (s.method in ("lora", "qlora"))
    assert (s.lora.rank, s.lora.alpha, s.lora.dropout) == (s.lora_rank, s.lora_alpha, s.lora_dropout)
    assert (s.lora.targets, s.lora.extra) == (s.lora_targets, s.trainable_extra)
    lay = s.layout
    assert (lay.gpus, lay.nodes, lay.parallel, lay.offload) == (s.num_gpus, s.num_nodes, s.parallel, s.offload)
    assert (lay.fsdp_sharding, lay.world, lay.shards) == (s.fsdp_sharding, s.world_size, s.shard_count)
    m = s.media
    assert (m.images, m.image_size, m.video_frames, m.video_size) == (
        s.images_per_sample,
        s.image_size,
        s.video_frames,
        s.video_size,
    )
    assert (m.freeze_vision, m.freeze_projector, m.any) == (s.freeze_vision, s.freeze_projector, s.has_media)
    g = s.grpo
    assert g.on == (s.rl == "grpo") and g.vllm == (s.vllm == "colocate")
    assert (g.generations, g.completion_len, g.beta) == (s.num_generations, s.completion_len, s.beta)
    assert (g.vllm_memory, g.vllm_sleep) == (s.vllm_gpu_memory_utilization, s.vllm_sleep)


def test_views_are_not_fields() -> None:
    """The views add nothing to the JSON: a plan's setup dumps the flat fields alone."""
    dumped = make_setup().model_dump()
    assert list(dumped) == list(Setup.model_fields)
    assert not {"lora", "layout", "media", "grpo"} & set(Setup.model_fields)
    assert "vllm_card_bytes" not in dumped


#: rule name -> fields that break it (and no rule before it)
TRIPS: dict[str, dict[str, Any]] = {
    "qlora_needs_quant": {"method": "qlora"},
    "quant_needs_qlora": {"method": "lora", "quant": "bnb-nf4"},
    "image_size_is_a_size": {"image_size": "12x"},
    "video_size_is_a_size": {"video_size": "big", "video_frames": 4},
    "video_size_needs_frames": {"video_size": "640x360"},
    "freezing_parts_needs_full": {"freeze_vision": True},
    "videos_are_for_training": {"method": "inference", "video_frames": 4},
    "images_are_for_training": {"method": "inference", "images_per_sample": 1},
    "kv_cache_is_for_inference": {"kv_cache": "fp8"},
    "inference_splits_by_device_map": {"method": "inference", "parallel": "ddp", "num_gpus": 2},
    "lora_targets_are_names": {"lora_targets": "q_proj,,v_proj"},
    "extra_modules_are_for_lora": {"method": "full", "trainable_extra": ("embeddings",)},
    "gpus_need_a_layout": {"num_gpus": 2},
    "nodes_count_gpus_per_node": {"num_nodes": 2, "num_gpus": MAX_GPUS_PER_NODE + 1, "parallel": "ddp"},
    "nodes_within_the_gpu_bound": {"num_nodes": MAX_GPUS, "num_gpus": 2, "parallel": "ddp"},
    "device_map_is_one_machine": {"num_nodes": 2, "num_gpus": 2, "parallel": "device_map"},
    "nodes_need_a_layout": {"num_nodes": 2},
    "deepspeed_config_matches_layout": {
        "num_gpus": 2,
        "parallel": "zero2",
        "deepspeed_config": parse({"zero_optimization": {"stage": 3}}, "ds.json"),
    },
    "grpo_trains": {"rl": "grpo", "method": "inference"},
    "grpo_on_one_gpu": {"rl": "grpo", "parallel": "ddp", "num_gpus": 2},
    "grpo_takes_images_only": {"rl": "grpo", "video_frames": 4},
    "completion_within_sequence": {"rl": "grpo", "completion_len": 2048},
    "batch_holds_whole_groups": {"rl": "grpo", "micro_batch": 3},
    "vllm_is_for_grpo": {"vllm": "colocate"},
    "vllm_has_no_int8": {"rl": "grpo", "micro_batch": 8, "vllm": "colocate", "method": "qlora", "quant": "bnb-int8"},
    "vllm_takes_bnb_or_16_bit": {
        "rl": "grpo",
        "micro_batch": 8,
        "vllm": "colocate",
        "method": "qlora",
        "quant": "gptq-int4",
    },
    "vllm_options_need_vllm": {"vllm_sleep": True},
    "sharding_is_for_fsdp": {"fsdp_sharding": "hybrid_shard"},
    "fsdp_offload_is_full_shard": {
        "parallel": "fsdp",
        "num_gpus": 2,
        "fsdp_sharding": "shard_grad_op",
        "offload": "optimizer+params",
    },
    "optimizer_offload_needs_zero_or_fsdp": {"offload": "optimizer"},
    "fsdp_offloads_parameters_too": {"offload": "optimizer", "parallel": "fsdp", "num_gpus": 2},
    "parameter_offload_needs_sharding": {"offload": "optimizer+params", "parallel": "zero2", "num_gpus": 2},
    "one_length_source": {"avg_tokens": 500, "lengths_file": [100, 900, 2000]},
    "flash_attention_is_16_bit": {"attention": "flash-attn-2", "precision": "fp32"},
}


def test_every_rule_has_a_setup_that_trips_it() -> None:
    assert [r.name for r in RULES] == list(TRIPS)
    assert all(r.field in Setup.model_fields for r in RULES)


@pytest.mark.parametrize("r", RULES, ids=[r.name for r in RULES])
def test_each_rule_refuses_naming_its_field(r: Rule) -> None:
    fields = TRIPS[r.name]
    unchecked = Setup.model_construct(**fields)
    message = r.check(unchecked, Views.of(unchecked))
    assert message is not None
    assert first_broken(unchecked) == f"{r.field}|{message}"  # the first rule broken is this one
    with pytest.raises(VramplanError) as err:
        make_setup(**fields)
    assert (err.value.field, err.value.message) == (r.field, message)


def test_the_card_rules_refuse_what_the_card_cannot_run() -> None:
    """T4: no bf16, no FlashAttention-2 (tables/gpus.json)."""
    t4, h100 = resolve_gpu("t4"), resolve_gpu("h100")
    assert {r.field for r in GPU_RULES} == {"precision", "attention"}
    for fields, field in (({"precision": "amp-bf16"}, "precision"), ({"attention": "flash-attn-2"}, "attention")):
        check_against_gpu(fields, h100)
        with pytest.raises(VramplanError) as err:
            check_against_gpu(fields, t4)
        assert err.value.field == field and "T4" in err.value.message
    check_against_gpu({}, t4)  # an unpinned precision is chosen for the card, not refused


#: run rule name -> the plan command's flags that break it (and no run rule before it)
RUN_TRIPS: dict[str, list[str]] = {
    "samples_need_their_length": ["--samples", "10"],
    "one_run_length": ["--samples", "10", "--avg-tokens", "100", "--dataset-tokens", "1000"],
    "no_time_for_grpo": ["--rl", "grpo", "--dataset-tokens", "1000"],
    "cost_needs_the_length": ["--price-per-hour", "2"],
}


@pytest.mark.parametrize("r", RUN_RULES, ids=[r.name for r in RUN_RULES])
def test_each_run_rule_refuses_the_command_naming_its_field(r: RunRule, capsys) -> None:
    assert [x.name for x in RUN_RULES] == list(RUN_TRIPS)
    argv = ["qwen2.5-0.5b", "--gpu", "a100-80g", *RUN_TRIPS[r.name]]
    message = r.check(vars(plan_parser().parse_args(argv)))
    assert message is not None
    assert main(argv) == 2
    assert capsys.readouterr().err == f"vramplan: error: {r.field}: {message}\n"


def test_a_rule_added_to_the_list_is_enforced(monkeypatch) -> None:
    unlucky = Rule("no_rank_13", "lora_rank", lambda s, v: "13 is not a rank here" if v.lora.rank == 13 else None)
    make_setup(lora_rank=13)
    monkeypatch.setattr(setup_rules, "RULES", [*RULES, unlucky])
    with pytest.raises(VramplanError, match=r"^lora_rank: 13 is not a rank here$"):
        make_setup(lora_rank=13)
    make_setup(lora_rank=12)


def test_vllm_share_needs_the_card() -> None:
    """The card is the estimate's input now, not a Setup field: without it vLLM's share is refused."""
    spec = load_model("qwen2.5-0.5b")
    s = make_setup(rl="grpo", micro_batch=8, vllm="colocate")
    with pytest.raises(VramplanError, match="^vllm: vLLM's share is a fraction of the card"):
        estimate(spec, s)
    small, large = (estimate(spec, s, card_bytes=gib * 2**30) for gib in (24, 80))
    assert large.terms["rl/vllm_share"] == int(0.3 * 80 * 2**30) > small.terms["rl/vllm_share"]
    plain = make_setup(rl="grpo", micro_batch=8)
    assert estimate(spec, plain, card_bytes=24 * 2**30) is estimate(spec, plain)  # no vLLM: the card is not read


def _help_lines(parser_help: str) -> dict[str, str]:
    """Each option of an argparse help text -> its help text (one line at this width: beside the
    option, or on the next line when the option and its metavar are long)."""
    out = {}
    lines = parser_help.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^  (--[a-z0-9-]+)(?:, --no-[a-z0-9-]+)?(?: \S+)?(?:\s{2,}(\S.*))?$", line)
        if m:
            out[m.group(1)] = m.group(2) or lines[i + 1].strip()
    return out


@pytest.mark.parametrize("make", [plan_parser, lambda: run_parser("trace"), lambda: run_parser("measure")])
def test_every_field_is_a_flag_with_help_and_default(make, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at the terminal's width
    lines = _help_lines(make().format_help())
    for field, info in Setup.model_fields.items():
        flag = flag_name(field)
        assert flag in lines, f"{field}: no {flag} in --help"
        assert info.description and lines[flag].startswith(info.description), (field, lines[flag])
        assert re.search(r"\(default: [^)]+\)$", lines[flag]), (field, lines[flag])


def test_flags_keep_their_names_and_parse_to_the_field() -> None:
    p = plan_parser()
    assert flag_name("num_gpus") == "--gpus" and flag_name("vllm_gpu_memory_utilization") == "--vllm-memory"
    args = p.parse_args(["m", "--gpus", "auto", "--nodes", "2", "--vllm-memory", "0.4", "--no-grad-checkpointing"])
    assert (args.num_gpus, args.num_nodes, args.vllm_gpu_memory_utilization) == ("auto", 2, 0.4)
    assert args.grad_checkpointing is False and args.method is None  # not given: the planner chooses
    assert p.parse_args(["m", "--seq-len", "512", "--method", "full"]).seq_len == 512
