"""GRPO's training step measured: TRL's own GRPOTrainer scores real completions and runs
``compute_loss``, ``backward`` and the optimizer step for two steps on the CPU with a small
random model, every live tensor counted (vramplan.trace.counter), against the estimate's
training phases.

On CUDA the fused LM head scores only the completion positions and its Triton kernels fold
each projection tile in place; on the CPU TRL scores every position and folds with torch ops
that allocate whole-tile copies. The measurement runs the CUDA program: the compact
selection is switched on and the CPU stand-ins of the kernels (and of the fp32-output
``addmm``) are replaced by allocation-free ones, so the values are meaningless but every
buffer TRL allocates on a GPU is allocated here. Generation and the reference pass are not
measured (they run before the step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import requires, save_word_tokenizer
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_by_phase
from vramplan.models import load_model
from vramplan.setup import make_setup

pytestmark = [pytest.mark.trace, requires("trl")]

MAX_UNDER_PCT, MAX_OVER_PCT = 1.0, 3.0
PROMPT, COMPLETION, MICRO_BATCH = 24, 32, 4


def _config(vocab: int) -> dict:
    return {
        "model_type": "qwen2",
        "hidden_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "intermediate_size": 512,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
    }


def measure(root: Path, *, method: str, vocab: int, grad_checkpointing: bool, beta: float = 0.0) -> dict[str, int]:
    """Peak live bytes in each phase of two GRPO training steps (after generation)."""
    import torch
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from vramplan.trace.counter import Counter, CountingMode

    model_dir = root / "model"
    save_word_tokenizer([f"Add {i} and {i + 1} . It is {2 * i + 1}" for i in range(50)], model_dir)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**_config(vocab))).save_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    prompt = tok.decode(tok(" ".join(["Add 1 and 2 ."] * 10))["input_ids"][:PROMPT])

    saved = (trl_utils._use_triton, kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32)
    trl_utils._use_triton = lambda device: True  # score the completion positions only, as on CUDA
    kernels._forward_tile = lambda tile, *a, **k: None  # Triton folds each tile in place
    kernels._backward_tile = lambda tile, *a, **k: None
    kernels._addmm_fp32 = lambda acc, a, b: None  # CUDA: addmm with out_dtype=fp32, no fp32 copies
    try:
        args = GRPOConfig(
            output_dir=str(root / "out"),
            per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=1,
            num_generations=MICRO_BATCH,
            max_completion_length=COMPLETION,
            beta=beta,
            bf16=True,
            use_cpu=True,
            optim="adamw_torch",
            report_to="none",
            save_strategy="no",
            gradient_checkpointing=grad_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if grad_checkpointing else None,
        )
        lora = None
        if method == "lora":
            lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16),
            reward_funcs=lambda completions, **kw: [float(len(c)) for c in completions],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": prompt}] * 8),
            processing_class=tok,
            peft_config=lora,
        )
        model = trainer.model
        if grad_checkpointing:  # what Trainer.train() does before the first step
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        inputs = trainer._generate_and_score_completions([{"prompt": prompt}] * MICRO_BATCH)
        assert inputs["completion_ids"].shape == (MICRO_BATCH, COMPLETION)
        assert inputs["prompt_ids"].shape == (MICRO_BATCH, PROMPT)
        trainer.current_gradient_accumulation_steps = 1
        # AdamW as on CUDA, where torch's default is the foreach implementation (on the CPU it is not)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
        counter = Counter(keep_timeline=False)
        resident = [*model.parameters(), *model.buffers()]
        if trainer.ref_model is not None:
            resident += [*trainer.ref_model.parameters(), *trainer.ref_model.buffers()]
        for t in resident:
            counter.track(t, "weights")
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                counter.track(v, "other")
        with CountingMode(counter):
            for step in range(2):
                counter.set_phase("forward", step)
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(model, inputs)
                counter.set_phase("backward", step)
                loss.backward()
                del loss
                counter.set_phase("optimizer", step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                counter.set_phase("between", step)
    finally:
        trl_utils._use_triton, kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32 = saved
    peaks: dict[str, int] = {}
    for key, value in counter.phase_peaks.items():
        phase = key.split("/")[1]
        peaks[phase] = max(peaks.get(phase, 0), value)
    return peaks


@pytest.mark.parametrize(
    ("method", "vocab", "gc", "beta"),
    [
        ("lora", 8192, True, 0.0),
        ("lora", 40000, False, 0.0),  # two vocabulary chunks
        ("full", 8192, True, 0.04),  # a frozen reference copy beside the policy
    ],
    ids=["lora-gc", "lora-two-chunks", "full-with-reference"],
)
def test_grpo_training_step_matches_the_estimate(
    tmp_path: Path, method: str, vocab: int, gc: bool, beta: float
) -> None:
    measured = measure(tmp_path, method=method, vocab=vocab, grad_checkpointing=gc, beta=beta)
    config = tmp_path / "model" / "config.json"
    json.loads(config.read_text())  # written by the measurement
    setup = make_setup(
        method=method,
        precision="bf16",
        lora_dropout=0.0,
        rl="grpo",
        seq_len=PROMPT + COMPLETION,
        completion_len=COMPLETION,
        num_generations=MICRO_BATCH,
        micro_batch=MICRO_BATCH,
        grad_accum=1,
        grad_checkpointing=gc,
        beta=beta,
    )
    est = traceable_by_phase(estimate(load_model(str(config)), setup))
    for phase in ("forward", "backward", "optimizer"):
        err = 100 * (est[phase] / measured[phase] - 1)
        assert -MAX_UNDER_PCT <= err <= MAX_OVER_PCT, (
            f"{phase}: estimate {est[phase] / 2**20:.2f} MiB, measured {measured[phase] / 2**20:.2f} MiB ({err:+.2f}%)"
        )
