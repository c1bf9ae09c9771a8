"""vramplan: will fine-tuning this model fit this GPU, how, and where does the memory go."""

from vramplan.errors import VramplanError
from vramplan.gpus import GPU, resolve_gpu
from vramplan.memory import Estimate, estimate
from vramplan.models import load_model
from vramplan.params import ParamCounts, param_counts
from vramplan.planner import Alternative, Peak, Plan, plan
from vramplan.setup import Setup, make_setup
from vramplan.spec import ModelSpec, spec_from_config

__version__ = "0.1.0"

__all__ = [
    "GPU",
    "Alternative",
    "Estimate",
    "ModelSpec",
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
