"""GRPO (reinforcement fine-tuning) as TRL's ``GRPOTrainer`` 1.x runs it, on one GPU.

One optimizer step: ``micro_batch x grad_accum`` completions (``num_generations`` per prompt)
are generated at once with ``model.generate`` (TRL: ``generation_batch_size =
per_device_train_batch_size x steps_per_generation``, ``steps_per_generation`` defaulting
to the accumulation steps), then trained on ``micro_batch`` at a time. Phases:

- ``generate``: the policy (and its optimizer state from the previous step) beside the KV
  cache of every sequence of the generation batch at full length (prompt + completion),
  the prompt's prefill temporary for the whole batch and, for VLMs, the vision tower's
  forward over every image of the batch;
- ``reference`` (``beta > 0`` only): a no-grad forward of one micro-batch through the
  reference model (the base under the LoRA adapter with the adapter disabled, or a frozen
  16-bit copy of the model when the policy is trained in full: then it is resident through
  the whole step);
- the training phases of :mod:`vramplan.memory.phases` for one micro-batch of ``prompt +
  completion`` tokens, with TRL's fused LM head in place of the logits chain: TRL
  (``add_fused_lm_head``, ``trl/kernels/chunked_logprob.py``) never materialises the
  ``tokens x vocab`` logits. Its forward keeps the completion positions' hidden states
  (N·h, N = micro-batch x completion length) and per-token fp32 statistics; each pass works
  on a ``min(N, 4096) x 32768`` tile; its backward adds an fp32 gradient of those hidden
  states (4·N·h) and, when lm_head trains, an fp32 gradient of its weight (4·V·h).

With ``vllm="colocate"`` (TRL ``use_vllm=True, vllm_mode="colocate"``), vLLM generates inside
the training process: at start-up it takes ``vllm_gpu_memory_utilization`` of the card for its
own copy of the weights (16-bit, or bitsandbytes 4-bit under a 4-bit QLoRA), its profiled
activations and its KV cache, and keeps that share through the whole step unless
``vllm_sleep`` (TRL ``vllm_enable_sleep_mode``: level-2 sleep frees weights and cache after
each generation and wakes them for the next). HF generate's cache and prefill are then not
spent; instead TRL recomputes the completions' log-probs with the policy for its importance
sampling correction (on by default): a no-grad forward of one micro-batch at a time, phase
``old_logprobs``.

The training phases are checked against TRL's own trainer stepping on the CPU
(tests/test_grpo_trace.py). Not modelled: vLLM's CUDA-graph pool, which sleep does not free; several GPUs;
``num_iterations > 1``.
"""

from __future__ import annotations

from vramplan.errors import VramplanError
from vramplan.memory import fused_head, inference, vision
from vramplan.memory.policy import plain, policy_of, upcast_kbit
from vramplan.params import param_counts
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: trl/kernels/chunked_logprob.py's tiles (memory/fused_head.py), kept here for their readers.
TOKEN_CHUNK = fused_head.TOKEN_CHUNK
VOCAB_CHUNK = fused_head.VOCAB_CHUNK
STAT_VECTORS = fused_head.STAT_VECTORS


def generation_batch(setup: Setup) -> int:
    """Completions generated at once: per-device batch x steps per generation."""
    return setup.micro_batch * setup.grad_accum


def completion_tokens(setup: Setup) -> int:
    """Positions the fused head scores in one micro-batch."""
    return setup.micro_batch * setup.completion_len


def head_tile_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The fused head's projection tile over the completion positions (fused_head.tile_bytes)."""
    return fused_head.tile_bytes(spec, setup, completion_tokens(setup))


def fused_head_forward_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The fused head's forward over the completion positions (fused_head.forward_bytes)."""
    return fused_head.forward_bytes(spec, setup, completion_tokens(setup))


def fused_head_backward_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The fused head's backward over the completion positions (fused_head.backward_bytes)."""
    return fused_head.backward_bytes(spec, setup, completion_tokens(setup), chunks=False)


def reference_weight_bytes(spec: ModelSpec, setup: Setup) -> int:
    """A frozen copy of the model when the policy trains in full (or freeze) and ``beta > 0``,
    in the policy's load dtype (TRL: ``model_init_kwargs.setdefault("dtype", model.dtype)``;
    fp32 under AMP); LoRA/QLoRA policies use their own base with the adapter disabled."""
    if setup.beta <= 0 or setup.is_lora:
        return 0
    return nbytes(param_counts(spec).total, policy_of(setup).weights)


def amp_copy_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Under AMP a full policy's forwards outside training (generation, the reference pass)
    still run in autocast, which casts every fp32 weight to 16 bits and keeps the copies
    (its weight cache) while the forward runs."""
    p = policy_of(setup)
    if p.weights != "fp32" or not p.autocast or setup.is_lora:
        return 0
    return nbytes(param_counts(spec).total, "bf16")


def generation_scale(setup: Setup) -> tuple[float, float]:
    """(KV cache, prefill) bytes relative to the 16-bit figures. Generation runs without
    autocast for PEFT models: after PEFT's k-bit upcast (QLoRA on bitsandbytes) the hidden
    states, keys and values are fp32; LoRA's fp32 adapters promote their intermediates,
    about doubling the prefill temporary; under AMP keys come out fp32 and values 16-bit."""
    if upcast_kbit(setup):
        return 2.0, 2.0
    if policy_of(setup).weights == "fp32" and policy_of(setup).autocast:
        return 1.5, 2.0
    if setup.is_lora:
        return 1.0, 2.0
    return 1.0, 1.0


def _generation_setup(spec: ModelSpec, setup: Setup) -> Setup:
    half = "fp16" if setup.precision.endswith("fp16") else "bf16"
    prompt = setup.seq_len - setup.completion_len
    return plain(setup).model_copy(
        update={
            "method": "inference",
            "quant": setup.quant,
            "precision": half,
            "micro_batch": generation_batch(setup),
            "seq_len": prompt + setup.completion_len,
            "images_per_sample": 0,
            "image_size": "",
            "video_frames": 0,
            "video_size": "",
            "kv_cache": "auto",
        }
    )


def generation_terms(spec: ModelSpec, setup: Setup, static: dict[str, int], prompt_images: int) -> dict[str, int]:
    """The ``generate`` phase: the step's resident state, the KV cache of the generation
    batch at full length, and the larger of the prompt's prefill temporary and (VLMs) the
    vision tower's forward over the batch's images."""
    gen = _generation_setup(spec, setup)
    prefill = gen.model_copy(update={"seq_len": setup.seq_len - setup.completion_len + prompt_images})
    tower = 0
    if setup.has_media:
        tower = vision.forward_transient_bytes(spec, setup.model_copy(update={"micro_batch": generation_batch(setup)}))
        tower += vision.pixel_bytes(spec, setup.model_copy(update={"micro_batch": generation_batch(setup)}))
    cache_setup = gen.model_copy(update={"seq_len": setup.seq_len + prompt_images})
    kv_scale, prefill_scale = generation_scale(setup)
    prefill_bytes = int(prefill_scale * inference.prefill_transient_bytes(spec, prefill))
    return {
        **static,
        "rl/kv_cache": int(kv_scale * inference.kv_cache_bytes(spec, cache_setup)),
        "rl/generation_transient": max(prefill_bytes, tower),
        "rl/autocast_copies": amp_copy_bytes(spec, setup),
    }


def reference_terms(spec: ModelSpec, setup: Setup, static: dict[str, int], prompt_images: int) -> dict[str, int]:
    """The reference log-prob pass over one micro-batch (no grad): the prefill-like
    temporary of its full sequences and the fused head's forward."""
    if setup.beta <= 0:
        return {}
    one = _generation_setup(spec, setup).model_copy(
        update={"micro_batch": setup.micro_batch, "seq_len": setup.seq_len + prompt_images}
    )
    _, prefill_scale = generation_scale(setup)
    return {
        **static,
        "weights/reference": reference_weight_bytes(spec, setup),
        "rl/reference_forward": int(prefill_scale * inference.prefill_transient_bytes(spec, one)),
        "rl/autocast_copies": amp_copy_bytes(spec, setup),
        "loss/fused_head": fused_head_forward_bytes(spec, setup),
    }


def with_fused_head(spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The training phases with TRL's fused LM head over the completion positions in place of
    the logits chain (fused_head.in_phases), and the reference copy (if any) resident."""
    out = fused_head.in_phases(spec, setup, phases, completion_tokens(setup), grpo=True)
    ref = reference_weight_bytes(spec, setup)
    if ref:
        for terms in out.values():
            terms["weights/reference"] = ref
    return out


#: TRL builds the colocated engine with max_num_batched_tokens=4096 (trl/generation/vllm_generation.py).
VLLM_BATCHED_TOKENS = 4096


def vllm_share_bytes(setup: Setup, card_bytes: int | None) -> int:
    """What the colocated engine takes of the card: ``vllm_gpu_memory_utilization`` x the
    card's memory ``card_bytes`` (vLLM checks at start-up that this much is free)."""
    if setup.vllm == "none":
        return 0
    if not card_bytes:
        raise VramplanError("vllm", "vLLM's share is a fraction of the card: plan it on a GPU (--gpu)")
    return int(setup.vllm_gpu_memory_utilization * card_bytes)


def _vllm_setup(spec: ModelSpec, setup: Setup, tokens: int) -> Setup:
    """vLLM's view: an inference run in the 16-bit dtype, 4-bit bitsandbytes when the policy's
    base is 4-bit (TRL passes quantization='bitsandbytes'), ``tokens`` per sequence."""
    quant = "bnb-nf4" if setup.quant in ("bnb-nf4", "bnb-nf4-dq", "bnb-fp4") else "none"
    return _generation_setup(spec, setup).model_copy(
        update={"quant": quant, "micro_batch": 1, "seq_len": tokens, "method": "inference"}
    )


def vllm_needs(spec: ModelSpec, setup: Setup, prompt_images: int = 0) -> dict[str, int]:
    """Inside its share, what vLLM must hold to start and to serve one sequence at full
    length: its weights, the activations of its profiling run (a batch of
    ``VLLM_BATCHED_TOKENS`` tokens) and one sequence's KV cache (prompt, images and
    completion). Whatever is left of the share is KV cache for more sequences at once."""
    full = setup.seq_len + prompt_images
    one = _vllm_setup(spec, setup, full)
    return {
        "weights": inference.inference_weight_bytes(spec, one),
        "activations": inference.prefill_transient_bytes(spec, _vllm_setup(spec, setup, VLLM_BATCHED_TOKENS)),
        "kv_one_sequence": inference.kv_cache_tensor_bytes(spec, one),
    }


def vllm_concurrent_sequences(spec: ModelSpec, setup: Setup, card_bytes: int | None, prompt_images: int = 0) -> int:
    """Full-length sequences the share of a ``card_bytes`` card holds at once in its KV room
    (0: vLLM cannot start)."""
    need = vllm_needs(spec, setup, prompt_images)
    room = vllm_share_bytes(setup, card_bytes) - need["weights"] - need["activations"]
    return max(0, room // max(need["kv_one_sequence"], 1))


def old_logprob_terms(spec: ModelSpec, setup: Setup, static: dict[str, int], prompt_images: int) -> dict[str, int]:
    """With vLLM, TRL recomputes the completions' log-probs with the policy (importance
    sampling correction): the reference pass's transients without a reference model."""
    ref = reference_terms(spec, setup.model_copy(update={"beta": 1.0}), static, prompt_images)
    ref.pop("weights/reference", None)
    return ref
