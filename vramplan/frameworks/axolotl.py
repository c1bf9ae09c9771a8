"""axolotl: ``config.yml`` for ``axolotl train`` (vramplan/frameworks/files/axolotl.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import axolotl
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class Axolotl(Framework):
    name = "axolotl"
    title = "axolotl YAML (axolotl train)"
    package = "axolotl"
    established = "0.19"

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.precision.startswith("amp-"):
            half = setup.precision.removeprefix("amp-")
            notes.append(f"no fp32 master weights under autocast: {half} weights throughout (re-estimated)")
            setup = setup.model_copy(update={"precision": half})
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(
                f"{setup.quant}: emitted as bitsandbytes nf4 (axolotl's gptq needs a GPTQ checkpoint; re-estimated)"
            )
            setup = setup.model_copy(update={"quant": "bnb-nf4"})
        return integral_alpha(setup, notes), notes

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return axolotl.render(ctx)


register(Axolotl())
