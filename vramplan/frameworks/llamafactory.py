"""LLaMA-Factory: ``train.yaml`` for ``llamafactory-cli train`` and its ``dataset_info.json``
(vramplan/frameworks/files/llamafactory.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import llamafactory
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class LlamaFactory(Framework):
    name = "llamafactory"
    title = "LLaMA-Factory YAML (llamafactory-cli train)"
    package = "llamafactory"
    established = "0.9.5"

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.method in ("full", "freeze") and setup.precision == "fp16":
            notes.append("no pure fp16 for full/freeze (pure_bf16 only): fp16 with fp32 master weights (amp-fp16)")
            setup = setup.model_copy(update={"precision": "amp-fp16"})
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(f"{setup.quant}: point model_name_or_path at a {setup.quant.split('-')[0].upper()} checkpoint")
        return integral_alpha(setup, notes), notes

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return llamafactory.render(ctx)


register(LlamaFactory())
