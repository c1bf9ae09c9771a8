"""What the memory terms read from the trainer: one :class:`Policy` per (trainer, Setup).

A Setup says what the user asks for (method, precision, quantization); the trainer decides
how it runs it: the dtype each tensor class lives in, the loss chain, what it keeps alive,
how it pads. :func:`default_policy` is the generic loop today's estimates describe (the
plain transformers ``Trainer`` with PEFT's k-bit preparation, full logits, fixed-length
batches); each trainer in :mod:`vramplan.frameworks` returns its own.

Default dtypes by precision (``bf16``/``fp16`` mean what trainers do with ``bf16=True``:
16-bit weights, forward under ``torch.autocast``, which accelerate's
``Accelerator.prepare_model`` wraps around ``model.forward`` whenever mixed precision is set):

| precision | weights | master | grads | states | activations |
|-----------|---------|--------|-------|--------|-------------|
| fp32      | fp32    | fp32   | fp32  | fp32   | fp32        |
| bf16/fp16 | 16-bit  | 16-bit | 16-bit| 16-bit (torch keeps states in the param dtype) | 16-bit |
| amp-*     | fp32    | fp32   | fp32  | fp32   | 16-bit, with autocast's 16-bit weight copies |

LoRA adapters are fp32 whatever the base: PEFT's ``autocast_adapter_dtype=True`` upcasts
bf16/fp16 adapter weights (peft ``tuners_utils.cast_adapter_dtype``), so their grads and
optimizer states are fp32 too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from vramplan.length_file import OverCap
from vramplan.setup import Setup

DType = Literal["fp32", "bf16", "fp16"]
#: how the loss is computed from the last hidden states (``kept_positions`` is not counted yet).
LossChain = Literal["full_logits", "fused_head", "kept_positions"]
#: how a batch's samples are padded (``packed`` is not counted yet).
Padding = Literal["fixed", "longest", "packed"]
#: what an evaluation during training runs (memory/run.py): nothing, the loss only, the loss with the
#: logits kept for ``compute_metrics``, or generation (``predict_with_generate``).
Evaluation = Literal["none", "loss", "logits", "generate"]
#: the Setup fields a policy is made from (:func:`default_policy` reads the first three; axolotl's
#: also reads ``attention``): a Setup copied with another value of one of them needs its policy
#: made again.
POLICY_INPUTS = frozenset({"method", "precision", "quant", "attention"})
#: the fields only the run's phases beside the step read (memory/run.py: load, evaluate, save)
RUN_FIELDS = frozenset(
    {
        "zero3_init",
        "evaluation",
        "eval_batch",
        "eval_argmax",
        "eval_logits",
        "eval_generate",
        "eval_generate_loss",
        "eval_generate_gathers",
        "eval_new_tokens",
        "eval_accumulation_steps",
        "packing_needs_flash",
    }
)


class Policy(BaseModel):
    """The trainer's decisions the memory terms read; frozen and hashable (estimates are
    cached on it). Each field names the terms that read it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: DType
    """Weights as loaded, frozen or not yet cast: the frozen weights (weights.frozen_weight_bytes),
    LoRA's ``modules_to_save`` copies outside k-bit runs (weights.trainable_weight_bytes), which
    weights autocast copies (weights._autocast_casts), the folded weights of LoRA on fused experts
    (activations' parameter-target term), device_map._weight_dtype, parallel.gathered_bytes,
    host.host_terms' parameters, and GRPO's reference copy, head chunks and generation (rl.reference_weight_bytes,
    fused_head.head_fp32, rl.amp_copy_bytes, rl.generation_scale)."""
    master: DType
    """Trainable weights of full/freeze (the master copy), and so their gradients and optimizer
    state (``param.grad`` and torch's ``zeros_like(p)`` moments match ``param.dtype``):
    weights.trainable_weight_bytes, optimizer.gradient_bytes, optimizer.layer_gradient_kind_bytes,
    optimizer.embedding_gradient_bytes, optimizer.tied_embedding_backward_bytes,
    optimizer.optimizer_state_bytes, parallel.deepspeed_state_bytes."""
    grads: DType
    """Gradients as FSDP offloads them to the host: host.host_terms."""
    states: DType
    """Optimizer states as FSDP offloads them to the host: host.host_terms."""
    adapter: DType
    """LoRA adapters, and so their gradients and optimizer states: weights.trainable_weight_bytes,
    optimizer._by_dtype (gradient_bytes, optimizer_state_bytes), optimizer.layer_gradient_kind_bytes;
    autocast's copies of them (weights.forward_autocast_copy_bytes, none when they already are in
    the activations' dtype) and the grad of the widest adapter input
    (activations.backward_transient_bytes)."""
    extra_trainable: DType
    """Embeddings/lm_head trained beside the adapters (``modules_to_save``): their gradients and
    optimizer states (optimizer._by_dtype, optimizer.embedding_gradient_bytes)."""
    extra_weights: DType | None = None
    """LoRA's ``modules_to_save`` copies' own weights (weights.trainable_weight_bytes). None: the
    dtype of the module they copy (PEFT deep-copies it; under QLoRA that is ``kbit_modules``); a
    trainer that casts its trainable parameters names the dtype it casts them to."""
    activations: DType
    """Activations saved for backward and the logits (memory/policy.py ``act_bytes``):
    activations.*, loss.*, vision.*, rl.head_tile_bytes and the fused head."""
    autocast: bool
    """The forward runs under ``torch.autocast`` (16-bit copies of fp32 weights, cached):
    weights._autocast_casts, weights.forward_autocast_copy_bytes, the AMP promotion in
    activations (an fp32 residual meets 16-bit outputs), rl.amp_copy_bytes, rl.generation_scale."""
    kbit_upcast: bool
    """PEFT ``prepare_model_for_kbit_training`` ran: embeddings, norms and lm_head are fp32 (not on
    GPTQ models): fused_head.head_fp32, rl.generation_scale (memory/policy.py ``upcast_kbit``); the
    defaults of ``residual``, ``pointwise``, ``extra_trainable`` and ``kbit_modules`` follow it."""
    kbit_modules: DType
    """Parameters a k-bit quantizer leaves alone (embeddings, lm_head, norms, biases):
    weights.unquantized_dtype, read by weights.frozen_weight_bytes, weights.trainable_weight_bytes,
    weights._autocast_casts (lm_head's copy) and, under QLoRA, the folded weights of LoRA on
    fused experts (activations' parameter-target term)."""
    quantize_vision: bool = True
    """A k-bit quantizer (bitsandbytes) replaces the vision tower's linears too: transformers'
    default skip list (``get_keys_to_not_convert``) keeps only lm_head. ``False``: the trainer passes
    the vision tower in ``llm_int8_skip_modules`` and it stays in the weights' dtype
    (weights.quantized_linears, read by weights.frozen_weight_bytes and weights.quant_state_bytes)."""
    residual: DType
    """The residual stream: fp32 under AMP (fp32 embeddings plus 16-bit linear outputs promote),
    in fp32 and after k-bit upcasting, else 16-bit (memory/policy.py ``residual_bytes``):
    activations.* (norms, residual adds, checkpoints), rl.fused_head_*_bytes."""
    pointwise: DType
    """MLP intermediates (outside autocast's matmul list; bitsandbytes linears return their
    input's dtype, ``out.to(inp_dtype)``; memory/policy.py ``pointwise_bytes``): activations'
    MLP terms."""
    loss_chain: LossChain = "full_logits"
    """``full_logits``: transformers ``ForCausalLMLoss`` over every position, the fp32 copy and
    the log-softmax (loss.py, phases.phase_terms' ``loss/*``). ``fused_head``: TRL's
    ``add_fused_lm_head``, which scores the labelled positions tile by tile and never builds the
    logits (memory/fused_head.py; phases.phase_terms' ``loss/fused_head*`` over
    phases.sft_scored_tokens; lm_head then never runs as a module, so autocast makes no copy of
    it: weights.head_autocast_copy_bytes). GRPO's fused head is rl.py's own (over the completions), whatever
    this says."""
    padding: Padding = "fixed"
    """``fixed``: every sample at ``seq_len`` (``Setup.tokens`` = micro_batch x seq_len, read by
    every activation and loss term). ``longest``: the collator pads to the batch's longest sample,
    truncated at ``seq_len``: counted at its worst batch, every sample at the cap, which is the
    same ``Setup.tokens`` (a step's peak is its largest batch's)."""
    over_cap: OverCap = "truncate"
    """A sample longer than ``seq_len`` is cut to it (TRL 1.16 trainer/sft_trainer.py
    ``SFTTrainer._prepare_dataset`` keeps the first ``max_length`` tokens, ``truncation_mode``
    'keep_start'; LLaMA-Factory data/processor/processor_utils.py ``infer_seqlen`` cuts source and
    target to ``cutoff_len``) or ``drop``-ped. Read by memory/lengths.py when the samples' lengths are
    given (``Setup.lengths_file``): the distribution the batches are drawn from, kept at the cap or
    without the longer samples."""
    reentrant_checkpointing: bool = True
    """transformers ``gradient_checkpointing_enable()`` defaults to ``use_reentrant=True``: the
    checkpointed layers' terms (activations.checkpoint_bytes, the backward sweep's recompute)
    describe that path, as the trace runs it (trace/build.py). ``False`` (torch's non-reentrant
    checkpoint, which TRL's emitted script asks for) is counted by the same terms: it saves the
    same layer inputs and recomputes one layer at a time (tests/test_trl_trace.py traces it)."""
    upcast_modules: DType | None = None
    """Full/freeze: the dtype the input embedding, lm_head and norms are loaded in when the
    trainer keeps them apart from the other weights (axolotl's loader upcasts them to fp32
    without an adapter); ``None``: with the others (``weights``, trained in ``master``). Read by
    trainable.upcast_params' users: weights.frozen_weight_bytes, weights.trainable_weight_bytes,
    optimizer._by_dtype (gradient_bytes, optimizer_state_bytes, optimizer_step_temp_bytes),
    optimizer.embedding_gradient_bytes, optimizer.tied_embedding_backward_bytes, and
    weights._autocast_casts (lm_head's 16-bit copy under autocast)."""
    grads_set_to_none: bool = True
    """``optimizer.zero_grad(set_to_none=True)`` frees the gradients after each step: without
    accumulation none exist when forward runs (phases.phase_terms)."""
    # the phases of a run beyond the step (memory/run.py); defaults: transformers ``Trainer``
    zero3_init: bool = True
    """Under ZeRO-3, ``from_pretrained`` builds the model inside ``deepspeed.zero.Init``, each rank
    holding its partition only: transformers modeling_utils ``PreTrainedModel`` loading checks
    ``is_deepspeed_zero3_enabled()`` (integrations/deepspeed.py: a live ``HfDeepSpeedConfig`` of stage
    3), which ``TrainingArguments(deepspeed=...)`` sets in ``__post_init__`` (``HfTrainerDeepSpeedConfig``)
    before the script loads the model. ``False``: every rank loads the whole model, and DeepSpeed's
    engine moves it, cast to 16 bits, onto the card before it partitions
    (deepspeed 0.19.8 runtime/engine.py ``DeepSpeedEngine._configure_distributed_model``:
    ``self.module.to(self.device)`` unless the model was zero-initialised), as with
    ``accelerate launch`` and ``zero3_init_flag: false`` before accelerate 1.1.0 (utils/dataclasses.py
    ``DeepSpeedPlugin.set_deepspeed_weakref`` set the weakref only under the flag; from 1.1.0,
    huggingface/accelerate#3143, always). Read by run.load_terms."""
    evaluation: Evaluation = "none"
    """What an evaluation during training runs: ``TrainingArguments.eval_strategy`` defaults to "no"
    (transformers 5.25 training_args.py). With evaluation on, ``Trainer.evaluate`` calls
    ``evaluation_loop(prediction_loss_only=True if self.compute_metrics is None else None)``
    (trainer.py): ``loss`` without ``compute_metrics``, ``logits`` with it, ``generate`` with
    ``Seq2SeqTrainer``'s ``predict_with_generate``. Read by run.eval_terms."""
    eval_batch: int | None = 8
    """Sequences per GPU per evaluation forward (``per_device_eval_batch_size``, 8 in TrainingArguments);
    ``None``: the training micro-batch. Read by run.eval_terms."""
    eval_argmax: bool = False
    """``preprocess_logits_for_metrics`` reduces each batch's logits to their argmax (an int64 per
    position) before they are kept; ``False``: the logits are kept whole (run.eval_terms)."""
    eval_logits: bool = True
    """The trainer can keep logits at evaluation (it passes ``compute_metrics`` to ``Trainer``); ``False``:
    an ``evaluation="logits"`` plan is refused, naming the field (memory/run.py ``evaluation``)."""
    eval_generate: bool = True
    """The trainer can generate at evaluation (``Seq2SeqTrainer`` ``predict_with_generate``); ``False``:
    an ``evaluation="generate"`` plan is refused, naming the field."""
    eval_generate_loss: bool = True
    """Evaluating with generation also runs the loss forward: transformers ``Seq2SeqTrainer.prediction_step``
    calls ``model(**inputs)`` under ``no_grad`` after ``generate`` when the batch has labels; ``False``: the
    trainer drops the labels first (run.eval_terms)."""
    eval_generate_gathers: bool = False
    """Under ZeRO-3 the trainer gathers the whole model on every rank to generate at evaluation;
    ``False``: transformers ``Seq2SeqTrainer.prediction_step`` generates with ``synced_gpus``
    (trainer_seq2seq.py), through ZeRO-3's per-layer gathering (run.eval_terms)."""
    packing_needs_flash: bool = False
    """The trainer packs samples only under flash-attention (it refuses packing under other kernels);
    ``True``: a ``lengths="packed"`` plan with another attention is refused, naming the field
    (memory/run.py ``check_lengths``)."""
    eval_accumulation_steps: int | None = None
    """Evaluation steps after which the kept logits move to the host (``eval_accumulation_steps``, None
    in TrainingArguments: they stay on the card to the end of the evaluation; run.kept_eval_steps)."""
    eval_new_tokens: int = 0
    """Tokens generated beyond the prompt at evaluation (``generation_config.max_new_tokens``; the
    HF default ``max_length`` 20 is within any prompt): run.eval_terms' KV cache."""
    deepspeed_configs: str = "vramplan"
    """Whose shipped ds_config.json a ZeRO plan runs when the user gives none (``--deepspeed``):
    the set's key prefix in tables/deepspeed_configs.json (zero_config.shipped), read by
    memory/zero.py's terms. ``vramplan``: the file vramplan emits (frameworks/files/launch.py)."""


def step_fields(policy: Policy) -> dict[str, object]:
    """What the training step's terms read of ``policy`` (all but :data:`RUN_FIELDS`)."""
    return policy.model_dump(exclude=set(RUN_FIELDS))


def _half(precision: str) -> DType:
    return "fp16" if precision.endswith("fp16") else "bf16"


@lru_cache(maxsize=64)
def _default(precision: str, method: str, quant: str) -> Policy:
    if precision == "fp32":
        weights: DType = "fp32"
        act: DType = "fp32"
        master = grads = states = weights
    elif precision in ("bf16", "fp16"):
        weights = act = _half(precision)
        master = grads = states = weights
    else:
        weights, act = "fp32", _half(precision)
        master = grads = states = weights
    upcast = method == "qlora" and quant != "gptq-int4"
    residual: DType = "fp32" if weights == "fp32" or upcast else act
    return Policy(
        weights=weights,
        master=master,
        grads=grads,
        states=states,
        adapter="fp32",
        extra_trainable="fp32" if method == "qlora" else weights,
        activations=act,
        autocast=precision != "fp32",
        kbit_upcast=upcast,
        kbit_modules=weights if quant == "gptq-int4" else "fp32",
        residual=residual,
        pointwise="fp32" if upcast else act,
    )


#: a trainer's policy for a Setup (``Framework.policy``)
PolicyOf = Callable[[Setup], Policy]


def default_policy(setup: Setup) -> Policy:
    """The generic loop today's numbers describe: transformers ``Trainer`` (autocast through
    accelerate, ``zero_grad(set_to_none=True)``, reentrant checkpointing), PEFT adapters in
    fp32 and ``prepare_model_for_kbit_training`` for k-bit bases, the full-logits loss, every
    sample padded to ``seq_len``."""
    return _default(setup.precision, setup.method, setup.quant)


def recast(policy: Policy, setup: Setup, precision: str) -> Policy:
    """``policy`` (made for ``setup``) when the run's precision becomes ``precision`` (DeepSpeed's
    bf16/fp16 mode casts an ``amp-*`` model to 16 bits, phases._estimate): every field that
    follows the generic loop's default moves as the default does; a field the trainer sets
    itself is kept."""
    before = default_policy(setup)
    after = _default(precision, setup.method, setup.quant)
    moved = {k: getattr(after, k) for k in Policy.model_fields if getattr(policy, k) == getattr(before, k)}
    return policy.model_copy(update=moved)
