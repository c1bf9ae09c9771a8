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
__IMAGES__: typing.Any = None
__TRAINING__: dict[str, typing.Any] = {}
__EVALUATION__: dict[str, typing.Any] | None = None
__PARALLEL__: dict[str, typing.Any] = {}
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
IMAGES = __IMAGES__  # images per sample and the pixels the plan counts per image (larger ones are shrunk), or None
TRAINING = {
    **__TRAINING__,
}
EVALUATION = __EVALUATION__  # {"held_out": samples, or a fraction of DATA} evaluated during training, or None
# <if parallel>
# how the GPUs share the work (every figure in the header is per GPU)
PARALLEL = {
    **__PARALLEL__,
}
# </if parallel>


# <shared image_functions>
def data_folder(path):
    return os.path.dirname(os.path.abspath(path))


def image_paths(example, folder):
    """The record's image files (or URLs), relative to the data file's folder. Messages carry
    text only: the images come from the record's own fields, as the plan counts them."""
    messages = example.get("prompt") or example.get("messages") or []
    # fmt: off
    if not isinstance(messages, str) and any(
        isinstance(c, dict) and c.get("type") == "image" for m in messages for c in (m.get("content") or [])
        if not isinstance(m.get("content"), str)
    ):
        raise SystemExit("give a record's images in its 'image' or 'images' field and keep its messages to text")
    # fmt: on
    paths = example.get("images") or ([example["image"]] if example.get("image") else [])
    if len(paths) != IMAGES["per_prompt"]:
        raise SystemExit(f"a record has {len(paths)} images; the plan counts {IMAGES['per_prompt']} per sample")
    return [p if os.path.isabs(p) or "://" in p else os.path.join(folder, p) for p in paths]


# </shared image_functions>
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


# <if parallel>
def parallel_settings():
    """PARALLEL, with the launch files next to this script as they will be read."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    out = dict(PARALLEL)
    if "accelerate_config" in PARALLEL:
        import yaml

        with open(os.path.join(here, PARALLEL["accelerate_config"])) as f:
            out["accelerate"] = yaml.safe_load(f)
    if "deepspeed_config" in PARALLEL:
        with open(os.path.join(here, PARALLEL["deepspeed_config"])) as f:
            out["deepspeed"] = json.load(f)
    return out


# </if parallel>
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=MODEL, help="hub id or local model folder (default: %(default)s)")
    parser.add_argument("--data", default=__DATA__, help="local JSON/JSONL dataset (default: %(default)s)")
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
        # <if parallel>
        "parallel": parallel_settings(),
        # </if parallel>
    }
    if args.dry_run:
        print(json.dumps(settings, indent=1))
        return

    # isort: off
    import torch
    from datasets import load_dataset
    import transformers
    from transformers import AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer
    # isort: on

    # <if deepspeed_config>
    import os

    training = dict(settings["training"])
    if torch.cuda.is_available():
        # DeepSpeed: ds_config.json (next to this script) goes to the SFTConfig, made before the model is loaded
        # so that under ZeRO-3 from_pretrained loads each GPU's partition only (deepspeed.zero.Init)
        training["deepspeed"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), PARALLEL["deepspeed_config"])
    else:
        # accelerate runs DeepSpeed on GPUs only: on the CPU the processes train as plain data-parallel
        print("no CUDA device: training on the CPU without DeepSpeed (slow; for checking the set-up)")
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        training["use_cpu"] = True
    # ZeRO-3 without zero.Init (PARALLEL["zero3_init"] false): the SFTConfig is made after the model loads,
    # so every rank loads the whole model first
    config = SFTConfig(output_dir=args.output, **training) if PARALLEL.get("zero3_init", True) else None

    # </if deepspeed_config>
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
    # <shared load_model>
    load = {"dtype": getattr(torch, DTYPE), "attn_implementation": ATTN_IMPLEMENTATION}
    if QUANTIZATION:
        q = dict(QUANTIZATION)
        if "bnb_4bit_compute_dtype" in q:
            q["bnb_4bit_compute_dtype"] = getattr(torch, q["bnb_4bit_compute_dtype"])
        load["quantization_config"] = BitsAndBytesConfig(**q)
    # <if placement_per_process>
    if QUANTIZATION:
        import os

        # each process loads its own quantized copy on its own GPU (accelerate launch sets LOCAL_RANK)
        load["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else {"": "cpu"}
    # </if placement_per_process>
    # <if placement_device_map>
    if torch.cuda.is_available():
        # the layers split across the GPUs of this one process: the balanced map within max_memory per card
        load["device_map"] = PARALLEL["device_map"]
        load["max_memory"] = {int(gpu): size for gpu, size in PARALLEL["max_memory"].items()}
    else:
        print("no CUDA device: the model stays whole on the CPU (device_map splits it across GPUs)")
        if QUANTIZATION:
            load["device_map"] = {"": "cpu"}
    # </if placement_device_map>
    model = getattr(transformers, AUTO_CLASS).from_pretrained(args.model, **load)
    if QUANTIZATION:
        from peft import prepare_model_for_kbit_training

        # fp32 norms, embeddings and lm_head, as the plan counts them (TRL does not call this itself)
        # fmt: off
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=TRAINING["gradient_checkpointing"],
            gradient_checkpointing_kwargs=TRAINING["gradient_checkpointing_kwargs"],
        )
        # fmt: on
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
    # </shared load_model>

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
    # <if plain_config>
    training = dict(settings["training"])
    if not torch.cuda.is_available():
        print("no CUDA device: training on the CPU (slow; for checking the set-up)")
        training["use_cpu"] = True
    config = SFTConfig(output_dir=args.output, **training)
    # </if plain_config>
    # <if deepspeed_late>
    if config is None:
        config = SFTConfig(output_dir=args.output, **training)
    # </if deepspeed_late>
    # <if fsdp_config>
    training = dict(settings["training"])
    if not torch.cuda.is_available():
        # accelerate runs FSDP on GPUs only: on the CPU the processes train as plain data-parallel
        print("no CUDA device: training on the CPU without FSDP (slow; for checking the set-up)")
        training["use_cpu"] = True
    config = SFTConfig(output_dir=args.output, **training)
    # </if fsdp_config>
    # fmt: off
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, eval_dataset=eval_dataset,
        processing_class=processing_class, peft_config=peft_config,
    )
    # fmt: on
    result = trainer.train()
    trainer.save_model(args.output)
    loss = result.training_loss
    print(json.dumps({"train_loss": loss, "steps": trainer.state.global_step, "finite": math.isfinite(loss)}))


if __name__ == "__main__":
    main()
