"""Tracing a VLM whose tower sees every image at one fixed resolution (Gemma 3's SigLIP at
896x896) under fake tensors.

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
