"""What the plain build (build.py) and the k-bit build (kbit.py) both use: PEFT's LoRA config
for a Setup, the name of the input embedding, and materialising a meta model under fake mode
with its tied weights kept tied."""

from __future__ import annotations

from typing import Any

from vramplan.setup import Setup


def lora_config(setup: Setup, spec_targets: list[str] | None, embedding_name: str) -> Any:
    from peft import LoraConfig

    extra = {"embeddings": embedding_name, "lm_head": "lm_head"}
    return LoraConfig(
        r=setup.lora_rank,
        lora_alpha=int(setup.lora_alpha) if float(setup.lora_alpha).is_integer() else setup.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=setup.lora_dropout,
        target_modules="all-linear" if spec_targets is None else spec_targets,
        modules_to_save=[extra[m] for m in setup.trainable_extra] or None,
        task_type="CAUSAL_LM",
    )


def embedding_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is emb:
            return name.split(".")[-1]
    return "embed_tokens"


def _shared_parameters(model: Any) -> list[list[tuple[Any, str]]]:
    """Groups of (module, attribute) that hold one and the same Parameter (tied weights)."""
    owners: dict[int, list[tuple[Any, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, name))
    return [group for group in owners.values() if len(group) > 1]


def materialize_fake(model: Any, fake_mode: Any) -> None:
    """``to_empty`` under fake mode, keeping tied weights tied: ``to_empty`` replaces each
    module's parameters one by one and so un-ties them (Qwen2.5-0.5B would count its
    embedding twice); every group that shared a Parameter shares the new one again."""
    shared = _shared_parameters(model)
    with fake_mode:
        model.to_empty(device="cpu")
    for group in shared:
        first_module, first_name = group[0]
        param = getattr(first_module, first_name)
        for module, name in group[1:]:
            setattr(module, name, param)
