"""GPT-OSS (transformers 5.25 ``models/gpt_oss/modeling_gpt_oss.py``, model_type ``gpt_oss``,
``GptOssForCausalLM``; built without remote code).

Every decoder layer is a mixture of experts (``GptOssMLP``): a router with a bias
(``GptOssTopKRouter``: ``weight`` E x h and ``bias`` E, bare ``nn.Parameter`` tensors, no
``nn.Linear``; top-k of the logits, then a softmax over those k) and the experts as fused
parameters with biases (``GptOssExperts``: ``gate_up_proj`` E x h x 2·I with ``gate_up_proj_bias``
E x 2·I, ``down_proj`` E x I x h with ``down_proj_bias`` E x h, I = ``intermediate_size``). The
gate and up columns are interleaved and go through a clamped SwiGLU (``_apply_gate``:
``gate.clamp(max=limit)``, ``up.clamp(-limit, limit)``, ``(up + 1) * gate * sigmoid(alpha *
gate)``). Attention (``GptOssAttention``) has biases on q, k, v and o (``attention_bias``
defaults to true) and one learned sink logit per query head (``sinks``, a ``nn.Parameter`` of
num_attention_heads), concatenated to each row of scores before the softmax and dropped after
it. Layers alternate between a 128-token sliding window and full attention (``layer_types``,
``GptOssConfig.__post_init__``: layer i slides when i + 1 is odd). Two RMSNorms per layer, each
multiplying its weight by the fp32 normalized input (``GptOssRMSNorm``), and untied embeddings
(``GptOssConfig.tie_word_embeddings = False``).

Attention: ``GptOssPreTrainedModel._supports_sdpa = False`` (torch's sdpa has no sink), so the
family plans eager attention, as transformers builds it unless a flash kernel is asked for
(``flash_attention_2`` is rerouted by ``PreTrainedModel`` to the model's
``_compatible_flash_implementations``, first ``kernels-community/vllm-flash-attn3``, which takes
the sinks). Eager (``eager_attention_forward``) runs its softmax in the scores' dtype over s + 1
columns (``F.softmax(combined_logits, dim=-1, dtype=combined_logits.dtype)``).

Weights: the released checkpoints hold the experts in MXFP4 (``quantization_config``
``quant_method: mxfp4``, modules_to_not_convert the attention, router, embeddings and lm_head).
transformers cannot train them so (quantizers/quantizer_mxfp4.py ``Mxfp4HfQuantizer.is_trainable``
is False: "MXFP4 quantization don't support training, please consider dequantizing the model
first by passing quantization_config=Mxfp4Config(dequantize=True)", and trainer_utils.py
``validate_quantization_for_training`` refuses a quantizer that is not trainable). With
``Mxfp4Config(dequantize=True)`` (OpenAI's fine-tuning cookbook), or on a GPU without the Triton
kernels (``validate_environment`` sets ``dequantize = True``), integrations/mxfp4.py
``Mxfp4Dequantize.convert`` dequantizes the blocks into the parameter's own dtype
(``dequantize_convertops``): the plan assumes MXFP4 weights dequantized to the load dtype
(bf16) for training. A BitsAndBytesConfig on these checkpoints is refused (quantizers/auto.py
``merge_quantization_configs``: "The model is quantized with Mxfp4Config but you are passing a
BitsAndBytesConfig config"); QLoRA needs a bf16 copy of the weights.
"""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import common, flag, integer
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError, shown
from vramplan.limits import MAX_EXPERTS, MAX_POSITIONS
from vramplan.spec import Linear, ModelSpec, MoESpec

#: ``_supports_sdpa = False``; ``flash_attention_2`` runs the model's flash kernel with sinks
ATTENTIONS = ("eager", "flash-attn-2")


def sliding_layers(cfg: dict[str, Any], where: str, layers: int) -> int:
    """``layer_types``' ``sliding_attention`` entries, or without that key what
    ``GptOssConfig.__post_init__`` derives: layer i slides when (i + 1) is odd."""
    types = cfg.get("layer_types")
    if types is None:
        return sum(1 for i in range(layers) if (i + 1) % 2)
    if not isinstance(types, list) or len(types) != layers:
        raise VramplanError(
            "layer_types", f"must list one attention type per layer ({layers}), got {shown(types)} ({where})"
        )
    return sum(1 for t in types if t == "sliding_attention")


def experts(h: int, n_exp: int, inter: int, routed: bool = False) -> tuple[Linear, ...]:
    """``GptOssTopKRouter`` and ``GptOssExperts``: bare parameters with biases. PEFT's
    ``all-linear`` leaves them alone (no ``nn.Linear``, and peft 0.21.2
    utils/transformers_weight_conversion.py maps no gpt_oss targets to ``target_parameters``).
    ``routed``: transformers 4's loop over the experts (:func:`restack`)."""
    return (
        Linear(name="router", in_features=h, out_features=n_exp, bias=True, nn_linear=False),
        *(
            Linear(name=n, in_features=i, out_features=o, bias=True, count=n_exp, nn_linear=False, routed=routed)
            for n, i, o in (("experts.gate_up_proj", h, 2 * inter), ("experts.down_proj", inter, h))
        ),
    )


def restack(spec: ModelSpec, major: int) -> ModelSpec:
    """``spec`` as transformers ``major`` builds it. The parameters are the same in 4 and 5 (GPT-OSS
    came with fused experts, 4.55); the training forward differs: transformers 4 (read at 4.57.6,
    ``GptOssExperts.forward``: ``if hidden_states.device.type == "cpu" or self.training``) loops over
    the hit experts and adds each one's weighted output into the layer's output with ``index_add_``,
    whose backward keeps that source (``Linear.routed``: A·t·k·h more per layer, memory/activations.py
    ``mlp_bytes``); 5 runs ``grouped_mm`` and sums the k outputs by reshape. Run for real on the CPU
    (a 2-layer config of 4 experts, 2 per token, h 256, eager, LoRA on the attention, seq 256), 4.57.6
    peaked 515,936 bytes above 5.25 (this term: 524,288), each estimate 1.20% above its run."""
    assert spec.moe is not None
    h, n_exp, inter = spec.hidden_size, spec.moe.num_experts, spec.moe.expert_intermediate_size
    return spec.model_copy(update={"moe_mlp": experts(h, n_exp, inter, routed=major == 4), "transformers": major})


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    c = common(cfg, where)
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_layers"]
    # GptOssConfig.attribute_map: num_experts -> num_local_experts
    key = "num_local_experts" if "num_local_experts" in cfg or "num_experts" not in cfg else "num_experts"
    n_exp = integer(cfg, key, where, 1, MAX_EXPERTS, default=128)
    bias = flag(cfg, "attention_bias", where, True)
    q, kv = c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]
    attention = (
        Linear(name="q_proj", in_features=h, out_features=q, bias=bias),
        Linear(name="k_proj", in_features=h, out_features=kv, bias=bias),
        Linear(name="v_proj", in_features=h, out_features=kv, bias=bias),
        Linear(name="o_proj", in_features=q, out_features=h, bias=bias),
    )
    window = integer(cfg, "sliding_window", where, 0, MAX_POSITIONS, default=128)
    quant = cfg.get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    moe = MoESpec(
        num_experts=n_exp,
        experts_per_token=integer(cfg, "num_experts_per_tok", where, 1, n_exp, default=4),
        expert_intermediate_size=inter,
        layers=tuple(range(layers)),
        clamped_swiglu=True,
        router_topk_softmax=True,
    )
    return ModelSpec(
        name=name,
        model_type=cfg["model_type"],
        gated_mlp=True,
        attention=attention,
        mlp=(),
        moe=moe,
        moe_mlp=experts(h, n_exp, inter),
        attention_sinks=True,
        checkpoint_quant="mxfp4" if method == "mxfp4" else "",
        # GptOssRMSNorm returns ``(self.weight * hidden_states).to(input_dtype)`` on the fp32
        # normalized input: the product is fp32 and saves it so
        norm_scale_fp32=True,
        sliding_layers=sliding_layers(cfg, where, layers) if window else 0,
        sliding_window=window,
        attentions=ATTENTIONS,
        decoder_layer="GptOssDecoderLayer",
        # LLaMA-Factory 0.9.5 data/template.py register_template(name="gpt_oss")
        chat_templates=(("llamafactory", "gpt_oss"),),
        transformers_module="gpt_oss",
        transformers=5,
        **c,
    )


FAMILY = register(Family("gpt_oss", ("gpt_oss",), read, title="GPT-OSS", restack=restack))
