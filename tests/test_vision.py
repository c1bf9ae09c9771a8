"""Images in VLM plans: token counts as the models compute them, and the tower's terms."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.errors import VramplanError
from vramplan.memory import estimate, vision
from vramplan.models import load_model
from vramplan.setup import make_setup


@pytest.mark.parametrize("hw", [(1024, 1024), (768, 1366), (20, 30), (4000, 3000), (448, 448)])
@pytest.mark.trace
def test_smart_resize_is_transformers_own(hw: tuple[int, int]) -> None:
    # the PIL image processor carries a copy of smart_resize without needing torchvision
    ref = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    assert vision.smart_resize(*hw) == ref.smart_resize(*hw, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)


def test_image_tokens() -> None:
    q2 = load_model("qwen2-vl-7b")
    s = make_setup(method="lora", image_size="1024x1024")
    assert s.images_per_sample == 1
    # 1024x1024 is above 28*28*1280 pixels: resized to 980x980 = 70x70 patches, 2x2 merged
    assert vision.image_grid(q2, s) == (4900, 1225)
    qvl = load_model("qwen-vl-chat")
    assert vision.image_grid(qvl, make_setup(method="lora", images_per_sample=2)) == (1024, 256)
    assert vision.image_tokens(qvl, make_setup(method="lora", images_per_sample=2)) == 512


def test_images_cost_memory_and_a_trained_tower_more() -> None:
    spec = load_model("qwen2-vl-2b")
    text = estimate(spec, make_setup(method="lora", seq_len=1024))
    img = estimate(spec, make_setup(method="lora", seq_len=1024, image_size="1024x1024"))
    assert img.allocated_bytes > text.allocated_bytes and "vision_forward" in img.phases
    eager = estimate(spec, make_setup(method="lora", seq_len=1024, image_size="1024x1024", attention="eager"))
    assert eager.phases["vision_forward"] > img.phases["vision_forward"]
    full = estimate(spec, make_setup(method="full", seq_len=1024, image_size="1024x1024", grad_checkpointing=False))
    assert full.terms.get("vision/saved", 0) > 0


def test_images_need_a_vlm_and_a_valid_size() -> None:
    with pytest.raises(VramplanError, match="no vision tower"):
        plan("qwen2.5-7b", gpu="4090", image_size="512x512")
    with pytest.raises(VramplanError, match="WIDTHxHEIGHT"):
        make_setup(image_size="big")


def test_plan_names_the_image_terms() -> None:
    p = plan("qwen2-vl-7b", gpu="a100-80g", method="lora", image_size="1024x1024")
    note = next(n.text for n in p.notes if n.text.startswith("images:"))
    assert "4,900 ViT patches" in note and "1,225 language-model tokens" in note and "frozen" in note


@pytest.mark.parametrize(
    "fields",
    [
        dict(method="lora", seq_len=512, image_size="1024x1024"),
        dict(method="lora", seq_len=1024, image_size="800x600", images_per_sample=2, micro_batch=2),
    ],
    ids=["lora-1024px", "lora-2x2-images"],
)
@pytest.mark.trace
def test_qwen2_vl_trace_with_images_agrees(fields: dict) -> None:
    """The real transformers Qwen2-VL class, run under fake tensors with pixel inputs of the
    given size: the estimate holds the exactness bound (3%)."""
    pytest.importorskip("torch")
    from vramplan.memory.phases import traceable_bytes
    from vramplan.trace.run import trace

    setup = make_setup(**fields)
    traced = trace("qwen2-vl-2b", setup, steps=2, keep_timeline=False)
    est = traceable_bytes(estimate(load_model("qwen2-vl-2b"), setup))
    assert abs(est - traced.peak_bytes) / traced.peak_bytes <= 0.03
