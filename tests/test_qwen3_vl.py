"""Qwen3-VL, dense and MoE (arch/qwen3_vl.py): what the reader takes from its config, the
parameter counts against the released checkpoints, the image processor's grid, and the estimate
against fake-tensor traces of the family's catalog models with images.

The traces (QWEN3_VL_GRID) are recorded by ``python benchmarks/trace_families.py`` into
tables/measured/traces.jsonl as part of tests/test_family_traces.py's FAMILY_GRID, which holds
every recorded row within its bounds and re-traces a rotating one a day."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.arch import for_transformers
from vramplan.errors import VramplanError
from vramplan.memory import estimate, vision
from vramplan.models import catalog_sources, load_model
from vramplan.params import param_counts
from vramplan.setup import make_setup

#: the dense 2B, 4B and 8B and the MoE 30B-A3B with images, LoRA with and without checkpointing and
#: full fine-tuning (the harness traces VLMs in 16/32 bits: no QLoRA);
#: LoRA on the MoE's attention, as plans default for experts
_MOE_LORA = dict(lora_targets="q_proj,k_proj,v_proj,o_proj")
QWEN3_VL_GRID = [
    # a trained tower, nothing checkpointed: its blocks' and mergers' saved tensors (VisionSpec.block_saved_hidden)
    (
        "qwen3-vl-2b",
        dict(method="full", precision="bf16", grad_checkpointing=False, seq_len=512, image_size="1024x1024"),
    ),
    # a 2048x2048 image (16,384 patches): a frozen checkpointed tower keeps nothing (no input-grad hook,
    # VisionSpec.input_embeds_hooked), and eager attention's 16 x 16,384² scores peak in the tower's forward
    ("qwen3-vl-2b", dict(method="lora", seq_len=256, image_size="2048x2048")),
    ("qwen3-vl-2b", dict(method="lora", seq_len=256, image_size="2048x2048", attention="eager")),
    ("qwen3-vl-4b", dict(method="lora", seq_len=512, image_size="512x512")),
    ("qwen3-vl-4b", dict(method="lora", grad_checkpointing=False, seq_len=1024, image_size="1024x1024")),
    ("qwen3-vl-4b", dict(method="full", precision="bf16", seq_len=512, image_size="512x512")),
    ("qwen3-vl-8b", dict(method="lora", seq_len=1024, image_size="1024x1024")),
    # the smallest: two images a sample, two samples a micro-batch, nothing checkpointed
    (
        "qwen3-vl-2b",
        dict(method="lora", grad_checkpointing=False, micro_batch=2, image_size="800x600", images_per_sample=2),
    ),
    ("qwen3-vl-30b-a3b", dict(method="lora", seq_len=1024, image_size="1024x1024", **_MOE_LORA)),
    ("qwen3-vl-30b-a3b", dict(method="lora", grad_checkpointing=False, seq_len=512, image_size="512x512", **_MOE_LORA)),
    ("qwen3-vl-30b-a3b", dict(method="lora", seq_len=2048, image_size="800x600", images_per_sample=2, **_MOE_LORA)),
    ("qwen3-vl-30b-a3b", dict(method="full", precision="bf16", seq_len=512, image_size="512x512")),
]
QWEN3_VL_MODELS = ("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b", "qwen3-vl-30b-a3b")

#: parameters in the released safetensors (each source.json's published_params and its source)
CHECKPOINT_PARAMS = {
    "qwen3-vl-8b": 8_767_123_696,
    "qwen3-vl-30b-a3b": 31_070_754_032,
    "qwen3-vl-235b-a22b": 235_670_022_896,
}


@pytest.mark.parametrize(("name", "total"), sorted(CHECKPOINT_PARAMS.items()))
def test_counts_equal_the_released_checkpoints(name: str, total: int) -> None:
    assert param_counts(load_model(name)).total == total
    assert catalog_sources()[name].published_params == total


def test_the_language_model_is_qwen3_and_the_top_level_flag_ties_the_head() -> None:
    spec = load_model("qwen3-vl-8b")
    assert spec.qk_norm and spec.qk_norm_shapes == (128, 128) and spec.norms_per_layer == 2
    assert not any(lin.bias for lin in spec.attention + spec.mlp)
    assert (spec.hidden_size, spec.num_layers, spec.num_kv_heads, spec.vocab_size) == (4096, 36, 8, 151936)
    assert not spec.tie_word_embeddings and spec.transformers_module == "qwen3_vl"
    assert load_model("qwen3-vl-4b").tie_word_embeddings
    # the 235B config (a transformers re-save) writes the text class's default tie true under a top-level false
    big = load_model("qwen3-vl-235b-a22b")
    assert not big.tie_word_embeddings and param_counts(big).lm_head == 151936 * 4096


def test_the_vision_tower_has_a_position_table_deepstack_and_a_biased_patch_embed() -> None:
    v = load_model("qwen3-vl-8b").vision
    assert v is not None and v.kind == "qwen3-vl"
    assert (v.depth, v.hidden_size, v.intermediate_size, v.patch_size) == (27, 1152, 4304, 16)
    assert v.deepstack_layers == (8, 16, 24) and v.pos_embed_rows == 2304 and v.patch_bias
    assert not v.gated_mlp and v.norm == "layernorm" and not v.videos
    assert load_model("qwen3-vl-4b").vision.deepstack_layers == (5, 11, 17)  # type: ignore[union-attr]
    counts = param_counts(load_model("qwen3-vl-8b"))
    # merger: LayerNorm(1152) + 4608x4608 + 4608 + 4608x4096 + 4096
    assert counts.projector == 2 * 1152 + 4608 * 4608 + 4608 + 4608 * 4096 + 4096
    # patch 3*2*16*16*1152 + 1152 bias, pos 2304*1152, 27 blocks, 3 DeepStack mergers over 4608
    block = 1152 * 3456 + 3456 + 1152 * 1152 + 1152 + 2 * (1152 * 4304) + 4304 + 1152 + 4 * 1152
    deepstack = 2 * 4608 + 4608 * 4608 + 4608 + 4608 * 4096 + 4096
    assert counts.vision == 1536 * 1152 + 1152 + 2304 * 1152 + 27 * block + 3 * deepstack


def test_the_moe_text_model_has_fused_experts_in_both_transformers_majors() -> None:
    spec = load_model("qwen3-vl-30b-a3b")
    assert spec.moe is not None and spec.transformers == 5
    assert (spec.moe.num_experts, spec.moe.experts_per_token, spec.moe.expert_intermediate_size) == (128, 8, 768)
    assert len(spec.moe.layers) == 48 and spec.transformers_module == "qwen3_vl_moe"
    assert [lin.name for lin in spec.moe_mlp] == ["gate", "experts.gate_up_proj", "experts.down_proj"]
    assert not any(lin.nn_linear for lin in spec.moe_mlp)
    t4 = for_transformers(spec, 4)
    # 4.57: an nn.Linear router beside the same fused expert parameters
    assert t4.transformers == 4 and [(lin.name, lin.nn_linear) for lin in t4.moe_mlp] == [
        ("gate", True),
        ("experts.gate_up_proj", False),
        ("experts.down_proj", False),
    ]
    assert param_counts(t4).total == param_counts(spec).total
    assert for_transformers(t4, 5) == spec


@pytest.mark.parametrize(
    ("size", "grid"),
    [
        ("1024x1024", (4096, 1024)),  # 64 x 64 patches of 16
        ("800x600", (1900, 475)),  # resized to 800 x 608: 50 x 38 patches
        ("100x100", (256, 64)),  # below 65,536 pixels: up to 256 x 256
        ("8000x6000", (64680, 16170)),  # above 16,777,216 pixels: down to 4704 x 3520
    ],
)
def test_images_are_resized_within_qwen3_vl_bounds(size: str, grid: tuple[int, int]) -> None:
    spec = load_model("qwen3-vl-8b")
    assert vision.image_grid(spec, make_setup(method="lora", image_size=size)) == grid


@pytest.mark.parametrize("hw", [(1024, 1024), (600, 800), (100, 100), (6000, 8000), (20, 3000)])
@pytest.mark.trace
def test_resize_is_transformers_own_with_the_released_bounds(hw: tuple[int, int]) -> None:
    ref = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    spec = load_model("qwen3-vl-8b")
    ours = vision.resized_image(spec, make_setup(method="lora", image_size=f"{hw[1]}x{hw[0]}"))
    assert ours == ref.smart_resize(*hw, factor=32, min_pixels=65536, max_pixels=16777216)


def test_videos_are_refused_and_images_planned() -> None:
    with pytest.raises(VramplanError, match="images only"):
        estimate(load_model("qwen3-vl-8b"), make_setup(method="lora", video_frames=8))
    p = plan("Qwen/Qwen3-VL-8B-Instruct", gpu="4090", method="qlora", image_size="1024x1024")
    note = next(n.text for n in p.notes if n.text.startswith("images:"))
    assert "4,096 ViT patches" in note and "1,024 language-model tokens" in note
    assert p.fits


def test_the_stack_note_says_the_experts_stay_fused_under_transformers_4() -> None:
    p = plan("qwen3-vl-30b-a3b", gpu="h100", method="qlora", image_size="1024x1024", transformers=4)
    note = next(n.text for n in p.notes if n.code == "stack.transformers")
    assert note.startswith("transformers 4 (as given): experts fused") and "router an nn.Linear" in note
    text_moe = plan("qwen3-30b-a3b", gpu="h100", method="qlora", transformers=4)
    assert "per-expert nn.Linear" in next(n.text for n in text_moe.notes if n.code == "stack.transformers")


def _tiny(model_type: str) -> dict:
    """A tiny Qwen3-VL (three decoder layers, a three-block tower, DeepStack from blocks 0 and 1)."""
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4}
    text.update(num_key_value_heads=2, head_dim=16, vocab_size=1000)
    text["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    if model_type == "qwen3_vl_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    tower = {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
    tower.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    ids = {"image_token_id": 900, "video_token_id": 901, "vision_start_token_id": 902, "vision_end_token_id": 903}
    return {"model_type": model_type, "text_config": text, "vision_config": tower, **ids}


@pytest.mark.trace
@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_moe"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_fake_trace_takes_the_real_code_path(tmp_path, model_type: str, method: str) -> None:
    """A tiny Qwen3-VL run for real on the CPU with images against its fake-tensor trace: the fixed
    position-table taps and DeepStack rows keep the real path (the real run allocates some KiB
    more at its peak, as the same harness does for Qwen2-VL)."""
    pytest.importorskip("peft")
    import json

    import torch

    from vramplan.trace.run import trace

    path = tmp_path / "config.json"
    path.write_text(json.dumps(_tiny(model_type)))
    targets = dict(lora_targets="q_proj,k_proj,v_proj,o_proj") if method == "lora" else dict(precision="bf16")
    setup = make_setup(
        method=method, seq_len=32, micro_batch=2, image_size="300x200", grad_checkpointing=False, **targets
    )
    fake = trace(str(path), setup, steps=2, keep_timeline=False)
    torch.manual_seed(0)
    real = trace(str(path), setup, steps=2, keep_timeline=False, fake=False)
    assert fake.baseline_bytes == real.baseline_bytes
    traced, ran = fake.peak_bytes - fake.baseline_bytes, real.peak_bytes - real.baseline_bytes
    assert 0 <= ran - traced <= 0.005 * ran, (traced, ran)


def test_a_frozen_tower_keeps_nothing_under_checkpointing_and_eager_scores_cost_a_plus_8_bytes() -> None:
    spec = load_model("qwen3-vl-2b")
    lora = make_setup(method="lora", seq_len=256, image_size="2048x2048")
    n = 16384  # 128 x 128 patches of 16
    assert vision.image_grid(spec, lora) == (n, n // 4)
    # no input-grad hook on Qwen3-VL's tower: its checkpointed blocks hold no input
    assert vision.saved_bytes(spec, lora) == 0
    assert vision.saved_bytes(load_model("qwen2-vl-2b"), lora) > 0  # Qwen2-VL's patch_embed is hooked
    # the trained tower holds them: 24 block inputs, one block recomputed, the mergers
    full = lora.model_copy(update={"method": "full", "precision": "bf16"})
    block = 11 * n * 1024 * 2 + 2 * n * 4096 * 2
    assert vision.saved_bytes(spec, full) == 24 * n * 1024 * 2 + block + (4 + 3 * 3) * n * 1024 * 2
    eager = lora.model_copy(update={"attention": "eager"})
    assert vision.forward_transient_bytes(spec, eager) == 5 * n * 1024 * 2 + 16 * n * n * (2 + 8)
