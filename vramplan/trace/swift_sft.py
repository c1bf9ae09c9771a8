"""ms-swift's own SFT step traced: the ``swift sft`` command the swift emitter writes
(frameworks/files/swift.py ``arguments``) parsed by swift's own ``SftArguments`` (as
tests/swift_probe.py does), the model built on the meta device from the catalog config the way
swift's loader builds it, swift's own tuner preparation, swift's ``Seq2SeqTrainer`` (with
``SwiftMixin``) and its optimizer, then the trainer's ``_prepare_inputs``, ``compute_loss``,
backward and optimizer step for ``steps`` steps under fake tensors (counter.py), as
trl_sft.py traces TRL. File paths below are inside the ``swift`` package (ms-swift 4.6.0).

What is swift's own code, run as ``swift sft`` runs it (``pipelines/train/sft.py`` ``SwiftSft``):
- ``SftArguments`` (``parse_args``) from the emitted words, ``--model`` pointed at a folder with
  the catalog's config.json (swift reads it for model type and dtype) and a tiny word-level
  tokenizer (the template needs a processor; nothing of it reaches the memory).
- ``args.get_template`` (``template/base.py`` ``Template``), set to train mode.
- ``TunerMixin.prepare_model`` (``pipelines/train/tuner.py``: ``prepare_adapter`` with swift's
  ``LoraConfig`` and ``lora_dtype``, ``tuners/peft.py``; or full training's
  ``requires_grad_``), with no ``prepare_model_for_kbit_training`` (swift has none).
- ``TrainerFactory.get_trainer_cls`` -> ``trainers/seq2seq_trainer.py`` ``Seq2SeqTrainer``: its
  ``__init__`` (``SwiftMixin._fix_gradient_checkpointing`` patches ``torch.utils.checkpoint`` to
  reentrant), ``SwiftMixin._prepare_gradient_checkpointing`` (what ``SwiftMixin.train`` runs),
  ``create_optimizer`` (``optimizers/`` default callback: transformers' AdamW groups),
  ``_prepare_inputs`` (``use_logits_to_keep`` and ``prepare_logits_to_keep``), ``compute_loss``
  (``template.compute_sft_loss``, the model's own loss, ``_compute_acc``'s argmax) inside
  ``template.forward_context``, ``accelerator.backward``.

What stands in, and why:
- The model: swift's loader (``model/register.py`` ``ModelLoader.get_model``) calls
  ``from_pretrained`` with ``dtype=args.torch_dtype`` and, under QLoRA, the
  ``BitsAndBytesConfig`` of ``args.get_quantization_config()``; no checkpoint exists here, so the
  same class is built ``from_config`` on meta with that dtype, bitsandbytes' linears put in by
  transformers' ``replace_with_bnb_linear`` with that config (lm_head kept, as transformers does),
  ``model_info``/``model_meta`` attached as ``ModelLoader._postprocess_model`` does; then
  materialised under fake mode (parts.materialize_fake) and the 4-bit weights quantized with
  bitsandbytes' fake kernels (kbit.py).
- The local folder is named after a catalog alias swift's registry knows when it does not know the
  emitted hub id (:func:`_registered_id`; Llama-3.1-8B: swift refuses ``meta-llama/Llama-3.1-8B``).
- ``check_model`` is turned off (``SwiftMixin.__init__`` would ask ModelScope's hub whether the
  local model is its latest; no network, no memory).
- ``Trainer.__init__`` moving the model to its device is skipped (a meta model cannot move).
- The batch is the collator's worst one: every sample at ``--max_length``, every token labelled
  but the first (a template never labels the first token; with it labelled
  ``prepare_logits_to_keep`` would keep one label more than logits). Its keys are those of
  ``Template._data_collator`` for text, with ``position_ids`` for the all-ones
  ``attention_mask`` (transformers treats a fake mask as tracing and would build an explicit one;
  on CUDA an all-ones mask takes the mask-free path). ``_prepare_inputs`` runs on the real
  (host-sized, int64) batch before the fake step: ``prepare_logits_to_keep`` reads values
  (``labels[:, loss_mask]`` at micro-batch 1, ``.item()`` above it). Its ``logits_to_keep`` then
  keeps every position: at micro-batch 1 a boolean mask, all true, which the model indexes with
  (``hidden_states[:, mask]``); a fake index has no values, so :class:`AllTrueMasks` answers it
  with a copy of every row, what the index op allocates for an all-true mask. The batch's own
  int64 tensors (3 x micro-batch x tokens x 8 bytes) are host tensors and not counted.
- ``_compute_acc``'s ``compute_acc`` (``metrics/acc.py``) moves the argmax to the host at once
  (``.cpu().numpy()``): the argmax is counted, the host part is replaced by a no-op.
- A VLM (Qwen2-VL) is traced on text-only batches: ``SwiftMixin.train`` registers the template's
  post-encode hook (``Template.register_post_encode_hook``), whose ``Qwen2VLTemplate._post_encode``
  embeds the tokens and, for a batch with no image, runs the vision tower on a dummy 32x32 image
  and adds ``0 * mean`` of it (``Template._get_inputs_embeds_hf``, so DeepSpeed sees the tower
  used). That dummy pass (a few patches through the frozen tower, kilobytes) needs the image
  processor and value-dependent grid sizes: it is left out, the add of a zero kept. The batch
  then carries what ``Qwen2VLTemplate._data_collator`` adds for text: 3-row mrope
  ``position_ids`` (every row ``arange``: no image), ``text_position_ids`` and an all-zero
  ``mm_token_type_ids``; flash-attention's ``cu_seq_lens`` (micro-batch 1) are not passed (sdpa).
- AdamW set to ``foreach`` (torch's default on CUDA); dropout as on CUDA (run.cuda_dropout);
  autocast as accelerate wraps the forward (``Accelerator.prepare_model``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vramplan.models import load_config, load_model
from vramplan.setup import Setup
from vramplan.tables import tables_dir
from vramplan.trace.build import Built, _hf_config
from vramplan.trace.counter import CountingMode, count_model, optimizer_phase
from vramplan.trace.kbit import _quantize_linears
from vramplan.trace.parts import materialize_fake
from vramplan.trace.result import TraceResult
from vramplan.trace.run import _result, counted_rng_state, cuda_dropout, unpacked_batches
from vramplan.trace.trl_sft import _tokenizer, model_stays_put


class AllTrueMasks(TorchDispatchMode):
    """``x[..., mask]`` for a boolean ``mask`` known to be all true, after any number of full
    slices (``hidden_states[:, mask, :]``): a copy of ``x``, the shape the index op returns then,
    since a fake mask has no values to count."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.index.Tensor:
            x, indices = args
            given = [i for i in indices if i is not None]
            if len(given) == 1 and given[0].dtype == torch.bool and indices[-1] is given[0]:
                k, mask = len(indices) - 1, given[0]
                return x.reshape(*x.shape[:k], mask.numel(), *x.shape[k + mask.dim() :]).clone()
        return func(*args, **(kwargs or {}))


def emitted_argv(model: str, setup: Setup) -> list[str]:
    """The options of the ``swift sft`` command the swift emitter writes for ``setup``."""
    from vramplan.frameworks.files.common import Context
    from vramplan.frameworks.files.swift import arguments
    from vramplan.models import catalog_sources

    name, _ = load_config(model)
    path = catalog_sources()[name].hub_id
    ctx = Context.model_construct(
        model_name=model, model_path=path, spec=load_model(model), setup=setup, data="data.jsonl"
    )
    argv: list[str] = []
    for option, values in arguments(ctx):
        argv += [f"--{option}", *values]
    return argv


def _model_dir(root: Path, catalog: str, hub_id: str) -> str:
    """A folder named like the hub id (swift matches its model type by name) with the catalog's
    config.json and a tiny tokenizer."""
    folder = root / hub_id
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(tables_dir() / "models" / catalog / "config.json", folder / "config.json")
    _tokenizer().save_pretrained(folder)
    return str(folder)


def _registered_id(name: str, hub_id: str) -> str:
    """The hub id, or the first of the catalog's aliases swift's registry knows when it does not know the
    hub id by name (``model/model_meta.py`` ``get_matched_model_meta`` matches the last part of the path:
    swift 4.6.0 registers meta-llama/Meta-Llama-3.1-8B, not the renamed meta-llama/Llama-3.1-8B, and falls
    back to the config's architecture, which matches several of its model types, and refuses the command)."""
    from swift.model.model_meta import get_matched_model_meta

    from vramplan.models import catalog_sources

    if get_matched_model_meta(hub_id) is not None:
        return hub_id
    return next((a for a in catalog_sources()[name].aliases if get_matched_model_meta(a) is not None), hub_id)


def parse_command(model: str, setup: Setup, root: Path) -> Any:
    """swift's ``SftArguments`` for the emitted command (its own ``parse_args``, as
    ``SwiftPipeline._parse_args`` does), ``--model`` pointed at a local folder."""
    import transformers.training_args as ta
    from swift.arguments import SftArguments
    from swift.utils import parse_args

    ta.is_torch_bf16_gpu_available = lambda: True  # a CPU machine: transformers' bf16 check
    argv = emitted_argv(model, setup)
    i = argv.index("--model")
    name, _ = load_config(model)
    argv[i + 1] = _model_dir(root, name, _registered_id(name, argv[i + 1]))
    argv += ["--output_dir", str(root / "output")]
    saved = dict(os.environ)
    try:
        args, rest = parse_args(SftArguments, argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if rest:
        raise ValueError(f"remaining_argv: {rest}")
    args.training_args.check_model = False  # SwiftMixin asks the hub whether the model is its latest: no network
    return args


def load_meta(config: dict[str, Any], setup: Setup, args: Any) -> Any:
    """What swift's ``ModelLoader.get_model`` loads, built on meta (module docstring)."""
    import transformers

    hf, _ = _hf_config(config, setup, "cpu")
    auto: Any = transformers.AutoModelForCausalLM
    if "vision_config" in config:
        auto = transformers.AutoModelForImageTextToText
    with torch.device("meta"):
        model = auto.from_config(hf, dtype=args.torch_dtype)
    quant = args.get_quantization_config()
    if quant is not None:
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers import AutoHfQuantizer

        quantizer = AutoHfQuantizer.from_config(quant)
        # what the 4-bit quantizer's _process_model_before_weight_loading keeps: swift's llm_int8_skip_modules
        # (QuantizeArguments.get_modules_to_not_convert: a VLM's vision tower and aligner, lm_head) or lm_head
        keep = quantizer.get_modules_to_not_convert(model, quant.llm_int8_skip_modules, model._keep_in_fp32_modules)
        model = replace_with_bnb_linear(model, modules_to_not_convert=keep, quantization_config=quant)
        model.hf_quantizer = quantizer
        model.is_loaded_in_4bit = bool(quant.load_in_4bit)
        model.is_loaded_in_8bit = bool(quant.load_in_8bit)
        model.is_quantized = True
        model.quantization_method = "bitsandbytes"
    loader = args.model_meta.loader.__new__(args.model_meta.loader)  # its transformers-5 properties (visual, ...)
    loader.model_meta = args.model_meta
    loader._compat_transformers5(model)
    if hasattr(model, "visual"):  # Qwen2VLLoader.get_model
        from swift.model.patcher import patch_get_input_embeddings

        patch_get_input_embeddings(model.visual, "patch_embed")
    model.model_info = args.model_info
    model.model_meta = args.model_meta
    model.model_dir = args.model_dir
    return model


@contextlib.contextmanager
def host_metrics() -> Any:
    """``compute_acc`` moves the argmax to the host (``.cpu().numpy()``): a no-op here."""
    import swift.trainers.mixin as mixin

    original = mixin.compute_acc
    mixin.compute_acc = lambda preds, labels, **kwargs: {}
    try:
        yield
    finally:
        mixin.compute_acc = original


@contextlib.contextmanager
def text_only_images() -> Any:
    """A text-only batch on a VLM: the dummy image's tower pass left out (module docstring)."""
    from swift.template.base import Template

    original = Template.__dict__["_get_inputs_embeds_hf"]

    def embeds(inputs_embeds: Any, inputs: Any, visual: Any, processor: Any, config: Any) -> Any:
        if inputs.get("pixel_values") is None and inputs.get("pixel_values_videos") is None:
            return inputs_embeds + inputs_embeds.new_zeros(()) * 0.0
        return original.__func__(inputs_embeds, inputs, visual, processor, config)

    Template._get_inputs_embeds_hf = staticmethod(embeds)
    try:
        yield
    finally:
        Template._get_inputs_embeds_hf = original


def build_trainer(model: str, setup: Setup, fake_mode: Any, root: Path) -> tuple[Any, Any]:
    """swift's Seq2SeqTrainer as ``swift sft`` builds it, materialised under ``fake_mode``; and
    its optimizer."""
    from datasets import Dataset
    from swift.pipelines.train.sft import SwiftSft
    from swift.trainers import TrainerFactory

    _, config = load_config(model)
    args = parse_command(model, setup, root)
    processor = _tokenizer()  # what ModelLoader._postprocess_processor attaches to it
    processor.model_info, processor.model_meta = args.model_info, args.model_meta
    template = args.get_template(processor)
    template.set_mode("train")
    base = load_meta(config, setup, args)
    if template.use_model:
        template.model = base
    net = SwiftSft.prepare_model(args, base, template=template)
    trainer_cls = TrainerFactory.get_trainer_cls(args)
    with model_stays_put():
        trainer = trainer_cls(
            model=net,
            args=args.training_args,
            template=template,
            train_dataset=Dataset.from_list([{"input_ids": [0]}] * 4),
            eval_dataset=None,
        )
    materialize_fake(net, fake_mode)
    quant: list[Any] = []
    if args.get_quantization_config() is not None:
        import bitsandbytes.functional as bf

        if "dynamic" not in bf.name2qmap:  # double quant's code table cannot be built from fakes
            bf.name2qmap["dynamic"] = bf.create_dynamic_map()
        with fake_mode:
            quant = _quantize_linears(net, setup, fake=True)
    net._vramplan_quant_tensors = quant
    # what SwiftMixin.train does before the loop
    if trainer.model_meta.is_multimodal:
        template.register_post_encode_hook([trainer.accelerator.unwrap_model(net)])
    trainer._prepare_gradient_checkpointing(template.get_base_model(trainer.accelerator.unwrap_model(net)))
    net.train()
    with fake_mode:
        optimizer = trainer.create_optimizer()
    for group in optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = True  # torch's default on CUDA
    return trainer, optimizer


@contextlib.contextmanager
def _restore_checkpoint() -> Any:
    """``SwiftMixin._fix_gradient_checkpointing`` patches ``torch.utils.checkpoint.checkpoint``
    once per process (reentrant here); undone after the trace so each trace patches afresh."""
    import torch.utils.checkpoint as cp
    import transformers.modeling_utils as mu

    saved = cp.checkpoint, getattr(mu, "checkpoint", None)
    try:
        yield
    finally:
        cp.checkpoint = saved[0]
        if hasattr(cp, "_old_checkpoint"):
            del cp._old_checkpoint
        if saved[1] is not None:
            mu.checkpoint = saved[1]


def worst_batch(setup: Setup, vocab: int, multimodal: bool = False) -> dict[str, Any]:
    """Every sample at the cap, every token but the first labelled (module docstring)."""
    b, s = setup.micro_batch, setup.seq_len
    ids = torch.randint(0, vocab, (b, s))
    labels = ids.clone()
    labels[:, 0] = -100
    positions = torch.arange(s).expand(b, s).clone()
    if not multimodal:
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": positions.expand(3, b, s).clone(),
        "text_position_ids": positions,
        "mm_token_type_ids": torch.zeros(b, s, dtype=torch.int64),
    }


def trace_sft(model: str, setup: Setup, steps: int = 2) -> TraceResult:
    """Trace ``steps`` optimizer steps of ms-swift's ``swift sft`` on ``model`` as the emitted
    command runs ``setup`` (one micro-batch per step's accumulation round)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    name, config = load_config(model)
    vocab = int(config.get("vocab_size") or config["text_config"]["vocab_size"])
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for ctx in (unpacked_batches(), cuda_dropout(), host_metrics(), _restore_checkpoint(), text_only_images()):
            stack.enter_context(ctx)
        trainer, optimizer = build_trainer(model, setup, fake_mode, root)
        net = trainer.model
        multimodal = bool(trainer.model_meta.is_multimodal)
        if setup.precision != "fp32":  # accelerate wraps the model's forward in autocast, in place
            trainer.accelerator.prepare_model(net, device_placement=False)
        counter = count_model(net)
        baseline = counter.total
        # _prepare_inputs reads the labels' values: run on the real host batch first (module docstring)
        rounds = [
            [trainer._prepare_inputs(worst_batch(setup, vocab, multimodal)) for _ in range(setup.grad_accum)]
            for _ in range(steps)
        ]
        num_items = torch.tensor(setup.grad_accum * setup.micro_batch * (setup.seq_len - 1))
        with fake_mode, CountingMode(counter), counted_rng_state(counter), AllTrueMasks():
            for step, batches in enumerate(rounds):
                for inputs in batches:
                    # Seq2SeqTrainer.training_step: the template's forward context around
                    # transformers' training_step (compute_loss, then accelerator.backward)
                    with trainer.template.forward_context(net, inputs):
                        counter.set_phase("forward", step)
                        with trainer.compute_loss_context_manager():
                            loss = trainer.compute_loss(net, inputs, num_items_in_batch=num_items)
                        counter.set_phase("backward", step)
                        trainer.accelerator.backward(loss)
                    del loss, inputs
                batches.clear()
                optimizer_phase(counter, net, optimizer, step)
        trainer.template.remove_post_encode_hook()
    built = Built(model=net, optimizer=optimizer, autocast_dtype=None, notes=["ms-swift Seq2SeqTrainer (swift_sft)"])
    result = _result(name, setup, "trace", steps, counter, built, time.perf_counter() - t0)
    return result.model_copy(update={"baseline_bytes": baseline})
