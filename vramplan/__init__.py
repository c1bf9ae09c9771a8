"""vramplan: will fine-tuning this model fit this GPU, how, and where does the memory go.

Names are loaded on first use (PEP 562), so ``import vramplan`` costs nothing until a
function is called; ``from vramplan import plan`` works as usual. A plan's files for a
trainer: ``from vramplan.emit import emit``; ``emit(plan, "trl", data=..., force=...)``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "GPU": "vramplan.gpus",
    "Alternative": "vramplan.results",
    "Estimate": "vramplan.results",
    "ModelSpec": "vramplan.spec",
    "Note": "vramplan.results",
    "ParamCounts": "vramplan.params",
    "Peak": "vramplan.results",
    "Plan": "vramplan.results",
    "Setup": "vramplan.setup",
    "VramplanError": "vramplan.errors",
    "estimate": "vramplan.memory",
    "load_model": "vramplan.models",
    "make_setup": "vramplan.setup",
    "param_counts": "vramplan.params",
    "plan": "vramplan.planner",
    "resolve_gpu": "vramplan.gpus",
    "spec_from_config": "vramplan.arch",
}

__all__ = [
    "GPU",
    "Alternative",
    "Estimate",
    "ModelSpec",
    "Note",
    "ParamCounts",
    "Peak",
    "Plan",
    "Setup",
    "VramplanError",
    "estimate",
    "load_model",
    "make_setup",
    "param_counts",
    "plan",
    "resolve_gpu",
    "spec_from_config",
]

if TYPE_CHECKING:
    from vramplan.arch import spec_from_config
    from vramplan.errors import VramplanError
    from vramplan.gpus import GPU, resolve_gpu
    from vramplan.memory import estimate
    from vramplan.models import load_model
    from vramplan.params import ParamCounts, param_counts
    from vramplan.planner import plan
    from vramplan.results import Alternative, Estimate, Note, Peak, Plan
    from vramplan.setup import Setup, make_setup
    from vramplan.spec import ModelSpec


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(_WHERE[name])
        # ``emit`` is the subpackage, callable as its function (vramplan/emit/__init__.py)
        value = module if _WHERE[name] == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vramplan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
