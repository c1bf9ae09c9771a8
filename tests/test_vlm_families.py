"""The vision-language families added for issue 20: Gemma 3 multimodal (arch/gemma3.py
``read_multimodal``) and Mistral 3 (arch/mistral3.py). What each reader takes from its config,
how many tokens an image becomes, and the configurations traced with images (``VLM_GRID``),
which tests/test_family_traces.py holds with the other families' (recorded by
``python benchmarks/trace_families.py --model M`` into tables/measured/traces.jsonl, one
re-traced a day in the trace tier)."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.errors import VramplanError
from vramplan.memory import estimate, vision
from vramplan.memory.activations import window_kv_repeat_bytes, window_mask_bytes, window_mask_held_bytes
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup

_IMG = dict(image_size="896x896")
#: Gemma 3 4B with an image: LoRA with and without checkpointing (below the 1024-token window and
#: past it), full bf16 training (peaking at the step, and, without checkpointing at micro-batch 4,
#: in backward with the trained tower's activations saved), eager attention, and two images per
#: sample at micro-batch 2
GEMMA3_GRID = [
    ("gemma-3-4b", dict(method="lora", seq_len=512, **_IMG)),
    ("gemma-3-4b", dict(method="lora", grad_checkpointing=False, seq_len=512, **_IMG)),
    ("gemma-3-4b", dict(method="lora", grad_checkpointing=False, seq_len=1024, **_IMG)),
    ("gemma-3-4b", dict(method="full", precision="bf16", seq_len=1024, **_IMG)),
    (
        "gemma-3-4b",
        dict(
            method="lora",
            grad_checkpointing=False,
            seq_len=2048,
            micro_batch=2,
            images_per_sample=2,
            image_size="1024x768",
        ),
    ),
    ("gemma-3-4b", dict(method="lora", grad_checkpointing=False, seq_len=512, attention="eager", **_IMG)),
    ("gemma-3-4b", dict(method="full", precision="bf16", grad_checkpointing=False, seq_len=512, micro_batch=4, **_IMG)),
]
_M3 = dict(image_size="1024x768")
#: Mistral-Small-3.1 with an image (1024x768: 4,144 patches, 1,064 tokens; 1540x1540: the largest,
#: 12,100 patches): LoRA with and without checkpointing, full bf16 training, eager attention, and
#: four images run as one tower sequence (two per sample at micro-batch 2; at 1540x1540 its block
#: mask alone is 48,400² bf16, 4.4 GiB, held by the checkpoints)
MISTRAL3_GRID = [
    ("mistral-small-3.1-24b", dict(method="lora", seq_len=512, **_M3)),
    ("mistral-small-3.1-24b", dict(method="lora", seq_len=512, image_size="1540x1540")),
    ("mistral-small-3.1-24b", dict(method="lora", grad_checkpointing=False, seq_len=1024, **_M3)),
    ("mistral-small-3.1-24b", dict(method="full", precision="bf16", seq_len=512, **_M3)),
    (
        "mistral-small-3.1-24b",
        dict(method="lora", grad_checkpointing=False, seq_len=1024, micro_batch=2, images_per_sample=2, **_M3),
    ),
    ("mistral-small-3.1-24b", dict(method="lora", grad_checkpointing=False, seq_len=512, attention="eager", **_M3)),
    (
        "mistral-small-3.1-24b",
        dict(method="lora", seq_len=512, micro_batch=2, images_per_sample=2, image_size="1540x1540"),
    ),
]
VLM_MODELS = ("gemma-3-4b", "mistral-small-3.1-24b")
VLM_GRID = [*GEMMA3_GRID, *MISTRAL3_GRID]


def test_gemma3_reads_the_sparse_text_config_with_its_class_defaults() -> None:
    spec = load_model("gemma-3-4b")
    # the 4B's text_config names neither heads nor vocabulary: Gemma3TextConfig's 8/4, 256, 262,208
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.vocab_size) == (8, 4, 256, 262_208)
    assert spec.tie_word_embeddings and spec.norm_scale_fp32 and spec.qk_norm and spec.norms_per_layer == 4
    assert (spec.sliding_layers, spec.sliding_window) == (29, 1024)  # 34 layers, every sixth global
    assert spec.attentions == ("eager", "sdpa") and spec.image_mask_every_layer
    big = load_model("gemma-3-27b")
    assert (big.num_heads, big.num_kv_heads, big.head_dim) == (32, 16, 128)


def test_gemma3_siglip_tower_and_pooling_projector() -> None:
    v = load_model("gemma-3-12b").vision
    assert v is not None and v.kind == "siglip" and (v.depth, v.hidden_size, v.intermediate_size) == (27, 1152, 4304)
    assert (v.image_size, v.patch_size, v.pos_rows, v.num_queries) == (896, 14, 4096, 256)
    assert not v.gated_mlp and v.norm == "layernorm" and v.out_hidden_size == 3840
    counts = param_counts(load_model("gemma-3-12b"))
    # patch conv (3·14²·1152 + 1152), positions 4096·1152, 27 blocks, post_layernorm
    block = 4 * (1152 * 1152 + 1152) + 2 * 1152 * 4304 + 4304 + 1152 + 2 * 2 * 1152
    assert counts.vision == 3 * 196 * 1152 + 1152 + 4096 * 1152 + 27 * block + 2 * 1152
    assert counts.projector == 1152 + 1152 * 3840  # mm_soft_emb_norm, mm_input_projection_weight
    assert counts.total == 12_187_325_040


def test_gemma3_images_are_256_tokens_whatever_their_size() -> None:
    spec = load_model("gemma-3-4b")
    for size in ("896x896", "1920x1080", "300x200"):
        assert vision.image_grid(spec, make_setup(method="lora", image_size=size)) == (4096, 256)
    assert vision.image_tokens(spec, make_setup(method="lora", image_size="640x480", images_per_sample=3)) == 768


def test_gemma3_images_mask_every_layer_under_sdpa() -> None:
    spec = load_model("gemma-3-4b")
    text = make_setup(method="lora", grad_checkpointing=False, seq_len=768)
    images = text.model_copy(update={"images_per_sample": 1, "image_size": "896x896"})
    assert window_mask_bytes(spec, text) == 0  # below the window, text alone passes no mask
    assert window_mask_bytes(spec, images) == 2 * 768 * 768  # every layer: A·b·s² each
    assert window_kv_repeat_bytes(spec, images) == 2 * 2 * 768 * (2048 - 1024)
    assert window_mask_bytes(spec, images.model_copy(update={"attention": "eager"})) == 0
    held = images.model_copy(update={"grad_checkpointing": True, "micro_batch": 2})
    assert window_mask_held_bytes(spec, held) == 2 * 2 * 768 * 768  # global and sliding block masks
    # the text-only 1B keeps masking only its sliding layers past its 512-token window
    assert window_mask_bytes(load_model("gemma-3-1b"), text) == 2 * 768 * 768 * 22 // 26


def test_gemma3_12b_plans_text_only_and_with_images() -> None:
    text = plan("google/gemma-3-12b-it", gpu="4090")
    img = plan("google/gemma-3-12b-it", gpu="4090", method=text.setup.method, image_size="1024x768")
    assert text.total_params == img.total_params == 12_187_325_040
    assert "vision_forward" in img.phases and "vision_forward" not in text.phases
    with pytest.raises(VramplanError, match="flash-attn-2"):
        plan("gemma-3-4b", gpu="4090", method="lora", attention="flash-attn-2")


def test_gemma3_images_cost_memory() -> None:
    spec = load_model("gemma-3-4b")
    text = estimate(spec, make_setup(method="lora", seq_len=1024))
    img = estimate(spec, make_setup(method="lora", seq_len=1024, image_size="896x896"))
    assert img.allocated_bytes > text.allocated_bytes


def test_mistral3_reads_the_mistral_text_model_and_pixtral() -> None:
    spec = load_model("mistral-small-3.1-24b")
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (
        5120,
        40,
        32,
        8,
        128,
    )
    assert spec.sliding_layers == 0 and spec.model_type == "mistral3" and spec.transformers_module == "mistral3"
    v = spec.vision
    assert v is not None and v.kind == "pixtral" and (v.depth, v.hidden_size, v.intermediate_size) == (24, 1024, 4096)
    assert v.gated_mlp and v.norm == "rmsnorm" and v.pre_norm and not v.patch_bias and v.longest_edge == 1540
    counts = param_counts(spec)
    block = 4 * 1024 * 1024 + 3 * 1024 * 4096 + 2 * 1024
    assert counts.vision == 3 * 14 * 14 * 1024 + 1024 + 24 * block  # patch_conv, ln_pre, blocks
    assert counts.projector == 1024 + 4 * 1024 * 1024 + 1024 * 5120 + 5120 * 5120  # norm, merger, linear_1/2


def test_mistral3_ties_its_head_by_the_transformers_version() -> None:
    from vramplan.arch import for_transformers

    spec = load_model("mistral-small-3.2-24b")
    assert spec.transformers == 5 and spec.tie_word_embeddings
    assert param_counts(spec).total == 23_340_272_640  # transformers 5.25's meta-device model
    t4 = for_transformers(spec, 4)
    assert not t4.tie_word_embeddings and param_counts(t4).total == 24_011_361_280  # 4.57.6's, the checkpoint's
    p = plan("mistral-small-3.1-24b", gpu="h100", method="lora", transformers=4)
    note = next(n for n in p.notes if n.code == "stack.transformers")
    assert "lm_head apart" in note.text and p.total_params == 24_011_361_280


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ("1024x768", (56 * 74, 28 * 37 + 28)),  # 784 x 1036 after rounding up to 28: 28 rows of 37
        ("1540x1540", (110 * 110, 55 * 55 + 55)),  # the longest edge itself: 55 x 55 tokens
        ("3000x2000", (110 * 74, 55 * 37 + 37)),  # scaled down to 1540 x 1026, rounded to 1540 x 1036
        ("100x50", (4 * 8, 2 * 4 + 2)),  # never scaled up: 56 x 112
    ],
)
def test_pixtral_resizes_to_fit_the_longest_edge_and_breaks_each_row(size: str, grid: tuple[int, int]) -> None:
    spec = load_model("mistral-small-3.1-24b")
    assert vision.image_grid(spec, make_setup(method="lora", image_size=size)) == grid


def test_pixtral_runs_the_micro_batch_images_as_one_masked_sequence() -> None:
    spec = load_model("mistral-small-3.1-24b")
    one = make_setup(method="lora", image_size="1024x768")
    four = one.model_copy(update={"micro_batch": 2, "images_per_sample": 2})
    assert vision.block_mask_bytes(spec, one) == 4144**2 * 2
    assert vision.block_mask_bytes(spec, four) == (4 * 4144) ** 2 * 2  # one sequence, not four
    assert vision.block_mask_bytes(spec, one.model_copy(update={"attention": "flash-attn-2"})) == 0
    assert vision.block_mask_bytes(load_model("gemma-3-4b"), one) == 0
    # under checkpointing the layers' shared mask and the projector's inputs stay held
    assert vision.saved_bytes(spec, one) > 24 * 4144 * 1024 * 2 + 4144**2 * 2


@pytest.mark.trace
@pytest.mark.parametrize("model", ["gemma-3-4b", "mistral-small-3.1-24b"])
def test_a_tiny_vlm_step_traced_equals_its_real_cpu_run(model: str) -> None:
    """The fake-tensor trace with images (trace/vlm_fixed.py) against the same step run for real
    on the CPU, on the family's config cut to two tiny layers: the batch layouts are what the
    model accepts, and the fake run counts what the real one allocates."""
    pytest.importorskip("torch")
    import json

    from vramplan.models import load_config
    from vramplan.trace.run import trace

    _, cfg = load_config(model)
    text = dict(
        cfg["text_config"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=512,
        sliding_window=8 if "gemma" in model else None,
    )
    vis = dict(
        cfg["vision_config"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
    )
    tiny = dict(cfg, text_config=text, vision_config=vis)
    if "gemma" in model:
        tiny.update(image_token_index=500, boi_token_index=498, eoi_token_index=499)
        vis.update(image_size=56, patch_size=14)
        tiny.update(mm_tokens_per_image=4)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(tiny))
        setup = make_setup(method="lora", seq_len=16, image_size="60x40", precision="fp32", lora_dropout=0.0)
        fake = trace(str(path), setup, steps=2, keep_timeline=False)
        real = trace(str(path), setup, steps=2, fake=False, keep_timeline=False)
    # the real run also counts the integer inputs (ids, token types: 8 bytes a token, a few hundred
    # bytes here), which the fake run hands over as fakes of real tensors; nothing else differs
    assert 0 <= real.peak_bytes - fake.peak_bytes <= 2 * 8 * 64


@pytest.mark.parametrize(
    ("model", "change", "field"),
    [
        ("gemma-3-4b", {"vision_config": {"vision_use_head": True}}, "vision_config.vision_use_head"),
        ("gemma-3-4b", {"mm_tokens_per_image": 200}, "mm_tokens_per_image"),  # no square side
        ("gemma-3-4b", {"mm_tokens_per_image": 9}, "mm_tokens_per_image"),  # 3 does not divide 64
        ("gemma-3-4b", {"vision_config": None}, "config.json"),
        ("mistral-small-3.1-24b", {"vision_feature_layer": [-1, -2]}, "vision_feature_layer"),
        ("mistral-small-3.1-24b", {"text_config": {"model_type": "ministral3"}}, "text_config.model_type"),
    ],
)
def test_what_the_vlm_readers_cannot_read_is_one_line(model: str, change: dict, field: str) -> None:
    from vramplan.arch import spec_from_config
    from vramplan.models import load_config

    _, cfg = load_config(model)
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    with pytest.raises(VramplanError) as err:
        spec_from_config(cfg, model)
    assert err.value.field == field and "\n" not in str(err.value)
