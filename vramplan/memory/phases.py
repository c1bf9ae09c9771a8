"""The peak over phases of a steady-state training step, and its three tiers.

Phases (the same the trace reports):
- ``forward_end``: the loss computed inside the autocast region: logits, their fp32 copy
  and the log-softmax beside all saved activations and autocast's cached weight copies.
- ``backward_start``: end of forward, loss backward running: weights, optimizer state,
  all saved activations (or checkpoints), the loss chain at its peak; gradients only when
  accumulating (``grad_accum > 1`` keeps them between micro-batches; otherwise the
  trainer's ``zero_grad(set_to_none=True)`` freed them).
- ``backward``: inside a layer's backward: every gradient, the layer's recomputed (or
  remaining) activations and its transient gradient buffers.
- ``optimizer_step``: weights, gradients, state and the step's temporaries.

Tiers (``allocated``, ``reserved``, ``device``): peak.py, which turns the terms by phase into
the Estimate.
"""

from __future__ import annotations

from vramplan.memory import activations as act
from vramplan.memory import fused_head, loss, optimizer, overhead, parallel, rl, vision, weights
from vramplan.memory.inference import inference_estimate
from vramplan.memory.layers import layer_runs
from vramplan.memory.peak import peak_estimate, split_estimate
from vramplan.memory.policy import plain, policy_of, with_policy
from vramplan.memory.run import with_run_phases
from vramplan.memory.sweep import At, Descent, sweep
from vramplan.memory.trainable import check_lora_targets
from vramplan.policy import Policy, recast
from vramplan.results import CardEstimate as CardEstimate  # re-exported: its old home
from vramplan.results import Estimate
from vramplan.setup import Setup
from vramplan.spec import ModelSpec

PHASES = ("forward_end", "backward_start", "backward", "optimizer_step")
#: terms outside max_memory_allocated: name -> tier it first appears in.
OUTSIDE_ALLOCATED = {
    "overhead/allocator_slack": "reserved",
    "overhead/logits_segment": "reserved",
    "overhead/fsdp_stream_pools": "reserved",
    "overhead/cuda_context": "device",
    "optimizer/paged_state": "device",
}


def phase_terms(spec: ModelSpec, setup: Setup) -> dict[str, dict[str, int]]:
    """Live terms (bytes) inside torch's allocator at each phase."""
    opt_name = f"optimizer/{setup.optimizer}"
    state = optimizer.optimizer_state_bytes(spec, setup)
    paged = optimizer.paged_optimizer(setup)
    static = {
        "weights/frozen": weights.frozen_weight_bytes(spec, setup),
        "weights/quant_state": weights.quant_state_bytes(spec, setup),
        "weights/trainable": weights.trainable_weight_bytes(spec, setup),
        opt_name: 0 if paged else state,
        "overhead/cublas_workspace": overhead.cublas_workspace_bytes(),
    }
    grads = optimizer.gradient_bytes(spec, setup)
    autocast = weights.autocast_copy_bytes(spec, setup)
    dequant = overhead.dequant_workspace_bytes(spec, setup)
    saved = act.saved_activation_bytes(spec, setup)
    sweep = backward_sweep(spec, setup, grads)
    out = {
        "forward_end": {
            **static,
            "weights/autocast_copies": weights.forward_autocast_copy_bytes(spec, setup),
            "gradients": grads if setup.grad_accum > 1 else 0,
            "activations/saved": saved,
            "loss/forward_chain": loss.forward_chain_bytes(spec, setup),
            "loss/softcap": loss.softcap_bytes(spec, setup),
            "overhead/dequant_workspace": dequant,
        },
        "backward_start": {
            **static,
            "weights/autocast_copies": autocast,
            "gradients": grads if setup.grad_accum > 1 else 0,
            "activations/saved": saved,
            "loss/softcap": loss.softcap_bytes(spec, setup),
            "loss/log_softmax": loss.log_softmax_bytes(spec, setup),
            "loss/backward_temporaries": loss.loss_backward_temp_bytes(spec, setup),
            "overhead/dequant_workspace": dequant,
        },
        "backward": {
            **static,
            **sweep,
            "overhead/dequant_workspace": dequant,
        },
        "optimizer_step": {
            **static,
            "gradients": grads,
            "optimizer/step_temporaries": optimizer.optimizer_step_temp_bytes(spec, setup),
        },
    }
    if policy_of(setup).loss_chain == "fused_head" and setup.rl == "none":
        # GRPO scores its completions only: grpo_estimate puts rl.py's head in
        return fused_head.in_phases(spec, setup, out, sft_scored_tokens(setup))
    return out


def sft_scored_tokens(setup: Setup) -> int:
    """Positions TRL's fused head scores in one SFT micro-batch: every one with a next-token
    label, ``micro_batch x (seq_len - 1)`` at the cap (``add_fused_lm_head`` drops each sample's
    last position, ``last_hidden_state[:, :-1]``; the collator labels every real token)."""
    return setup.micro_batch * (setup.seq_len - 1)


def backward_sweep(spec: ModelSpec, setup: Setup, all_grads: int) -> dict[str, int]:
    """The worst point of backward, walking layers from the top down (sweep.py).

    While layer l runs its backward, the activations of the recorded layers 0..l are still
    saved (with checkpointing: their inputs, plus layer l recomputed), and the gradients of
    lm_head and of layers l..L-1 exist (all of them when accumulating), with one layer's
    transient gradient buffers. After layer 0 the embedding's backward runs beside every
    gradient. The maximum over these points (the first from the top, on a tie).

    One layer down a run of identical layers (layers.py) holds a copy (every copy below stays
    alive without checkpointing) and a checkpoint fewer, and one layer's gradients more
    (unless all are kept).
    """
    end = {  # after layer 0: every gradient, and the embedding's own backward
        "weights/autocast_copies": 0,
        "gradients": all_grads,
        "activations/saved": 0,
        "activations/recompute": 0,
        "activations/backward_transient": optimizer.tied_embedding_backward_bytes(spec, setup),
    }
    runs = layer_runs(spec, setup)
    gc, acc = setup.grad_checkpointing, setup.grad_accum > 1
    transient = act.backward_transient_bytes(spec, setup)
    shared = act.checkpoint_shared_bytes(spec, setup)
    layer_grads = sum(run.grads * run.count for run in runs)
    head_grads = all_grads - layer_grads - optimizer.embedding_gradient_bytes(spec, setup)  # lm_head's

    def point(at: At, layer: int) -> dict[str, int]:
        return {
            "weights/autocast_copies": at.run.copies if gc else at.copies(layer),
            "gradients": all_grads if acc else head_grads + at.grads_above(layer) + at.run.grads,
            "activations/saved": at.kept(layer),
            "activations/recompute": at.run.saved - shared if gc else 0,
            "activations/backward_transient": transient,
        }

    def descent(at: At) -> Descent:
        run = at.run
        return Descent(-((0 if gc else run.copies) + run.kept - (0 if acc else run.grads)))

    return sweep(runs, end, point, descent)


#: terms inside ``allocated`` that only a CUDA run spends (a CPU trace cannot see them).
CUDA_ONLY = ("overhead/cublas_workspace", "overhead/dequant_workspace")


#: the estimate's phases each traced phase (``vramplan/trace``: forward, backward, optimizer) spans.
TRACED_PHASES = {
    "forward": ("forward_end", "forward_layer"),
    "backward": ("backward_start", "backward"),
    "optimizer": ("optimizer_step",),
}


def traceable_by_phase(est: Estimate) -> dict[str, int]:
    """The estimate's peak in each traced phase, less the cuBLAS workspace only CUDA spends."""
    cuda = overhead.cublas_workspace_bytes()
    return {
        traced: max(est.phases[p] for p in mine if p in est.phases) - cuda for traced, mine in TRACED_PHASES.items()
    }


def traceable_bytes(est: Estimate) -> int:
    """The allocated peak less what only CUDA spends: what a CPU trace should report."""
    return est.allocated_bytes - sum(est.terms.get(k, 0) for k in CUDA_ONLY)


def with_vision(spec: ModelSpec, setup: Setup, phases: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Add the vision tower's terms: a ``vision_forward`` phase (the weights and state with
    one ViT block's forward temporaries, before the language model saves anything) and, when
    the tower trains, its saved activations through forward and backward (its backward is
    the last of the step)."""
    out = {k: dict(v) for k, v in phases.items()}
    static = {k: v for k, v in phases["optimizer_step"].items() if k.startswith(("weights/", "overhead/", "parallel/"))}
    static.update({k: v for k, v in phases["backward_start"].items() if k.startswith("optimizer/")})
    static["gradients"] = phases["forward_end"].get("gradients", 0)
    static["vision/forward_transient"] = vision.forward_transient_bytes(spec, setup)
    saved = vision.saved_bytes(spec, setup)
    pixels = vision.pixel_bytes(spec, setup)
    static["vision/saved"] = saved
    static["vision/pixel_values"] = pixels
    out["vision_forward"] = static
    for name in ("forward_end", "backward_start", "backward"):
        out[name]["vision/saved"] = saved
        out[name]["vision/pixel_values"] = pixels
    return out


#: estimates already made, by (spec, setup, policy), all frozen: the planner weighs one setup
#: more than once (searching, ranking, timing). Emptied when full and when the overhead
#: constants are read again (``vramplan.calibrate`` writes new ones).
ESTIMATES_KEPT = 64
_made: dict[tuple[ModelSpec, Setup, Policy, int | None, bool], Estimate] = {}
_made_with: list[dict] = []  # the overhead constants the kept estimates were made with


def forget_estimates() -> None:
    """Empty the kept estimates (to time the planner from scratch)."""
    _made.clear()


#: the loss chains the terms count (loss.py's full logits, fused_head.py's TRL head)
COUNTED_LOSS_CHAINS = frozenset({"full_logits", "fused_head"})
#: the paddings the terms count: ``longest`` at its worst batch, every sample at the cap (Policy.padding)
COUNTED_PADDING = frozenset({"fixed", "longest"})


def estimate(
    spec: ModelSpec,
    setup: Setup,
    *,
    policy: Policy | None = None,
    card_bytes: int | None = None,
    nvlink: bool = False,
) -> Estimate:
    """Peak memory of one steady-state training step of ``setup`` on ``spec``, per GPU
    (for ``method="inference"``: of generating ``seq_len`` tokens, see ``inference.py``),
    as the trainer whose ``policy`` it is runs it (None: :func:`vramplan.policy.default_policy`,
    or the policy a :class:`~vramplan.memory.policy.PolicySetup` carries).
    ``card_bytes``: the card's memory, which a colocated vLLM takes its share of (GRPO).
    ``nvlink``: the card talks to the others over NVLink (``GPU.nvlink``), where NCCL's buffers
    take memory outside torch's allocator (``overhead/nccl``, overhead.py ``nccl_bytes``)."""
    card_bytes = card_bytes if setup.vllm != "none" else None  # nothing else reads the card
    consts = overhead.overhead_constants()
    if not _made_with or _made_with[0] is not consts or len(_made) >= ESTIMATES_KEPT:
        _made.clear()
        _made_with[:] = [consts]
    if policy is None:
        policy = policy_of(setup)
    setup = plain(setup)
    if policy.loss_chain not in COUNTED_LOSS_CHAINS or policy.padding not in COUNTED_PADDING:
        # the terms count these only (loss.py, fused_head.py; Setup.tokens): refuse rather than misestimate
        raise ValueError(f"no memory terms yet for the {policy.loss_chain} loss with {policy.padding} padding")
    nccl = overhead.nccl_bytes(setup, nvlink)
    key = (spec, setup, policy, card_bytes, nccl > 0)  # one kept estimate where NCCL adds nothing
    est = _made.get(key)
    if est is None:
        est = _made[key] = with_nccl(_estimate(spec, setup, policy, card_bytes), nccl)
    return est


def with_nccl(est: Estimate, nccl: int) -> Estimate:
    """``est`` with NCCL's ``nccl`` bytes (overhead.py ``nccl_bytes``): outside torch's allocator, on
    the device tier and in what the card must offer."""
    if not nccl:
        return est
    return est.model_copy(
        update={
            "terms": {**est.terms, overhead.NCCL_TERM: nccl},
            "device_bytes": est.device_bytes + nccl,
            "needed_bytes": (est.needed_bytes or est.device_bytes) + nccl,
        }
    )


def _estimate(spec: ModelSpec, user: Setup, policy: Policy, card_bytes: int | None) -> Estimate:
    setup = with_policy(user, policy)
    if setup.method == "inference":
        return inference_estimate(spec, setup)
    check_lora_targets(spec, setup)
    llm: Setup = setup
    if setup.parallel in ("zero1", "zero2", "zero3") and setup.precision.startswith("amp-"):
        # DeepSpeed's bf16/fp16 mode casts the model to 16 bits; the fp32 master is its own
        half = setup.precision.removeprefix("amp-")
        llm = with_policy(user.model_copy(update={"precision": half}), recast(policy, user, half))
    if setup.has_media:
        # the images' tokens join the language model's sequence
        llm = llm.model_copy(update={"seq_len": setup.seq_len + vision.image_tokens(spec, setup)})
    split = setup.parallel == "device_map"
    if setup.rl == "grpo":
        return grpo_estimate(spec, setup, llm, card_bytes)
    if setup.parallel == "fsdp":
        per_phase = parallel.fsdp_phases(spec, llm, phase_terms(spec, llm))
    elif split:
        per_phase = phase_terms(spec, llm)
    else:
        per_phase = parallel.per_gpu(spec, llm, phase_terms(spec, llm))
    if setup.has_media:
        per_phase = with_vision(spec, setup, per_phase)
    per_phase = with_run_phases(spec, setup, llm, per_phase)
    per_phase = with_approximation(spec, per_phase)
    if split:
        return split_estimate(spec, setup, per_phase, llm)
    return peak_estimate(spec, setup, per_phase, llm)


def with_approximation(spec: ModelSpec, phases: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """A model no family module reads (``spec.approximate``: arch/generic.py) gets, in every
    phase, ``overhead/approximation``: generic.MARGIN_PCT of what the phase holds (the
    CUDA-only workspaces aside), the most the generic reading fell short of the family
    modules' own on the catalog, so that its plan is not the one that runs out of memory."""
    if not spec.approximate:
        return phases
    from vramplan.arch.generic import MARGIN_PCT

    out = {}
    for name, terms in phases.items():
        held = sum(v for k, v in terms.items() if k not in CUDA_ONLY)
        out[name] = {**terms, "overhead/approximation": -(-held * MARGIN_PCT // 100)}
    return out


def grpo_estimate(spec: ModelSpec, setup: Setup, llm: Setup, card_bytes: int | None = None) -> Estimate:
    """GRPO (vramplan/memory/rl.py): the training phases with TRL's fused LM head, plus the
    generation and (with ``beta > 0``) reference phases; the peak is the largest, named."""
    per_phase = rl.with_fused_head(spec, llm, phase_terms(spec, llm))
    if setup.has_media:
        per_phase = with_vision(spec, setup, per_phase)
    per_phase = with_approximation(spec, per_phase)
    static = {
        k: v
        for k, v in per_phase["optimizer_step"].items()
        if k.startswith(("weights/", "overhead/")) and k != "weights/autocast_copies"
    }
    static.update({k: v for k, v in per_phase["backward_start"].items() if k.startswith("optimizer/")})
    images = vision.image_tokens(spec, setup) if setup.has_media else 0
    ref = rl.reference_terms(spec, setup, static, images)
    if ref:
        per_phase["reference"] = ref
    if setup.vllm == "none":
        per_phase["generate"] = rl.generation_terms(spec, setup, static, images)
    else:
        share = rl.vllm_share_bytes(setup, card_bytes)
        per_phase["old_logprobs"] = rl.old_logprob_terms(spec, setup, static, images)
        if not setup.vllm_sleep:  # the engine keeps its share through the step
            per_phase = {name: {**terms, "rl/vllm_share": share} for name, terms in per_phase.items()}
        per_phase["generate"] = {**static, "rl/vllm_share": share}
    return peak_estimate(spec, setup, per_phase)
