"""Build the real model a Setup describes: transformers from the catalog config (random
weights, no download), PEFT LoRA / QLoRA, freezing, gradient checkpointing, attention
implementation, and the optimizer, as trainers do it.

``fake=True`` builds on the meta device and materialises under ``FakeTensorMode`` on "cpu"
(no real memory); ``fake=False`` builds real tensors on ``device`` (tiny models, oracles,
the cuda backend).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from vramplan.arch.config import legacy_bools
from vramplan.setup import Setup
from vramplan.trace.kbit import build_qlora
from vramplan.trace.parts import embedding_name, lora_config, materialize_fake
from vramplan.trace.preflight import check_buildable, config_kwargs

ATTN_IMPL = {"eager": "eager", "sdpa": "sdpa", "flash-attn-2": "flash_attention_2"}
TORCH_DTYPE = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "amp-bf16": torch.float32,
    "amp-fp16": torch.float32,
}
AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}


@dataclass
class Built:
    model: Any
    optimizer: Any
    autocast_dtype: Any  # None: no autocast
    notes: list[str]


def _hf_config(config: dict[str, Any], setup: Setup, device: str) -> tuple[Any, list[str]]:
    """transformers' config object for ``config``, and a note naming any keys left out
    (:func:`vramplan.trace.preflight.config_kwargs`; a key named like one of the config
    class's methods would shadow it, so those are left out too)."""
    from transformers import AutoConfig, PretrainedConfig

    kwargs, dropped = config_kwargs(config)
    for key in [k for k in kwargs if callable(getattr(PretrainedConfig, k, None))]:
        dropped.append(key)
        del kwargs[key]
    kwargs, coerced = legacy_bools(config["model_type"], kwargs)
    attn = ATTN_IMPL[setup.attention]
    if attn == "flash_attention_2" and device != "cuda":
        attn = "sdpa"
    hf = AutoConfig.for_model(config["model_type"], **kwargs)
    hf._attn_implementation = attn
    hf.use_cache = False
    shown = [k for k in dropped if k != "_name_or_path"]  # transformers' own bookkeeping key
    notes = [f"config keys left out (not settings transformers can take): {', '.join(shown)}"] if shown else []
    if coerced:
        notes.append(f"config values read as true/false, as transformers 4 took them: {', '.join(coerced)}")
    return hf, notes


def freeze_vision_parts(model: Any, tower: bool, projector: bool) -> None:
    """Qwen2-VL / Qwen2.5-VL: ``model.visual`` holds the tower and its ``merger`` (the
    projector); freeze either, as LLaMA-Factory and ms-swift do."""
    for name, p in model.named_parameters():
        if ".visual." not in f".{name}":
            continue
        if (".merger." in name and projector) or (".merger." not in name and tower):
            p.requires_grad_(False)


def _freeze(model: Any, setup: Setup, num_layers: int) -> None:
    """LLaMA-Factory ``freeze``: train the top ``freeze_trainable_layers`` decoder layers."""
    keep = {f"layers.{i}." for i in range(num_layers - setup.freeze_trainable_layers, num_layers)}
    for name, p in model.named_parameters():
        p.requires_grad_(any(k in name for k in keep))


def make_optimizer(params: list[Any], setup: Setup) -> Any:
    lr = 1e-4
    if setup.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    if setup.optimizer == "adamw-fused":
        return torch.optim.AdamW(params, lr=lr, fused=True)
    if setup.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if setup.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    import bitsandbytes as bnb

    cls = {
        "adamw-8bit": bnb.optim.AdamW8bit,
        "paged-adamw-8bit": bnb.optim.PagedAdamW8bit,
        "paged-adamw-32bit": bnb.optim.PagedAdamW32bit,
        "lion": bnb.optim.Lion,
    }[setup.optimizer]
    return cls(params, lr=lr)


def build(config: dict[str, Any], setup: Setup, *, fake: bool, device: str = "cpu", fake_mode: Any = None) -> Built:
    """The model, wrapped as ``setup`` says, and its optimizer (states not yet created)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    notes = check_buildable(config, setup, device)
    vlm = "vision_config" in config
    auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    hf, config_notes = _hf_config(config, setup, device)
    notes += config_notes
    dtype = TORCH_DTYPE[setup.precision]
    if setup.method == "qlora":
        model = build_qlora(hf, setup, fake=fake, device=device, fake_mode=fake_mode)
    else:
        ctx = torch.device("meta") if fake else torch.device(device)
        with ctx:
            model = auto.from_config(hf, dtype=dtype)
        if setup.method == "freeze":
            layers = hf.num_hidden_layers if not vlm else hf.text_config.num_hidden_layers
            _freeze(model, setup, layers)
        if vlm and (setup.freeze_vision or setup.freeze_projector):
            freeze_vision_parts(model, setup.freeze_vision, setup.freeze_projector)
        if setup.method == "lora":
            from peft import get_peft_model

            targets = setup.lora_target_list()
            cfg = lora_config(setup, targets, embedding_name(model))
            if vlm:
                # adapters on the language model only (the vision tower stays frozen)
                names = targets or sorted({lin.name.split(".")[-1] for lin in _text_linears(config)})
                cfg.target_modules = r".*language_model.*\.(" + "|".join(names) + r")$"
            model = get_peft_model(model, cfg)
        if fake:
            materialize_fake(model, fake_mode)
    if setup.grad_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        if setup.method != "full":
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # bitsandbytes optimizers build their quantization maps from real values in __init__
    ctx2 = (
        fake_mode
        if fake and setup.optimizer in ("adamw", "adamw-fused", "sgd", "adafactor")
        else contextlib.nullcontext()
    )
    with ctx2:
        optimizer = make_optimizer(params, setup)
    return Built(model=model, optimizer=optimizer, autocast_dtype=AUTOCAST_DTYPE.get(setup.precision), notes=notes)


def _text_linears(config: dict[str, Any]) -> list[Any]:
    from vramplan.arch import spec_from_config

    spec = spec_from_config(config, name="vlm", where="config")
    return [lin for group, _ in spec.layer_groups for lin in group if lin.nn_linear]
