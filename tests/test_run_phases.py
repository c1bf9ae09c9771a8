"""The phases of a run around the step (vramplan/memory/run.py): load, evaluate, save, each
checked against the hand-computed value for a real catalog spec, and the trainers' defaults."""

from __future__ import annotations

import csv

import pytest

from vramplan import plan
from vramplan.errors import VramplanError
from vramplan.frameworks import framework
from vramplan.memory import estimate
from vramplan.memory.phases import phase_terms
from vramplan.memory.policy import with_policy
from vramplan.memory.run import eval_batch
from vramplan.models import load_model
from vramplan.params import param_counts
from vramplan.setup import Setup

GIB = 2**30
LF = framework("llamafactory")


def _est(spec, trainer: str = "llamafactory", **kw):
    setup = Setup(**{"precision": "bf16", "attention": "sdpa", **kw})
    return estimate(spec, setup, policy=framework(trainer).policy(setup))


def test_zero3_without_zero_init_loads_the_whole_16bit_model_on_every_rank() -> None:
    """lf-3035 (LLaMA-Factory through accelerate, zero3_init_flag false): Qwen1.5-14B LoRA on 2 x 4090."""
    spec = load_model("qwen1.5-14b")
    kw = dict(method="lora", lora_targets="q_proj,v_proj", seq_len=1024, grad_accum=6, num_gpus=2, parallel="zero3")
    on = _est(spec, **kw)
    off = _est(spec, zero3_init="off", **kw)
    assert "load" not in on.phases  # llamafactory-cli: the weights arrive partitioned
    assert off.phase == "load"
    lora = off.trainable_params
    base = param_counts(spec).total
    # the base in bf16 beside LLaMA-Factory's fp32 adapters, whole, on each of the two ranks
    assert off.terms["weights/unpartitioned"] == 2 * base + 4 * lora
    assert off.phases["load"] > 1.4 * on.allocated_bytes  # well above the partitioned step's peak
    p = plan("qwen1.5-14b", gpu="4090", trainer="llamafactory", zero3_init="off", precision="bf16", **kw)
    assert not p.fits and p.peak.phase == "load"


def test_zero3_init_defaults_to_on_for_every_trainer() -> None:
    for name in ("trl", "llamafactory", "swift", "axolotl", "hf"):
        setup = Setup(method="lora", parallel="zero3", num_gpus=2)
        assert framework(name).policy(setup).zero3_init, name


def test_bitsandbytes_load_holds_one_linear_in_16_bits_beside_the_packed_ones() -> None:
    spec = load_model("qwen2.5-7b")
    est = _est(spec, "trl", method="qlora", quant="bnb-nf4")
    load = est.phases["load"]
    widest = 3584 * 18944  # Qwen2.5-7B's MLP projections, the largest quantized linear
    step_weights = est.phases["optimizer_step"] - sum(
        v
        for k, v in est.terms.items()
        if k not in ("weights/frozen", "weights/quant_state") and not k.startswith("overhead/")
    )
    assert load > 2 * widest
    assert load < est.allocated_bytes  # below the step's peak: it never decides a QLoRA plan
    assert step_weights > 0


def test_no_plan_evaluates_by_default() -> None:
    spec = load_model("qwen2.5-0.5b")
    for name in ("trl", "llamafactory", "swift", "axolotl", "hf"):
        assert "evaluate" not in _est(spec, name, method="lora").phases, name


def test_evaluation_defaults_per_trainer() -> None:
    setup = Setup(method="lora", micro_batch=4)
    got = {name: eval_batch(with_policy(setup, framework(name).policy(setup))) for name in ("trl", "swift", "axolotl")}
    assert got == {"trl": 8, "swift": 1, "axolotl": 4}  # TrainingArguments' 8, swift's 1, axolotl's micro-batch
    assert eval_batch(with_policy(setup.model_copy(update={"eval_batch": 3}), LF.policy(setup))) == 3


def test_loss_only_evaluation_is_the_training_state_and_the_eval_batch_loss_chain() -> None:
    """Full logits (LLaMA-Factory): bf16 logits, their fp32 copy and the fp32 log-softmax
    (2 + 4 + 4 bytes per position and vocabulary entry) beside the last hidden states, over the
    training state between steps (no gradients, no optimizer-step temporaries)."""
    spec = load_model("qwen2.5-0.5b")
    setup = Setup(method="lora", precision="bf16", attention="sdpa", seq_len=1024, evaluation="loss", eval_batch=4)
    est = estimate(spec, setup, policy=LF.policy(setup))
    t = 4 * 1024
    assert est.phase == "evaluate"  # 4 x 1024 positions of a 152k vocabulary outweigh one training sequence
    assert est.terms["loss/eval_chain"] == 10 * t * spec.vocab_size + 2 * t * spec.hidden_size
    step = phase_terms(spec, with_policy(setup, LF.policy(setup)))
    kept = sum(v for k, v in step["optimizer_step"].items() if k not in ("gradients", "optimizer/step_temporaries"))
    kept += step["forward_end"]["weights/autocast_copies"]
    assert est.phases["evaluate"] == kept + est.terms["loss/eval_chain"]
    # the eval batch, not the training micro-batch, sizes it
    again = estimate(spec, setup.model_copy(update={"micro_batch": 2}), policy=LF.policy(setup))
    assert again.phases["evaluate"] == est.phases["evaluate"]


def test_evaluation_grows_with_its_batch_and_logits_cost_more_than_the_loss() -> None:
    spec = load_model("qwen2.5-0.5b")
    sizes = [_est(spec, method="lora", evaluation="loss", eval_batch=b).phases["evaluate"] for b in (1, 2, 4, 8)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    loss = _est(spec, "hf", method="lora", evaluation="loss", eval_batch=2).phases["evaluate"]
    logits = _est(spec, "hf", method="lora", evaluation="logits", eval_batch=2).phases["evaluate"]
    argmax = _est(spec, "llamafactory", method="lora", evaluation="logits", eval_batch=2).phases["evaluate"]
    t = 2 * 2048
    # two steps' fp32 logits and int64 labels: concatenating them holds the kept step's, this one's
    # and the result (4 x 4·t·V) where loss-only holds the chain (10·t·V) and the last hidden states
    assert logits - loss == 16 * t * spec.vocab_size + 8 * t - (10 * t * spec.vocab_size + 2 * t * spec.hidden_size)
    lf_loss = _est(spec, "llamafactory", method="lora", evaluation="loss", eval_batch=2).phases["evaluate"]
    assert argmax - lf_loss == 16 * t  # LLaMA-Factory's eval_logit_processor keeps the argmax (and labels)
    # the evaluation set's size: every step's logits stay until the end, gathered from each rank
    ddp = dict(num_gpus=2, parallel="ddp")
    whole = _est(spec, "hf", method="lora", evaluation="logits", eval_batch=2, eval_samples=16, **ddp)
    steps = 16 // (2 * 2)
    assert whole.terms["loss/eval_predictions"] == 2 * steps * 2 * 4 * t * spec.vocab_size + (steps - 1) * 2 * 8 * t


def test_trl_evaluates_through_its_fused_head() -> None:
    spec = load_model("qwen2.5-0.5b")
    est = _est(spec, "trl", method="lora", evaluation="loss", eval_batch=8)
    hf = _est(spec, "hf", method="lora", evaluation="loss", eval_batch=8)
    assert est.phases["evaluate"] < hf.phases["evaluate"] - 8 * 2048 * spec.vocab_size  # no logits built


def test_generation_at_evaluation_counts_the_kv_cache() -> None:
    spec = load_model("qwen2.5-7b")
    est = _est(spec, method="lora", evaluation="generate", eval_batch=64, seq_len=1024)
    assert est.phase == "evaluate"
    # K and V of 28 layers x 4 kv heads x 128, bf16, for the prompt and LLaMA-Factory's 1024 new tokens
    assert est.terms["inference/kv_cache"] >= 2 * 28 * 4 * 128 * 64 * (1024 + 1024) * 2
    assert "loss/eval_chain" not in est.terms  # LLaMA-Factory pops the labels: no loss forward
    hf = _est(spec, "hf", method="lora", evaluation="generate", eval_batch=64, seq_len=1024)
    assert hf.terms["loss/eval_chain"] > 0  # Seq2SeqTrainer's loss forward after generating is the larger
    # generating many tokens, the KV cache is the larger of Seq2SeqTrainer's two
    setup = Setup(method="lora", precision="bf16", attention="sdpa", evaluation="generate", eval_batch=8, seq_len=1024)
    long = framework("hf").policy(setup).model_copy(update={"eval_new_tokens": 30000})
    est = estimate(spec, setup, policy=long)
    assert est.phase == "evaluate" and est.terms["inference/kv_cache"] >= 2 * 28 * 4 * 128 * 8 * 31024 * 2
    hf_gen = dict(method="lora", evaluation="generate", eval_batch=8, seq_len=1024)
    loss_only = _est(spec, "hf", **{**hf_gen, "evaluation": "loss"})
    assert _est(spec, "hf", **hf_gen).phases["evaluate"] >= loss_only.phases["evaluate"]


@pytest.mark.parametrize("trainer", ["trl", "axolotl"])
def test_generation_the_trainer_cannot_run_is_refused_naming_the_field(trainer: str) -> None:
    spec = load_model("qwen2.5-0.5b")
    with pytest.raises(VramplanError) as err:
        _est(spec, trainer, method="lora", evaluation="generate")
    assert err.value.field == "evaluation"


def test_kept_logits_the_trainer_cannot_keep_are_refused_naming_the_field() -> None:
    """axolotl 0.19 passes no compute_metrics to its trainer: loss only; TRL recomputes logits for one."""
    spec = load_model("qwen2.5-0.5b")
    with pytest.raises(VramplanError) as err:
        _est(spec, "axolotl", method="lora", evaluation="logits")
    assert err.value.field == "evaluation" and "none or loss" in str(err.value)
    assert _est(spec, "axolotl", method="lora", evaluation="loss").phases["evaluate"]
    # TRL's fused head makes no logits: it runs the forward again for them, and this step's are held
    trl = _est(spec, "trl", method="lora", evaluation="logits", eval_batch=64, eval_samples=64, seq_len=2048)
    assert trl.phase == "evaluate" and trl.terms["loss/eval_chain"] >= 2 * 64 * 2048 * spec.vocab_size


def test_packing_the_trainer_refuses_under_sdpa_is_refused_naming_the_field() -> None:
    """ms-swift's SftArguments._check_padding_free refuses --packing without flash-attention; TRL runs it."""
    spec = load_model("qwen2.5-0.5b")
    with pytest.raises(VramplanError) as err:
        _est(spec, "swift", method="lora", lengths="packed")
    assert err.value.field == "lengths" and "flash-attn-2" in str(err.value)
    assert _est(spec, "swift", method="lora", lengths="packed", attention="flash-attn-2").allocated_bytes
    assert _est(spec, "trl", method="lora", lengths="packed").allocated_bytes


@pytest.mark.parametrize("layout", ["zero3", "fsdp"])
def test_saving_gathers_the_embedding_once_below_the_step(layout: str) -> None:
    spec = load_model("qwen2.5-7b")
    est = _est(spec, "trl", method="full", num_gpus=4, parallel=layout)
    assert est.phases["save"] < est.allocated_bytes
    plain = _est(spec, "trl", method="full")
    assert "save" not in plain.phases  # a plain save copies nothing onto the card


@pytest.mark.parametrize("layout", ["ddp", "zero1", "zero2"])
def test_data_parallel_loads_nothing_beyond_the_steps_full_16bit_weights(layout: str) -> None:
    """Every rank loads the whole model, which the step already holds in full (DeepSpeed casts an
    AMP model to 16 bits before moving it: the step's weights are 16-bit too)."""
    spec = load_model("qwen2.5-7b")
    est = _est(spec, "trl", method="lora", num_gpus=4, parallel=layout, precision="amp-bf16")
    assert "load" not in est.phases
    weights = est.terms["weights/frozen"]
    full = param_counts(spec).total
    assert weights == (4 if layout == "ddp" else 2) * full  # DDP keeps AMP's fp32 weights; DeepSpeed 16-bit ones


def test_device_map_loads_each_cards_share_only() -> None:
    spec = load_model("qwen2.5-7b")
    est = _est(spec, "trl", method="lora", num_gpus=2, parallel="device_map", zero3_init="off")
    assert "load" not in est.phases and len(est.cards) == 2


def test_swift_gathers_the_whole_model_to_generate_under_zero3() -> None:
    spec = load_model("qwen2.5-7b")
    kw = dict(method="lora", num_gpus=4, parallel="zero3", evaluation="generate", seq_len=512)
    swift = _est(spec, "swift", **kw)
    assert swift.phase == "evaluate"
    assert swift.terms["parallel/gathered_weights"] >= 2 * param_counts(spec).total  # bf16, whole
    setup = Setup(precision="bf16", attention="sdpa", **kw)
    layerwise = framework("swift").policy(setup).model_copy(update={"eval_generate_gathers": False})
    hooks = estimate(spec, setup, policy=layerwise)  # generating through ZeRO-3's per-layer gathering
    step_gathered = _est(spec, "swift", method="lora", num_gpus=4, parallel="zero3").terms["parallel/gathered_weights"]
    gap = swift.phases["evaluate"] - hooks.phases["evaluate"]
    # generating layer by layer holds what ZeRO-3 gathers per layer (memory/zero.py: at most what the
    # step keeps gathered); gathering the whole model holds the rest of it too
    layerwise_gathered = swift.terms["parallel/gathered_weights"] - gap
    assert 0 < layerwise_gathered <= step_gathered


def test_measured_rows_may_state_the_runs_phases(tmp_path) -> None:
    """The published-measurements schema's optional settings column (published.py row_settings)
    states the run's phases: lf-3035 as its thread ran it, LLaMA-Factory through accelerate with
    zero3_init_flag false, is an out-of-memory the plan now calls; blank keeps the trainer's default."""
    from vramplan.published import COLUMNS, compare_csv

    row = dict.fromkeys(COLUMNS, "")
    row.update(
        source="https://github.com/hiyouga/LlamaFactory/issues/3035",
        trainer="llamafactory",
        model="qwen1.5-14b",
        method="lora",
        precision="bf16",
        lora_targets="q_proj,v_proj",
        optimizer="adamw",
        seq_len="1024",
        micro_batch="1",
        grad_accum="6",
        grad_checkpointing="true",
        attention="sdpa",
        num_gpus="2",
        parallel="zero3",
        gpu="4090",
        measurement="unknown",
        outcome="oom",
    )
    path = tmp_path / "rows.csv"
    with path.open("w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=COLUMNS)
        out.writeheader()
        for rid, settings in (("stated", "zero3_init=off"), ("blank", "")):
            out.writerow({**row, "id": rid, "settings": settings})
    got = {c.id: c.fits for c in compare_csv(path)}
    assert got == {"stated": False, "blank": True}


def test_an_evaluation_batch_without_an_evaluation_is_refused_naming_the_field() -> None:
    spec = load_model("qwen2.5-0.5b")
    with pytest.raises(VramplanError) as err:
        _est(spec, method="lora", eval_batch=4)  # LLaMA-Factory evaluates only with val_size
    assert err.value.field == "eval_batch"


def test_a_quantized_model_loads_whole_on_every_zero3_rank() -> None:
    """transformers builds no quantized model under zero.Init: QLoRA under ZeRO-3 loads the packed
    model whole on each rank, whatever zero3_init says."""
    spec = load_model("qwen2.5-7b")
    kw = dict(method="qlora", quant="bnb-nf4", num_gpus=4, parallel="zero3")
    est = _est(spec, "trl", **kw)
    single = _est(spec, "trl", method="qlora", quant="bnb-nf4")
    adapters = single.terms["weights/trainable"]  # on the card too when DeepSpeed takes the module
    assert est.phases["load"] == single.phases["load"] + adapters  # the packed model and one 16-bit linear
    assert est.phases["load"] > est.phases["optimizer_step"]


def test_llama2_70b_qlora_zero3_holds_the_whole_packed_model_per_gpu() -> None:
    """PEFT's guide (docs/source/accelerate/deepspeed.md, "Use PEFT QLoRA and DeepSpeed with ZeRO3",
    https://github.com/huggingface/peft/blob/main/docs/source/accelerate/deepspeed.md): Llama-2-70B
    QLoRA (nf4, double quant, bf16 storage) under ZeRO-3 on 2 GPUs, "the memory consumed per GPU is
    36.6 GB" (tables/measured/published.csv row 267, GB as printed): the whole packed model on each
    GPU, where half of it would leave the step's peak far below."""
    spec = load_model("llama-2-70b")
    kw = dict(method="qlora", quant="bnb-nf4-dq", num_gpus=2, parallel="zero3", micro_batch=2, grad_accum=2)
    est = _est(spec, "trl", attention="flash-attn-2", **kw)
    assert est.phase == "load"
    assert est.terms["weights/unpartitioned"] > 2 * 0.9 * 35e9 / 2  # 69B at 4 bits, and the 16-bit rest
    assert abs(est.reserved_bytes / 36.6e9 - 1) < 0.10  # 39.43 GB: +7.7%


def test_every_run_phase_and_term_is_explained() -> None:
    from vramplan import glossary

    spec = load_model("qwen2.5-7b")
    made = [
        _est(spec, method="lora", num_gpus=2, parallel="zero3", zero3_init="off"),
        _est(spec, "trl", method="qlora", quant="bnb-nf4"),
        _est(spec, "hf", method="lora", evaluation="logits", eval_batch=8),
        _est(spec, "hf", method="lora", evaluation="loss", eval_batch=1, seq_len=128),
        _est(spec, method="lora", evaluation="generate", eval_batch=64, seq_len=1024),
        _est(spec, "trl", method="full", num_gpus=4, parallel="zero3"),
    ]
    assert {"load", "evaluate", "save"} <= {p for est in made for p in est.phases}
    assert all(glossary.phase(p) for est in made for p in est.phases)
    assert all(glossary.term(t) for est in made for t in est.terms), [t for e in made for t in e.terms]
