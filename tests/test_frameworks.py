"""The trainers as a registry: the five built in, their refusals as data (the texts emit()
gave before, vramplan/frameworks/files/common.py at d470588), their policies (today's default), and a
toy trainer added as one module whose policy moves the estimate as its field says."""

from __future__ import annotations

from types import ModuleType

import pytest

from vramplan import plan
from vramplan.emit import TARGETS as EMIT_TARGETS
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.frameworks import TARGETS, Framework, framework, names, register
from vramplan.memory import estimate
from vramplan.models import load_model
from vramplan.policy import default_policy
from vramplan.setup import Setup

IMAGES = (
    "{t}: training with images is emitted for trl only (--emit trl: SFTTrainer or GRPOTrainer with the model's"
    " processor); plan it, then set the trainer by hand"
)
MOE = (
    "{t}: its all-linear option does not reach a MoE's router and fused experts, which the plan counts (PEFT adds"
    " them for the literal 'all-linear'): --emit trl, or plan with named targets"
)
VLM = (
    "{m} is a vision-language model and {why}: --emit trl writes its text-only training (language model LoRA/full,"
    " no images) on one GPU, DDP, ZeRO or device_map"
)
TEXT_ONLY = "its trainer loads text models"
QWEN1 = (
    "{t}: qwen-7b is a remote-code architecture (Qwen v1) and the emitted {t} run loads transformers' own model"
    " classes: --emit swift or llamafactory (their model loaders run the repository's code), or plan it, then set"
    " the trainer by hand"
)
QLORA_SHARDED = (
    "trl: QLoRA under zero3 is not emitted: sharding 4-bit weights needs bnb_4bit_quant_storage and no"
    " prepare_model_for_kbit_training (its fp32 upcasts break the uniform dtype the sharder needs), which the"
    " estimate does not model; plan with --parallel ddp, zero1, zero2 or device_map"
)

#: (model, gpu, plan fields, {target: the text emit() refused it with before; absent: emitted})
REFUSED = [
    (
        "qwen2.5-0.5b",
        "a100-80g",
        dict(method="inference"),
        dict.fromkeys(TARGETS, "the targets are fine-tuning trainers: an inference plan has nothing to emit"),
    ),
    (
        "qwen2.5-vl-3b",
        "a100-80g",
        dict(method="lora", video_frames=4, video_size="320x240"),
        dict.fromkeys(TARGETS, "training with videos is not emitted yet: plan it, then set the trainer by hand"),
    ),
    (
        "qwen2.5-vl-3b",
        "a100-80g",
        dict(method="lora", images_per_sample=1, image_size="448x448"),
        {t: IMAGES.format(t=t) for t in TARGETS if t != "trl"},
    ),
    (
        "qwen3-30b-a3b",
        "a100-80g",
        dict(method="lora", lora_targets="all-linear"),
        {t: MOE.format(t=t) for t in TARGETS if t != "trl"},
    ),
    (
        "qwen2.5-0.5b",
        "a100-80g",
        dict(method="lora", rl="grpo", seq_len=1024),
        {t: f"{t}: GRPO plans are emitted for trl only (--emit trl: GRPOTrainer)" for t in TARGETS if t != "trl"},
    ),
    ("qwen-7b", "a100-80g", dict(method="lora"), {t: QWEN1.format(t=t) for t in ("trl", "axolotl")}),
    (
        "qwen2.5-vl-3b",
        "a100-80g",
        dict(method="lora"),
        {t: VLM.format(m="qwen2.5-vl-3b", why=TEXT_ONLY) for t in TARGETS if t != "trl"},
    ),
    (
        "qwen2.5-vl-3b",
        "a100-80g",
        dict(method="lora", num_gpus=2, parallel="fsdp"),
        {
            "trl": VLM.format(m="qwen2.5-vl-3b", why="FSDP wrapping of a vision tower is not planned"),
            **{t: VLM.format(m="qwen2.5-vl-3b", why=TEXT_ONLY) for t in TARGETS if t != "trl"},
        },
    ),
    (
        "qwen2.5-0.5b",
        "a100-80g",
        dict(method="lora", num_gpus=2, parallel="zero2"),
        {
            t: f"{t}: launch configs for zero2 are not emitted yet; plan with --parallel none or ddp"
            for t in TARGETS
            if t != "trl"
        },
    ),
    (
        "qwen2.5-7b",
        "a100-80g",
        dict(method="qlora", quant="bnb-nf4", num_gpus=2, parallel="zero3"),
        {
            "trl": QLORA_SHARDED,
            **{
                t: f"{t}: launch configs for zero3 are not emitted yet; plan with --parallel none or ddp"
                for t in TARGETS
                if t != "trl"
            },
        },
    ),
]


def test_registry_lists_the_five() -> None:
    assert set(names()) >= {"trl", "swift", "llamafactory", "axolotl", "hf"}
    assert TARGETS == EMIT_TARGETS == ("trl", "swift", "llamafactory", "axolotl")
    assert all(framework(n).name == n for n in names())
    with pytest.raises(VramplanError, match="unknown trainer 'nope'; trainers: axolotl, hf, llamafactory, swift, "):
        framework("nope")


def test_a_name_registers_once() -> None:
    class Other(Framework):
        name = "trl"

    with pytest.raises(ValueError, match="registered already"):
        register(Other())


@pytest.mark.parametrize(("model", "gpu", "fields", "refused"), REFUSED, ids=lambda v: str(v)[:40])
def test_supports_refuses_what_emit_refused(model: str, gpu: str, fields: dict, refused: dict[str, str]) -> None:
    """Each target's first refusal is the one emit() raised before, word for word; emit()
    raises it still; a target that emitted it refuses nothing."""
    p = plan(model, gpu, **fields)
    spec = load_model(p.source or p.model)
    for target in TARGETS:
        refusals = framework(target).supports(p.setup, spec)
        if target not in refused:
            assert refusals == [], target
            continue
        assert refusals[0].text == refused[target], target
        with pytest.raises(VramplanError) as err:
            emit(p, target, force=True)
        assert str(err.value) == f"emit: {refused[target]}"


def test_the_plan_is_refused_before_its_values_and_the_model_after() -> None:
    """emit() kept its order: the plan's own refusals (here GRPO for swift) come before the
    check of values no file can hold (a NUL in the data path), the layout's after it."""
    grpo = plan("qwen2.5-0.5b", "a100-80g", method="lora", rl="grpo", seq_len=1024)
    with pytest.raises(VramplanError, match="GRPO plans are emitted for trl only"):
        emit(grpo, "swift", data="a\x00b", force=True)
    zero = plan("qwen2.5-0.5b", "a100-80g", method="lora", num_gpus=2, parallel="zero2")
    with pytest.raises(VramplanError, match="^data: .*NUL"):
        emit(zero, "swift", data="a\x00b", force=True)


def test_hf_is_planned_not_emitted() -> None:
    hf = framework("hf")
    assert hf.supports(Setup(method="full"), load_model("qwen2.5-0.5b")) == []
    assert [r.code for r in hf.supports(Setup(rl="grpo", seq_len=1024, grad_accum=8), load_model("qwen2.5-0.5b"))] == [
        "grpo"
    ]
    with pytest.raises(VramplanError, match="^emit: hf: .*trl, swift, llamafactory or axolotl$"):
        hf.render(None)  # type: ignore[arg-type]
    p = plan("qwen2.5-0.5b", "a100-80g", method="lora")
    with pytest.raises(VramplanError, match="unknown target 'hf'"):
        emit(p, "hf")


SETUPS = [
    Setup(method="lora"),
    Setup(method="qlora", quant="bnb-nf4", precision="bf16"),
    Setup(method="full", precision="amp-bf16", optimizer="adamw-8bit"),
    Setup(method="freeze", precision="fp32", attention="sdpa"),
    Setup(method="full", precision="amp-bf16", parallel="zero2", num_gpus=4),
    Setup(method="lora", precision="fp16", parallel="fsdp", num_gpus=2, offload="optimizer+params"),
]


@pytest.mark.parametrize("name", ["hf"])
def test_each_policy_estimates_as_today(name: str) -> None:
    """The plain Trainer loop is the generic one: its policy is the default one and its
    estimate today's, term by term (the trainers' own: tests/test_trl_policy.py,
    tests/test_swift_policy.py, tests/test_llamafactory_policy.py, tests/test_axolotl_policy.py)."""
    spec = load_model("qwen2.5-0.5b")
    fw = framework(name)
    for setup in SETUPS:
        assert fw.policy(setup) == default_policy(setup)
        assert estimate(spec, setup, policy=fw.policy(setup)) == estimate(spec, setup)


def test_a_toy_trainer_is_one_module(toy_trainer: ModuleType) -> None:
    """tests/toy_trainer.py registers a trainer whose LoRA adapters are bf16 (2 bytes, not
    PEFT's fp32 4): a plan's adapters, their AdamW moments (torch keeps them in the param's
    dtype) and their gradients each take half the bytes, and nothing else moves."""
    toy = framework("toy")
    assert "toy" in names() and "toy" not in TARGETS
    p = plan("qwen2.5-0.5b", "a100-80g", method="lora", lora_rank=64, grad_accum=2)
    spec = load_model(p.source or p.model)
    base = estimate(spec, p.setup)
    mine = estimate(spec, p.setup, policy=toy.policy(p.setup))
    n = base.trainable_params  # the adapters only: no modules_to_save
    assert mine.trainable_params == n
    assert base.phase == mine.phase == "backward_start"
    assert base.terms["weights/trainable"] - mine.terms["weights/trainable"] == 2 * n
    assert base.terms["optimizer/adamw"] - mine.terms["optimizer/adamw"] == 2 * 2 * n
    assert base.terms["gradients"] - mine.terms["gradients"] == 2 * n
    others = {k for k in base.terms if k not in ("weights/trainable", "optimizer/adamw", "gradients")}
    moved = {k for k in others if k.startswith(("weights/", "activations/", "loss/"))}
    assert {k: base.terms[k] for k in moved} == {k: mine.terms[k] for k in moved}
    assert mine.allocated_bytes == base.allocated_bytes - 8 * n
