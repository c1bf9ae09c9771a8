"""plan(): the search, the verdict, pinned fields and the alternatives."""

from __future__ import annotations

import pytest

from vramplan import plan
from vramplan.errors import VramplanError


def test_small_model_gets_full_finetuning_on_a_big_card() -> None:
    p = plan("qwen2.5-0.5b", gpu="a100-80g")
    assert p.fits
    assert p.setup.method == "full"
    assert p.setup.precision == "amp-bf16"
    assert p.setup.micro_batch == 8  # the largest weighed micro-batch fits


def test_7b_on_a_4090_is_lora_or_qlora_and_fits() -> None:
    p = plan("qwen2.5-7b", gpu="4090")
    assert p.fits
    assert p.setup.method in ("lora", "qlora")
    assert p.headroom_bytes == p.gpu.memory_bytes - p.peak.device_bytes
    assert sum(p.terms.values()) == p.peak.device_bytes
    assert any(a.chosen for a in p.alternatives)
    assert any(not a.fits and a.setup.method == "full" for a in p.alternatives)
    assert all(a.reason for a in p.alternatives)


def test_pinned_fields_are_kept() -> None:
    p = plan("qwen2.5-7b", gpu="4090", method="lora", seq_len=4096, micro_batch=1, grad_checkpointing=True)
    s = p.setup
    assert (s.method, s.seq_len, s.micro_batch, s.grad_checkpointing) == ("lora", 4096, 1, True)


def test_checkpointing_only_when_needed() -> None:
    p = plan("qwen2.5-0.5b", gpu="h100", method="lora", micro_batch=1, seq_len=512)
    assert p.setup.grad_checkpointing is False
    assert any("resolved to" in n.text for n in p.notes)  # h100 -> H100 SXM says so


def test_no_fit_reports_the_smallest_and_suggestions() -> None:
    p = plan("qwen2.5-7b", gpu="4090", method="full")
    assert not p.fits
    assert p.headroom_bytes < 0
    assert p.peak.device_bytes == min(a.device_bytes for a in p.alternatives)
    assert any("nothing weighed fits" in n.text for n in p.notes)
    assert any("would fit without pinning method=full: lora" in n.text for n in p.notes), p.notes
    hopeless = plan("qwen2.5-72b", gpu="4090", method="full")
    assert not hopeless.fits
    assert not any("without pinning method=full: lora" in n.text for n in hopeless.notes)


def test_no_bf16_card_uses_fp16() -> None:
    p = plan("qwen2.5-1.5b", gpu="t4")
    assert p.setup.precision in ("fp16", "amp-fp16")
    with pytest.raises(VramplanError) as err:
        plan("qwen2.5-1.5b", gpu="t4", precision="bf16")
    assert err.value.field == "precision"


def test_pinning_quant_implies_qlora() -> None:
    p = plan("qwen2.5-7b", gpu="4090", quant="bnb-nf4-dq")
    assert p.setup.method == "qlora" and p.setup.quant == "bnb-nf4-dq"


def test_unknown_field_is_refused() -> None:
    with pytest.raises(VramplanError) as err:
        plan("qwen2.5-7b", gpu="4090", rank=8)
    assert err.value.field == "rank"


def test_scenario_swift_lora_on_4090d() -> None:
    """shared/SCENARIOS.md case 3: ms-swift LoRA r8 all-linear, bf16, seq 2048, batch 1 on a
    4090D; the write-up reports 18-22 GB in use; the adapter count is ~20M, not ~10M."""
    p = plan(
        "qwen2.5-7b-instruct",
        gpu="4090d",
        method="lora",
        lora_rank=8,
        lora_targets="all-linear",
        precision="bf16",
        micro_batch=1,
        grad_accum=16,
        seq_len=2048,
        grad_checkpointing=True,
    )
    assert p.fits
    # per layer r*(in+out): q,o 8*7168; k,v 8*4096; gate,up,down 8*22528; 28 layers
    assert p.trainable_params == 28 * (2 * 57_344 + 2 * 32_768 + 3 * 180_224) == 20_185_088
    assert 17e9 < p.peak.device_bytes < 25e9


def test_plan_renders_for_people() -> None:
    from rich.console import Console

    p = plan("qwen2.5-7b", gpu="4090")
    page = p._repr_html_()
    assert "qwen2.5-7b" in page and "weights/frozen" in page and "fits" in page
    console = Console(record=True, width=120)
    console.print(p)
    text = console.export_text()
    assert "weights/frozen" in text and "torch.cuda.max_memory_reserved" in text


def test_a_sequence_past_the_models_context_is_noted_and_one_within_is_not() -> None:
    """Llama-2-7B declares 4,096 positions: 16,384 is noted with both numbers, 4,096 is not."""
    long = [n for n in plan("llama-2-7b", "a100-80g", method="qlora", seq_len=16384).notes if n.code == "model.context"]
    assert len(long) == 1 and long[0].data == {"seq_len": 16384, "max_position_embeddings": 4096}
    assert "16,384" in long[0].text and "4,096" in long[0].text
    at = plan("llama-2-7b", "a100-80g", method="qlora", seq_len=4096).notes
    assert not any(n.code == "model.context" for n in at)
