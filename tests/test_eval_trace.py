"""The evaluate phase (vramplan/memory/run.py) held to transformers' own evaluation step under
fake tensors: the generic loop's training steps (trace/run.py ``run_steps``) leave the
optimizer state, then ``Trainer.prediction_step`` (what ``Trainer.evaluate`` ->
``evaluation_loop`` runs for each batch: ``compute_loss`` under ``torch.no_grad()`` with
``prediction_loss_only=True``, no ``compute_metrics``) runs one batch of ``eval_batch``
sequences on the model accelerate prepared (autocast), in eval mode. The loop's own work
around it (gathering one loss per batch) holds a few bytes."""

from __future__ import annotations

import contextlib
import tempfile
from typing import Any

import pytest

from tests.conftest import requires
from vramplan.memory import estimate
from vramplan.memory.overhead import cublas_workspace_bytes
from vramplan.models import load_config, load_model
from vramplan.setup import Setup

pytestmark = [pytest.mark.trace, requires("torch", "transformers", "peft", "accelerate")]

MODEL = "qwen2.5-0.5b"


def traced_eval_peak(setup: Setup, steps: int = 2) -> int:
    """Peak live bytes while ``Trainer.prediction_step`` runs one evaluation batch, after
    ``steps`` training steps of the generic loop."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import Trainer, TrainingArguments

    from vramplan.trace.build import build
    from vramplan.trace.counter import Counter, CountingMode
    from vramplan.trace.run import cuda_dropout, run_steps, unpacked_batches
    from vramplan.trace.trl_sft import model_stays_put

    _, config = load_config(MODEL)
    vocab = int(config["vocab_size"])
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    b, s = setup.eval_batch, setup.seq_len
    with tempfile.TemporaryDirectory() as out, unpacked_batches(), cuda_dropout():
        built = build(config, setup, fake=True, device="cpu", fake_mode=fake_mode)
        counter = Counter(keep_timeline=False)
        for p in built.model.parameters():
            counter.track(p, "weights")
        for buf in built.model.buffers():
            counter.track(buf, "weights")
        mixed = {"bf16": setup.precision in ("bf16", "amp-bf16")}
        args = TrainingArguments(output_dir=out, use_cpu=True, per_device_eval_batch_size=b, report_to=[], **mixed)
        with model_stays_put():
            trainer = Trainer(model=built.model, args=args)

        def ids() -> Any:
            with fake_mode:
                return torch.randint(0, vocab, (setup.micro_batch, s))

        with fake_mode, CountingMode(counter):
            run_steps(built, setup, steps, "cpu", counter, ids)
        net = built.model
        if setup.precision != "fp32":  # accelerate wraps the forward in autocast (evaluation_mode as evaluate does)
            trainer.accelerator.prepare_model(net, device_placement=False, evaluation_mode=True)
        net.eval()
        with fake_mode:
            batch_ids = torch.randint(0, vocab, (b, s))
            batch = {"input_ids": batch_ids, "labels": batch_ids.clone()}
        loss_only = setup.evaluation == "loss"
        kept = None
        if not loss_only:  # an earlier batch's logits, kept for compute_metrics (EvalLoopContainer)
            with fake_mode, CountingMode(counter):
                _, kept, _ = trainer.prediction_step(net, dict(batch), prediction_loss_only=False)
        counter.set_phase("evaluate", steps)
        with fake_mode, CountingMode(counter), contextlib.suppress(StopIteration):
            loss, logits, _ = trainer.prediction_step(net, batch, prediction_loss_only=loss_only)
            assert (logits is None) is loss_only  # loss only: nothing kept for metrics
            if kept is not None:  # EvalLoopContainer.add: nested_concat, torch.cat on the first dim
                kept = torch.cat((kept, logits), dim=0)
                assert kept.shape == (2 * b, s, vocab)
            del loss, batch, logits
        return counter.phase_peaks[f"step{steps}/evaluate"]


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "lora", "precision": "bf16", "seq_len": 512, "eval_batch": 4},
        {"method": "full", "precision": "amp-bf16", "seq_len": 256, "eval_batch": 2},
        {"method": "lora", "precision": "bf16", "seq_len": 512, "eval_batch": 2, "evaluation": "logits"},
    ],
    ids=["lora-bf16-eval4x512", "full-amp-eval2x256", "lora-bf16-logits2x512"],
)
def test_evaluate_phase_matches_the_traced_prediction_step(fields: dict) -> None:
    setup = Setup(**{"attention": "sdpa", "grad_checkpointing": False, "evaluation": "loss", **fields})
    est = estimate(load_model(MODEL), setup)  # the generic loop: transformers Trainer
    planned = est.phases["evaluate"] - cublas_workspace_bytes()  # CUDA's workspace: no CPU trace sees it
    traced = traced_eval_peak(setup)
    assert abs(planned - traced) / traced <= 0.03, (planned / 2**30, traced / 2**30)
