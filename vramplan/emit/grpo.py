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
"""

from __future__ import annotations

from typing import Any

from vramplan.emit.common import Context

SCRIPT = '''
"""Reinforcement fine-tuning with TRL's GRPOTrainer, as planned by vramplan (see the comment
block above).

    python train.py --model MODEL --data DATA [--reward module:function] [--output DIR]
                    [--max-steps N] [--dry-run]

MODEL is a hub id or a local model folder. DATA is a local JSON or JSONL file with one
prompt per record: {"prompt": ...} (text, or chat messages) or {"instruction": ..., "input":
...}; other fields are passed to the reward function. --reward names your reward:
module:function, called as function(prompts=..., completions=..., **fields) -> list of floats.
Without it a PLACEHOLDER reward (completion length near half the maximum) runs, which only
shows the set-up works. --dry-run prints the settings as JSON and exits without loading.
"""

import argparse
import importlib
import json
import math
import os

# one process on one GPU, as planned: with several GPUs visible, transformers' Trainer would
# split the batch over them (n_gpu > 1), which GRPOTrainer refuses
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")

MODEL = __MODEL__
AUTO_CLASS = __AUTO__  # the transformers class that loads the model (a VLM trains on text only here)
METHOD = __METHOD__
DTYPE = __DTYPE__  # weights as loaded
ATTN_IMPLEMENTATION = __ATTN__
QUANTIZATION = __QUANT__  # BitsAndBytesConfig(**QUANTIZATION), or None
LORA = __LORA__  # peft.LoraConfig(**LORA), or None
FREEZE_TOP_LAYERS = __FREEZE__  # freeze: only the top N decoder layers train
MAX_PROMPT_TOKENS = __PROMPT__  # the prompt length the plan counts: longer prompts are cut from the left
TRAINING = {
__TRAINING__
}


def placeholder_reward(completions, **kwargs):
    """PLACEHOLDER: rewards completions whose length is near half the maximum. Replace it
    with your task's reward (--reward module:function)."""
    target = TRAINING["max_completion_length"] // 2
    texts = [c if isinstance(c, str) else " ".join(m.get("content", "") for m in c) for c in completions]
    return [-abs(len(t.split()) - target) / max(target, 1) for t in texts]


def load_reward(spec):
    if not spec:
        return placeholder_reward
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name or "reward")


def to_prompt(example):
    if example.get("prompt"):
        return {"prompt": example["prompt"]}
    if not example.get("instruction"):
        raise SystemExit(f"a record has no 'prompt' and no 'instruction': {json.dumps(example)[:200]}")
    prompt = example["instruction"]
    if example.get("input"):
        prompt = prompt + "\\n\\n" + example["input"]
    return {"prompt": prompt}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="hub id or local model folder (default: %(default)s)")
    parser.add_argument("--data", default=__DATA__, help="local JSON/JSONL prompts (default: %(default)s)")
    parser.add_argument("--reward", default="", help="module:function computing the rewards (default: a placeholder)")
    parser.add_argument("--output", default="output", help="where the trained adapter/model is saved")
    parser.add_argument("--epochs", type=float, default=TRAINING["num_train_epochs"])
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="print the settings as JSON and exit")
    args = parser.parse_args()
    settings = {
        "model": args.model,
        "auto_class": AUTO_CLASS,
        "method": METHOD,
        "rl": "grpo",
        "dtype": DTYPE,
        "attn_implementation": ATTN_IMPLEMENTATION,
        "quantization": QUANTIZATION,
        "lora": LORA,
        "freeze_top_layers": FREEZE_TOP_LAYERS,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "training": {**TRAINING, "num_train_epochs": args.epochs, "max_steps": args.max_steps},
    }
    if args.dry_run:
        print(json.dumps(settings, indent=1))
        return

    import torch
    from datasets import load_dataset
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left", truncation_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
__LOAD_MODEL__

    raw = load_dataset("json", data_files=args.data, split="train")
    dataset = raw.map(to_prompt)

    def cut(example):
        # the plan counts MAX_PROMPT_TOKENS of prompt, as TRL tokenizes it (special tokens and
        # chat template included): keep the end of a longer text prompt, refuse a longer chat
        prompt = example["prompt"]
        if isinstance(prompt, str):
            specials = len(tokenizer("")["input_ids"])
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            room = MAX_PROMPT_TOKENS - specials
            if len(ids) > room:
                example["prompt"] = tokenizer.decode(ids[-room:], skip_special_tokens=True)
        else:
            n = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
            if n > MAX_PROMPT_TOKENS:
                raise SystemExit(
                    f"a chat prompt has {n} tokens; the plan counts {MAX_PROMPT_TOKENS}:"
                    " shorten it or plan a longer --seq-len"
                )
        return example

    dataset = dataset.map(cut)
    training = dict(settings["training"])
    if not torch.cuda.is_available():
        print("no CUDA device: training on the CPU (slow; for checking the set-up)")
        training["use_cpu"] = True
    config = GRPOConfig(output_dir=args.output, **training)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=load_reward(args.reward),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = trainer.train()
    trainer.save_model(args.output)
    loss = result.training_loss
    print(json.dumps({"train_loss": loss, "steps": trainer.state.global_step, "finite": math.isfinite(loss)}))


if __name__ == "__main__":
    main()
'''


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
    return training
