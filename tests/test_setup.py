"""Bad setups are refused with one line naming the field and what is allowed."""

from __future__ import annotations

import pytest

from vramplan.errors import VramplanError
from vramplan.setup import make_setup


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"seq_len": 0}, "seq_len", "greater than or equal to 1"),
        ({"lora_rank": -1}, "lora_rank", "greater than or equal to 1"),
        ({"micro_batch": 10**12}, "micro_batch", "less than or equal to"),
        ({"method": "qlora", "quant": "none"}, "quant", "bnb-nf4"),
        ({"method": "lora", "quant": "bnb-nf4"}, "quant", "--method qlora"),
        ({"method": "full", "quant": "bnb-int8"}, "quant", "--quant none"),
        ({"method": "banana"}, "method", "'full', 'freeze', 'lora', 'qlora' or 'inference'"),
        ({"kv_cache": "int8"}, "kv_cache", "inference only"),
        ({"lora_alpha": float("inf")}, "lora_alpha", "finite"),
        ({"method": "inference", "parallel": "zero3", "num_gpus": 2}, "parallel", "device_map"),
        ({"optimizer": "adam"}, "optimizer", "adamw"),
        ({"precision": "fp8"}, "precision", "bf16"),
        ({"attention": "flash-attn-2", "precision": "fp32"}, "attention", "fp16/bf16"),
        ({"lora_dropout": 1.0}, "lora_dropout", "less than 1"),
        ({"num_gpus": 4}, "parallel", "zero3"),
        ({"num_gpus": 0}, "num_gpus", "greater than or equal to 1"),
        ({"parallel": "zero2", "offload": "optimizer+params"}, "offload", "zero3|fsdp"),
        ({"offload": "optimizer"}, "offload", "ZeRO or FSDP"),
        ({"parallel": "tensor"}, "parallel", "zero3"),
        ({"method": "full", "trainable_extra": "lm_head"}, "trainable_extra", "lora/qlora"),
        ({"trainable_extra": "wings"}, "trainable_extra", "embeddings"),
        ({"seq_len": "long"}, "seq_len", "integer"),
    ],
)
def test_bad_setup_names_the_field(fields, field, says) -> None:
    with pytest.raises(VramplanError) as err:
        make_setup(**fields)
    assert err.value.field == field
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_defaults_are_a_valid_lora_setup() -> None:
    s = make_setup()
    assert (s.method, s.quant, s.precision, s.lora_targets) == ("lora", "none", "bf16", "all-linear")
    assert s.tokens == s.seq_len * s.micro_batch
