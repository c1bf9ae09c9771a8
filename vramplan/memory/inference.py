"""Generation (inference) memory: weights, the KV cache and the largest forward transient.

Used to check published inference measurements; the same terms a serving plan needs.
``seq_len`` is prompt plus generated tokens. Without knowing how the tokens split, the
prefill is taken over all of them: an upper bound on the prompt's forward transient and
exact for the cache at the end of generation.
"""

from __future__ import annotations

from vramplan.memory import overhead
from vramplan.memory.peak import split_estimate
from vramplan.memory.weights import quant_state_bytes, quant_weight_bytes, quantized_weight_params
from vramplan.params import param_counts
from vramplan.results import Estimate
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import nbytes

#: 16-bit dtype a precision runs generation in.
HALF = {"bf16": "bf16", "amp-bf16": "bf16", "fp16": "fp16", "amp-fp16": "fp16", "fp32": "fp32"}
#: storage dtype of a quantized KV cache (transformers ``QuantizedCache`` int8/int4, fp8 caches of
#: serving engines); per-group scales are below a percent and not counted.
KV_DTYPE = {"fp8": "int8", "int8": "int8", "int4": "int4"}


def kv_dtype(setup: Setup) -> str:
    return KV_DTYPE.get(setup.kv_cache, HALF[setup.precision])


def inference_weight_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Every parameter in the run dtype; with a quantized checkpoint, the packed linears and
    their quantization state, the rest (embeddings, lm_head, norms) in 16 bits."""
    total = param_counts(spec).total
    dt = HALF[setup.precision]
    if setup.quant == "none":
        return nbytes(total, dt)
    rest = total - quantized_weight_params(spec, setup.quant)
    return quant_weight_bytes(spec, setup.quant) + quant_state_bytes(spec, setup) + nbytes(rest, dt)


def kv_cache_tensor_bytes(spec: ModelSpec, setup: Setup) -> int:
    """Keys and values of every layer for every token: 2 · L · kv_heads · head_dim · b · s in
    the cache dtype (the run's 16-bit dtype, or ``kv_cache``: fp8/int8 1 B, int4 ½ B;
    transformers ``DynamicCache``; multi-query and grouped-query attention keep only their
    kv heads; multi-head latent attention its compressed latent, ``spec.kv_cache_widths``)."""
    per_token = spec.num_layers * sum(spec.kv_cache_widths)
    return nbytes(per_token * setup.tokens, kv_dtype(setup))


def kv_cache_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The cache's tensors times the fitted ``kv_cache_factor`` (tables/overheads.json; at
    least 1)."""
    return round(overhead.overhead_constants()["kv_cache_factor"] * kv_cache_tensor_bytes(spec, setup))


def cache_growth_bytes(spec: ModelSpec, setup: Setup) -> int:
    """``torch.cat`` of one layer's cache with the new token's keys: the old and the grown
    copy of one layer's K (then V) are alive together for a moment. Multi-head latent attention
    then expands the whole cached latent again at every step (transformers 5.25
    ``DeepseekV3Attention.expand_kv``): ``kv_b_proj``'s output, heads x (nope + v) per token, and
    the keys copied out of it, heads x (nope + rope), in the run's 16-bit dtype."""
    grow = nbytes(max(spec.kv_cache_widths) * setup.tokens, kv_dtype(setup))
    return grow + mla_expansion_bytes(spec, setup)


def mla_expansion_bytes(spec: ModelSpec, setup: Setup) -> int:
    """MLA: one layer's latent expanded over ``setup.tokens`` positions (kv_b_proj's output and
    the keys: a · (2·nope + v + rope) per token); 0 for other attention."""
    if spec.mla is None:
        return 0
    m = spec.mla
    width = spec.num_heads * (2 * m.qk_nope_head_dim + m.v_head_dim + m.qk_rope_head_dim)
    return nbytes(width * setup.tokens, HALF[setup.precision])


def prefill_transient_bytes(spec: ModelSpec, setup: Setup) -> int:
    """The largest forward temporary of the prompt under ``no_grad``: in a gated MLP,
    act(gate), up and their product (3 · b·s · I), beside the layer's input, its normed copy and
    the attention output (3 · b·s · h); eager attention adds the b · heads · s² score matrix
    and its softmax, multi-head latent attention its expanded keys and values
    (:func:`mla_expansion_bytes`). Only the last position's logits are computed (fp32, b · V)."""
    dt = HALF[setup.precision]
    t = setup.tokens
    inter = 3 if spec.gated_mlp else 2
    mlp = nbytes(inter * t * spec.intermediate_size, dt) + nbytes(3 * t * spec.hidden_size, dt)
    attn = mla_expansion_bytes(spec, setup)  # MLA: the prompt's keys and values expanded
    if setup.attention == "eager":
        attn += 2 * nbytes(setup.micro_batch * spec.num_heads * setup.seq_len**2, dt)
    logits = nbytes(setup.micro_batch * spec.vocab_size, "fp32")
    return max(mlp, attn) + logits


def inference_estimate(spec: ModelSpec, setup: Setup) -> Estimate:
    """Peak of generating ``setup.seq_len`` tokens, per GPU. ``device_map`` places the
    weights card by card as accelerate does, each card caching its own layers' keys and
    values; every card may run the largest forward transient."""
    terms = {
        "weights/frozen": inference_weight_bytes(spec, setup),
        "inference/kv_cache": kv_cache_bytes(spec, setup),
        "inference/transient": max(prefill_transient_bytes(spec, setup), cache_growth_bytes(spec, setup)),
        "overhead/cublas_workspace": overhead.cublas_workspace_bytes(),
        "overhead/dequant_workspace": overhead.dequant_workspace_bytes(spec, setup, generation=True),
    }
    terms = {k: v for k, v in terms.items() if v}
    if setup.parallel == "device_map":
        return split_estimate(spec, setup, {"generate": terms})
    allocated = sum(terms.values())
    slack = overhead.allocator_slack_bytes(allocated)
    terms["overhead/allocator_slack"] = slack
    terms["overhead/cuda_context"] = overhead.cuda_context_bytes()
    return Estimate(
        phase="generate",
        terms=terms,
        phases={"generate": allocated},
        allocated_bytes=allocated,
        reserved_bytes=allocated + slack,
        device_bytes=sum(terms.values()),
        total_params=param_counts(spec).total,
        trainable_params=0,
        needed_bytes=sum(terms.values()),
    )
