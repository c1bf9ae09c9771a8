"""ms-swift: the ``swift sft`` command line in ``run.sh`` (vramplan/frameworks/files/swift.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import swift
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class Swift(Framework):
    name = "swift"
    title = "ms-swift command line (swift sft)"
    package = "ms-swift"
    established = "4.6"

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(
                f"{setup.quant}: point --model at a {setup.quant.split('-')[0].upper()} checkpoint (detected on load)"
            )
        return integral_alpha(setup, notes), notes

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return swift.render(ctx)


register(Swift())
