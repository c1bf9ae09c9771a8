from __future__ import annotations

import pytest

from vramplan.spec import ModelSpec, spec_from_config

TINY_CONFIG = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}


@pytest.fixture
def tiny() -> ModelSpec:
    """A two-layer Qwen2-shaped model small enough to count by hand."""
    return spec_from_config(dict(TINY_CONFIG), name="tiny")
