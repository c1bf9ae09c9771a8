"""The peak over phases of a steady-state training step, and its three tiers.

Phases (the same the trace reports):
- ``backward_start``: end of forward, loss backward running: weights, optimizer state,
  all saved activations (or checkpoints), the loss chain at its peak; gradients only when
  accumulating (``grad_accum > 1`` keeps them between micro-batches; otherwise the
  trainer's ``zero_grad(set_to_none=True)`` freed them).
- ``backward``: inside a layer's backward: every gradient, the layer's recomputed (or
  remaining) activations and its transient gradient buffers.
- ``optimizer_step``: weights, gradients, state and the step's temporaries.

Tiers: ``allocated`` = the phase peak (torch ``max_memory_allocated``), ``reserved`` adds
the caching allocator's slack (``max_memory_reserved``), ``device`` adds what lives outside
the allocator: the CUDA context and paged optimizer state (nvidia-smi).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from vramplan.memory import activations as act
from vramplan.memory import loss, optimizer, overhead, weights
from vramplan.memory.trainable import check_lora_targets, trainable_params
from vramplan.params import param_counts
from vramplan.setup import Setup
from vramplan.spec import ModelSpec

PHASES = ("backward_start", "backward", "optimizer_step")
#: terms outside max_memory_allocated: name -> tier it first appears in.
OUTSIDE_ALLOCATED = {"overhead/allocator_slack": "reserved", "overhead/cuda_context": "device",
                     "optimizer/paged_state": "device"}


class Estimate(BaseModel):
    """Memory of one setup: terms at the peak phase (bytes; they sum to ``device_bytes``)."""

    model_config = ConfigDict(frozen=True)
    phase: str
    terms: dict[str, int]
    phases: dict[str, int]
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    total_params: int
    trainable_params: int


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
    backward_acts = saved if setup.grad_checkpointing else max(
        (act.layer_saved_bytes(spec, setup, i) for i in act.saving_layers(spec, setup)), default=0
    )
    return {
        "backward_start": {
            **static,
            "weights/autocast_copies": autocast,
            "gradients": grads if setup.grad_accum > 1 else 0,
            "activations/saved": saved,
            "loss/logits": loss.logits_bytes(spec, setup),
            "loss/log_softmax": loss.log_softmax_bytes(spec, setup),
            "loss/backward_temporaries": loss.loss_backward_temp_bytes(spec, setup),
            "overhead/dequant_workspace": dequant,
        },
        "backward": {
            **static,
            "weights/autocast_copies": autocast,
            "gradients": grads,
            "activations/saved": backward_acts,
            "activations/recompute": act.recompute_bytes(spec, setup),
            "activations/backward_transient": act.backward_transient_bytes(spec, setup),
            "overhead/dequant_workspace": dequant,
        },
        "optimizer_step": {
            **static,
            "gradients": grads,
            "optimizer/step_temporaries": optimizer.optimizer_step_temp_bytes(spec, setup),
        },
    }


def estimate(spec: ModelSpec, setup: Setup) -> Estimate:
    """Peak memory of one steady-state training step of ``setup`` on ``spec`` (one GPU)."""
    check_lora_targets(spec, setup)
    per_phase = phase_terms(spec, setup)
    totals = {name: sum(terms.values()) for name, terms in per_phase.items()}
    peak = max(PHASES, key=lambda p: totals[p])
    allocated = totals[peak]
    slack = overhead.allocator_slack_bytes(allocated)
    terms = {k: v for k, v in per_phase[peak].items() if v}
    terms["overhead/allocator_slack"] = slack
    terms["overhead/cuda_context"] = overhead.cuda_context_bytes()
    if optimizer.paged_optimizer(setup):
        terms["optimizer/paged_state"] = optimizer.optimizer_state_bytes(spec, setup)
    device = sum(terms.values())
    return Estimate(
        phase=peak,
        terms=terms,
        phases=totals,
        allocated_bytes=allocated,
        reserved_bytes=allocated + slack,
        device_bytes=device,
        total_params=param_counts(spec).total,
        trainable_params=trainable_params(spec, setup),
    )
