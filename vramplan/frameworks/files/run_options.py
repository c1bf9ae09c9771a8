"""What every target writes for the run around the step the plan counted: the batches' lengths
(``Setup.lengths``, ``Setup.avg_tokens``) and the evaluation during training (``Setup.evaluation``,
``eval_batch``, ``eval_samples``), resolved with the trainer's policy as the estimate resolved
them (vramplan/memory/run.py, memory/lengths.py).

Lengths, as the plan counts them and as each target is told to run them:

- ``fixed``: every micro-batch at ``seq_len`` tokens a sample. Where the trainer can pad every
  batch to that length it is told to (TRL ``pad_to_multiple_of``, axolotl ``pad_to_sequence_len``);
  where it has no such option (ms-swift, LLaMA-Factory pad each batch to its longest sample) the
  header says so: a batch whose samples reach the cap is the one the plan counts.
- ``variable``: each batch padded to its longest sample (every target's collator by default).
- ``packed``: samples packed into rows of ``seq_len`` tokens (TRL ``packing``, ms-swift ``--packing``,
  LLaMA-Factory ``packing``/``neat_packing``, axolotl ``sample_packing``), the fixed-length numbers.
  Where the trainer keeps packed samples apart only with flash-attention, a plan on another kernel
  is refused, naming ``lengths``.

With ``--avg-tokens`` below the cap under ``fixed``, the plan's note ``lengths.padding``
(vramplan/advice.py) gives the real tokens a step then trains, and every header repeats it.

Evaluation: ``none`` writes the trainer's "no evaluation"; otherwise a held-out part of the data
(``eval_samples`` where the trainer takes a count, else :data:`EVAL_FRACTION` of it), evaluated
every :data:`EVAL_STEPS` optimizer steps at ``eval_batch`` sequences per GPU, loss only, or with
the metric whose logits (or their argmax) the plan keeps, at most ``kept_steps`` evaluation steps
of them on the card (``eval_accumulation_steps``), or generating; a mode the target cannot run is
refused, naming ``evaluation``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramplan.errors import VramplanError
from vramplan.frameworks.files.common import Context
from vramplan.memory import run
from vramplan.memory.policy import with_policy
from vramplan.policy import default_policy
from vramplan.setup import Setup

#: the part of the data held out for evaluation when ``--eval-samples`` does not size it (or the
#: trainer takes only a fraction)
EVAL_FRACTION = 0.05
#: optimizer steps between evaluations
EVAL_STEPS = 100


@dataclass(frozen=True)
class Evaluation:
    """The evaluation a target writes: its mode, sequences per GPU per forward, the held-out
    samples (0: :data:`EVAL_FRACTION` of the data), the evaluation steps whose logits stay on the
    card before they move to the host, and the tokens generated (``generate``)."""

    mode: str
    batch: int
    samples: int
    kept_steps: int
    new_tokens: int

    def held_out(self) -> int | float:
        """What a trainer taking a count or a fraction is given."""
        return self.samples or EVAL_FRACTION

    def describe(self) -> str:
        what = {
            "loss": "the loss only",
            "logits": f"the logits kept for the metric, at most {self.kept_steps} step(s) of them on the card",
            "generate": f"generating up to {self.new_tokens} new tokens",
        }[self.mode]
        held = f"{self.samples} held-out samples" if self.samples else f"{EVAL_FRACTION:.0%} of the data held out"
        return f"every {EVAL_STEPS} steps, {self.batch} sequence(s) per GPU, {what}; {held}"


def evaluation(ctx: Context) -> Evaluation | None:
    """The evaluation the estimate counted (run.evaluation, run.eval_batch, run.kept_eval_steps
    under the target's policy), or None when the run does not evaluate."""
    # a Context the trace harnesses build without the trainer's policy (vramplan/trace/*_sft.py) reads the
    # generic loop's, which does not evaluate unless the Setup says so
    policy = getattr(ctx, "policy", None) or default_policy(ctx.setup)
    s = with_policy(ctx.setup, policy)
    mode = run.evaluation(s)
    if mode == "none":
        return None
    batch = run.eval_batch(s)
    kept = run.kept_eval_steps(s, batch) if mode == "logits" else 0
    return Evaluation(mode, batch, ctx.setup.eval_samples, kept, policy.eval_new_tokens)


def refuse_evaluation(target: str, mode: str, why: str) -> VramplanError:
    return VramplanError("evaluation", f"{target}: --evaluation {mode} is not emitted: {why}")


def needs_flash_for_packing(ctx: Context, target: str, where: str) -> None:
    """Refuse a packed plan on a kernel the target does not keep packed samples apart with."""
    if ctx.setup.lengths == "packed" and ctx.setup.attention != "flash-attn-2":
        raise VramplanError(
            "lengths",
            f"{target}: packing keeps samples apart only with flash-attention ({where}); plan with"
            " --attention flash-attn-2, or --lengths fixed or variable",
        )


def step_tokens(setup: Setup) -> tuple[int, int, int] | None:
    """(real tokens, tokens the memory is planned for, the samples' mean) per optimizer step over
    every replica, when the samples average below the cap (``avg_tokens``, or the lengths file's
    mean) and the plan counts every sample at it (``fixed``); else None."""
    from vramplan.memory.lengths import mean_of

    s = setup
    mean = mean_of(s) if s.lengths == "fixed" else None
    avg = round(mean) if mean else 0
    if not avg or avg >= s.seq_len:
        return None
    replicas = 1 if s.parallel in ("none", "device_map") else s.world_size
    samples = s.micro_batch * s.grad_accum * replicas
    return avg * samples, s.seq_len * samples, avg


def padding_line(ctx: Context, how: str) -> str:
    """The header's line on lengths: what the target is told (``how``) and, with ``--avg-tokens``
    under fixed lengths, the real tokens a step trains (the plan's ``lengths.padding`` note)."""
    s = ctx.setup
    line = f"lengths {s.lengths}: {how}"
    tokens = step_tokens(s)
    if tokens:
        real, computed, avg = tokens
        line += (
            f"; samples average {avg} of the {s.seq_len} tokens: a step trains about {real:,} real"
            f" tokens of the {computed:,} its memory is planned for (--lengths packed fills the rows at the same"
            " memory)"
        )
    return line


def evaluation_reason(ctx: Context, ev: Evaluation | None) -> str:
    """The comment beside the evaluation options: what runs and the evaluate phase's number."""
    if ev is None:
        return "no evaluation during training (--evaluation none): no evaluate phase is counted"
    peak = ctx.est.phases.get("evaluate", 0)
    return f"{ev.describe()}: the evaluate phase peaks at {peak / 2**30:.2f} GiB allocated ({ev.mode})"
