"""Reinforcement fine-tuning with TRL's GRPOTrainer, as planned by vramplan (see the comment
block above).

    python train.py --model MODEL --data DATA [--reward module:function] [--output DIR]
                    [--max-steps N] [--dry-run]

MODEL is a hub id or a local model folder. DATA is a local JSON or JSONL file with one
prompt per record: {"prompt": ...} (text, or chat messages) or {"instruction": ..., "input":
...}; with IMAGES below, also {"image": "a.png"} or {"images": [...]} (paths relative to
DATA's folder; the model's processor loads them, which for Qwen2-VL needs torchvision);
other fields are passed to the reward function. --reward names your reward:
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

# <template-only>
import typing

# what vramplan/frameworks/files/trl.py's render writes at each marker, typed for the checkers; the
# directives (# <...>) and the rendering: vramplan/frameworks/files/templating.py
__MODEL__: str = ""
__AUTO__: str = ""
__METHOD__: str = ""
__DTYPE__: str = ""
__ATTN__: str = ""
__QUANT__: dict[str, typing.Any] | None = None
__LORA__: dict[str, typing.Any] | None = None
__FREEZE__: int | None = None
__FREEZE_VISION__: list[bool] | None = None
__PROMPT__: int = 0
__IMAGES__: typing.Any = None
__TRAINING__: dict[str, typing.Any] = {}
__DATA__: str = ""
# </template-only>
MODEL = __MODEL__
AUTO_CLASS = __AUTO__  # the transformers class that loads the model
METHOD = __METHOD__
DTYPE = __DTYPE__  # weights as loaded
ATTN_IMPLEMENTATION = __ATTN__
QUANTIZATION = __QUANT__  # BitsAndBytesConfig(**QUANTIZATION), or None
LORA = __LORA__  # peft.LoraConfig(**LORA), or None
FREEZE_TOP_LAYERS = __FREEZE__  # freeze: only the top N decoder layers train
FREEZE_VISION = __FREEZE_VISION__  # VLM full fine-tuning: [tower, projector] kept frozen, or None
MAX_PROMPT_TOKENS = __PROMPT__  # the prompt length the plan counts: longer prompts are cut from the left
IMAGES = __IMAGES__  # images per prompt and the pixels the plan counts per image (larger ones are shrunk), or None
TRAINING = {
    **__TRAINING__,
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


# <include sft.py image_functions>
# the checkers' stand-ins for the included functions
data_folder: typing.Any = None
image_paths: typing.Any = None


# </include image_functions>
def to_prompt(example):
    if example.get("prompt"):
        return {"prompt": example["prompt"]}
    if not example.get("instruction"):
        record = json.dumps(dict(example), default=str)[:200]
        raise SystemExit(f"a record has no 'prompt' and no 'instruction': {record}")
    prompt = example["instruction"]
    if example.get("input"):
        prompt = prompt + "\n\n" + example["input"]
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
        "freeze_vision": FREEZE_VISION,
        "max_prompt_tokens": MAX_PROMPT_TOKENS,
        "images": IMAGES,
        "training": {**TRAINING, "num_train_epochs": args.epochs, "max_steps": args.max_steps},
    }
    if args.dry_run:
        print(json.dumps(settings, indent=1))
        return

    # isort: off
    import torch
    from datasets import load_dataset
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import GRPOConfig, GRPOTrainer
    # isort: on

    if IMAGES:
        from datasets import Image
        from transformers import AutoProcessor
        from trl.data_utils import prepare_multimodal_messages

        # max_pixels: the processor shrinks any larger image to the pixels (and tokens) the plan counts
        processing_class = AutoProcessor.from_pretrained(
            args.model, max_pixels=IMAGES["max_pixels"], padding_side="left"
        )
        tokenizer = processing_class.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left", truncation_side="left")
        processing_class = tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # <include sft.py load_model>
    # the checkers' stand-in for the included block: the model as loaded, its LoRA config or None
    model = getattr(transformers, AUTO_CLASS).from_pretrained(args.model, quantization_config=BitsAndBytesConfig())
    peft_config: typing.Any = None
    # </include load_model>

    raw = load_dataset("json", data_files=args.data, split="train")
    dataset = raw.map(to_prompt)
    if IMAGES:
        # the images ahead of the prompt's text in one user message (TRL's layout); decoded by datasets
        folder = data_folder(args.data)
        dataset = dataset.map(
            lambda e: {
                "prompt": [{"role": "user", "content": e["prompt"]}] if isinstance(e["prompt"], str) else e["prompt"],
                "images": image_paths(e, folder),
            },
            remove_columns=[c for c in ("image",) if c in dataset.column_names],
        )
        dataset = dataset.cast_column("images", [Image()])

    def cut(example):
        # the plan counts MAX_PROMPT_TOKENS of prompt, as TRL tokenizes it (special tokens and
        # chat template included): keep the end of a longer text prompt, refuse a longer chat
        # or image prompt (cutting it could split the template or the image's tokens)
        prompt = example["prompt"]
        if isinstance(prompt, str):
            specials = len(tokenizer("")["input_ids"])
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            room = MAX_PROMPT_TOKENS - specials
            if len(ids) > room:
                example["prompt"] = tokenizer.decode(ids[-room:], skip_special_tokens=True)
        elif IMAGES:
            messages = prepare_multimodal_messages(prompt, images=example["images"])
            text = processing_class.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            n = len(processing_class(text=[text], images=example["images"])["input_ids"][0])
            if n > MAX_PROMPT_TOKENS:
                raise SystemExit(
                    f"a prompt has {n} tokens with its images; the plan counts {MAX_PROMPT_TOKENS}:"
                    " shorten it or plan a longer --seq-len"
                )
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
        processing_class=processing_class,
        peft_config=peft_config,
    )
    result = trainer.train()
    trainer.save_model(args.output)
    loss = result.training_loss
    print(json.dumps({"train_loss": loss, "steps": trainer.state.global_step, "finite": math.isfinite(loss)}))


if __name__ == "__main__":
    main()
