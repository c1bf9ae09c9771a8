"""Oracle: the per-card module placement of ``device_map`` equals accelerate's own.

Each model is built on the meta device (no weights) and placed by transformers' own
``get_balanced_memory`` + ``infer_auto_device_map`` (``transformers/integrations/accelerate.py``:
what ``from_pretrained(device_map="auto")`` runs in transformers 5) with cards large enough
that the balanced budget decides; the analytic placement in
vramplan/memory/device_map.py must put every decoder layer, the embedding, lm_head and the
vision tower on the same card.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import requires
from vramplan.memory import device_map as dm
from vramplan.models import load_model, models_dir
from vramplan.setup import make_setup

pytestmark = [pytest.mark.trace, requires("torch", "accelerate", "transformers")]

CASES = [
    ("qwen2.5-0.5b", 2),
    ("qwen2.5-0.5b", 4),  # the tied embedding is a third of the model: card 0 stays empty
    ("qwen2.5-7b", 4),
    ("llama-3.2-3b", 3),
    ("gemma-2-9b", 3),
    ("mixtral-8x7b", 4),
    ("qwen3-30b-a3b", 4),
    ("qwen2-vl-2b", 4),  # the vision tower is split between cards 0 and 1
    ("qwen2-vl-72b", 4),
    ("qwen2.5-72b", 8),
]


def _accelerate_map(name: str, n: int) -> dict[str, int]:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    cfg = json.loads((models_dir() / name / "config.json").read_text())
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    auto = AutoModelForImageTextToText if "vision_config" in cfg else AutoModelForCausalLM
    with init_empty_weights():
        model = auto.from_config(config)
    model.tie_weights()
    cards = {i: 10**15 for i in range(n)}
    split = model._no_split_modules
    model.to(torch.bfloat16)  # the load dtype (meta tensors: no memory)
    budget = get_balanced_memory(model, max_memory=cards, no_split_module_classes=split)
    return infer_auto_device_map(model, max_memory=budget, no_split_module_classes=split)


def _where(device_map: dict[str, int]) -> dict[str, set[int]]:
    """Cards of each unit: ``layer.i``, ``embed``, ``lm_head``, ``vision``."""
    out: dict[str, set[int]] = {}
    for name, card in device_map.items():
        if "visual" in name:
            key = "vision"
        elif ".layers." in name:
            key = "layer." + name.split(".layers.")[1].split(".")[0]
        elif "embed_tokens" in name:
            key = "embed"
        elif name.startswith("lm_head"):
            key = "lm_head"
        else:
            continue
        out.setdefault(key, set()).add(card)
    return out


@pytest.mark.parametrize(("name", "n"), CASES)
def test_placement_matches_accelerate(name: str, n: int) -> None:
    spec = load_model(name)
    mine: dict[str, set[int]] = {}
    for card, units in enumerate(dm.assign(spec, make_setup(method="lora", num_gpus=n, parallel="device_map"))):
        for u in units:
            key = {"layer": f"layer.{u.index}", "vision": "vision", "embed": "embed", "lm_head": "lm_head"}.get(u.kind)
            if key:
                mine.setdefault(key, set()).add(card)
    if spec.tie_word_embeddings:
        mine["lm_head"] = set(mine["embed"])  # a tied lm_head goes with the embedding
    real = _where(_accelerate_map(name, n))
    assert mine == real
