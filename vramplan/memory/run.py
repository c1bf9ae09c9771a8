"""The phases of a run around its training steps: loading the model, evaluating during
training, saving a checkpoint. Each is a phase beside the step's (phases.py), per GPU, with
its own peak; the Estimate's peak is the largest of all, named (``Estimate.phase``).

- ``load`` (:func:`load_terms`): what a rank holds while the model loads, where that is more
  than the step's weights: under ZeRO-3 without ``deepspeed.zero.Init`` (``Setup.zero3_init``,
  default :attr:`~vramplan.policy.Policy.zero3_init`) the whole 16-bit model on every rank
  before DeepSpeed partitions it (a quantized model too: transformers never builds one under
  ``zero.Init``); with a bitsandbytes base, the packed weights loaded so far beside the linear
  being quantized, in 16 bits. Data-parallel layouts (DDP, ZeRO-1/2) load
  the full 16-bit weights the step already holds, and ``device_map`` each card's share: no
  phase of their own.
- ``evaluate`` (:func:`eval_terms`): ``Trainer.evaluate`` between optimizer steps: the
  training state (weights, optimizer state; the gradients freed by ``zero_grad(set_to_none=
  True)``) beside a ``no_grad`` forward of ``eval_batch`` sequences and its loss chain, the
  logits kept for ``compute_metrics``, or a generation's KV cache (``Setup.evaluation``,
  default :attr:`~vramplan.policy.Policy.evaluation`).
- ``save`` (:func:`save_terms`): under ZeRO-3 and FSDP, what the checkpoint gathers on the
  card (one module or unit at a time, moved to the host); plain and LoRA saves copy nothing
  onto the card.

Terms keep the step's prefixes, so that device_map.card_terms and the glossary read them as
the step's: ``weights/unpartitioned``, ``weights/load_unquantized``, ``activations/eval_forward``,
``loss/eval_chain``, ``loss/eval_predictions``, ``inference/kv_cache``, ``parallel/save_gathered``.
"""

from __future__ import annotations

from vramplan.errors import VramplanError
from vramplan.memory import fused_head, inference, loss, weights
from vramplan.memory.policy import act_bytes, pointwise_bytes, policy_of, residual_bytes
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

RUN_PHASES = ("load", "evaluate", "save")
#: the step's terms that stay through a whole run (weights, optimizer state, layout buffers, CUDA's)
_KEPT = ("weights/", "optimizer/", "parallel/", "overhead/")
#: bitsandbytes quantizes at load (transformers integrations/bitsandbytes.py); GPTQ/AWQ load packed
_BNB = ("bnb-int8", "bnb-nf4", "bnb-nf4-dq", "bnb-fp4")


def zero3_init(setup: Setup) -> bool:
    """``Setup.zero3_init``, or the trainer's (:attr:`Policy.zero3_init`) when ``auto``."""
    return policy_of(setup).zero3_init if setup.zero3_init == "auto" else setup.zero3_init == "on"


def evaluation(setup: Setup) -> str:
    """``Setup.evaluation``, or the trainer's (:attr:`Policy.evaluation`) when ``auto``; a
    generation the trainer cannot run is refused, naming the field."""
    policy = policy_of(setup)
    mode = policy.evaluation if setup.evaluation == "auto" else setup.evaluation
    if mode == "generate" and not policy.eval_generate:
        allowed = "none, loss or logits" if policy.eval_logits else "none or loss"
        raise VramplanError("evaluation", f"this trainer does not generate at evaluation: {allowed}")
    if mode == "logits" and not policy.eval_logits:
        raise VramplanError(
            "evaluation", "this trainer keeps no logits at evaluation (no compute_metrics): none or loss"
        )
    return mode


def check_lengths(setup: Setup) -> None:
    """Refuse a packed plan the trainer would refuse to run (:attr:`Policy.packing_needs_flash`)."""
    if setup.lengths == "packed" and setup.attention != "flash-attn-2" and policy_of(setup).packing_needs_flash:
        raise VramplanError(
            "lengths",
            f"this trainer packs samples only under flash-attention, not {setup.attention}:"
            " --attention flash-attn-2, or --lengths fixed or variable",
        )


def eval_batch(setup: Setup) -> int:
    """``Setup.eval_batch``, or the trainer's (:attr:`Policy.eval_batch`; None: the micro-batch)."""
    if setup.eval_batch:
        return setup.eval_batch
    return policy_of(setup).eval_batch or setup.micro_batch


def _kept(step: dict[str, int], setup: Setup) -> dict[str, int]:
    """What a rank holds between optimizer steps: the step's weights, optimizer state, layout
    buffers and CUDA workspaces, without the optimizer step's temporaries and, after
    ``zero_grad(set_to_none=True)`` (:attr:`Policy.grads_set_to_none`), the gradients."""
    kept = {k: v for k, v in step.items() if k.startswith(_KEPT) and k != "optimizer/step_temporaries"}
    if not policy_of(setup).grads_set_to_none and "gradients" in step:
        kept["gradients"] = step["gradients"]
    return kept


def unpartitioned_weight_bytes(spec: ModelSpec, llm: Setup) -> int:
    """The whole model's weights as one process holds them (frozen, trainable, k-bit state)."""
    frozen = weights.frozen_weight_bytes(spec, llm) + weights.trainable_weight_bytes(spec, llm)
    return frozen + weights.quant_state_bytes(spec, llm)


def load_terms(spec: ModelSpec, setup: Setup, llm: Setup, step: dict[str, int]) -> dict[str, int] | None:
    """The load phase where it holds more than the step's weights, else None.

    ZeRO-3 without ``zero.Init``: the whole model, cast to DeepSpeed's 16-bit dtype, on every
    rank (deepspeed 0.19.8 runtime/engine.py ``_configure_distributed_model`` casts the module,
    then ``self.module.to(self.device)`` unless it was zero-initialised; the stage-3 optimizer
    partitions it afterwards). ``llm`` is the run in that dtype (phases._estimate).

    bitsandbytes: each weight arrives on the card in the checkpoint's dtype and is packed there
    (transformers 5.25 integrations/bitsandbytes.py ``Bnb4bitQuantize.convert``:
    ``Params4bit(value, ...).to(value.device)``; ``Bnb8bitQuantize`` alike; transformers 4.57
    quantizers/quantizer_bnb_4bit.py ``create_quantized_param``: ``param_value.to("cpu")``, then
    ``Params4bit(...).to(target_device)``, whose ``_quantize`` (bitsandbytes 0.50 nn/modules.py)
    moves the 16-bit weight to the card and packs it with ``quantize_4bit``), beside the weights
    packed before it: the step's weights plus the largest quantized linear in 16 bits (a lower
    bound: tensors the loader materialises ahead are not counted).

    A quantized model is never built under ``zero.Init`` (transformers 5.25 modeling_utils:
    ``needs_zero3_init = is_deepspeed_zero3_enabled() and not _is_quantized``; 4.57: ``if
    is_deepspeed_zero3_enabled() and not is_quantized``): under ZeRO-3 every rank loads it whole,
    counted in the step's dtypes (PEFT's guide measured 36.6 GB per GPU for Llama-2-70B QLoRA under
    ZeRO-3 on two GPUs, docs/source/accelerate/deepspeed.md "Memory usage": the whole packed model)."""
    bnb = setup.quant in _BNB and setup.parallel in ("none", "ddp", "zero1", "zero2", "zero3")
    unquantized = {}
    if bnb:
        vision = policy_of(llm).quantize_vision
        widest = max(lin.in_features * lin.out_features for lin in weights.quantized_linears(spec, setup.quant, vision))
        unquantized = {"weights/load_unquantized": nbytes(widest, "bf16")}
    if setup.parallel == "zero3" and (setup.quant != "none" or not zero3_init(setup)):
        return {"weights/unpartitioned": unpartitioned_weight_bytes(spec, llm), **unquantized}
    if bnb:
        loaded = {k: v for k, v in step.items() if k in ("weights/frozen", "weights/quant_state")}
        return {**loaded, **unquantized}
    return None


def kept_eval_steps(setup: Setup, batch: int) -> int:
    """Evaluation steps whose logits are on the card at once: the evaluation set's steps
    (``Setup.eval_samples`` over ``batch`` sequences on each rank), at most
    :attr:`Policy.eval_accumulation_steps`; 2 when the set's size is not given."""
    if not setup.eval_samples:
        return 2
    ranks = 1 if setup.parallel == "device_map" else setup.world_size
    steps = -(-setup.eval_samples // (batch * ranks))
    every = policy_of(setup).eval_accumulation_steps
    return max(1, min(steps, every or steps))


def eval_forward_bytes(spec: ModelSpec, ev: Setup) -> int:
    """The largest temporary of one layer's ``no_grad`` forward at the evaluation batch ``ev``:
    the layer's input and output in the residual stream, and a gated MLP's three intermediates
    (act(gate), up, their product: 3·t·I) or eager attention's scores and softmax; nothing is
    saved for backward."""
    t = ev.tokens
    inter = spec.intermediate_size
    if spec.moe is not None:
        inter = max(inter, spec.moe.expert_intermediate_size * spec.moe.experts_per_token)
    mlp = (3 if spec.gated_mlp else 2) * t * inter * pointwise_bytes(ev)
    if ev.attention == "eager":
        mlp = max(mlp, (4 + act_bytes(ev)) * ev.micro_batch * spec.num_heads * ev.seq_len**2)
    return 2 * t * spec.hidden_size * residual_bytes(ev) + mlp


def eval_terms(
    spec: ModelSpec, setup: Setup, llm: Setup, step: dict[str, int], forward: dict[str, int]
) -> dict[str, int] | None:
    """The evaluate phase (None when the run does not evaluate): the training state
    (:func:`_kept`) and autocast's weight copies made in forward (``forward``: the step's
    ``forward_end`` terms; autocast caches casts of parameters that require grad whatever the
    grad mode), with the larger of a layer's ``no_grad`` forward and the loss chain at the
    evaluation batch (transformers ``Trainer.prediction_step``: ``compute_loss`` under
    ``torch.no_grad()``; the trainer's own chain, the full logits or TRL's fused head).

    ``logits``: ``prediction_step`` returns the logits and labels, kept for ``compute_metrics``:
    transformers 5.25 ``Trainer.evaluation_loop`` gathers them from every rank
    (``gather_for_metrics``) and ``EvalLoopContainer.add`` concatenates them with the earlier
    steps' (``nested_concat``: ``torch.cat``, a new tensor) on the card until
    ``eval_accumulation_steps`` moves them to the host (:func:`kept_eval_steps`). The logits are
    fp32 under accelerate's autocast wrapper (accelerate 1.16 ``Accelerator.prepare_model``:
    ``convert_outputs_to_fp32``; DeepSpeed runs its own 16-bit model, unwrapped), an int64 per
    position when the trainer's ``preprocess_logits_for_metrics`` takes the argmax; labels an int64
    per position. The worst of the last kept step: the earlier steps' beside this one's loss
    chain, or the concatenation (the earlier steps, this one's and the result: twice the kept
    logits). TRL's fused head makes no logits: asked for them, ``SFTTrainer.compute_loss`` runs the
    model's forward again after the loss (trl 1.16 trainer/sft_trainer.py, ``return_outputs``), so this
    step's chain is the larger of the fused loss and the logits that forward returns.

    ``generate``: ``Seq2SeqTrainer.prediction_step`` runs ``model.generate`` (KV cache of the
    prompt and the new tokens, inference.kv_cache_bytes, beside the prompt's forward,
    inference.prefill_transient_bytes), then the loss forward where the trainer runs one
    (:attr:`Policy.eval_generate_loss`); the larger of the two. Under ZeRO-3 a trainer that
    gathers the model to generate (:attr:`Policy.eval_generate_gathers`) holds it whole meanwhile."""
    mode = evaluation(setup)
    if mode == "none":
        if setup.eval_batch:
            raise VramplanError("eval_batch", "no evaluation runs: set --evaluation loss, logits or generate")
        return None
    b = eval_batch(setup)
    ev = llm.model_copy(update={"micro_batch": b})
    kept = _kept(step, setup)
    kept["weights/autocast_copies"] = forward.get("weights/autocast_copies", 0)
    if "parallel/gathered_weights" in forward:  # ZeRO-3/FSDP gather as the step's forward does
        kept["parallel/gathered_weights"] = forward["parallel/gathered_weights"]
    if "overhead/dequant_workspace" in forward:
        kept["overhead/dequant_workspace"] = forward["overhead/dequant_workspace"]
    # kept logits are as the model returned them: fp32 where accelerate wrapped the forward for
    # autocast (``convert_outputs_to_fp32``), else in the activations' dtype
    wrapped = policy_of(llm).autocast and setup.parallel not in ("zero1", "zero2", "zero3")
    kept_bytes = 4 if wrapped else act_bytes(ev)
    if policy_of(llm).loss_chain == "fused_head":
        n = b * (llm.seq_len - 1)  # phases.sft_scored_tokens at the evaluation batch
        chain = fused_head.forward_bytes(spec, ev, n)
        if mode == "logits":  # the fused head makes none: TRL runs the forward again for them, after the loss
            chain = max(chain, kept_bytes * ev.tokens * spec.vocab_size)  # (trl 1.16 SFTTrainer.compute_loss)
    else:
        chain = loss.forward_chain_bytes(spec, ev) + loss.softcap_bytes(spec, ev)
    chain += nbytes(ev.tokens * spec.hidden_size, policy_of(ev).residual)  # the last hidden states
    scored = {"loss/eval_chain": chain}
    forward_layer = {"activations/eval_forward": eval_forward_bytes(spec, ev)}
    candidates = [scored, forward_layer]
    if mode == "logits":  # gathered from every rank
        per_batch = 8 * ev.tokens if policy_of(llm).eval_argmax else kept_bytes * ev.tokens * spec.vocab_size
        ranks = 1 if setup.parallel == "device_map" else setup.world_size
        preds, labels = ranks * per_batch, ranks * 8 * ev.tokens
        k = kept_eval_steps(setup, b)
        scored["loss/eval_predictions"] = (k - 1) * (preds + labels)
        if k > 1:  # nested_concat: the kept steps, this one's and their concatenation at once
            candidates.append({"loss/eval_predictions": 2 * k * preds + (k - 1) * labels})
    best = max(candidates, key=lambda t: sum(t.values()))
    if mode == "generate":
        if not policy_of(llm).eval_generate_loss:
            best = {}  # the labels are dropped before generating: no loss forward
        new = policy_of(llm).eval_new_tokens
        gen = ev.model_copy(update={"seq_len": llm.seq_len + new})
        generation = {
            "inference/kv_cache": inference.kv_cache_bytes(spec, gen),
            "inference/transient": inference.prefill_transient_bytes(spec, gen),
        }
        if setup.parallel == "zero3" and policy_of(llm).eval_generate_gathers:  # the whole model, on every rank
            generation["parallel/gathered_weights"] = unpartitioned_weight_bytes(spec, llm)
        best = max((best, generation), key=lambda t: sum(t.values()))
    return {**kept, **best}


def save_terms(spec: ModelSpec, setup: Setup, step: dict[str, int]) -> dict[str, int] | None:
    """The save phase under ZeRO-3 and FSDP (None otherwise: a plain or LoRA save reads the
    tensors where they are and safetensors copies each to the host on its own).

    transformers 5.25 ``Trainer.save_model``: under ZeRO-3 ``accelerator.get_state_dict(self.deepspeed)``
    (PEFT: ``_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)``), which needs
    ``stage3_gather_16bit_weights_on_model_save`` (the emitted configs set it, frameworks/files/launch.py;
    LLaMA-Factory's ds_z3_config.json too). deepspeed 0.19.8 runtime/engine.py
    ``_zero3_consolidated_16bit_state_dict`` gathers one module's parameters at a time
    (``GatheredParameters(module.parameters(recurse=False), modifier_rank=0)``, frozen ones too: the
    filter applies to what is copied) and keeps ``param.detach().cpu()``: the largest module, the
    embedding (V·h in 16 bits), is what lands on the card. FSDP: with ``FULL_STATE_DICT`` (accelerate
    1.16's default for FSDP1; FSDP2's is ``SHARDED_STATE_DICT``, saved shard by shard)
    ``Accelerator.get_state_dict`` asks FSDP1 for ``offload_to_cpu=True, rank0_only=True`` (one unit
    gathered at a time) and FSDP2's ``get_model_state_dict`` for ``cpu_offload=True`` (one parameter
    at a time): the embedding at most. Beside the training state, between optimizer steps
    (:func:`_kept`), no layer gathered for compute."""
    if setup.parallel not in ("zero3", "fsdp"):
        return None
    dt = "fp32" if setup.parallel == "fsdp" and policy_of(setup).weights == "fp32" else "bf16"
    kept = {k: v for k, v in _kept(step, setup).items() if k != "parallel/gathered_weights"}  # no layer runs
    return {**kept, "parallel/save_gathered": nbytes(spec.vocab_size * spec.hidden_size, dt)}


def with_run_phases(
    spec: ModelSpec, setup: Setup, llm: Setup, per_phase: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """``per_phase`` (the step's phases, per GPU) with the run's: ``load``, ``evaluate`` and
    ``save`` where the run has them (see the module docstring). ``setup`` is the user's run with
    the trainer's policy, ``llm`` the language model's (in DeepSpeed's 16 bits, image tokens in)."""
    check_lengths(setup)
    step = per_phase["optimizer_step"]
    forward = per_phase.get("forward_end", {})
    made = {
        "load": load_terms(spec, setup, llm, step),
        "evaluate": eval_terms(spec, setup, llm, step, forward),
        "save": save_terms(spec, setup, step),
    }
    return {**per_phase, **{name: terms for name, terms in made.items() if terms is not None}}
