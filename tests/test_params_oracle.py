"""Oracle: the analytic parameter count equals transformers' own model, per group.

Each catalog model whose architecture transformers ships is built on the meta device
(accelerate ``init_empty_weights`` + ``from_config``: no weights, no download) and its
named parameters are grouped by module path.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import requires
from vramplan.models import catalog_names, load_model, models_dir
from vramplan.params import param_counts

#: model types transformers cannot build without remote code (never run here).
REMOTE_CODE = {"qwen"}


def _buildable() -> list[str]:
    names = []
    for name in catalog_names():
        cfg = json.loads((models_dir() / name / "config.json").read_text())
        if cfg.get("model_type") not in REMOTE_CODE:
            names.append(name)
    return names


def _group(param_name: str) -> str:
    n = param_name
    if "visual." in n or "vision_tower" in n:
        return "projector" if ".merger." in n else "vision"
    if n.startswith("vision_model."):  # Llama 4's tower, its pixel-shuffle adapter included
        return "vision"
    if "multi_modal_projector" in n:  # Gemma 3, Mistral 3, Llama 4
        return "projector"
    if "embed_tokens" in n or ".wte." in n:
        return "embeddings"
    if n.startswith(("lm_head", "language_model.lm_head")):
        return "lm_head"
    if ".self_attn." in n:
        return "attention"
    if ".mlp." in n or ".feed_forward." in n:  # Llama 4: feed_forward
        return "mlp"
    return "norms"


def _real_counts(name: str) -> dict[str, int]:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    cfg_dict = json.loads((models_dir() / name / "config.json").read_text())
    from vramplan.arch.config import legacy_bools

    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **legacy_bools(model_type, cfg_dict)[0])
    auto = AutoModelForImageTextToText if "vision_config" in cfg_dict else AutoModelForCausalLM
    # the meta device as the default too: a parameter made with torch.zeros in __init__ (Llama 4's
    # experts, 16 x 5120 x 16384) is otherwise allocated for real before init_empty_weights moves it
    with init_empty_weights(), torch.device("meta"):
        model = auto.from_config(config)
    model.tie_weights()  # from_pretrained ties; from_config under init_empty_weights does not
    counts: dict[str, int] = {}
    for pname, p in model.named_parameters():  # tied weights are listed once
        counts[_group(pname)] = counts.get(_group(pname), 0) + p.numel()
    return counts


@pytest.mark.trace
@requires("torch", "transformers", "accelerate")
@pytest.mark.parametrize("name", _buildable())
def test_param_groups_match_transformers(name: str) -> None:
    analytic = param_counts(load_model(name)).model_dump(exclude={"idle_experts"})
    real = _real_counts(name)
    assert {k: v for k, v in analytic.items() if v} == real
    assert param_counts(load_model(name)).total == sum(real.values())


def test_every_architecture_is_covered() -> None:
    """The oracle must not silently skip: at least 25 catalog models are buildable."""
    assert len(_buildable()) >= 25
