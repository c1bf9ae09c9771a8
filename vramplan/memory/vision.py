"""Images in a VLM training step: how many tokens they become, and the vision tower's memory.

- Qwen-VL: a fixed 448x448 input, 32x32 = 1024 patches in the ViT, resampled to
  ``num_queries`` (256) tokens for the language model (Qwen-VL ``visual.py``).
- Qwen2-VL / Qwen2.5-VL: the image is resized by transformers' ``smart_resize`` to sides
  divisible by patch x merge (28), its pixel count clamped to [56·56, 28·28·1280] (the
  image processor's default ``shortest_edge``/``longest_edge``); 14-pixel patches feed the
  ViT and every 2x2 of them merges into one language-model token.
- Qwen3-VL: the same processor with 16-pixel patches (multiples of 32) within the released
  [65,536, 16,777,216] pixels (``VisionSpec.min_pixels``/``max_pixels``, arch/qwen3_vl.py).

A video (``video_frames`` sampled frames of ``video_size``) goes through the video
processor: each frame resized the same way within its per-frame bounds [128·28·28,
768·28·28] (``Qwen2VLVideoProcessor.size``), the frames padded to a multiple of
``temporal_patch_size`` (2) and grouped in pairs; each pair is one grid step whose patches
hold both frames, attended as its own sequence in the ViT (``cu_seqlens`` per temporal
step), so for memory a video of F frames is ceil(F/2) images of the frame size.

The image (and video) tokens join the language model's sequence: ``seq_len`` counts the text, and the
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
#: Qwen2-VL video processor per-frame defaults (transformers ``Qwen2VLVideoProcessor.size``).
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """transformers ``qwen2_vl.image_processing_qwen2_vl.smart_resize`` (image defaults)."""
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def longest_edge_resize(height: int, width: int, longest: int, factor: int) -> tuple[int, int]:
    """transformers 5.25 ``pixtral.image_processing_pil_pixtral.get_resize_output_image_size`` with
    ``size=(longest, longest)`` and ``patch_size=factor`` (PixtralProcessor passes patch x merge):
    scaled down (floor) when a side is over ``longest``, never up, each side then rounded up to a
    multiple of ``factor``."""
    ratio = max(height / longest, width / longest)
    if ratio > 1:
        height, width = int(math.floor(height / ratio)), int(math.floor(width / ratio))
    return ((height - 1) // factor + 1) * factor, ((width - 1) // factor + 1) * factor


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
    if v.image_size:  # a fixed resolution, resampled to num_queries tokens (Qwen-VL)
        side = v.image_size // v.patch_size
        return side * side, v.num_queries
    h, w = parse_image_size(setup.image_size or "448x448")
    factor = v.patch_size * v.spatial_merge_size
    if v.longest_edge:  # the aspect kept, scaled down to fit (Pixtral); a break token ends each row
        rh, rw = longest_edge_resize(h, w, v.longest_edge, factor)
        rows, cols = rh // factor, rw // factor
        return (rh // v.patch_size) * (rw // v.patch_size), rows * cols + (rows if v.row_break_tokens else 0)
    rh, rw = resized_image(spec, setup)
    patches = (rh // v.patch_size) * (rw // v.patch_size)
    return patches, patches // v.spatial_merge_size**2


def resized_image(spec: ModelSpec, setup: Setup) -> tuple[int, int]:
    """(height, width) of ``setup.image_size`` after the family's image processor resizes it:
    multiples of patch x merge within its pixel bounds (``VisionSpec.min_pixels``/``max_pixels``,
    Qwen3-VL's; unset: Qwen2-VL's defaults)."""
    v = spec.vision
    assert v is not None
    h, w = parse_image_size(setup.image_size or "448x448")
    factor = v.patch_size * v.spatial_merge_size
    return smart_resize(h, w, factor, v.min_pixels or MIN_PIXELS, v.max_pixels or MAX_PIXELS)


def video_grid(spec: ModelSpec, setup: Setup) -> tuple[int, int, int]:
    """(temporal steps, ViT patches per step, language-model tokens per step) for one video:
    the frames padded to a multiple of ``temporal_patch_size``, each step one resized frame's
    patches (two frames per patch)."""
    v = spec.vision
    if v is None:
        raise VramplanError("video_frames", f"{spec.name} has no vision tower: videos need a VLM")
    if not v.videos:
        raise VramplanError(
            "video_frames", f"{spec.name} takes images only here: videos are planned for Qwen2-VL and Qwen2.5-VL"
        )
    h, w = parse_image_size(setup.video_size or "448x448")
    factor = v.patch_size * v.spatial_merge_size
    rh, rw = smart_resize(h, w, factor, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    patches = (rh // v.patch_size) * (rw // v.patch_size)
    steps = -(-setup.video_frames // max(v.temporal_patch_size, 1))
    return steps, patches, patches // v.spatial_merge_size**2


def media(spec: ModelSpec, setup: Setup) -> list[tuple[int, int, int]]:
    """(how many per sample, ViT patches each, language-model tokens each) for the sample's
    images and its video's temporal steps: what the tower runs and the language model reads."""
    out = []
    if setup.images_per_sample:
        patches, tokens = image_grid(spec, setup)
        out.append((setup.images_per_sample, patches, tokens))
    if setup.video_frames:
        steps, patches, tokens = video_grid(spec, setup)
        out.append((steps, patches, tokens))
    return out


def image_tokens(spec: ModelSpec, setup: Setup) -> int:
    """Language-model positions the images (and video) of one sample add."""
    return sum(n * tokens for n, _, tokens in media(spec, setup))


def _patches(spec: ModelSpec, setup: Setup) -> int:
    return setup.micro_batch * sum(n * patches for n, patches, _ in media(spec, setup))


def _attention_squares(spec: ModelSpec, setup: Setup) -> int:
    """Sum over the micro-batch's attention sequences of their length squared (each image,
    and each temporal step of a video, is its own sequence in the ViT; a tower that runs the
    micro-batch's images as one sequence (``one_sequence``) squares their total)."""
    assert spec.vision is not None
    if spec.vision.one_sequence:
        return _patches(spec, setup) ** 2
    return setup.micro_batch * sum(n * patches**2 for n, patches, _ in media(spec, setup))


def block_mask_bytes(spec: ModelSpec, setup: Setup) -> int:
    """A tower that runs the micro-batch's images as one sequence builds one float mask of that
    sequence's length squared in its own dtype, 0 within an image and the dtype's minimum between
    images (Pixtral ``generate_block_attention_mask``), which every block's attention reads."""
    v = spec.vision
    if not setup.has_media or v is None or not v.one_sequence or setup.attention == "flash-attn-2":
        return 0  # flash attention: cu_seqlens instead of a mask
    return _patches(spec, setup) ** 2 * act_bytes(setup)


def tower_trained(setup: Setup) -> bool:
    """Full fine-tuning trains the tower (and counts its parameters as trainable), unless it
    keeps it frozen (``freeze_vision``)."""
    return setup.method == "full" and not setup.freeze_vision


def projector_only_saved_bytes(spec: ModelSpec, setup: Setup) -> int:
    """A trained projector behind a frozen tower: the patch merger's LayerNorm input and
    statistics, both MLP linears' inputs and the GELU's input, about 4·n·d (n patches of
    width d; its first linear sees n/4 rows of 4·d). With the tower trained these are part
    of its own saved activations."""
    if not setup.has_media or setup.method != "full" or tower_trained(setup) or setup.freeze_projector:
        return 0
    v = spec.vision
    assert v is not None
    n = _patches(spec, setup)
    return 4 * n * v.hidden_size * act_bytes(setup) + 8 * n


def merge_mlp_saved_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Mistral 3's frozen projector under gradient checkpointing, where the tower's output needs a
    gradient (its block inputs do, as PEFT's input hooks make them): the RMSNorm's fp32 input and
    statistics (4·n·d + 4·n) and the GELU's input, one merged token per m² patches (A·n/m²·out).
    The linears, frozen, save nothing. Traced on Mistral-Small-3.1 with a 1540x1540 image."""
    v = spec.vision
    if v is None or v.projector != "merge_mlp" or not setup.has_media or tower_trained(setup):
        return 0
    n = _patches(spec, setup)
    merged = n // v.spatial_merge_size**2
    return 4 * n * v.hidden_size + 4 * n + merged * v.out_hidden_size * act_bytes(setup)


def forward_transient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The largest temporary of one ViT block's forward over the micro-batch's patches:
    the MLP's up (and gate) projections and activation (n·I each), beside the block input,
    its norm and the qkv (5·n·d); eager attention adds a heads x n_img² score matrix per
    image and, while it is still referenced, the fp32 copy ``softmax(attn_weights,
    dtype=float32)`` makes of it before its fp32 output (transformers
    ``eager_attention_forward``; ATen ``softmax`` converts first unless the input is CUDA fp16):
    a + 8 bytes a score (traced on Qwen3-VL-2B at 2048x2048, 16 heads x 16,384²: 44.55 GiB)."""
    if not setup.has_media:
        return 0
    v = spec.vision
    assert v is not None
    n = _patches(spec, setup)
    a = act_bytes(setup)
    mlp = (3 if v.gated_mlp else 2) * n * v.intermediate_size * a
    base = 5 * n * v.hidden_size * a
    attn = 0
    if setup.attention == "eager":
        attn = v.num_heads * _attention_squares(spec, setup) * (a + 8 if a < 4 else 2 * a)
    return base + max(mlp, attn) + block_mask_bytes(spec, setup)


def pixel_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The processor's fp32 ``pixel_values`` (patches x channels·temporal·patch²), an input
    alive through the step."""
    if not setup.has_media:
        return 0
    v = spec.vision
    assert v is not None
    return nbytes(_patches(spec, setup) * 3 * v.temporal_patch_size * v.patch_size**2, "fp32")


def saved_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Activations the tower keeps for the backward. Under gradient checkpointing (which
    transformers turns on for the tower's blocks too) every block's input is held by its
    checkpoint even when the tower is frozen (n·d per block; not when the tower's input is not
    hooked to require grad, ``VisionSpec.input_embeds_hooked``); a trained tower adds one block
    recomputed. Without checkpointing a frozen tower keeps nothing, a trained one per block
    the inputs of its norms, qkv, attention output and projections (about 8·n·d;
    ``VisionSpec.block_saved_hidden``) and the MLP's intermediates ((2 to 4)·n·I,
    ``VisionSpec.mlp_saved``), plus eager attention's probabilities: the fp32 output of
    ``softmax(..., dtype=float32)``, which its backward reads, and the 16-bit copy the product
    with v saves (a + 4 bytes a score; traced on Qwen2-VL-2B at 980x980: 45.8 and 22.9 GiB over
    32 blocks); its mergers keep ``VisionSpec.merger_saved_hidden``·n·d more."""
    if not setup.has_media:
        return 0
    v = spec.vision
    assert v is not None
    n = _patches(spec, setup)
    a = act_bytes(setup)
    mlp = v.mlp_saved or (4 if v.gated_mlp else 2)  # a trained down projection saves the product too
    per_block = v.block_saved_hidden * n * v.hidden_size * a + mlp * n * v.intermediate_size * a
    if setup.attention == "eager":  # the fp32 softmax's output and its 16-bit copy (forward_transient_bytes)
        per_block += v.num_heads * _attention_squares(spec, setup) * (a + 4 if a < 4 else a)
    merger = projector_only_saved_bytes(spec, setup)
    if tower_trained(setup):  # the mergers run outside the checkpointed blocks (Qwen3-VL's DeepStack too)
        merger += v.merger_saved_hidden * n * v.hidden_size * a
    if setup.grad_checkpointing:
        held = tower_trained(setup) or v.input_embeds_hooked
        inputs = v.depth * n * v.hidden_size * a if held else 0
        extra = block_mask_bytes(spec, setup) + merge_mlp_saved_bytes(spec, setup)
        return inputs + (per_block if tower_trained(setup) else 0) + merger + extra
    return (v.depth * per_block if tower_trained(setup) else 0) + merger
