"""axolotl 0.19.0's own SFT step traced: the ``config.yml`` the axolotl emitter writes
(frameworks/files/axolotl.py ``options``) read by axolotl's own config code as ``axolotl train``
does (utils/config/__init__.py ``validate_config`` with one bf16 GPU's capabilities, then
``normalize_config``), the model made by axolotl's own ``ModelLoader.load`` (loaders/model.py:
its patches, ``_configure_embedding_dtypes`` with ``_prepare_model_for_quantization``, i.e.
PEFT's ``prepare_model_for_kbit_training``, and the "Converting modules to" pass back to the
16-bit dtype; loaders/adapter.py ``load_lora``), the trainer from its own builder
(utils/trainer.py ``setup_trainer`` -> core/builders/causal.py ``HFCausalTrainerBuilder.build``:
``AxolotlTrainer``, its training arguments, gradient checkpointing kwargs, optimizer), then the
trainer's own ``training_step`` (``AxolotlTrainer.compute_loss`` -> transformers ``Trainer``)
and optimizer for ``steps`` steps under fake tensors, counted as trl_sft.py counts.

What stands in, and why:
- The checkpoint: there is none here, so ``ModelLoader._load_model_from_pretrained`` builds the
  model class it was asked for from the catalog config on the meta device in ``cfg.torch_dtype``
  (what ``from_pretrained(config=..., dtype=...)`` makes), and under ``load_in_4bit``/
  ``load_in_8bit`` swaps in bitsandbytes' linears with transformers' ``replace_with_bnb_linear``
  and the loader's own ``BitsAndBytesConfig`` (what ``from_pretrained`` does with
  ``quantization_config``). Everything after that is axolotl's loader. The model is
  materialised under fake mode after the trainer is built (parts.materialize_fake) and the k-bit
  weights quantized with bitsandbytes' fake kernels (kbit.py).
- The tokenizer: a word-level one (no tokenizer files here); it is shorter than the vocabulary,
  so ``_resize_token_embeddings`` leaves the embeddings alone, as for the real tokenizer.
- The dataset: never read; the builder gets a four-row tokenized one, and the step gets the
  collator's worst batch (``pad_to_sequence_len``: every sample at ``sequence_len``, every token
  labelled), passed with ``position_ids`` instead of the all-ones ``attention_mask``
  (transformers treats fake masks as tracing and would build an explicit one; on CUDA an
  all-ones mask takes the mask-free path).
- ``Trainer`` would move the model to its device (skipped: the model is on meta then);
  ``Trainer.train`` enables checkpointing with the arguments' kwargs (done here the same way).
- AdamW is the trainer's own (``create_optimizer``) set to ``foreach``, torch's default on CUDA;
  dropout as on CUDA (run.cuda_dropout); autocast as accelerate wraps the forward.
- axolotl's fused LoRA kernels need Triton on CUDA; the emitted config turns them off
  (``lora_*_kernel: false``), so PEFT's LoRA forward runs, as on the GPU.
- A VLM (Qwen2-VL) gets text-only batches (no ``pixel_values``): its vision tower runs no forward,
  so under full fine-tuning it would get no gradients (the grid traces its LoRA and QLoRA only).

What the trace runs is axolotl's: the loss is transformers' ``ForCausalLMLoss`` over the full
logits (``AxolotlTrainer.compute_loss`` adds only token counts; its own losses come with
``orpo_alpha``, ``use_eaft`` or a plugin such as cut_cross_entropy/liger, none of which the emitted
config sets), checkpointing is reentrant (``normalize_config``), and the dtypes are those its
loader leaves (fp32 embedding, lm_head and norms without an adapter; bf16 after k-bit
preparation under QLoRA).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from vramplan.models import load_config, load_model
from vramplan.setup import Setup
from vramplan.trace.build import Built
from vramplan.trace.counter import CountingMode, count_model, optimizer_phase
from vramplan.trace.result import TraceResult
from vramplan.trace.run import _result, counted_rng_state, cuda_dropout, unpacked_batches
from vramplan.trace.trl_sft import _tokenizer, model_stays_put

#: what ``load_cfg`` would probe on one bf16 GPU (tests/axolotl_readback.py)
CAPABILITIES = {"bf16": True, "fp8": False, "tf32": True, "n_gpu": 1, "compute_capability": "sm_80"}


def emitted_config(model: str, setup: Setup) -> str:
    """The emitted ``config.yml``'s settings (frameworks/files/axolotl.py ``options``, written
    with the emitter's own YAML writer, without the comments)."""
    from vramplan.frameworks.files.axolotl import options
    from vramplan.frameworks.files.common import Context, yaml_text

    spec = load_model(model)
    ctx = Context.model_construct(
        model_name=model, model_path=model, spec=spec, setup=setup, data="data.jsonl", reasons={}
    )
    return yaml_text([(k, v, "") for k, v, _ in options(ctx)])


def load_axolotl_cfg(model: str, setup: Setup, folder: Path) -> Any:
    """axolotl's validated, normalised cfg for the emitted config; ``base_model`` is ``folder``
    holding the catalog config.json (``normalize_config`` reads the model's config)."""
    import yaml
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.dict import DictDefault

    _, config = load_config(model)
    (folder / "config.json").write_text(json.dumps(config))
    cfg = DictDefault(yaml.safe_load(emitted_config(model, setup)))
    cfg.base_model = str(folder)
    cfg.output_dir = str(folder / "out")
    torch_version = torch.__version__.split("+")[0]
    cfg = validate_config(cfg, capabilities=CAPABILITIES, env_capabilities={"torch_version": torch_version})
    normalize_config(cfg)
    return cfg


@contextlib.contextmanager
def on_the_cpu() -> Any:
    """The builder's training arguments with ``use_cpu`` and without ``tf32`` (transformers refuses
    bf16 and tf32 without a GPU; tf32 changes matmul precision, not memory); nothing else changes."""
    from axolotl.core.builders import HFCausalTrainerBuilder

    original = HFCausalTrainerBuilder.hook_pre_create_training_args

    def hook(self: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {**original(self, kwargs), "use_cpu": True, "tf32": False}

    HFCausalTrainerBuilder.hook_pre_create_training_args = hook  # type: ignore[method-assign]
    try:
        yield
    finally:
        HFCausalTrainerBuilder.hook_pre_create_training_args = original  # type: ignore[method-assign]


@contextlib.contextmanager
def checkpoint_on_meta() -> Any:
    """``ModelLoader._load_model_from_pretrained`` without a checkpoint (module docstring)."""
    from axolotl.loaders.model import ModelLoader

    original = ModelLoader._load_model_from_pretrained

    def from_config(self: Any, model_loader_class: Any = None) -> Any:
        loader = model_loader_class or self.auto_model_loader
        dtype = self.model_kwargs.get("dtype") or self.cfg.torch_dtype
        with torch.device("meta"):
            model = loader.from_config(self.model_config, dtype=dtype)
        bnb = self.model_kwargs.get("quantization_config")
        if bnb is not None:
            from transformers.integrations.bitsandbytes import replace_with_bnb_linear
            from transformers.quantizers import AutoHfQuantizer

            keep = list(getattr(model, "_keep_in_fp32_modules", None) or []) + ["lm_head"]
            model = replace_with_bnb_linear(model, modules_to_not_convert=keep, quantization_config=bnb)
            model.hf_quantizer = AutoHfQuantizer.from_config(bnb)
            model.is_loaded_in_4bit = bool(self.cfg.load_in_4bit)
            model.is_loaded_in_8bit = bool(self.cfg.load_in_8bit)
            model.is_quantized = True
        return model

    ModelLoader._load_model_from_pretrained = from_config  # type: ignore[method-assign]
    try:
        yield
    finally:
        ModelLoader._load_model_from_pretrained = original  # type: ignore[method-assign]


def _dataset(seq: int) -> Any:
    from datasets import Dataset

    row = {"input_ids": [1] * seq, "attention_mask": [1] * seq, "labels": [1] * seq}
    return Dataset.from_list([row] * 4)


def build_trainer(model: str, setup: Setup, fake_mode: Any, folder: Path) -> tuple[Any, Any, Any]:
    """axolotl's cfg, model (its ModelLoader) and trainer (its builder), materialised under
    ``fake_mode``; returns (cfg, trainer, optimizer)."""
    from axolotl.loaders import ModelLoader
    from axolotl.utils.trainer import setup_trainer

    from vramplan.trace.kbit import _quantize_linears
    from vramplan.trace.parts import materialize_fake

    cfg = load_axolotl_cfg(model, setup, folder)
    tokenizer = _tokenizer()
    with checkpoint_on_meta(), contextlib.redirect_stdout(io.StringIO()):  # PEFT prints its counts
        net, peft_config = ModelLoader(cfg, tokenizer).load()
    with model_stays_put(), on_the_cpu():
        trainer = setup_trainer(
            cfg, _dataset(setup.seq_len), None, net, tokenizer, None, total_num_steps=2, peft_config=peft_config
        )
    net = trainer.model
    materialize_fake(net, fake_mode)
    quant: list[Any] = []
    if cfg.load_in_4bit or cfg.load_in_8bit:
        import bitsandbytes.functional as bf

        if "dynamic" not in bf.name2qmap:  # double quant's code table cannot be built from fakes
            bf.name2qmap["dynamic"] = bf.create_dynamic_map()
        with fake_mode:
            quant = _quantize_linears(net, setup, fake=True)
    net._vramplan_quant_tensors = quant
    args = trainer.args
    if args.gradient_checkpointing:  # what Trainer.train() does before the first step
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    net.train()
    with fake_mode:
        optimizer = trainer.create_optimizer()
    for group in optimizer.param_groups:
        if "foreach" in group:
            group["foreach"] = True  # torch's default on CUDA
    return cfg, trainer, optimizer


def _quiet() -> None:
    """axolotl's import-time notes (torchao, kernels) and its INFO logging say nothing about the step."""
    from vramplan.trace.quiet import quiet_libraries

    os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    for name in ("axolotl", "torchao", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(axolotl|torchao|kernels)(\.|$)")


def _version() -> str:
    from importlib.metadata import version

    return version("axolotl")


def trace_sft(model: str, setup: Setup, steps: int = 2) -> TraceResult:
    """Trace ``steps`` optimizer steps of axolotl's trainer on ``model`` as the emitted config
    runs ``setup`` (``grad_accum`` micro-batches per step)."""
    _quiet()
    from torch._subclasses.fake_tensor import FakeTensorMode

    t0 = time.perf_counter()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    name, config = load_config(model)
    vocab = int(config.get("vocab_size") or config["text_config"]["vocab_size"])
    with tempfile.TemporaryDirectory() as out, unpacked_batches(), cuda_dropout():
        cfg, trainer, optimizer = build_trainer(model, setup, fake_mode, Path(out))
        net = trainer.model
        if setup.precision != "fp32":  # accelerate wraps the model's forward in autocast, in place
            trainer.accelerator.prepare_model(net, device_placement=False)
        counter = count_model(net)
        baseline = counter.total
        b, s = cfg.micro_batch_size, cfg.sequence_len

        def inputs() -> dict[str, Any]:
            with fake_mode:
                ids = torch.randint(0, vocab, (b, s))
                return {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(s).expand(b, s)}

        with fake_mode, CountingMode(counter), counted_rng_state(counter):
            for step in range(steps):
                for _ in range(cfg.gradient_accumulation_steps):
                    batch = inputs()
                    counter.set_phase("forward", step)
                    with trainer.compute_loss_context_manager():
                        loss = trainer.compute_loss(net, batch)
                    counter.set_phase("backward", step)
                    trainer.accelerator.backward(loss)
                    del loss, batch
                optimizer_phase(counter, net, optimizer, step)
    gc_kwargs = trainer.args.gradient_checkpointing_kwargs if cfg.gradient_checkpointing else None
    notes = [
        f"axolotl {_version()} {type(trainer).__name__} (trace/axolotl_sft.py)",
        f"gradient_checkpointing_kwargs={gc_kwargs}",
        f"optimizer={type(optimizer).__name__}",
    ]
    built = Built(model=net, optimizer=optimizer, autocast_dtype=None, notes=notes)
    result = _result(name, setup, "trace", steps, counter, built, time.perf_counter() - t0)
    return result.model_copy(update={"baseline_bytes": baseline})


def main(argv: list[str] | None = None) -> int:
    """``python -m vramplan.trace.axolotl_sft MODEL SETUP_JSON [STEPS]``: the TraceResult as one JSON
    line on stdout (run in axolotl's venv; tests/test_axolotl_trace.py, benchmarks/trainer_trace_grid.py
    --trainer axolotl)."""
    import sys

    from vramplan.setup import make_setup

    args = sys.argv[1:] if argv is None else argv
    steps = int(args[2]) if len(args) > 2 else 2
    result = trace_sft(args[0], make_setup(**json.loads(args[1])), steps=steps)
    print(result.model_dump_json(exclude={"timeline"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
