"""Each memory term against a value computed by hand for the tiny two-layer spec.

tiny: h=64, 4 heads of 16, 2 kv heads (kv width 32), I=128, V=1000, L=2, untied, Qwen2
biases on q/k/v.
"""

from __future__ import annotations

from vramplan.memory import activations, loss, optimizer, weights
from vramplan.memory.trainable import lora_params, trainable_params
from vramplan.params import param_counts
from vramplan.setup import make_setup

TOTAL = 202_304  # 64000 emb + 2*(4160+2080+2080+4096) attn + 2*24576 mlp + 5*64 norms + 64000 head


def test_param_groups(tiny) -> None:
    c = param_counts(tiny)
    assert (c.embeddings, c.attention, c.mlp, c.norms, c.lm_head) == (64_000, 24_832, 49_152, 320, 64_000)
    assert c.total == TOTAL


def test_lora_adapter_count(tiny) -> None:
    s = make_setup(method="lora", lora_rank=8)
    # per layer: q 8*(64+64) + k,v 8*(64+32) + o 8*(64+64) + gate,up,down 8*(64+128)
    assert lora_params(tiny, s) == 2 * (1024 + 768 + 768 + 1024 + 3 * 1536)
    only_qv = make_setup(method="lora", lora_rank=8, lora_targets="q_proj,v_proj")
    assert lora_params(tiny, only_qv) == 2 * (1024 + 768)


def test_weights_by_method(tiny) -> None:
    assert weights.frozen_weight_bytes(tiny, make_setup(method="lora")) == 2 * TOTAL
    assert weights.frozen_weight_bytes(tiny, make_setup(method="lora", precision="fp32")) == 4 * TOTAL
    full = make_setup(method="full", precision="amp-bf16")
    assert weights.frozen_weight_bytes(tiny, full) == 0
    assert weights.trainable_weight_bytes(tiny, full) == 4 * TOTAL
    # AMP: a bf16 copy of every linear weight, lm_head included, saved when nothing is
    # checkpointed; with checkpointing only lm_head's survives to backward, but autocast's
    # cache holds every trainable copy until the forward's autocast region ends
    layer_weights = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)
    no_gc = full.model_copy(update={"grad_checkpointing": False})
    assert weights.autocast_copy_bytes(tiny, no_gc) == 2 * (layer_weights + 64_000)
    assert weights.autocast_copy_bytes(tiny, full) == 2 * 64_000
    assert weights.forward_autocast_copy_bytes(tiny, full) == 2 * (layer_weights + 64_000)
    assert weights.autocast_copy_bytes(tiny, make_setup(method="full", precision="bf16")) == 0


def test_qlora_nf4_weights(tiny) -> None:
    s = make_setup(method="qlora", quant="bnb-nf4")
    quantized = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)  # 73,728 linear weights
    assert weights.quant_weight_bytes(tiny, "bnb-nf4") == quantized // 2
    # the rest (embeddings, lm_head, norms, q/k/v biases) upcast to fp32
    assert weights.frozen_weight_bytes(tiny, s) == quantized // 2 + 4 * (TOTAL - quantized)
    # one fp32 absmax per 64 weights
    assert weights.quant_state_bytes(tiny, s) == 4 * quantized // 64
    dq = make_setup(method="qlora", quant="bnb-nf4-dq")
    blocks_per_layer = [64, 32, 32, 64, 128, 128, 128]
    expected = sum(b + 4 * 1 + 4 * 256 for b in blocks_per_layer) * 2
    assert weights.quant_state_bytes(tiny, dq) == expected


def test_optimizer_states(tiny) -> None:
    lora = make_setup(method="lora", lora_rank=8)
    n = lora_params(tiny, lora)
    assert optimizer.optimizer_state_bytes(tiny, lora) == 8 * n  # fp32 adapters, two moments
    assert optimizer.gradient_bytes(tiny, lora) == 4 * n
    assert optimizer.optimizer_step_temp_bytes(tiny, lora) == 4 * n  # foreach sqrt copy
    fused = make_setup(method="lora", optimizer="adamw-fused")
    assert optimizer.optimizer_step_temp_bytes(tiny, fused) == 0
    full16 = make_setup(method="full", precision="bf16")
    assert optimizer.optimizer_state_bytes(tiny, full16) == 4 * TOTAL  # bf16 moments
    eight = make_setup(method="full", precision="bf16", optimizer="adamw-8bit")
    # tensors of >= 4096 elements: two uint8 moments + an fp32 absmax per 256; smaller: fp32
    big = [64_000, 64_000] + 2 * [4096, 4096, 8192, 8192, 8192]  # embeddings, lm_head, q, o, MLP
    small = 2 * [2048, 2048, 64, 32, 32, 64, 64] + [64]  # k, v, biases, norms; final norm
    expected = sum(2 * (n + 4 * -(-n // 256)) for n in big) + sum(2 * 4 * n for n in small)
    assert sum(big) + sum(small) == TOTAL
    assert optimizer.optimizer_state_bytes(tiny, eight) == expected
    assert optimizer.optimizer_state_bytes(tiny, make_setup(method="full", optimizer="sgd")) == 0
    assert trainable_params(tiny, full16) == TOTAL


def test_loss_chain(tiny) -> None:
    s = make_setup(seq_len=32, micro_batch=2)
    t = 64
    assert loss.softcap_bytes(tiny, s) == 0  # only Gemma-2 soft-caps its logits
    assert loss.log_softmax_bytes(tiny, s) == 4 * t * 1000
    assert loss.loss_backward_temp_bytes(tiny, s) == 8 * t * 1000


def test_lora_layer_activations(tiny) -> None:
    s = make_setup(method="lora", lora_rank=8, lora_dropout=0.0, seq_len=32, grad_checkpointing=False)
    t = 32
    norms = 2 * (4 * t * 64 + 4 * t)
    attention = 2 * t * (2 * 64 + 2 * 32) + 4 * 1 * 4 * 32  # q,k,v,out + logsumexp
    mlp = 3 * 2 * t * 128
    lora = 6 * t * (2 * 64 + 2 * 8) + t * (2 * 128 + 2 * 8)
    assert activations.layer_saved_bytes(tiny, s, 0) == norms + attention + mlp + lora
    with_dropout = s.model_copy(update={"lora_dropout": 0.1})
    mask = t * (6 * 64 + 128)  # one bool per input element of each adapted linear
    assert activations.layer_saved_bytes(tiny, with_dropout, 0) == norms + attention + mlp + lora + mask


def test_eager_keeps_scores(tiny) -> None:
    sdpa = make_setup(method="lora", seq_len=64, grad_checkpointing=False)
    eager = sdpa.model_copy(update={"attention": "eager"})
    diff = activations.attention_core_bytes(tiny, eager, False) - activations.attention_core_bytes(tiny, sdpa, False)
    s, a, t = 64, 4, 64
    # eager: q and k/v expanded to all heads (3 x 64 wide) plus the fp32 softmax and its bf16
    # copy; sdpa: q, k, v, out (64 + 32 + 32 + 64 wide) and the fp32 logsumexp
    eager_bytes = 2 * t * 3 * 64 + (4 + 2) * a * s * s
    sdpa_bytes = 2 * t * (64 + 32 + 32 + 64) + 4 * a * s
    assert diff == eager_bytes - sdpa_bytes


def test_checkpointing_keeps_layer_inputs(tiny) -> None:
    s = make_setup(method="lora", seq_len=32, grad_checkpointing=True)
    head = 4 * 32 * 64 + 4 * 32  # final norm
    shared = 2 * 2 * 32 * 16 + 3 * 8 * 32  # RoPE cos and sin (bf16, head_dim 16), int64 ids and labels
    assert activations.saved_activation_bytes(tiny, s) == 2 * (2 * 32 * 64) + head + shared


def test_freeze_records_only_trained_layers(tiny) -> None:
    s = make_setup(method="freeze", freeze_trainable_layers=1, seq_len=32, grad_checkpointing=False)
    assert list(activations.saving_layers(tiny, s)) == [1]
    assert trainable_params(tiny, s) == 12_416 + 24_576 + 2 * 64
