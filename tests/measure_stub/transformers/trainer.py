"""Stand-in ``transformers.trainer.Trainer``: ``train`` runs ``step`` per optimizer step and,
as transformers' does, evaluates and saves checkpoints from inside ``train``
(``_maybe_log_save_evaluate`` -> ``evaluate``, ``_save_checkpoint`` -> ``save_model``)."""

from __future__ import annotations

from typing import Any


class Trainer:
    def __init__(self, steps: int, eval_every: int = 0, save_every: int = 0) -> None:
        self.steps, self.eval_every, self.save_every = steps, eval_every, save_every

    def step(self, n: int) -> None:
        raise NotImplementedError

    def train(self) -> None:
        for n in range(1, self.steps + 1):
            self.step(n)
            if self.eval_every and n % self.eval_every == 0:
                self.evaluate()
            if self.save_every and n % self.save_every == 0:
                self._save_checkpoint()

    def evaluate(self) -> dict[str, Any]:
        return {}

    def save_model(self, output_dir: str | None = None) -> None:
        pass

    def _save_checkpoint(self) -> None:
        self.save_model("checkpoint")
