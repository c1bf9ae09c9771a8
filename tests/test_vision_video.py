"""Videos in a VLM plan: frames grouped in pairs, each pair one grid step of the ViT and a
run of language-model tokens; the grid agrees with transformers' own Qwen2-VL video
processor, and the CLI says what the video costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vramplan import plan
from vramplan.emit import emit
from vramplan.errors import VramplanError
from vramplan.memory import vision
from vramplan.models import load_model
from vramplan.setup import make_setup

CASES = [(16, "640x360"), (7, "448x448"), (8, "1280x720"), (4, "224x160")]

# run in the environment with torchvision (Qwen2-VL's video processor needs it): the grid per video
PROCESSOR = r"""
import json, sys
import numpy as np
from transformers import Qwen2VLVideoProcessor
p = Qwen2VLVideoProcessor()
out = {}
for frames, size in json.loads(sys.argv[1]):
    w, h = (int(x) for x in size.split("x"))
    grid = p(videos=[np.zeros((frames, h, w, 3), dtype=np.uint8)], return_tensors="pt", do_sample_frames=False)
    out[f"{frames}:{size}"] = grid["video_grid_thw"].tolist()[0]
print(json.dumps(out))
"""


@pytest.mark.e2e
def test_video_grid_matches_the_video_processor() -> None:
    python = os.environ.get("VRAMPLAN_VISION_PYTHON", "")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("CI runs this test: .ci/run sets VRAMPLAN_VISION_PYTHON")
        pytest.skip("VRAMPLAN_VISION_PYTHON (python with torch + torchvision + transformers) is not set")
    r = subprocess.run([python, "-c", PROCESSOR, json.dumps(CASES)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    real = json.loads(r.stdout.strip().splitlines()[-1])
    spec = load_model("qwen2-vl-2b")
    for frames, size in CASES:
        steps, patches, tokens = vision.video_grid(
            spec, make_setup(method="lora", video_frames=frames, video_size=size)
        )
        t, h, w = real[f"{frames}:{size}"]
        assert (steps, patches, tokens) == (t, h * w, h * w // 4), (frames, size)


def test_a_video_counts_like_its_frame_pairs_as_images() -> None:
    """For memory a video of F frames is ceil(F/2) images of the resized frame: the same
    tokens, patches and tower terms (each pair is its own attention sequence)."""
    spec = load_model("qwen2-vl-2b")
    video = make_setup(method="lora", seq_len=512, video_frames=8, video_size="448x448")
    images = make_setup(method="lora", seq_len=512, images_per_sample=4, image_size="448x448")
    assert vision.image_tokens(spec, video) == vision.image_tokens(spec, images) == 4 * 256
    assert vision.pixel_bytes(spec, video) == vision.pixel_bytes(spec, images)
    assert vision.saved_bytes(spec, video) == vision.saved_bytes(spec, images)
    # frames past the per-frame cap are shrunk: the video processor caps a frame at 768 x 28 x 28 pixels
    big = make_setup(method="lora", video_frames=2, video_size="1920x1080")
    _, patches, _ = vision.video_grid(spec, big)
    assert patches * 14 * 14 <= vision.VIDEO_MAX_PIXELS


@pytest.mark.e2e
def test_cli_names_the_video_and_refuses_bad_input() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vramplan", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )

    r = cli("qwen2-vl-7b", "--gpu", "a100-80g", "--method", "lora", "--video-frames", "16", "--video-size", "640x360")
    assert r.returncode == 0, r.stderr
    assert "video: 16 frames of 640x360 = 8 frame pairs, 9,568 ViT patches and 2,392 language-model tokens" in r.stdout
    for args, field in (
        (["qwen2-vl-7b", "--video-size", "640x360"], "video_size"),  # frames missing
        (["qwen2-vl-7b", "--video-frames", "8", "--video-size", "640"], "video_size"),
        (["qwen-vl-chat", "--video-frames", "8"], "video_frames"),  # images only
        (["qwen2.5-7b", "--video-frames", "8"], "video_frames"),  # no vision tower
        (["qwen2-vl-7b", "--video-frames", "8", "--method", "inference"], "video_frames"),
    ):
        r = cli(*args, "--gpu", "4090")
        assert r.returncode == 2 and r.stderr.startswith(f"vramplan: error: {field}"), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


def test_video_plans_are_not_emitted() -> None:
    p = plan("qwen2-vl-2b", "4090", method="lora", seq_len=512, video_frames=8, video_size="448x448")
    with pytest.raises(VramplanError, match="videos is not emitted"):
        emit(p, "trl")


def test_freeze_flags_imply_full_and_take_the_tower_out_of_training() -> None:
    spec = load_model("qwen2-vl-2b")
    from vramplan.params import param_counts

    counts = param_counts(spec)
    base = dict(gpu="h100", seq_len=256, image_size="672x672", micro_batch=1, grad_checkpointing=True)
    full = plan("qwen2-vl-2b", method="full", **base)
    tower = plan("qwen2-vl-2b", freeze_vision=True, **base)
    both = plan("qwen2-vl-2b", freeze_vision=True, freeze_projector=True, **base)
    assert tower.setup.method == "full"
    assert full.trainable_params - tower.trainable_params == counts.vision
    assert tower.trainable_params - both.trainable_params == counts.projector
    assert tower.peak.device_bytes < full.peak.device_bytes
    with pytest.raises(VramplanError, match="freeze_vision"):
        plan("qwen2-vl-2b", method="lora", freeze_vision=True, **base)


def test_device_map_shares_out_only_the_trained_parts() -> None:
    """Split over two cards, the cards' gradients add up to the plan's, frozen tower or not."""
    from vramplan.memory.optimizer import gradient_bytes

    spec = load_model("qwen2-vl-2b")
    for flags in ({}, {"freeze_vision": True}, {"freeze_vision": True, "freeze_projector": True}):
        p = plan(
            "qwen2-vl-2b",
            "a100-80g",
            method="full",
            num_gpus=2,
            parallel="device_map",
            seq_len=256,
            image_size="448x448",
            micro_batch=1,
            **flags,
        )
        total = gradient_bytes(spec, p.setup)
        assert sum(c.terms.get("gradients", 0) for c in p.cards) <= total * 1.0001, flags


@pytest.mark.e2e
def test_review_refusals() -> None:
    for args, field in (
        (["qwen2-vl-2b", "--method", "lora", "--rl", "grpo", "--video-frames", "8"], "video_frames"),
        (["qwen2.5-7b", "--freeze-vision"], "freeze_vision"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "vramplan", *args, "--gpu", "4090"], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and r.stderr.startswith(f"vramplan: error: {field}"), (args, r.stderr)
