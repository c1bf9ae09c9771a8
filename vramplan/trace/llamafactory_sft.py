"""LLaMA-Factory 0.9.5's own SFT step traced: the ``train.yaml`` the llamafactory target writes
(vramplan/frameworks/files/llamafactory.py) parsed by LLaMA-Factory's ``get_train_args``
(llamafactory/hparams/parser.py, what ``llamafactory-cli train`` calls), the model made by its
``load_model`` (llamafactory/model/loader.py: ``patch_config`` with its ``configure_quantization``,
``patch_model`` with model_utils/checkpointing.py ``prepare_model_for_training`` -- its own
reentrant ``gradient_checkpointing_enable``, no ``upcast_layernorm`` --, model/adapter.py
``init_adapter`` with ``cast_trainable_params_to_fp32``), its ``SFTDataCollatorWith4DAttentionMask``
(data/collator.py) and its ``CustomSeq2SeqTrainer`` (train/sft/trainer.py: ``compute_loss``,
transformers' loss over the full logits; ``create_optimizer``) as train/sft/workflow.py ``run_sft``
builds them; then forward, backward and the trainer's optimizer for ``steps`` steps under fake
tensors (counter.py), as trl_sft.py does for TRL.

``load_model`` runs as it is, on the meta device; what stands in, and why:
- The checkpoint: the catalog's config is written as ``config.json`` in a temporary directory
  (``model_name_or_path``), which LLaMA-Factory's ``load_config`` reads; ``from_pretrained`` of the
  auto class ``load_model`` picks is answered by :func:`meta_from_pretrained`: ``from_config`` on
  the meta device in the dtype ``torch_dtype="auto"`` loads (the config's), and, when
  ``configure_quantization`` put a ``BitsAndBytesConfig`` in the loader's arguments, transformers'
  own bitsandbytes quantizer run on it (``preprocess_model``: its linears replaced, lm_head left
  alone; ``postprocess_model``) as ``from_pretrained`` runs it around the weight loading.
  After ``init_adapter`` the model is materialised under fake mode (parts.materialize_fake) and
  the 4-bit weights packed with bitsandbytes' fake kernels (kbit.py).
- The tokenizer: a one-word stand-in (trl_sft._tokenizer); the template (``get_template_and_fix_tokenizer``)
  is LLaMA-Factory's own, fixed on it. Token values do not change memory.
- The batch: the collator's worst one, every sample at ``cutoff_len`` and every token labelled,
  made by LLaMA-Factory's collator from such samples for real (small integer tensors), then
  turned into fake tensors. Its ``attention_mask`` is dropped: it is all ones (but for the VLM
  dummy image's few tokens, below), transformers treats a fake mask as tracing and would build an
  explicit one, and on CUDA an all-ones mask takes the mask-free path.
- AdamW is the trainer's own (``Trainer.create_optimizer``: LLaMA-Factory's
  ``create_custom_optimizer`` returns None for plain AdamW) set to ``foreach``, torch's default on
  CUDA; dropout as on CUDA (run.cuda_dropout); autocast as accelerate wraps the forward.
- The processor of a Qwen2-VL / Qwen2.5-VL model: made from transformers' processor classes with
  their default settings around the stand-in tokenizer (:func:`vision_processor`), then patched by
  LLaMA-Factory's ``patch_processor``. The VLM rows are traced on text batches: for a batch
  without images the collator adds its own dummy 64x64 image (``MultiModalDataCollatorForSeq2Seq``
  ``__call__``: 4 masked tokens, 16 patches) and computes the mrope ``position_ids``. The dummy's
  pixels are dropped from the traced batch (its tokens are then embedded as text): the vision
  tower reads the image grid's values (``.tolist()``, ``.item()``), which fake tensors do not
  have, and 16 patches through it keep well under 1 MiB. The tower's weights are counted.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vramplan.models import load_config, load_model
from vramplan.setup import Setup
from vramplan.trace.build import Built, _hf_config
from vramplan.trace.counter import CountingMode, count_model, optimizer_phase
from vramplan.trace.kbit import _quantize_linears
from vramplan.trace.parts import materialize_fake
from vramplan.trace.result import TraceResult
from vramplan.trace.run import _result, counted_rng_state, cuda_dropout, unpacked_batches
from vramplan.trace.trl_sft import _tokenizer, model_stays_put


def emitted_yaml(model: str, setup: Setup) -> dict[str, Any]:
    """The settings of the ``train.yaml`` the llamafactory target writes for ``setup`` (its
    ``options``, written as the file writes them, its comment block aside), as YAML reads them."""
    import yaml

    from vramplan.frameworks.files.common import Context, yaml_text
    from vramplan.frameworks.files.llamafactory import options

    spec = load_model(model)
    ctx = Context.model_construct(
        model_name=model, model_path=model, spec=spec, setup=setup, data="data.jsonl", reasons={}
    )
    return dict(yaml.safe_load(yaml_text(options(ctx))))


def parse(model: str, setup: Setup, model_dir: str, out_dir: str) -> tuple[Any, Any, Any, Any]:
    """LLaMA-Factory's ``get_train_args`` on the emitted file, the model path pointing at
    ``model_dir``. As tests/llamafactory_readback.py: ``use_cpu`` (transformers refuses bf16 on a
    CPU otherwise) and a bf16-capable GPU for ``pure_bf16``'s check."""
    import llamafactory.hparams.parser as parser

    args = emitted_yaml(model, setup)
    args.update(model_name_or_path=model_dir, output_dir=out_dir, use_cpu=True)
    saved = parser.is_torch_bf16_gpu_available
    parser.is_torch_bf16_gpu_available = lambda: True
    try:
        model_args, data_args, training_args, finetuning_args, _ = parser.get_train_args(args)
    finally:
        parser.is_torch_bf16_gpu_available = saved
    return model_args, data_args, training_args, finetuning_args


def meta_from_pretrained(base: Any) -> Any:
    """``base`` (an auto class) whose ``from_pretrained`` builds the model on the meta device
    (module docstring)."""

    class MetaLoad(base):  # type: ignore[misc, valid-type]
        @classmethod
        def from_pretrained(cls, pretrained_model_name_or_path: Any = None, *args: Any, **kwargs: Any) -> Any:
            config = kwargs["config"]
            dtype = kwargs.get("torch_dtype", kwargs.get("dtype", "auto"))
            if dtype == "auto":
                dtype = getattr(config, "dtype", None) or torch.float32
                dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            with torch.device("meta"):
                model = base.from_config(config, dtype=dtype)
            quant = kwargs.get("quantization_config")
            if quant is not None:  # transformers' own quantizer, before and after (no) weight loading
                from transformers.quantizers import AutoHfQuantizer

                quantizer = AutoHfQuantizer.from_config(quant, pre_quantized=False)
                quantizer.preprocess_model(model, device_map=kwargs.get("device_map"))
                quantizer.postprocess_model(model)
                model.hf_quantizer = quantizer
            return model

    MetaLoad.__name__ = base.__name__
    return MetaLoad


@contextlib.contextmanager
def meta_loading() -> Any:
    """``load_model``'s auto classes load on the meta device while this is open."""
    import llamafactory.model.loader as loader

    names = ["AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForSeq2SeqLM"]
    saved = {n: getattr(loader, n) for n in names}
    for n, cls in saved.items():
        setattr(loader, n, meta_from_pretrained(cls))
    try:
        yield
    finally:
        for n, cls in saved.items():
            setattr(loader, n, cls)


def write_config(model: str, setup: Setup, directory: str) -> None:
    """The catalog's config as the checkpoint's ``config.json``."""
    _, config = load_config(model)
    hf, _ = _hf_config(config, setup, "cpu")
    hf.save_pretrained(directory)
    saved = json.loads((Path(directory) / "config.json").read_text())
    saved.pop("_attn_implementation", None)
    (Path(directory) / "config.json").write_text(json.dumps(saved))


#: what the trace leaves out of the collator's batch (module docstring)
DROPPED = ("attention_mask", "pixel_values", "image_grid_thw")
#: the Qwen-VL processors' special tokens (their tokenizer files declare them)
VISION_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]


def vision_processor(config: Any, tokenizer: Any) -> Any:
    """A VLM's processor (transformers' auto classes for ``config``'s class: processor, image
    and video processors) made with their default settings around the stand-in tokenizer, given
    the Qwen-VL vision tokens, as ``load_tokenizer`` loads it from the checkpoint; None for a
    text model. Traced on Qwen2-VL; another VLM's processor may want other tokens."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

    def first(found: Any) -> Any:  # a class, or the classes by backend (a dict, or a tuple in newer releases)
        if isinstance(found, dict):
            found = [found.get("torchvision"), *found.values()]
        return next((c for c in found if c is not None), None) if isinstance(found, (tuple, list)) else found

    key = type(config)
    proc: Any = PROCESSOR_MAPPING.get(key, None)
    image = first(IMAGE_PROCESSOR_MAPPING.get(key, None))
    video = first(VIDEO_PROCESSOR_MAPPING.get(key, None))
    if getattr(config, "vision_config", None) is None or proc is None or image is None:
        return None
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    parts = {"image_processor": image(), **({"video_processor": video()} if video is not None else {})}
    return proc(**parts, tokenizer=tokenizer)


def worst_batch(collator: Any, setup: Setup, vocab: int) -> dict[str, Any]:
    """The collator's batch of ``micro_batch`` samples at ``cutoff_len``, every token labelled."""
    s = setup.seq_len
    ids = [int(i) for i in torch.randint(3, min(vocab, 1000), (s,))]
    features = [{"input_ids": ids, "attention_mask": [1] * s, "labels": list(ids)} for _ in range(setup.micro_batch)]
    return dict(collator(features))


def build(model: str, setup: Setup, fake_mode: Any, workdir: str) -> tuple[Any, Any, dict[str, Any]]:
    """``run_sft``'s trainer, materialised under ``fake_mode``; its optimizer; the worst batch."""
    from llamafactory.data import SFTDataCollatorWith4DAttentionMask, get_template_and_fix_tokenizer
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.model import load_model as lf_load_model
    from llamafactory.model.patcher import patch_processor, patch_tokenizer
    from llamafactory.train.sft.trainer import CustomSeq2SeqTrainer

    model_dir, out_dir = f"{workdir}/model", f"{workdir}/out"
    Path(model_dir).mkdir()
    write_config(model, setup, model_dir)
    model_args, data_args, training_args, finetuning_args = parse(model, setup, model_dir, out_dir)
    tokenizer = _tokenizer()
    patch_tokenizer(tokenizer, model_args)
    from transformers import AutoConfig

    processor = vision_processor(AutoConfig.from_pretrained(model_dir), tokenizer)
    if processor is not None:
        patch_processor(processor, tokenizer, model_args)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    with meta_loading():
        net = lf_load_model(tokenizer, model_args, finetuning_args, is_trainable=True)
    collator = SFTDataCollatorWith4DAttentionMask(
        template=template,
        model=net,
        pad_to_multiple_of=8,
        label_pad_token_id=IGNORE_INDEX,
        block_diag_attn=model_args.block_diag_attn,
        neat_packing=data_args.neat_packing,
        attn_implementation=getattr(net.config, "_attn_implementation", None),
        compute_dtype=model_args.compute_dtype,
        tokenizer=tokenizer,
        processor=processor,
    )
    vocab = load_model(model).vocab_size
    batch = worst_batch(collator, setup, vocab)
    with model_stays_put():
        trainer = CustomSeq2SeqTrainer(
            model=net,
            args=training_args,
            finetuning_args=finetuning_args,
            data_collator=collator,
            processor=processor,
            tokenizer=tokenizer,
        )
    materialize_fake(net, fake_mode)
    quant: list[Any] = []
    if model_args.quantization_bit is not None:
        import bitsandbytes.functional as bf

        if "dynamic" not in bf.name2qmap:  # double quant's code table cannot be built from fakes
            bf.name2qmap["dynamic"] = bf.create_dynamic_map()
        with fake_mode:
            quant = _quantize_linears(net, setup, fake=True)
    net._vramplan_quant_tensors = quant
    net.train()
    with fake_mode:
        optimizer = trainer.create_optimizer()
    for group in optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = True  # torch's default on CUDA
    return trainer, optimizer, batch


def trace_sft(model: str, setup: Setup, steps: int = 2) -> TraceResult:
    """Trace ``steps`` optimizer steps of LLaMA-Factory's SFT trainer on ``model`` as the emitted
    train.yaml runs ``setup`` (one micro-batch per step's accumulation round)."""
    import os

    from torch._subclasses.fake_tensor import FakeTensorMode

    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "WARN")  # its parser sets transformers' logging to INFO
    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    name, _ = load_config(model)
    with tempfile.TemporaryDirectory() as work, unpacked_batches(), cuda_dropout():
        trainer, optimizer, batch = build(model, setup, fake_mode, work)
        net = trainer.model
        if trainer.args.bf16 or trainer.args.fp16:  # accelerate wraps the forward in autocast, in place
            trainer.accelerator.prepare_model(net, device_placement=False)
        counter = count_model(net)
        baseline = counter.total
        real = {k: v for k, v in batch.items() if k not in DROPPED}

        def inputs() -> dict[str, Any]:
            with fake_mode:
                return {
                    k: fake_mode.from_tensor(v).clone() if isinstance(v, torch.Tensor) else v for k, v in real.items()
                }

        with fake_mode, CountingMode(counter), counted_rng_state(counter):
            for step in range(steps):
                for _ in range(setup.grad_accum):
                    counter.set_phase("forward", step)
                    fed = inputs()
                    with trainer.compute_loss_context_manager():
                        loss = trainer.compute_loss(net, fed)
                    counter.set_phase("backward", step)
                    loss.backward()
                    del loss, fed
                optimizer_phase(counter, net, optimizer, step)
    built = Built(
        model=net, optimizer=optimizer, autocast_dtype=None, notes=["LLaMA-Factory SFT (trace/llamafactory_sft.py)"]
    )
    result = _result(name, setup, "trace", steps, counter, built, time.perf_counter() - t0)
    return result.model_copy(update={"baseline_bytes": baseline})
