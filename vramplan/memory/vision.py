"""Images in a VLM training step: how many tokens they become, and the vision tower's memory.

- Qwen-VL: a fixed 448x448 input, 32x32 = 1024 patches in the ViT, resampled to
  ``num_queries`` (256) tokens for the language model (Qwen-VL ``visual.py``).
- Qwen2-VL / Qwen2.5-VL: the image is resized by transformers' ``smart_resize`` to sides
  divisible by patch x merge (28), its pixel count clamped to [56·56, 28·28·1280] (the
  image processor's default ``shortest_edge``/``longest_edge``); 14-pixel patches feed the
  ViT and every 2x2 of them merges into one language-model token.

The image tokens join the language model's sequence: ``seq_len`` counts the text, and the
language model runs ``seq_len + images_per_sample x tokens_per_image`` positions. A frozen
tower (LoRA/QLoRA/freeze: trainers keep the ViT frozen) runs without saving anything; its
largest forward temporary is counted in its own phase. A trained tower (full fine-tuning)
saves its activations until its backward, the last of the step.
"""

from __future__ import annotations

import math

from vramplan.errors import VramplanError
from vramplan.memory.policy import act_bytes
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: Qwen2-VL image processor defaults (transformers ``Qwen2VLImageProcessor.size``).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280


def smart_resize(height: int, width: int, factor: int = 28) -> tuple[int, int]:
    """transformers ``qwen2_vl.image_processing_qwen2_vl.smart_resize`` with its defaults."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > MAX_PIXELS:
        beta = math.sqrt((height * width) / MAX_PIXELS)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def parse_image_size(text: str) -> tuple[int, int]:
    """'1024x768' (width x height) -> (height, width)."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise VramplanError("image_size", f"{text!r}: write WIDTHxHEIGHT in pixels, like 1024x768") from None
    if w < 1 or h < 1:
        raise VramplanError("image_size", f"{text!r}: both sides must be positive")
    return h, w


def image_grid(spec: ModelSpec, setup: Setup) -> tuple[int, int]:
    """(ViT patches, language-model tokens) for one image."""
    v = spec.vision
    if v is None:
        raise VramplanError("images_per_sample", f"{spec.name} has no vision tower: images need a VLM")
    if v.kind == "qwen-vl":
        side = v.image_size // v.patch_size
        return side * side, v.num_queries
    h, w = parse_image_size(setup.image_size or "448x448")
    factor = v.patch_size * v.spatial_merge_size
    rh, rw = smart_resize(h, w, factor)
    patches = (rh // v.patch_size) * (rw // v.patch_size)
    return patches, patches // v.spatial_merge_size**2


def image_tokens(spec: ModelSpec, setup: Setup) -> int:
    """Language-model positions the images of one sample add."""
    if not setup.images_per_sample:
        return 0
    return setup.images_per_sample * image_grid(spec, setup)[1]


def _patches(spec: ModelSpec, setup: Setup) -> int:
    return setup.micro_batch * setup.images_per_sample * image_grid(spec, setup)[0]


def tower_trained(setup: Setup) -> bool:
    """Full fine-tuning trains the tower (and counts its parameters as trainable)."""
    return setup.method == "full"


def forward_transient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The largest temporary of one ViT block's forward over the micro-batch's patches:
    the MLP's up (and gate) projections and activation (n·I each), beside the block input,
    its norm and the qkv (5·n·d); eager attention adds a heads x n_img² score matrix and
    its fp32 softmax per image."""
    if not setup.images_per_sample:
        return 0
    v = spec.vision
    assert v is not None
    n = _patches(spec, setup)
    a = act_bytes(setup)
    mlp = (3 if v.gated_mlp else 2) * n * v.intermediate_size * a
    base = 5 * n * v.hidden_size * a
    attn = 0
    if setup.attention == "eager":
        per_image = image_grid(spec, setup)[0]
        attn = setup.micro_batch * setup.images_per_sample * v.num_heads * per_image**2 * (a + 4)
    return base + max(mlp, attn)


def pixel_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The processor's fp32 ``pixel_values`` (patches x channels·temporal·patch²), an input
    alive through the step."""
    if not setup.images_per_sample:
        return 0
    v = spec.vision
    assert v is not None
    return nbytes(_patches(spec, setup) * 3 * v.temporal_patch_size * v.patch_size**2, "fp32")


def saved_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Activations the tower keeps for the backward. Under gradient checkpointing (which
    transformers turns on for the tower's blocks too) every block's input is held by its
    checkpoint even when the tower is frozen (n·d per block); a trained tower adds one block
    recomputed. Without checkpointing a frozen tower keeps nothing, a trained one per block
    the inputs of its norms, qkv, attention output and projections (about 8·n·d) and the
    MLP's intermediates ((2 or 3)·n·I), plus eager attention's probabilities."""
    if not setup.images_per_sample:
        return 0
    v = spec.vision
    assert v is not None
    n = _patches(spec, setup)
    a = act_bytes(setup)
    per_block = 8 * n * v.hidden_size * a + (3 if v.gated_mlp else 2) * n * v.intermediate_size * a
    if setup.attention == "eager":
        per_image = image_grid(spec, setup)[0]
        per_block += setup.micro_batch * setup.images_per_sample * v.num_heads * per_image**2 * a
    if setup.grad_checkpointing:
        inputs = v.depth * n * v.hidden_size * a
        return inputs + (per_block if tower_trained(setup) else 0)
    return v.depth * per_block if tower_trained(setup) else 0
