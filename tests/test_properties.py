"""Invariants of the memory model, over many setups (hypothesis)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from vramplan.memory import estimate
from vramplan.memory.activations import checkpoint_bytes, recomputed_down_adapter_bytes, window_mask_held_bytes
from vramplan.setup import make_setup
from vramplan.spec import spec_from_config

SPEC = spec_from_config(
    {
        "model_type": "qwen2",
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "num_hidden_layers": 4,
        "intermediate_size": 704,
        "vocab_size": 5000,
    },
    name="small",
)

setups = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["full", "freeze", "lora", "qlora"]),
        "precision": st.sampled_from(["bf16", "fp16", "fp32", "amp-bf16"]),
        "lora_rank": st.integers(1, 128),
        "lora_dropout": st.sampled_from([0.0, 0.05]),
        "optimizer": st.sampled_from(
            ["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd", "lion"]
        ),
        "seq_len": st.integers(1, 4096),
        "micro_batch": st.integers(1, 8),
        "grad_accum": st.integers(1, 4),
        "grad_checkpointing": st.booleans(),
        "attention": st.sampled_from(["eager", "sdpa"]),
    }
)


def _setup(fields):
    fields = dict(fields)
    if fields["method"] == "qlora":
        fields["quant"] = "bnb-nf4"
    return make_setup(**fields)


@settings(max_examples=150, deadline=None)
@given(setups)
def test_terms_sum_to_device_tier(fields) -> None:
    e = estimate(SPEC, _setup(fields))
    assert sum(e.terms.values()) == e.device_bytes
    assert e.allocated_bytes <= e.reserved_bytes <= e.device_bytes
    assert e.allocated_bytes == max(e.phases.values())


@settings(max_examples=100, deadline=None)
@given(setups, st.sampled_from(["seq_len", "micro_batch", "lora_rank"]))
def test_memory_never_falls_as_work_grows(fields, key) -> None:
    s = _setup(fields)
    bigger = s.model_copy(update={key: getattr(s, key) * 2})
    assert estimate(SPEC, bigger).allocated_bytes >= estimate(SPEC, s).allocated_bytes


@settings(max_examples=100, deadline=None)
@given(setups)
def test_checkpointing_never_raises_memory(fields) -> None:
    """Up to one checkpoint: while layer l is recomputed its saved input is alive too, which
    can exceed what layer l alone saves when only that layer's grads dominate; and with LoRA
    dropout what the re-run holds at down_proj's adapter beside the grad entering the layer
    (activations.recomputed_down_adapter_bytes), a moment the estimate without checkpointing
    does not count in its forward (at a few tokens on a small model, nothing outweighs it)."""
    s = _setup(fields)
    on = s.model_copy(update={"grad_checkpointing": True})
    off = s.model_copy(update={"grad_checkpointing": False})
    slack = checkpoint_bytes(SPEC, on) + recomputed_down_adapter_bytes(SPEC, on) + window_mask_held_bytes(SPEC, on)
    assert estimate(SPEC, on).allocated_bytes <= estimate(SPEC, off).allocated_bytes + slack


@settings(max_examples=60, deadline=None)
@given(setups, st.integers(1, 6))
def test_memory_never_falls_as_layers_grow(fields, extra) -> None:
    s = _setup(fields)
    deeper = spec_from_config(
        {
            "model_type": "qwen2",
            "hidden_size": 256,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "num_hidden_layers": 4 + extra,
            "intermediate_size": 704,
            "vocab_size": 5000,
        },
        name="deeper",
    )
    assert estimate(deeper, s).allocated_bytes >= estimate(SPEC, s).allocated_bytes


SEVEN_B = spec_from_config(
    {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "intermediate_size": 18944,
        "vocab_size": 152064,
    },
    name="7b-shaped",
)


@settings(max_examples=100, deadline=None)
@given(setups)
def test_qlora_le_lora_le_full(fields) -> None:
    """For a model whose weights dominate (7B-shaped, checkpointing on, up to 4 x 4096 tokens).
    Not for tiny models or huge activations: PEFT saves one 16-bit input copy per adapted
    linear and k-bit preparation runs the residual stream in fp32, so there LoRA can exceed
    full fine-tuning and QLoRA can exceed LoRA, as in real runs. Nor with SGD (no state) or
    Adafactor (factored state, a row and a column per matrix), where full fine-tuning holds
    almost nothing extra at the start of backward while a large-rank LoRA holds its adapters,
    their state and their saved inputs."""
    if fields["optimizer"] in ("sgd", "adafactor"):
        fields = dict(fields, optimizer="adamw")
    base = dict(
        fields,
        precision="bf16",
        grad_checkpointing=True,
        seq_len=min(fields["seq_len"], 4096),
        micro_batch=min(fields["micro_batch"], 4),
    )
    # the device tier: paged optimizer state lives outside torch's allocator
    full = estimate(SEVEN_B, make_setup(**{**base, "method": "full"})).device_bytes
    lora = estimate(SEVEN_B, make_setup(**{**base, "method": "lora"})).device_bytes
    qlora = estimate(SEVEN_B, make_setup(**{**base, "method": "qlora", "quant": "bnb-nf4"})).device_bytes
    assert lora <= full
    assert qlora <= lora


specs = st.builds(
    lambda mt, kv, group, d, layers, inter, vocab, tie: spec_from_config(
        {
            "model_type": mt,
            "hidden_size": kv * group * d,
            "num_attention_heads": kv * group,
            "num_key_value_heads": kv,
            "head_dim": d,
            "num_hidden_layers": layers,
            "intermediate_size": inter,
            "vocab_size": vocab,
            "tie_word_embeddings": tie,
        },
        name="random",
    ),
    st.sampled_from(["qwen2", "llama", "mistral", "qwen3", "gemma2"]),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from([16, 32, 64]),
    st.integers(1, 6),
    st.integers(16, 1024),
    st.integers(100, 50_000),
    st.booleans(),
)


#: one layer of Mistral at its 4,096-token window under sdpa: the checkpoints hold the boolean window
#: mask through backward, which nothing holds without checkpointing
ONE_LAYER_WINDOW = spec_from_config(
    {
        "model_type": "mistral",
        "hidden_size": 16,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "num_hidden_layers": 1,
        "intermediate_size": 16,
        "vocab_size": 100,
    },
    name="one-layer-window",
)


@settings(max_examples=300, deadline=None)
@given(specs, setups, st.sampled_from(["seq_len", "micro_batch", "lora_rank"]))
@example(
    ONE_LAYER_WINDOW,
    dict(
        method="full",
        precision="bf16",
        lora_rank=1,
        lora_dropout=0.0,
        optimizer="adamw",
        seq_len=4096,
        micro_batch=1,
        grad_accum=1,
        grad_checkpointing=False,
        attention="sdpa",
    ),
    "seq_len",
)
def test_random_models_grow_monotonically_and_sum(spec, fields, key) -> None:
    s = _setup(fields)
    e = estimate(spec, s)
    assert sum(e.terms.values()) == e.device_bytes
    assert e.allocated_bytes <= e.reserved_bytes <= e.device_bytes
    bigger = s.model_copy(update={key: getattr(s, key) * 2})
    assert estimate(spec, bigger).allocated_bytes >= e.allocated_bytes
    on, off = s.model_copy(update={"grad_checkpointing": True}), s.model_copy(update={"grad_checkpointing": False})
    # a checkpoint more, what a re-run layer holds at down_proj's adapter beside the grad entering
    # it (activations.recomputed_down_adapter_bytes), and the sliding-window mask the checkpoints
    # hold through backward (activations.window_mask_held_bytes): the estimate without
    # checkpointing holds neither, which only a one-layer model's saved activations do not outweigh
    extra = checkpoint_bytes(spec, on) + recomputed_down_adapter_bytes(spec, on) + window_mask_held_bytes(spec, on)
    assert estimate(spec, on).allocated_bytes <= estimate(spec, off).allocated_bytes + extra


def test_names_do_not_change_the_answer() -> None:
    from vramplan import plan

    a = plan("qwen2.5-7b", gpu="4090", method="lora")
    b = plan("Qwen/Qwen2.5-7B-Instruct", gpu="NVIDIA GeForce RTX 4090", method="lora")
    c = plan("QWEN2.5-7B-INSTRUCT", gpu="rtx4090", method="lora")
    assert a.peak == b.peak == c.peak
    assert a.terms == b.terms == c.terms
