"""TRL's own SFT step traced: ``SFTTrainer`` built from the emitted trl script's settings
(files/trl.py ``trl_settings``: its SFTConfig, LoraConfig and load dtype, its
``prepare_model_for_kbit_training`` under QLoRA) on a model built from the catalog config,
then ``SFTTrainer.compute_loss`` (the fused LM head), ``backward`` and the trainer's own
optimizer for ``steps`` steps under fake tensors (counter.py), as run.py traces the generic
loop.

The model is built on the meta device and handed to ``SFTTrainer`` there (``Trainer`` would
move it to the device: that move is skipped), so the trainer applies PEFT, casts QLoRA's
adapters to bf16 and adds its fused head as it does for a real model; the result is then
materialised under fake mode (parts.materialize_fake) and QLoRA's linears quantized with
bitsandbytes' fake kernels (kbit.py).

What stands in for CUDA, and why:
- The fused head runs its CUDA program, as tests/test_grpo_trace.py does for GRPO: the compact
  selection of the labelled positions (``hidden_states[mask]``, ``trl/trainer/utils.py``
  ``add_fused_lm_head``) is switched on, and the kernels' CPU stand-ins (``_forward_tile``,
  ``_backward_tile``, the fp32-output ``_addmm_fp32``, which on CUDA fold tiles in place) are
  replaced by allocation-free ones. A boolean index has no fake shape; every label of the traced
  batch is valid, so :class:`AllTrueMasks` answers ``x[mask]`` with a copy of every row, what the
  index op allocates when the mask is all true.
- The batch is the worst one the collator makes: every sample at ``max_length`` with every token
  labelled; it is passed with ``position_ids`` instead of an all-ones ``attention_mask``
  (transformers treats fake masks as tracing and would build an explicit one; on CUDA an all-ones
  mask takes the mask-free path), and the metrics' ``gather_for_metrics`` returns a constant
  (their ``.item()`` needs values fake tensors do not have; the tensors they reduce are counted).
- AdamW is the trainer's own (``Trainer.create_optimizer``, its two parameter groups) set to
  ``foreach``, torch's default on CUDA; dropout as on CUDA (run.cuda_dropout).
- Autocast as accelerate wraps the forward (``Accelerator.prepare_model``).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vramplan.models import load_config, load_model
from vramplan.setup import Setup
from vramplan.trace.build import Built, _hf_config
from vramplan.trace.counter import CountingMode, count_model, optimizer_phase
from vramplan.trace.kbit import _bnb_config, _quantize_linears
from vramplan.trace.parts import materialize_fake
from vramplan.trace.result import TraceResult
from vramplan.trace.run import _result, counted_rng_state, cuda_dropout, unpacked_batches


def emitted_settings(model: str, setup: Setup) -> dict[str, Any]:
    """What the emitted trl script is built from (its ``--dry-run`` settings)."""
    from vramplan.frameworks.files.common import Context
    from vramplan.frameworks.files.trl import trl_settings

    spec = load_model(model)
    ctx = Context.model_construct(model_name=model, model_path=model, spec=spec, setup=setup, data="data.jsonl")
    return trl_settings(ctx)


class AllTrueMasks(TorchDispatchMode):
    """``x[mask]`` for a boolean ``mask`` known to be all true: a copy of every row (the shape
    the index op returns then), since a fake mask has no values to count."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.index.Tensor:
            x, indices = args
            if len(indices) == 1 and indices[0] is not None and indices[0].dtype == torch.bool:
                mask = indices[0]
                return x.reshape(mask.numel(), *x.shape[mask.dim() :]).clone()
        return func(*args, **(kwargs or {}))


class _Constant:
    """What the patched ``gather_for_metrics`` returns: sums to itself, reads as 1."""

    def sum(self) -> _Constant:
        return self

    def item(self) -> float:
        return 1.0

    def __truediv__(self, other: Any) -> _Constant:
        return self

    def __gt__(self, other: Any) -> bool:
        return True


@contextlib.contextmanager
def cuda_fused_head() -> Any:
    """TRL's fused head as CUDA runs it (module docstring)."""
    import trl.kernels.chunked_logprob as kernels
    import trl.trainer.utils as trl_utils

    saved = (trl_utils._use_triton, kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32)
    trl_utils._use_triton = lambda device: True
    kernels._forward_tile = lambda tile, *a, **k: None
    kernels._backward_tile = lambda tile, *a, **k: None
    kernels._addmm_fp32 = lambda acc, a, b: None
    try:
        yield
    finally:
        trl_utils._use_triton, kernels._forward_tile, kernels._backward_tile, kernels._addmm_fp32 = saved


@contextlib.contextmanager
def model_stays_put() -> Any:
    """``Trainer.__init__`` moves the model to its device; a meta model cannot move."""
    from transformers import Trainer

    original = Trainer._move_model_to_device
    Trainer._move_model_to_device = lambda self, model, device: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Trainer._move_model_to_device = original  # type: ignore[method-assign]


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["hello world"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")


def _load(config: dict[str, Any], setup: Setup, settings: dict[str, Any]) -> Any:
    """The emitted script's ``from_pretrained`` (and ``prepare_model_for_kbit_training``), on meta."""
    import transformers

    hf, _ = _hf_config(config, setup, "cpu")
    dtype = getattr(torch, settings["dtype"])
    with torch.device("meta"):
        model = getattr(transformers, settings["auto_class"]).from_config(hf, dtype=dtype)
    if settings["quantization"]:
        from peft import prepare_model_for_kbit_training
        from transformers.integrations.bitsandbytes import replace_with_bnb_linear
        from transformers.quantizers import AutoHfQuantizer

        bnb = _bnb_config(setup)
        model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=bnb)
        model.hf_quantizer = AutoHfQuantizer.from_config(bnb)  # what Trainer checks is trainable
        model.is_loaded_in_4bit = setup.quant != "bnb-int8"
        model.is_loaded_in_8bit = setup.quant == "bnb-int8"
        model.is_quantized = True
        training = settings["training"]
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training["gradient_checkpointing"],
            gradient_checkpointing_kwargs=training["gradient_checkpointing_kwargs"],
        )
    if settings["freeze_top_layers"]:
        model.requires_grad_(False)
        for layer in model.get_decoder().layers[-settings["freeze_top_layers"] :]:
            layer.requires_grad_(True)
    return model


def build_trainer(model: str, setup: Setup, fake_mode: Any, out_dir: str) -> tuple[Any, Any]:
    """SFTTrainer as the emitted script builds it, materialised under ``fake_mode``; and its optimizer."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    _, config = load_config(model)
    settings = emitted_settings(model, setup)
    base = _load(config, setup, settings)
    training = {**settings["training"], "use_cpu": True, "output_dir": out_dir}
    args = SFTConfig(**training)
    peft_config = LoraConfig(**settings["lora"]) if settings["lora"] else None
    with model_stays_put():
        trainer = SFTTrainer(
            model=base,
            args=args,
            train_dataset=Dataset.from_list([{"text": "hello world"}] * 4),
            processing_class=_tokenizer(),
            peft_config=peft_config,
        )
    net: Any = trainer.model
    materialize_fake(net, fake_mode)
    quant: list[Any] = []
    if settings["quantization"]:
        import bitsandbytes.functional as bf

        if "dynamic" not in bf.name2qmap:  # double quant's code table cannot be built from fakes
            bf.name2qmap["dynamic"] = bf.create_dynamic_map()
        with fake_mode:
            quant = _quantize_linears(net, setup, fake=True)
    net._vramplan_quant_tensors = quant
    if args.gradient_checkpointing:  # what Trainer.train() does before the first step
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    net.train()
    with fake_mode:
        optimizer = trainer.create_optimizer()
    for group in optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = True  # torch's default on CUDA
    trainer.accelerator.gather_for_metrics = lambda x, **k: _Constant()
    return trainer, optimizer


def trace_sft(model: str, setup: Setup, steps: int = 2) -> TraceResult:
    """Trace ``steps`` optimizer steps of TRL's SFTTrainer on ``model`` as the emitted script
    runs ``setup`` (one micro-batch per step's accumulation round)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    name, config = load_config(model)
    vocab = int(config.get("vocab_size") or config["text_config"]["vocab_size"])
    with tempfile.TemporaryDirectory() as out, unpacked_batches(), cuda_dropout(), cuda_fused_head():
        trainer, optimizer = build_trainer(model, setup, fake_mode, out)
        net = trainer.model
        if setup.precision != "fp32":  # accelerate wraps the model's forward in autocast, in place
            trainer.accelerator.prepare_model(net, device_placement=False)
        counter = count_model(net)
        baseline = counter.total
        b, s = setup.micro_batch, setup.seq_len

        def inputs() -> dict[str, Any]:
            with fake_mode:
                ids = torch.randint(0, vocab, (b, s))
                return {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(s).expand(b, s)}

        with fake_mode, CountingMode(counter), counted_rng_state(counter), AllTrueMasks():
            for step in range(steps):
                for _ in range(setup.grad_accum):
                    batch = inputs()
                    counter.set_phase("forward", step)
                    with trainer.compute_loss_context_manager():
                        loss = trainer.compute_loss(net, batch)
                    counter.set_phase("backward", step)
                    loss.backward()
                    del loss, batch
                optimizer_phase(counter, net, optimizer, step)
    built = Built(model=net, optimizer=optimizer, autocast_dtype=None, notes=["TRL SFTTrainer (trace/trl_sft.py)"])
    result = _result(name, setup, "trace", steps, counter, built, time.perf_counter() - t0)
    return result.model_copy(update={"baseline_bytes": baseline})
