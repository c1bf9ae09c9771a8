"""Stand-in ``torch.optim.optimizer``: the global post-step hooks torch runs after every
``Optimizer.step`` (``register_optimizer_step_post_hook``, torch/optim/optimizer.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_post_hooks: list[Callable[..., Any]] = []


def register_optimizer_step_post_hook(hook: Callable[..., Any]) -> None:
    _post_hooks.append(hook)


class Optimizer:
    def step(self) -> None:
        for hook in _post_hooks:
            hook(self, (), {})
