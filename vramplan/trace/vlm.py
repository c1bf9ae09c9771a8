"""Tracing Qwen2-VL / Qwen2.5-VL / Qwen3-VL steps with images under fake tensors.

A fake tensor has a shape but no values, and these models read values in four places:
the vision rotary positions and attention boundaries from ``image_grid_thw``, the split of
each image's patches (``lengths.tolist()``), the split of the merged features per image,
and the language model's 3D rope positions from where the image tokens sit in
``input_ids``; Qwen3-VL adds the position table's interpolation taps from the grid and the
image tokens' rows DeepStack adds to (a boolean mask of ``input_ids``). All depend only on
the image grid and the token layout, which the trace fixes up front: they are computed from
real tensors before the step and handed to the model, whose code is otherwise run as it is.
A check that the placeholder count matches the features (a value comparison) is skipped; the
layout is built to match.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from typing import Any

import torch

from vramplan.setup import Setup
from vramplan.spec import ModelSpec


def is_vlm(config: dict[str, Any]) -> bool:
    return "vision_config" in config


def _module(name: str) -> Any:
    """transformers' modeling module ``name`` (``ModelSpec.transformers_module``)."""
    import importlib

    return importlib.import_module(f"transformers.models.{name}.modeling_{name}")


def _rewrite(func: Any, ns: dict[str, Any], replace: dict[str, str]) -> Any:
    """``func`` re-defined from its own source with value reads swapped for constants."""
    src = textwrap.dedent(inspect.getsource(func))
    src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith("@auto_docstring"))
    for old, new in replace.items():
        if old not in src:
            raise RuntimeError(f"{func.__qualname__}: expected {old!r} in transformers' code")
        src = src.replace(old, new)
    scope = dict(ns)
    exec(compile(src, f"<vramplan rewrite of {func.__qualname__}>", "exec"), scope)
    return scope[func.__name__]


class ImageBatch:
    """Real-valued layout of one micro-batch: ids, grid, positions; fake pixels later."""

    def __init__(self, spec: ModelSpec, setup: Setup, hf: Any, model: Any) -> None:
        from vramplan.memory import vision

        v = spec.vision
        assert v is not None
        # a video: one grid of (frame pairs, h, w) per sample, its tokens in one run; images: one grid each
        self.video = bool(setup.video_frames)
        if self.video:
            steps, per_step, step_tokens = vision.video_grid(spec, setup)
            h, w = vision.parse_image_size(setup.video_size or "448x448")
            rh, rw = vision.smart_resize(
                h, w, v.patch_size * v.spatial_merge_size, vision.VIDEO_MIN_PIXELS, vision.VIDEO_MAX_PIXELS
            )
            n_img, tokens, patches, t = 1, steps * step_tokens, steps * per_step, steps
            token_id = hf.video_token_id
        else:
            patches, tokens = vision.image_grid(spec, setup)
            rh, rw = vision.resized_image(spec, setup)
            n_img, t = setup.images_per_sample, 1
            token_id = hf.image_token_id
        if setup.seq_len < 2 * n_img:
            from vramplan.errors import VramplanError

            raise VramplanError("seq_len", f"the text around {n_img} image(s) needs at least {2 * n_img} tokens")
        seq = setup.seq_len + n_img * tokens
        ids = torch.full((setup.micro_batch, seq), 100, dtype=torch.long)
        for b in range(setup.micro_batch):
            pos = 1
            for _ in range(n_img):
                ids[b, pos - 1] = hf.vision_start_token_id
                ids[b, pos : pos + tokens] = token_id
                pos += tokens + 2
        self.ids = ids
        self.grid = torch.tensor([[t, rh // v.patch_size, rw // v.patch_size]] * (setup.micro_batch * n_img))
        self.patches = setup.micro_batch * n_img * patches
        self.pixel_width = 3 * v.temporal_patch_size * v.patch_size**2
        mm = (ids == token_id).int() * (2 if self.video else 1)
        grids = {"video_grid_thw" if self.video else "image_grid_thw": self.grid}
        self.position_ids, _ = model.model.get_rope_index(ids, mm, **grids)
        # Qwen3-VL DeepStack: the image tokens' (batch, position) indices, which the model takes from a mask
        self.token_positions = (ids == token_id).nonzero(as_tuple=True)
        self.module = spec.transformers_module

    @contextlib.contextmanager
    def fixed_layout(self, model: Any) -> Any:
        """Patch the value reads of the model's code for this layout; restore afterwards."""
        from transformers import vision_utils as vu

        mq = _module(self.module)
        visual = model.model.visual
        pos = vu.get_vision_position_ids(self.grid, visual.spatial_merge_size)
        cu, mx = vu.get_vision_attention_seqlens(self.grid, visual.config)
        # attention splits by sequence: whole images (or video steps), and Qwen2.5-VL's windows
        lengths = {int(cu.shape[0]): (cu[1:] - cu[:-1]).tolist()}
        window = None
        if "get_vision_window_index" in vars(mq):
            window = vu.get_vision_window_index(
                self.grid,
                spatial_merge_size=visual.spatial_merge_size,
                window_size=visual.window_size,
                patch_size=visual.patch_size,
            )
            cw = window[1]
            lengths.setdefault(int(cw.shape[0]), (cw[1:] - cw[:-1]).tolist())
        splits = (self.grid.prod(-1) // visual.spatial_merge_size**2).tolist()
        # Qwen3-VL: each patch's bilinear taps into the learned position table
        interp = None
        if "get_vision_interpolation_indices_and_weights" in vars(mq):
            interp = vu.get_vision_interpolation_indices_and_weights(
                self.grid,
                num_grid_per_side=visual.num_grid_per_side,
                mode=visual.interpolation_mode,
                align_corners=visual.interpolation_align_corners,
                spatial_merge_size=visual.config.spatial_merge_size,
            )
        text_cls = type(model.model.language_model)
        owner = next((c for c in text_cls.__mro__ if "_deepstack_process" in vars(c)), None)
        deepstack = vars(owner)["_deepstack_process"] if owner is not None else None
        ns = vars(mq)
        attn_cls: Any = next(c for name, c in ns.items() if name.endswith("VisionAttention") and isinstance(c, type))
        model_cls = type(model.model)
        saved = {
            "get_vision_position_ids": ns["get_vision_position_ids"],
            "get_vision_attention_seqlens": ns["get_vision_attention_seqlens"],
            "get_vision_window_index": ns.get("get_vision_window_index"),
            "torch_compilable_check": ns.get("torch_compilable_check"),
            "get_vision_interpolation_indices_and_weights": ns.get("get_vision_interpolation_indices_and_weights"),
        }
        attn_forward = attn_cls.forward
        feature_name, grid_arg = (
            ("get_video_features", "video_grid_thw") if self.video else ("get_image_features", "image_grid_thw")
        )
        image_features = getattr(model_cls, feature_name)
        new_attn = _rewrite(
            attn_forward, {**ns, "_LENGTHS": lengths}, {"lengths.tolist()": "_LENGTHS[int(cu_seqlens.shape[0])]"}
        )
        new_feat = _rewrite(
            image_features,
            {**ns, "_SPLITS": splits},
            {f"({grid_arg}.prod(-1) // self.visual.spatial_merge_size**2).tolist()": "_SPLITS"},
        )
        new_deepstack = None
        if deepstack is not None:  # index the image tokens' rows by the fixed positions, not by a fake mask
            new_deepstack = _rewrite(
                deepstack,
                {**ns, "_POS": self.token_positions},
                {"hidden_states[visual_pos_masks, :]": "hidden_states[_POS]"},
            )
        try:
            mq.get_vision_position_ids = lambda *a, **k: pos
            if interp is not None:
                mq.get_vision_interpolation_indices_and_weights = lambda *a, **k: interp
            if owner is not None:
                owner._deepstack_process = new_deepstack  # type: ignore[attr-defined]
            mq.get_vision_attention_seqlens = lambda *a, **k: (cu, mx)
            mq.torch_compilable_check = lambda *a, **k: None
            if window is not None:
                mq.get_vision_window_index = lambda *a, **k: window
            attn_cls.forward = new_attn
            setattr(model_cls, feature_name, new_feat)
            yield
        finally:
            for k, fn in saved.items():
                if fn is not None:
                    setattr(mq, k, fn)
            attn_cls.forward = attn_forward
            setattr(model_cls, feature_name, image_features)
            if owner is not None:
                owner._deepstack_process = deepstack  # type: ignore[attr-defined]

    def inputs(self, fake_mode: Any) -> dict[str, Any]:
        """One micro-batch as the processor hands it over: fp32 pixels (fake), the ids."""
        ctx = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with ctx:
            pixels = torch.randn(self.patches, self.pixel_width)
            ids = self.ids.clone() if fake_mode is None else fake_mode.from_tensor(self.ids)
        media = (
            {"pixel_values_videos": pixels, "video_grid_thw": self.grid}
            if self.video
            else {"pixel_values": pixels, "image_grid_thw": self.grid}
        )
        return {"input_ids": ids, "labels": ids, **media, "position_ids": self.position_ids}
