"""Tracing under fake tensors a VLM whose tower sees every image at one fixed resolution
(Gemma 3's SigLIP at 896x896, :class:`FixedImageBatch`), or at its own size as one sequence
with the micro-batch's other images (Mistral 3's Pixtral, :class:`OneSequenceImageBatch`).

The processor (transformers 5.25 ``Gemma3Processor``) resizes each image to the tower's
``image_size``, writes ``mm_tokens_per_image`` image tokens between a begin- and an
end-of-image token in ``input_ids``, and marks those tokens with ``token_type_ids`` (1 for an
image token), which ``Gemma3Model.forward`` turns into the bidirectional mask over each image's
tokens (``create_masks_for_vision_model``); TRL's collators pass ``token_type_ids`` on
(trl ``sft_trainer.py``: "special case for Gemma"). The trace hands the model the same inputs.
The model reads one value of a fake tensor, the check that the image tokens match the features
(``torch_compilable_check`` in ``get_placeholder_mask``); the layout is built to match, so the
check is skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import textwrap
from typing import Any

import torch

from vramplan.errors import VramplanError
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class FixedImageBatch:
    """One micro-batch's ids, token types and (fake) pixels for a fixed-resolution tower."""

    def __init__(self, spec: ModelSpec, setup: Setup, hf: Any) -> None:
        v = spec.vision
        assert v is not None and v.image_size
        n_img, tokens = setup.images_per_sample, v.num_queries
        if setup.seq_len < 2 * n_img:
            raise VramplanError("seq_len", f"the text around {n_img} image(s) needs at least {2 * n_img} tokens")
        seq = setup.seq_len + n_img * tokens
        ids = torch.full((setup.micro_batch, seq), 100, dtype=torch.long)
        for b in range(setup.micro_batch):
            pos = 1
            for _ in range(n_img):
                ids[b, pos - 1] = hf.boi_token_id
                ids[b, pos : pos + tokens] = hf.image_token_id
                ids[b, pos + tokens] = hf.eoi_token_id
                pos += tokens + 2
        self.ids = ids
        self.token_types = (ids == hf.image_token_id).long()
        self.pixels_shape = (setup.micro_batch * n_img, v.in_channels, v.image_size, v.image_size)
        self.module = spec.transformers_module

    @contextlib.contextmanager
    def fixed_layout(self, model: Any) -> Any:
        """Skip the one value comparison of the model's code; restore it afterwards."""
        mod: Any = importlib.import_module(f"transformers.models.{self.module}.modeling_{self.module}")
        saved = mod.torch_compilable_check
        try:
            mod.torch_compilable_check = lambda *a, **k: None
            yield
        finally:
            mod.torch_compilable_check = saved

    def inputs(self, fake_mode: Any) -> dict[str, Any]:
        """One micro-batch as the processor hands it over: fp32 pixels (fake), ids, token types."""
        ctx = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with ctx:
            pixels = torch.randn(*self.pixels_shape)
        real = fake_mode is None
        ids = self.ids.clone() if real else fake_mode.from_tensor(self.ids)
        types = self.token_types.clone() if real else fake_mode.from_tensor(self.token_types)
        return {"input_ids": ids, "labels": ids, "pixel_values": pixels, "token_type_ids": types}


#: the decorators of transformers 5.25 ``Mistral3Model.get_image_features``, outermost first
_M3_DECORATORS = ("merge_with_config_defaults", "can_return_tuple", "select_hidden_states")


class OneSequenceImageBatch:
    """Mistral 3 (transformers 5.25 ``PixtralProcessor``, ``Mistral3Model``): each image resized
    as the processor does (``memory/vision.py`` ``longest_edge_resize``), its ``[IMG]`` tokens in
    rows, each row closed by a break token, and ``image_sizes`` per image. The model reads
    values in three places: Pixtral's crop of each image to its size and the patch merger's
    grid (``image_sizes``, handed over as Python integers), the split of the projected features
    per image (``.tolist()`` in ``get_image_features``, re-defined here with the split as a
    constant) and the placeholder check (skipped; the layout is built to match)."""

    def __init__(self, spec: ModelSpec, setup: Setup, hf: Any) -> None:
        from vramplan.memory import vision

        v = spec.vision
        assert v is not None and v.longest_edge
        n_img = setup.images_per_sample
        factor = v.patch_size * v.spatial_merge_size
        h, w = vision.parse_image_size(setup.image_size or "448x448")
        rh, rw = vision.longest_edge_resize(h, w, v.longest_edge, factor)
        rows, cols = rh // factor, rw // factor
        if setup.seq_len < 2 * n_img:
            raise VramplanError("seq_len", f"the text around {n_img} image(s) needs at least {2 * n_img} tokens")
        per_image = rows * (cols + 1)  # [IMG] x cols and a break token, each row
        ids = torch.full((setup.micro_batch, setup.seq_len + n_img * per_image), 100, dtype=torch.long)
        for b in range(setup.micro_batch):
            pos = 1
            for _ in range(n_img):
                for r in range(rows):
                    start = pos + r * (cols + 1)
                    ids[b, start : start + cols] = hf.image_token_id
                pos += per_image + 1
        self.ids = ids
        count = setup.micro_batch * n_img
        self.sizes = [[rh, rw]] * count
        self.splits = [rows * cols] * count
        self.pixels_shape = (count, v.in_channels, rh, rw)
        self.module = spec.transformers_module

    @contextlib.contextmanager
    def fixed_layout(self, model: Any) -> Any:
        """Re-define ``get_image_features`` with the per-image split as a constant and skip the
        placeholder check; restore both afterwards."""
        mod: Any = importlib.import_module(f"transformers.models.{self.module}.modeling_{self.module}")
        cls = type(model.model)
        original = cls.get_image_features
        inner = inspect.unwrap(original)
        src = textwrap.dedent(inspect.getsource(inner))
        body = src[src.index("def get_image_features") :]
        old = "(torch.as_tensor(image_sizes, device=image_features.device) // downsample_ratio).prod(dim=-1).tolist()"
        head = src[: src.index("def get_image_features")]
        if old not in body or any(f"@{d}" not in head for d in _M3_DECORATORS):
            raise RuntimeError("Mistral3Model.get_image_features: transformers' code is not the one this trace reads")
        scope = {**vars(mod), "_SPLITS": self.splits}
        exec(compile(body.replace(old, "_SPLITS"), "<vramplan rewrite of get_image_features>", "exec"), scope)
        fn = scope["get_image_features"]
        fn = mod.select_hidden_states("vision_feature_layer")(fn)
        fn = mod.merge_with_config_defaults(mod.can_return_tuple(fn))
        saved = mod.torch_compilable_check
        try:
            cls.get_image_features = fn
            mod.torch_compilable_check = lambda *a, **k: None
            yield
        finally:
            cls.get_image_features = original
            mod.torch_compilable_check = saved

    def inputs(self, fake_mode: Any) -> dict[str, Any]:
        """One micro-batch as the processor hands it over: fp32 pixels (fake), ids, image sizes."""
        ctx = fake_mode if fake_mode is not None else contextlib.nullcontext()
        with ctx:
            pixels = torch.randn(*self.pixels_shape)
        ids = self.ids.clone() if fake_mode is None else fake_mode.from_tensor(self.ids)
        return {"input_ids": ids, "labels": ids, "pixel_values": pixels, "image_sizes": self.sizes}
