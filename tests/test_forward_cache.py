"""The checkpointed layers' blocks cached beside the loss chain (vramplan/memory/forward_cache.py):
on the reserved and device tiers, not in what the card must offer, and only where the chain's
blocks are too large to reuse them. Held against replayed traces in tests/test_allocator.py
(``test_plan_covers_what_a_card_needs_at_16k_tokens``)."""

from __future__ import annotations

from vramplan import plan
from vramplan.memory import forward_cache
from vramplan.memory.activations import mlp_bytes, recomputed_down_adapter_bytes
from vramplan.memory.phases import estimate
from vramplan.memory.policy import with_policy
from vramplan.models import load_model
from vramplan.policy import default_policy
from vramplan.setup import make_setup

GIB = 2**30
QWEN = load_model("qwen2.5-7b")


def _est(**kw: object):  # the plain transformers loop: full logits
    setup = make_setup(**{"method": "lora", "seq_len": 16384, "grad_checkpointing": True, **kw})
    return estimate(QWEN, setup, policy=default_policy(setup)), setup


def test_the_layer_s_forward_temporaries_sit_beside_the_chain_on_the_reserved_tier_only() -> None:
    est, setup = _est()
    run = with_policy(setup, default_policy(setup))
    cached = est.terms[forward_cache.TERM]
    # LoRA with dropout: the moment at down_proj's adapter outweighs the MLP's three intermediates
    t, h, inter = 16384, QWEN.hidden_size, QWEN.intermediate_size
    assert recomputed_down_adapter_bytes(QWEN, run) == 10 * t * (h + inter) > mlp_bytes(QWEN, run, 0, False)
    slack = est.terms["overhead/allocator_slack"]  # it holds the first GiB of them already
    assert cached == forward_cache.layer_forward_bytes(QWEN, run) - slack == 10 * t * (h + inter) - slack
    assert est.reserved_bytes - est.allocated_bytes >= cached + slack
    assert est.device_bytes - est.needed_bytes == cached  # freed by torch before out-of-memory
    no_dropout, _ = _est(lora_dropout=0.0)
    assert no_dropout.terms[forward_cache.TERM] == 3 * 2 * t * inter - slack  # gate, up and the activation
    short, _ = _est(seq_len=2048)  # one layer's blocks under the slack: nothing added
    assert forward_cache.TERM not in short.terms


def test_nothing_is_left_aside_where_nothing_is_freed_or_the_chain_reuses_it() -> None:
    saved, _ = _est(grad_checkpointing=False)  # the intermediates are saved: allocated, not cached
    assert forward_cache.TERM not in saved.terms
    fsdp, _ = _est(num_gpus=2, parallel="fsdp")  # FSDP's per-stream caches are their own term
    assert forward_cache.TERM not in fsdp.terms
    trl = plan("qwen2.5-7b", gpu="h100", method="lora", seq_len=16384, trainer="trl")  # fused head: no t·V block
    assert forward_cache.TERM not in trl.terms


def test_the_note_says_what_nvidia_smi_reads_and_what_the_card_must_offer() -> None:
    p = plan("qwen2.5-7b", gpu="h100", method="lora", seq_len=16384, trainer="llamafactory")
    (note,) = [n for n in p.notes if n.code == "memory.forward_segments"]
    assert note.data["forward_segments_bytes"] == p.terms[forward_cache.TERM] > GIB  # 2.4 GiB
    assert note.data["device_bytes"] - note.data["needed_bytes"] == note.data["forward_segments_bytes"]
    assert "nvidia-smi will read about" in note.text and "it runs on a card of" in note.text
    short = plan("qwen2.5-7b", gpu="h100", method="lora", seq_len=1024, trainer="llamafactory")
    assert not [n for n in short.notes if n.code == "memory.forward_segments"]  # under a GiB: tiers only
