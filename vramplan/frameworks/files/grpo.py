"""TRL target for ``--rl grpo``: a self-contained script around ``GRPOTrainer`` and
``GRPOConfig`` (TRL 1.x), on one GPU.

Setup -> GRPOConfig: ``micro_batch`` -> ``per_device_train_batch_size`` (completions per
micro-step), ``grad_accum`` -> ``gradient_accumulation_steps`` (and, by TRL's default,
``steps_per_generation``: one generation batch per optimizer step), ``num_generations``,
``completion_len`` -> ``max_completion_length``, ``beta``; ``seq_len - completion_len``
is the prompt length the plan counts (prompts are truncated to it by the script, as TRL
1.x no longer does). Precision, quantization, LoRA and the optimizer map as in the SFT
script. The reward is the user's (``--reward module:function``); without one the script
uses a placeholder that only checks the set-up runs.

Images (a VLM plan with ``--image-size WxH --images-per-sample N``, Visual-RFT): each record
names its image files (``image`` or ``images``, paths relative to the data file); the model's
processor loads them with ``max_pixels = W x H``, so no image yields more tokens than the plan
counts; the prompt is a user message with the images ahead of its text, as TRL builds it.

The script is ``templates/grpo.py`` (its model loading and image reading are the SFT script's,
included from ``templates/sft.py``), rendered by :mod:`vramplan.frameworks.files.trl`.
"""

from __future__ import annotations

from typing import Any

from vramplan.frameworks.files.common import Context


def grpo_training(ctx: Context, sft: dict[str, Any]) -> dict[str, Any]:
    """GRPOConfig's arguments from the SFT settings the plan already maps."""
    s = ctx.setup
    training = {k: v for k, v in sft.items() if k not in ("max_length", "packing")}
    training.update(
        {
            "num_generations": s.num_generations,
            "max_completion_length": s.completion_len,
            "beta": s.beta,
            "learning_rate": 1e-5 if s.is_lora else 1e-6,
            "num_train_epochs": 1,
        }
    )
    if s.vllm == "colocate":
        # vLLM inside this process takes its share of the card at start-up (needs vllm installed)
        training.update(
            {
                "use_vllm": True,
                "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": s.vllm_gpu_memory_utilization,
                "vllm_enable_sleep_mode": s.vllm_sleep,
                # the longest sequence vLLM must hold (prompt, images, completion): without it vLLM sizes
                # for the model's whole context and may refuse to start in its share
                "vllm_max_model_length": s.seq_len
                + (ctx.images["per_prompt"] * ctx.images["tokens_per_image"] if ctx.images else 0),
            }
        )
    return training
