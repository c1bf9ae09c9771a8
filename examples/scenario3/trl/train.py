#!/usr/bin/env python3
# -*- coding: utf-8 -*-
# vramplan plan for trl: qwen2.5-7b (Qwen/Qwen2.5-7B-Instruct), 7,615,616,512 params, on RTX 4090 D (24,564 MiB as the driver reports it)
# estimated peak per GPU (backward): allocated 15.84 GiB (torch.cuda.max_memory_allocated), reserved 16.89 GiB (max_memory_reserved), device 17.39 GiB (nvidia-smi)
# headroom: 5.98 GiB of the 23.37 GiB torch can use
# setup: lora, bf16, adamw, seq 2048, micro-batch 1, grad-accum 16, gradient checkpointing, sdpa, LoRA r8 alpha 32 on all-linear
# why each memory-relevant setting:
#   METHOD = 'lora'; LORA r=8  # lora: 20,185,088 trainable; full fine-tuning would need 72.49 GiB, does not fit
#   DTYPE = 'bfloat16', bf16=True, fp16=False  # bf16 weights under autocast; fp32 master weights (AMP) would need 32.39 GiB, does not fit
#   gradient_checkpointing=True  # saves 14.01 GiB at seq 2048 x micro-batch 1 (off: 31.40 GiB, does not fit)
#   per_device_train_batch_size=1  # one more sample per step adds 1.35 GiB (18.74 GiB, fits)
#   gradient_accumulation_steps=16  # effective batch 16 without its activations; gradients are kept between micro-batches
#   max_length=2048  # the estimate counts every sample at this length: shorter samples need less
#   optim='adamw_torch'  # adamw: 8-bit AdamW would save 0.11 GiB
#   ATTN_IMPLEMENTATION = 'sdpa'  # sdpa: eager attention would add 1.06 GiB
#   packing=False, pad_to_multiple_of=2048  # lengths fixed: every batch padded to 2048 tokens a sample, the length the plan counts
#   eval_strategy='no'  # no evaluation during training (--evaluation none): no evaluate phase is counted

"""Fine-tune with TRL's SFTTrainer, as planned by vramplan (see the comment block above).

    python train.py --model MODEL --data DATA [--output DIR] [--epochs N] [--max-steps N] [--dry-run]

MODEL is a hub id or a local model folder. DATA is a local JSON or JSONL file with one
example per record: {"instruction": ..., "input": ..., "output": ...} (input optional) or
{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}.
With IMAGES below, each record also names its image files: {"image": "a.png"} or
{"images": [...]}, paths relative to DATA's folder; the model's processor loads them (for
Qwen2-VL it needs torchvision) and puts them ahead of the first user message's text.
--dry-run prints the settings as JSON and exits without loading anything.
"""

import argparse
import json
import math
import os

MODEL = 'Qwen/Qwen2.5-7B-Instruct'
AUTO_CLASS = 'AutoModelForCausalLM'  # the transformers class that loads the model
METHOD = 'lora'
DTYPE = 'bfloat16'  # weights as loaded
ATTN_IMPLEMENTATION = 'sdpa'
QUANTIZATION = None  # BitsAndBytesConfig(**QUANTIZATION), or None
LORA = {'r': 8, 'lora_alpha': 32.0, 'lora_dropout': 0.05, 'target_modules': 'all-linear', 'modules_to_save': None, 'task_type': 'CAUSAL_LM'}  # peft.LoraConfig(**LORA), or None
FREEZE_TOP_LAYERS = None  # freeze: only the top N decoder layers train
FREEZE_VISION = None  # VLM full fine-tuning: [tower, projector] kept frozen, or None
IMAGES = None  # images per sample and the pixels the plan counts per image (larger ones are shrunk), or None
TRAINING = {
    'per_device_train_batch_size': 1,  # one more sample per step adds 1.35 GiB (18.74 GiB, fits)
    'gradient_accumulation_steps': 16,  # effective batch 16 without its activations; gradients are kept between micro-batches
    'max_length': 2048,  # the estimate counts every sample at this length: shorter samples need less
    'gradient_checkpointing': True,  # saves 14.01 GiB at seq 2048 x micro-batch 1 (off: 31.40 GiB, does not fit)
    'gradient_checkpointing_kwargs': {'use_reentrant': False},
    'optim': 'adamw_torch',  # adamw: 8-bit AdamW would save 0.11 GiB
    'bf16': True,  # bf16 weights under autocast; fp32 master weights (AMP) would need 32.39 GiB, does not fit
    'fp16': False,
    'learning_rate': 0.0001,
    'num_train_epochs': 3,
    'logging_steps': 10,
    'save_strategy': 'no',
    'report_to': 'none',
    'packing': False,  # lengths fixed: every batch padded to 2048 tokens a sample, the length the plan counts
    'pad_to_multiple_of': 2048,
    'eval_strategy': 'no',  # no evaluation during training (--evaluation none): no evaluate phase is counted
}
EVALUATION = None  # {"held_out": samples, or a fraction of DATA} evaluated during training, or None


def data_folder(path):
    return os.path.dirname(os.path.abspath(path))


def image_paths(example, folder):
    """The record's image files (or URLs), relative to the data file's folder. Messages carry
    text only: the images come from the record's own fields, as the plan counts them."""
    messages = example.get("prompt") or example.get("messages") or []
    if not isinstance(messages, str) and any(
        isinstance(c, dict) and c.get("type") == "image" for m in messages for c in (m.get("content") or [])
        if not isinstance(m.get("content"), str)
    ):
        raise SystemExit("give a record's images in its 'image' or 'images' field and keep its messages to text")
    paths = example.get("images") or ([example["image"]] if example.get("image") else [])
    if len(paths) != IMAGES["per_prompt"]:
        raise SystemExit(f"a record has {len(paths)} images; the plan counts {IMAGES['per_prompt']} per sample")
    return [p if os.path.isabs(p) or "://" in p else os.path.join(folder, p) for p in paths]


def to_record(example, tokenizer, folder=""):
    """One training record: chat messages when the tokenizer has a chat template (and always
    with images), else text."""
    if example.get("messages"):
        messages = example["messages"]
    else:
        prompt = example.get("instruction") or ""
        if example.get("input"):
            prompt = prompt + "\n\n" + example["input"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": example.get("output") or ""}]
    if IMAGES:
        return {"messages": messages, "images": image_paths(example, folder)}
    if getattr(tokenizer, "chat_template", None):
        return {"messages": messages}
    text = "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages)
    return {"text": text + (tokenizer.eos_token or "")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="hub id or local model folder (default: %(default)s)")
    parser.add_argument("--data", default='self_cognition.jsonl', help="local JSON/JSONL dataset (default: %(default)s)")
    parser.add_argument("--output", default="output", help="where the trained adapter/model is saved")
    parser.add_argument("--epochs", type=float, default=TRAINING["num_train_epochs"])
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps")
    parser.add_argument("--dry-run", action="store_true", help="print the settings as JSON and exit")
    args = parser.parse_args()
    settings = {
        "model": args.model,
        "auto_class": AUTO_CLASS,
        "method": METHOD,
        "dtype": DTYPE,
        "attn_implementation": ATTN_IMPLEMENTATION,
        "quantization": QUANTIZATION,
        "lora": LORA,
        "freeze_top_layers": FREEZE_TOP_LAYERS,
        "freeze_vision": FREEZE_VISION,
        "images": IMAGES,
        "training": {**TRAINING, "num_train_epochs": args.epochs, "max_steps": args.max_steps},
        "evaluation": EVALUATION,
    }
    if args.dry_run:
        print(json.dumps(settings, indent=1))
        return

    import torch
    from datasets import load_dataset
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    if IMAGES:
        from datasets import Image
        from transformers import AutoProcessor

        # max_pixels: the processor shrinks any larger image to the pixels (and tokens) the plan counts
        processing_class = AutoProcessor.from_pretrained(args.model, max_pixels=IMAGES["max_pixels"])
        tokenizer = processing_class.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        processing_class = tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    load = {"dtype": getattr(torch, DTYPE), "attn_implementation": ATTN_IMPLEMENTATION}
    if QUANTIZATION:
        q = dict(QUANTIZATION)
        if "bnb_4bit_compute_dtype" in q:
            q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
        load["quantization_config"] = BitsAndBytesConfig(**q)
    if QUANTIZATION:
        import os

        # each process loads its own quantized copy on its own GPU (accelerate launch sets LOCAL_RANK)
        load["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else {"": "cpu"}
    model = getattr(transformers, AUTO_CLASS).from_pretrained(args.model, **load)
    if QUANTIZATION:
        from peft import prepare_model_for_kbit_training

        # fp32 norms, embeddings and lm_head, as the plan counts them (TRL does not call this itself)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=TRAINING["gradient_checkpointing"],
            gradient_checkpointing_kwargs=TRAINING["gradient_checkpointing_kwargs"],
        )
    if FREEZE_TOP_LAYERS:
        model.requires_grad_(False)
        for layer in model.get_decoder().layers[-FREEZE_TOP_LAYERS:]:
            layer.requires_grad_(True)
    if FREEZE_VISION:
        tower, projector = FREEZE_VISION
        for name, p in model.named_parameters():
            in_merger = ".merger." in name
            if ".visual." in f".{name}" and ((in_merger and projector) or (not in_merger and tower)):
                p.requires_grad_(False)
    peft_config = None
    if LORA:
        from peft import LoraConfig

        peft_config = LoraConfig(**LORA)

    raw = load_dataset("json", data_files=args.data, split="train")
    folder = data_folder(args.data)
    dataset = raw.map(lambda ex: to_record(ex, tokenizer, folder), remove_columns=raw.column_names)
    if IMAGES:
        dataset = dataset.cast_column("images", [Image()])
    eval_dataset = None
    if EVALUATION:
        # the held-out part TRAINING's eval_strategy evaluates (a count of samples, or a fraction of DATA)
        split = dataset.train_test_split(test_size=EVALUATION["held_out"], seed=0)
        dataset, eval_dataset = split["train"], split["test"]
    training = dict(settings["training"])
    if not torch.cuda.is_available():
        print("no CUDA device: training on the CPU (slow; for checking the set-up)")
        training["use_cpu"] = True
    config = SFTConfig(output_dir=args.output, **training)
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, eval_dataset=eval_dataset,
        processing_class=processing_class, peft_config=peft_config,
    )
    result = trainer.train()
    trainer.save_model(args.output)
    loss = result.training_loss
    print(json.dumps({"train_loss": loss, "steps": trainer.state.global_step, "finite": math.isfinite(loss)}))


if __name__ == "__main__":
    main()
