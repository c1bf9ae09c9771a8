"""What each memory term and phase of a plan is, in a few plain words (the plan table's third
column and the title of its peak: render.py). Torch-free."""

from __future__ import annotations

#: a term's name -> what it holds
TERMS = {
    "weights/frozen": "base weights that do not train",
    "weights/trainable": "weights that train (adapters...)",
    "weights/quant_state": "k-bit quantization state",
    "weights/autocast_copies": "autocast's 16-bit weight copies",
    "weights/reference": "GRPO's frozen reference model",
    "gradients": "gradients of what trains",
    "optimizer/step_temporaries": "the optimizer step's temporaries",
    "optimizer/paged_state": "paged optimizer state on the card",
    "activations/saved": "kept from forward for backward",
    "activations/recompute": "a checkpointed layer, recomputed",
    "activations/backward_transient": "a layer's backward temporaries",
    "loss/log_softmax": "log-probs over the vocabulary",
    "loss/backward_temporaries": "the loss's gradient, vocabulary wide",
    "loss/forward_chain": "the loss's forward temporaries",
    "loss/softcap": "soft-capped logits (Gemma-2)",
    "loss/fused_head": "fused LM head chunk (no logits)",
    "loss/fused_head_backward": "fused LM head backward chunk",
    "overhead/logits_segment": "the logits tensor itself",
    "overhead/allocator_slack": "allocator cache beyond live data",
    "overhead/forward_segments": "layers' freed blocks, cached",
    "overhead/fsdp_stream_pools": "FSDP1's gradient and gather caches",
    "overhead/nccl": "NCCL's buffers, outside torch",
    "overhead/cuda_context": "CUDA context, outside torch",
    "overhead/cublas_workspace": "cuBLAS workspaces",
    "overhead/dequant_workspace": "a dequantized k-bit weight",
    "overhead/approximation": "margin: no family module",
    "parallel/ddp_buckets": "DDP's gradient all-reduce buckets",
    "parallel/gathered_weights": "a layer's weights, gathered",
    "parallel/reduce_buckets": "gradient reduce buckets",
    "parallel/fp32_grad_partition": "ZeRO's fp32 gradient partition in the step",
    "parallel/averaged_gradients": "ZeRO's accumulated gradient partition",
    "vision/pixel_values": "the images' pixel tensors",
    "vision/saved": "vision tower, kept for backward",
    "vision/forward_transient": "a vision block's temporaries",
    "inference/kv_cache": "KV cache of the sequences",
    "inference/transient": "a decoding step's temporaries",
    "rl/kv_cache": "KV cache of GRPO's generation",
    "rl/generation_transient": "a generation step's temporaries",
    "rl/reference_forward": "the reference model's forward",
    "rl/autocast_copies": "16-bit weight copies, generating",
    "rl/vllm_share": "the share vLLM takes",
    "weights/unpartitioned": "the whole model, before ZeRO-3 splits it",
    "weights/load_unquantized": "a weight loaded, not yet k-bit",
    "activations/eval_forward": "an evaluation layer's temporaries",
    "loss/eval_chain": "the evaluation batch's loss chain",
    "loss/eval_predictions": "logits kept for eval metrics",
    "parallel/save_gathered": "a module gathered to save it",
    "host/params": "parameters in host RAM",
    "host/gradients": "gradients in host RAM",
    "host/optimizer_state": "optimizer state in host RAM",
}
#: a phase's name -> when it is
PHASES = {
    "forward_layer": "inside a layer's forward",
    "forward_end": "the end of forward, logits and loss computed",
    "backward_start": "the start of backward: every saved activation and the loss chain alive",
    "backward": "inside backward, a layer recomputed and its gradients made",
    "optimizer_step": "the optimizer step",
    "vision_forward": "the vision tower's forward",
    "generate": "generating completions (GRPO)",
    "reference": "the reference model's log-probabilities (GRPO)",
    "old_logprobs": "the old policy's log-probabilities (GRPO with vLLM)",
    "load": "loading the model, before training starts",
    "evaluate": "an evaluation between optimizer steps",
    "save": "saving a checkpoint",
}


def term(name: str) -> str:
    """What the term ``name`` holds (an optimizer's state by its name)."""
    if name.startswith("optimizer/") and name not in TERMS:
        return f"{name.removeprefix('optimizer/')} optimizer state"
    return TERMS.get(name, "")


def phase(name: str) -> str:
    """When the phase ``name`` is."""
    return PHASES.get(name, "")
