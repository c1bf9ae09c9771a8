from . import optimizer
from .optimizer import Optimizer

__all__ = ["Optimizer", "optimizer"]
