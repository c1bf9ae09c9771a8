"""DeepSpeed ZeRO as configured: the ds_config.json model (vramplan/zero_config.py) and the terms
read from it (vramplan/memory/zero.py), checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import error_line
from vramplan.cli import main
from vramplan.errors import VramplanError
from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.parallel import per_gpu
from vramplan.memory.phases import phase_terms
from vramplan.memory.policy import with_policy
from vramplan.memory.trainable import trainable_params
from vramplan.memory.zero import (
    averaged_gradient_bytes,
    kept_params,
    pending_release_bytes,
    reduce_bucket_bytes,
    step_terms,
    zero_config,
)
from vramplan.models import load_model
from vramplan.setup import make_setup
from vramplan.zero_config import ZeroConfig, parse, shipped, table_rows

Z2 = {"zero_optimization": {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 1e8}}


@pytest.fixture(scope="module")
def spec():
    return load_model("qwen2.5-7b")


def test_auto_is_filled_as_transformers_fills_it() -> None:
    cfg = shipped("llamafactory", 3)
    assert cfg.reduce_bucket_size is None and cfg.prefetch_bucket_size is None
    h = 3584
    r = cfg.resolved(h)
    assert (r.reduce_bucket_size, r.prefetch_bucket_size, r.param_persistence_threshold) == (
        h * h,
        int(0.9 * h * h),
        10 * h,
    )
    assert not r.overlap_comm and r.max_reuse_distance == 10**9


def test_deepspeed_defaults_fill_what_a_file_leaves_out() -> None:
    z2 = parse({"zero_optimization": {"stage": 2}}, "ds.json")
    z3 = parse({"zero_optimization": {"stage": 3}}, "ds.json")
    assert (z2.overlap_comm, z3.overlap_comm) == (False, True)  # DeepSpeedZeroConfig.overlap_comm_valid
    assert z2.reduce_bucket_size == z2.allgather_bucket_size == 500_000_000
    assert (z3.prefetch_bucket_size, z3.param_persistence_threshold) == (50_000_000, 100_000)


def test_unprefixed_stage3_keys_are_read() -> None:
    cfg = shipped("axolotl", 3)  # zero3_bf16.json writes max_live_parameters, max_reuse_distance
    assert (cfg.max_live_parameters, cfg.max_reuse_distance, cfg.sub_group_size) == (0, 0, 0)


def test_every_shipped_config_parses_to_its_stage() -> None:
    for key, row in table_rows().items():
        trainer, stage = key.split("/zero")
        cfg = shipped(trainer, int(stage))
        assert cfg.source == key and cfg.stage == int(stage) == row["zero_optimization"]["stage"]
        assert not cfg.offload_optimizer and not cfg.offload_param  # the plan's --offload says it
    assert shipped("swift", 2).optimizer == "fused"  # swift's zero2.json has an "optimizer" block


def test_trainer_policy_picks_its_shipped_config(spec) -> None:
    s = make_setup(method="full", num_gpus=4, parallel="zero2")
    sources = {t: zero_config(spec, with_policy(s, framework(t).policy(s))).source for t in ("llamafactory", "trl")}
    assert sources == {"llamafactory": "llamafactory/zero2", "trl": "vramplan/zero2"}


def test_a_users_file_replaces_the_shipped_one(spec, tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(Z2))
    s = make_setup(method="full", num_gpus=4, parallel="zero2", deepspeed_config=str(path))
    assert isinstance(s.deepspeed_config, ZeroConfig) and hash(s)
    assert reduce_bucket_bytes(spec, s) == 2 * 2 * 10**8  # two 16-bit buffers of 1e8


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{", "is not JSON"),
        ("[]", "a ds_config.json is a JSON object"),
        ("{}", "no 'zero_optimization' object"),
        ('{"zero_optimization": {"stage": 4}}', "stage must be 0, 1, 2 or 3"),
        ('{"zero_optimization": {"stage": 2, "reduce_bucket_size": -1}}', "reduce_bucket_size must be a count"),
        ('{"zero_optimization": {"stage": 2, "overlap_comm": "yes"}}', "overlap_comm must be true or false"),
        ('{"zero_optimization": {"stage": 3}}', "plan it with --parallel zero3"),
        ('{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}', "--offload optimizer"),
    ],
)
def test_a_bad_file_is_one_error_naming_the_field(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "ds.json"
    path.write_text(content)
    with pytest.raises(VramplanError) as err:
        make_setup(method="full", num_gpus=2, parallel="zero2", deepspeed_config=str(path))
    assert err.value.field == "deepspeed_config" and says in err.value.message
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_missing_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["qwen2.5-0.5b", "--gpus", "2", "--parallel", "zero2", "--deepspeed", str(tmp_path / "no.json")]
    assert main(args) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("vramplan: error: deepspeed_config: cannot read")


def test_the_cli_plans_a_users_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(Z2))
    assert main(["qwen2.5-0.5b", "--gpus", "2", "--parallel", "zero2", "--deepspeed", str(path), "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    assert plan["setup"]["deepspeed_config"]["reduce_bucket_size"] == 10**8


def test_stage2_buckets_follow_size_and_overlap(spec) -> None:
    s = make_setup(method="full", num_gpus=4, parallel="zero2", deepspeed_config=Z2)
    back = per_gpu(spec, s, phase_terms(spec, s))
    assert back["backward"]["parallel/reduce_buckets"] == 2 * 2 * 10**8
    assert "parallel/reduce_buckets" not in back["optimizer_step"]  # released by the epilogue
    one = make_setup(
        method="full",
        num_gpus=4,
        parallel="zero2",
        deepspeed_config={"zero_optimization": {**Z2["zero_optimization"], "overlap_comm": False}},
    )
    assert reduce_bucket_bytes(spec, one) == 2 * 10**8


def test_stage2_step_is_eight_bytes_a_partition_element(spec) -> None:
    """bf16 AdamW (foreach) step: the 16-bit partition, its flat copy and the fp32 gradient
    (2 + 2 + 4 bytes) beside the state, or the fp32 gradient and the sqrt copy (4 + 4)."""
    s = make_setup(method="full", precision="bf16", num_gpus=4, parallel="zero2", deepspeed_config=Z2)
    part = -(-trainable_params(spec, s) // 4)
    t = step_terms(spec, s)
    assert sum(t.values()) == 8 * part
    assert t["parallel/fp32_grad_partition"] == 4 * part


def test_fused_adam_has_no_step_temporaries(spec) -> None:
    s = make_setup(method="full", num_gpus=4, parallel="zero2", deepspeed_config={**Z2, "optimizer": {"type": "AdamW"}})
    part = -(-trainable_params(spec, s) // 4)
    t = step_terms(spec, s)
    assert t == {
        "gradients": 2 * part,
        "parallel/fp32_grad_partition": 4 * part,
        "optimizer/step_temporaries": 2 * part,
    }


def test_accumulating_stage2_holds_a_second_partition(spec) -> None:
    s = make_setup(method="full", num_gpus=4, parallel="zero2", grad_accum=2)
    part = -(-trainable_params(spec, s) // 4)
    assert averaged_gradient_bytes(spec, s) == 2 * part
    assert averaged_gradient_bytes(spec, make_setup(method="full", num_gpus=4, parallel="zero2")) == 0


def test_stage3_keeps_layers_within_the_reuse_distance(spec) -> None:
    s = make_setup(method="lora", num_gpus=4, parallel="zero3")
    layer, head = 233_000_000, 545_000_000
    # 2 x head alone is past 1e9: only the output layer stays gathered through the loss
    assert kept_params(spec, s, layer, head) == 0
    near = make_setup(
        method="lora",
        num_gpus=4,
        parallel="zero3",
        deepspeed_config={"zero_optimization": {"stage": 3, "stage3_max_reuse_distance": 2e9}},
    )
    # (2e9 - 2 x 545M) / 3 (checkpointed: each layer fetched for its recompute and its backward)
    assert kept_params(spec, near, layer, head) == (2 * 10**9 - 2 * head) // 3
    far = near.model_copy(
        update={"deepspeed_config": near.deepspeed_config.model_copy(update={"max_reuse_distance": 10**12})}
    )
    assert kept_params(spec, far, layer, head) == layer * spec.num_layers  # every layer


def test_stage3_step_is_bounded_by_the_sub_group(spec) -> None:
    s = make_setup(method="full", num_gpus=2, parallel="zero3")
    part = -(-trainable_params(spec, s) // 2)
    t = step_terms(spec, s)
    assert t["parallel/fp32_grad_partition"] < 4 * part  # 3.8e9 elements stepped in 1e9 sub groups
    assert t["gradients"] == 2 * part  # grad_partitions_flat_buffer stays whole


def test_trainer_configs_move_the_plan(spec) -> None:
    s = make_setup(method="full", precision="bf16", seq_len=512, micro_batch=1, num_gpus=4, parallel="zero2")
    lf = estimate(spec, s, policy=framework("llamafactory").policy(s))
    sw = estimate(spec, s, policy=framework("swift").policy(s))
    # swift's zero2.json: DeepSpeed's fused AdamW, no sqrt copy; LLaMA-Factory: torch AdamW
    assert lf.phases["optimizer_step"] >= sw.phases["optimizer_step"]


def test_stage3_on_a_gpu_holds_one_released_layer_more(spec) -> None:
    """record_stream keeps the last released layer's blocks until the compute stream passes them."""
    s = make_setup(method="lora", num_gpus=4, parallel="zero3")
    whole = 2 * 7_615_616_512  # bf16 weights of the whole model
    embed = 2 * 2 * spec.vocab_size * spec.hidden_size  # untied: embedding and lm_head
    layer = (whole - embed) // spec.num_layers
    assert pending_release_bytes(spec, s, whole, "backward") == layer
    assert pending_release_bytes(spec, s, whole, "optimizer_step") == 0
    back = per_gpu(spec, s, phase_terms(spec, s))["backward"]["parallel/gathered_weights"]
    assert back >= 2 * layer  # the running layer and the one waiting for its kernels


def test_the_emitted_ds_config_says_the_users_buckets() -> None:
    """--emit trl with --deepspeed: ds_config.json writes the buckets the plan counted."""
    from vramplan import plan
    from vramplan.emit import emit

    ds = {"zero_optimization": {"stage": 2, "overlap_comm": False, "reduce_bucket_size": 3e7}}
    p = plan("qwen2.5-0.5b", gpu="a100-80g", method="lora", num_gpus=2, parallel="zero2", deepspeed_config=ds)
    written = json.loads(emit(p, "trl", force=True).files["ds_config.json"])
    zero = written["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["overlap_comm"]) == (30_000_000, False)
    assert any("30,000,000 elements" in line and "one 16-bit buffer" in line for line in written["_comment"])
