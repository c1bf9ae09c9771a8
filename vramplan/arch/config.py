"""Readers of config.json values every family shares: bounded integers, numbers, flags,
short strings, layer indexes, the keys of a decoder-only config, and the Llama-style block.

Each reader raises :class:`~vramplan.errors.VramplanError` naming the key, the range it must be
in and the file (``where``), so a bad config is one line on stderr.
"""

from __future__ import annotations

from typing import Any

from vramplan.errors import VramplanError, shown
from vramplan.limits import (
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_POSITIONS,
    MAX_VOCAB,
    said,
)
from vramplan.spec import Linear


def get(cfg: dict[str, Any], key: str, *, where: str, default: Any = ..., prefix: str = "") -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        mt = cfg.get("model_type")
        needs = f"; a {mt} config needs it" if isinstance(mt, str) else ""
        raise VramplanError(f"{prefix}{key}", f"missing from {where}{needs}")
    return default


def bounded(value: Any, key: str, where: str, lo: int, hi: int) -> int:
    """``value`` as an integer from ``lo`` to ``hi`` (an integral float such as 4096.0 passes;
    a bool, a string, NaN, a list or anything out of range raises naming ``key`` and the range)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise VramplanError(key, f"must be an integer from {lo:,} to {hi:,}, got {shown(value)} ({where})")
    return value


def integer(
    cfg: dict[str, Any], key: str, where: str, lo: int, hi: int, *, default: Any = ..., prefix: str = ""
) -> int:
    """``cfg[key]`` checked by :func:`bounded` (``default`` when absent or null)."""
    return bounded(get(cfg, key, where=where, default=default, prefix=prefix), f"{prefix}{key}", where, lo, hi)


def number(cfg: dict[str, Any], key: str, where: str, hi: float, *, default: Any = ..., prefix: str = "") -> Any:
    """``cfg[key]`` as a finite number from 0 to ``hi`` (JSON's NaN and Infinity refused)."""
    value = get(cfg, key, where=where, default=default, prefix=prefix)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= hi:
        raise VramplanError(f"{prefix}{key}", f"must be a number from 0 to {said(hi)}, got {shown(value)} ({where})")
    return value


def flag(cfg: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """``cfg[key]`` as a bool (true/false, or 0/1; absent or null: ``default``)."""
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or value not in (0, 1):
        raise VramplanError(key, f"must be true or false, got {shown(value)} ({where})")
    return bool(value)


def text(cfg: dict[str, Any], keys: tuple[str, ...], where: str, default: str) -> str:
    """The first of ``keys`` present and not null, as a string."""
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if not isinstance(value, str) or len(value) > 100:
                raise VramplanError(key, f"must be a short string, got {shown(value)} ({where})")
            return value
    return default


def indexes(cfg: dict[str, Any], key: str, where: str, below: int, prefix: str = "") -> tuple[int, ...]:
    """``cfg[key]``: a list of layer indexes, each from 0 to ``below - 1`` (absent or null: none)."""
    value = cfg.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise VramplanError(f"{prefix}{key}", f"must be a list of layer indexes, got {shown(value)} ({where})")
    return tuple(bounded(i, f"{prefix}{key}", where, 0, below - 1) for i in value)


def decoder_linears(
    h: int,
    q_dim: int,
    kv_dim: int,
    inter: int,
    *,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
    fused_qkv: bool = False,
    fused_gate_up: bool = False,
) -> tuple[tuple[Linear, ...], tuple[Linear, ...]]:
    """Llama-family block: q/k/v/o projections and a gated MLP (transformers' LlamaAttention,
    LlamaMLP; Phi-3 fuses qkv_proj and gate_up_proj)."""
    attn: tuple[Linear, ...]
    mlp: tuple[Linear, ...]
    if fused_qkv:
        attn = (
            Linear(name="qkv_proj", in_features=h, out_features=q_dim + 2 * kv_dim, bias=qkv_bias),
            Linear(name="o_proj", in_features=q_dim, out_features=h, bias=o_bias),
        )
    else:
        attn = (
            Linear(name="q_proj", in_features=h, out_features=q_dim, bias=qkv_bias),
            Linear(name="k_proj", in_features=h, out_features=kv_dim, bias=qkv_bias),
            Linear(name="v_proj", in_features=h, out_features=kv_dim, bias=qkv_bias),
            Linear(name="o_proj", in_features=q_dim, out_features=h, bias=o_bias),
        )
    if fused_gate_up:
        mlp = (
            Linear(name="gate_up_proj", in_features=h, out_features=2 * inter, bias=mlp_bias),
            Linear(name="down_proj", in_features=inter, out_features=h, bias=mlp_bias),
        )
    else:
        mlp = (
            Linear(name="gate_proj", in_features=h, out_features=inter, bias=mlp_bias),
            Linear(name="up_proj", in_features=h, out_features=inter, bias=mlp_bias),
            Linear(name="down_proj", in_features=inter, out_features=h, bias=mlp_bias),
        )
    return attn, mlp


def common(cfg: dict[str, Any], where: str, *, tied_default: bool = False) -> dict[str, Any]:
    """The keys every decoder-only config shares (transformers ``LlamaConfig`` names);
    ``tied_default``: what the family's config class defaults ``tie_word_embeddings`` to."""
    h = integer(cfg, "hidden_size", where, 1, MAX_HIDDEN)
    heads = integer(cfg, "num_attention_heads", where, 1, MAX_HEADS)
    kv = integer(cfg, "num_key_value_heads", where, 1, MAX_HEADS, default=heads)
    head_dim = integer(cfg, "head_dim", where, 1, MAX_HEAD_DIM, default=h // heads)
    if heads % kv:
        raise VramplanError(
            "num_key_value_heads", f"num_attention_heads ({heads}) must be a multiple of it, got {kv} ({where})"
        )
    return dict(
        hidden_size=h,
        num_layers=integer(cfg, "num_hidden_layers", where, 1, MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        intermediate_size=integer(cfg, "intermediate_size", where, 1, MAX_INTERMEDIATE),
        vocab_size=integer(cfg, "vocab_size", where, 1, MAX_VOCAB),
        tie_word_embeddings=flag(cfg, "tie_word_embeddings", where, tied_default),
        hidden_act=text(cfg, ("hidden_act", "hidden_activation"), where, "silu"),
        max_position_embeddings=integer(cfg, "max_position_embeddings", where, 0, MAX_POSITIONS, default=0),
        torch_dtype=text(cfg, ("torch_dtype", "dtype"), where, "bfloat16"),
    )


def legacy_bools(model_type: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``kwargs`` with an integer given for a ``bool`` field of the config class (or of its
    sub-configs) read as its truth value. transformers 5's configs are strict dataclasses that
    refuse such a value, which configs saved by transformers 4 hold: Llama 4 Scout's
    ``text_config.attn_temperature_tuning: 4`` (saved by 4.51.0; ``Llama4TextConfig`` declares
    ``attn_temperature_tuning: bool``, which ``modeling_llama4.Llama4TextAttention`` only tests
    for truth). Returns the coerced keys too."""
    from transformers import CONFIG_MAPPING

    coerced: list[str] = []

    def fix(cls: Any, d: dict[str, Any], where: str) -> dict[str, Any]:
        fields = getattr(cls, "__dataclass_fields__", {})
        subs = getattr(cls, "sub_configs", None) or {}
        out = dict(d)
        for k, v in d.items():
            f = fields.get(k)
            if f is not None and f.type is bool and isinstance(v, int) and not isinstance(v, bool):
                out[k] = bool(v)
                coerced.append(f"{where}{k}")
            elif k in subs and isinstance(v, dict):
                out[k] = fix(subs[k], v, f"{where}{k}.")
        return out

    cls = CONFIG_MAPPING[model_type] if model_type in CONFIG_MAPPING else None
    return (fix(cls, kwargs, ""), coerced) if cls is not None else (kwargs, coerced)
