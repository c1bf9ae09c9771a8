"""The vision-language families added for issue 20: Gemma 3 multimodal (arch/gemma3.py
``read_multimodal``). What each reader takes from its config, how many tokens an image becomes,
and the configurations traced with images (``VLM_GRID``), which tests/test_family_traces.py
holds with the other families' (recorded by ``python benchmarks/trace_families.py --model M``
into tables/measured/traces.jsonl, one re-traced a day in the trace tier)."""

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
#: past it), full bf16 training, and two images per sample at micro-batch 2
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
]
VLM_MODELS = ("gemma-3-4b",)
VLM_GRID = [*GEMMA3_GRID]


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
