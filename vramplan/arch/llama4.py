"""Llama 4 (transformers 5.25 ``models/llama4/modeling_llama4.py``; model types ``llama4``, the
vision-language ``Llama4ForConditionalGeneration``, and ``llama4_text``, ``Llama4ForCausalLM``;
built without remote code).

The text model: layers listed in ``moe_layers`` (``Llama4TextConfig.__post_init__`` derives them
from ``interleave_moe_layer_step``: every step-th layer from step - 1; Scout's step 1 makes every
layer one, Maverick's 2 every other) are ``Llama4TextMoe``: a router that is an ``nn.Linear``
subclass (``Llama4Router``, h -> E, no bias; the top-k logits through a sigmoid, every other
expert's score 0), the experts as fused parameters (``Llama4TextExperts``: ``gate_up_proj`` E x h
x 2·I and ``down_proj`` E x I x h, I = ``intermediate_size``) and a shared expert every token goes
through (``shared_expert = Llama4TextMLP(config)``, gate/up/down ``nn.Linear`` of I). The
experts compute every token: ``Llama4TextMoe.forward`` repeats the hidden states once per expert,
scales each copy by its (mostly zero) score and runs one ``torch.bmm`` per projection over all E
experts (``MoESpec.dense_dispatch``). The other layers are a dense ``Llama4TextMLP`` of
``intermediate_size_mlp``. Attention (``Llama4TextAttention``): q/k/v/o without bias by default;
on RoPE layers (``no_rope_layers`` 1; every fourth layer is NoPE by default) a weightless L2
norm of q and k (``Llama4TextWeightlessRMSNorm``, no parameter) when ``use_qk_norm``, and those
layers attend within chunks of ``attention_chunk_size`` tokens (``layer_types``
``chunked_attention``; as for a sliding window, sdpa gets a mask only from the chunk's length on:
masking_utils.py ``create_chunked_causal_mask`` passes ``local_size=chunk_size`` to the rule
``_ignore_causal_mask_sdpa`` applies to a window, so the chunked layers are held as
``sliding_layers`` of that window). Two RMSNorms per layer,
untied embeddings. ``Llama4PreTrainedModel`` refuses flash attention (``_supports_flash_attn =
False``): eager and sdpa.

The vision tower (``Llama4VisionModel``: an unfolded-patch linear, a class embedding and a
learned position table, pre/post LayerNorms, ``num_hidden_layers`` LayerNorm encoder layers with
biased q/k/v/o and a GELU fc1/fc2 MLP, the pixel-shuffle adapter's fc1/fc2) and the projector
(``Llama4MultiModalProjector.linear_1``, vision_output_dim -> h, no bias) are counted, as
transformers builds them, in ``ModelSpec.tower_params``; their activations are not planned (the
tower's memory terms, memory/vision.py, model the Qwen-VL towers only): a plan is for text
batches, through which the tower is never run.
"""

from __future__ import annotations

from typing import Any

from vramplan.arch.config import common, flag, indexes, integer
from vramplan.arch.registry import Family, register
from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_POSITIONS,
)
from vramplan.spec import Linear, ModelSpec, MoESpec

#: ``Llama4PreTrainedModel._supports_flash_attn = False``, ``_supports_sdpa = True``
ATTENTIONS = ("eager", "sdpa")
#: PEFT's all-linear (peft 0.21.2 ``_maybe_include_all_linear_layers``: every ``nn.Linear``) wraps
#: ``Llama4Router``, an ``nn.Linear`` whose forward returns (scores, logits), and its LoRA layer then
#: adds to that tuple: a tiny Llama4ForCausalLM's forward fails with AttributeError ('tuple' object
#: has no attribute 'dtype'), run with transformers 5.25
ALL_LINEAR = "PEFT wraps its router, an nn.Linear returning a tuple, and the forward fails"


def _rope_layers(cfg: dict[str, Any], where: str, layers: int) -> tuple[int, ...]:
    """``no_rope_layers`` (1: the layer uses RoPE), or what ``__post_init__`` derives from
    ``no_rope_layer_interval`` (default 4): layer i is NoPE when (i + 1) is a multiple of it."""
    given = cfg.get("no_rope_layers")
    if given:  # an empty list also takes the default, as ``__post_init__`` does
        if not isinstance(given, list) or len(given) < layers or any(v not in (0, 1) for v in given):
            raise VramplanError(
                "no_rope_layers", f"must list a 0 or 1 for each of the {layers} layers, got {shown(given)} ({where})"
            )
        return tuple(int(v) for v in given[:layers])
    every = integer(cfg, "no_rope_layer_interval", where, 1, MAX_LAYERS, default=4)
    return tuple(int((i + 1) % every != 0) for i in range(layers))


def _moe_layers(cfg: dict[str, Any], where: str, layers: int) -> tuple[int, ...]:
    if cfg.get("moe_layers") is not None:
        return tuple(sorted(set(indexes(cfg, "moe_layers", where, layers))))
    step = integer(cfg, "interleave_moe_layer_step", where, 0, MAX_LAYERS, default=1)
    return tuple(range(step - 1, layers, step)) if step else ()


def tower_params(vision: dict[str, Any], text_hidden: int, where: str) -> tuple[int, int]:
    """(vision tower with its pixel-shuffle adapter, projector) parameters of
    ``Llama4VisionModel`` and ``Llama4MultiModalProjector`` as transformers 5.25 builds them."""
    p = "vision_config."
    d = integer(vision, "hidden_size", where, 1, MAX_HIDDEN, default=768, prefix=p)
    depth = integer(vision, "num_hidden_layers", where, 0, MAX_LAYERS, default=34, prefix=p)
    inter = integer(vision, "intermediate_size", where, 1, MAX_INTERMEDIATE, default=5632, prefix=p)
    integer(vision, "num_attention_heads", where, 1, MAX_HEADS, default=16, prefix=p)
    image = integer(vision, "image_size", where, 1, MAX_POSITIONS, default=448, prefix=p)
    patch = integer(vision, "patch_size", where, 1, MAX_POSITIONS, default=14, prefix=p)
    channels = integer(vision, "num_channels", where, 1, 16, default=3, prefix=p)
    proj_in = integer(vision, "projector_input_dim", where, 1, MAX_HIDDEN, default=4096, prefix=p)
    proj_out = integer(vision, "projector_output_dim", where, 1, MAX_HIDDEN, default=4096, prefix=p)
    out = integer(vision, "vision_output_dim", where, 1, MAX_HIDDEN, default=7680, prefix=p)
    bias = flag(vision, "multi_modal_projector_bias", where, False)
    patches = (image // patch) ** 2 + 1  # Llama4VisionModel.num_patches, the class token's row included
    layer = 4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d  # attention, MLP, 2 LayerNorms
    tower = channels * patch * patch * d + d + patches * d + 2 * 2 * d + depth * layer
    adapter = inter * proj_in + proj_out * proj_out  # Llama4VisionMLP2 fc1, fc2 (no bias)
    projector = out * text_hidden + (text_hidden if bias else 0)
    return tower + adapter, projector


def read(name: str, cfg: dict[str, Any], where: str) -> ModelSpec:
    vlm = cfg["model_type"] == "llama4"
    text = cfg.get("text_config") if vlm else cfg
    if not isinstance(text, dict):
        raise VramplanError("text_config", f"must be a JSON object, got {shown(text)} ({where})")
    prefix = "text_config." if vlm else ""
    c = common({**text, "model_type": "llama4_text"}, where)
    if vlm and "tie_word_embeddings" in cfg:  # Llama4Config's own key (False) decides for the model
        c["tie_word_embeddings"] = flag(cfg, "tie_word_embeddings", where, False)
    h, layers = c["hidden_size"], c["num_layers"]
    inter = c["intermediate_size"]
    dense_inter = integer(text, "intermediate_size_mlp", where, 1, MAX_INTERMEDIATE, default=16384, prefix=prefix)
    n_exp = integer(text, "num_local_experts", where, 0, MAX_EXPERTS, default=16, prefix=prefix)
    bias = flag(text, "attention_bias", where, False)
    q, kv = c["num_heads"] * c["head_dim"], c["num_kv_heads"] * c["head_dim"]
    attention = (
        Linear(name="q_proj", in_features=h, out_features=q, bias=bias),
        Linear(name="k_proj", in_features=h, out_features=kv, bias=bias),
        Linear(name="v_proj", in_features=h, out_features=kv, bias=bias),
        Linear(name="o_proj", in_features=q, out_features=h, bias=bias),
    )
    mlp = tuple(
        Linear(name=n, in_features=i, out_features=o)
        for n, i, o in (("gate_proj", h, dense_inter), ("up_proj", h, dense_inter), ("down_proj", dense_inter, h))
    )
    moe_layers = _moe_layers(text, where, layers) if n_exp else ()
    moe = None
    moe_mlp: tuple[Linear, ...] = ()
    if moe_layers:
        moe = MoESpec(
            num_experts=n_exp,
            experts_per_token=integer(text, "num_experts_per_tok", where, 1, n_exp, default=1, prefix=prefix),
            expert_intermediate_size=inter,
            shared_expert_intermediate_size=inter,
            layers=moe_layers,
            dense_dispatch=True,
        )
        moe_mlp = (
            # Llama4Router subclasses nn.Linear, but bitsandbytes converts exact nn.Linear modules only
            # (integrations/bitsandbytes.py replace_with_bnb_linear: ``type(module) is nn.Linear``), and
            # PEFT's adapter on it breaks the forward (ALL_LINEAR): held as no LoRA target, never 4-bit
            Linear(name="router", in_features=h, out_features=n_exp, nn_linear=False),
            Linear(name="experts.gate_up_proj", in_features=h, out_features=2 * inter, count=n_exp, nn_linear=False),
            Linear(name="experts.down_proj", in_features=inter, out_features=h, count=n_exp, nn_linear=False),
            Linear(name="shared_expert.gate_proj", in_features=h, out_features=inter),
            Linear(name="shared_expert.up_proj", in_features=h, out_features=inter),
            Linear(name="shared_expert.down_proj", in_features=inter, out_features=h),
        )
    rope = _rope_layers(text, where, layers)
    chunk = text.get("attention_chunk_size", 8192)
    chunk = integer(text, "attention_chunk_size", where, 1, MAX_POSITIONS, prefix=prefix) if chunk is not None else 0
    tower, projector = (0, 0)
    if vlm:
        vision = cfg.get("vision_config") or {}
        if not isinstance(vision, dict):
            raise VramplanError("vision_config", f"must be a JSON object, got {shown(vision)} ({where})")
        tower, projector = tower_params(vision, h, where)
    return ModelSpec(
        name=name,
        model_type=cfg["model_type"],
        gated_mlp=True,
        attention=attention,
        mlp=mlp,
        moe=moe,
        moe_mlp=moe_mlp,
        # the chunked layers: RoPE layers while attention_chunk_size is set (layer_types)
        sliding_layers=sum(rope) if chunk else 0,
        sliding_window=chunk,
        rope_qk_l2_norm_layers=sum(rope) if flag(text, "use_qk_norm", where, True) else 0,
        tower_params=tower,
        tower_projector_params=projector,
        attentions=ATTENTIONS,
        # "llama4 doesn't cast attn weights to fp32" (modeling_llama4.eager_attention_forward)
        eager_softmax_in_scores_dtype=True,
        all_linear_refused=ALL_LINEAR if moe_layers else "",
        decoder_layer="Llama4TextDecoderLayer",
        # LLaMA-Factory 0.9.5 data/template.py register_template(name="llama4")
        chat_templates=(("llamafactory", "llama4"),),
        transformers_module="llama4",
        **{k: v for k, v in c.items() if k != "intermediate_size"},
        intermediate_size=dense_inter,
    )


FAMILY = register(Family("llama4", ("llama4", "llama4_text"), read, title="Llama 4"))
