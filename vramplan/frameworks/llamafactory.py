"""LLaMA-Factory: ``train.yaml`` for ``llamafactory-cli train`` and its ``dataset_info.json``
(vramplan/frameworks/files/llamafactory.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import llamafactory
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.policy import Policy, default_policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class LlamaFactory(Framework):
    name = "llamafactory"
    title = "LLaMA-Factory YAML (llamafactory-cli train)"
    package = "llamafactory"
    python_env = "VRAMPLAN_LLAMAFACTORY_PYTHON"
    tracer = "vramplan.trace.llamafactory_sft"
    established = "0.9.5"
    remote_code = True

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.method in ("full", "freeze") and setup.precision == "fp16":
            notes.append("no pure fp16 for full/freeze (pure_bf16 only): fp16 with fp32 master weights (amp-fp16)")
            setup = setup.model_copy(update={"precision": "amp-fp16"})
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(f"{setup.quant}: point model_name_or_path at a {setup.quant.split('-')[0].upper()} checkpoint")
        return integral_alpha(setup, notes), notes

    def policy(self, setup: Setup) -> Policy:
        """LLaMA-Factory 0.9.5's run of ``setup`` (llamafactory/ in the 0.9.5 wheel):

        - No k-bit upcast: it never calls PEFT's ``prepare_model_for_kbit_training``; norms are
          cast to fp32 only with ``upcast_layernorm`` and lm_head's output only with
          ``upcast_lmhead_output``, both false by default (hparams/model_args.py ``ModelArguments``;
          model/model_utils/checkpointing.py ``prepare_model_for_training``; hparams/parser.py
          ``get_train_args`` only warns). So a quantized base keeps embeddings, lm_head and norms
          in the compute dtype (bf16/fp16: ``compute_dtype``, hparams/parser.py ``get_train_args``;
          ``bnb_4bit_compute_dtype``, model/model_utils/quantization.py ``configure_quantization``)
          and the residual stream and MLP intermediates stay 16-bit.
        - Trainable parameters are cast to fp32 unless ``pure_bf16`` (model/adapter.py
          ``init_adapter``: ``cast_trainable_params_to_fp32``): LoRA adapters and the
          ``additional_target`` modules LoRA trains beside them (``_setup_lora_tuning`` casts
          every ``requires_grad`` parameter after ``get_peft_model``, the ``modules_to_save``
          copies included), so the copies, their gradients and optimizer states are fp32 for
          LoRA as for QLoRA (``extra_weights``, ``extra_trainable``; traced: Qwen2.5-0.5B
          LoRA training its embeddings holds a 0.51 GiB fp32 copy, tables/measured/llamafactory_traces.jsonl).
        - Reentrant checkpointing: ``use_reentrant_gc`` defaults to true and is passed to
          ``gradient_checkpointing_enable`` (model_args.py; checkpointing.py
          ``prepare_model_for_training``), the path the terms count.
        - Padding: ``SFTDataCollatorWith4DAttentionMask`` (data/collator.py, built in
          train/sft/workflow.py ``run_sft``) is transformers' ``DataCollatorForSeq2Seq``
          with ``padding=True``: each batch is padded to its longest sample (to a multiple of 8),
          never past ``cutoff_len``. The policy keeps ``fixed``: every sample at ``cutoff_len``
          is the bound of that, the batch whose samples all reach the cap.
        - The run's other phases (memory/run.py): ``llamafactory-cli train`` parses
          ``Seq2SeqTrainingArguments`` with the YAML's ``deepspeed`` (train/tuner.py ``_training_function``:
          ``get_train_args``) before ``run_sft`` calls ``load_model`` (train/sft/workflow.py), so ZeRO-3
          loads under ``zero.Init`` (``zero3_init``; ``accelerate launch`` with the config in accelerate's file and
          ``zero3_init_flag: false`` is the other launch: ``--zero3-init off``). No evaluation unless
          ``val_size`` > 0 (hparams/data_args.py, default 0.0); then 8 sequences
          (``per_device_eval_batch_size``, transformers' default), loss-only without
          ``compute_accuracy``; with it ``eval_logit_processor`` keeps the argmax (train/sft/metric.py,
          ``eval_argmax``); ``predict_with_generate`` generates up to ``max_new_tokens`` 1024
          (hparams/generating_args.py) with ``CustomSeq2SeqTrainer``, whose ``prediction_step`` pops the
          labels first: no loss forward (train/sft/trainer.py; ``eval_generate_loss``).
        - ZeRO runs the examples' ds_config.json (``deepspeed: examples/deepspeed/ds_z{2,3}_config.json``
          in examples/train_*/*_ds*.yaml): ``deepspeed_configs`` "llamafactory" (tables/deepspeed_configs.json).
        """
        base = default_policy(setup)
        update: dict[str, object] = {
            "eval_argmax": True,
            "eval_new_tokens": 1024,
            "eval_generate_loss": False,
            "deepspeed_configs": "llamafactory",
        }
        if setup.is_lora:
            update.update(extra_trainable="fp32", extra_weights="fp32")
        if setup.method == "qlora":
            update.update(
                kbit_upcast=False,
                kbit_modules=base.weights,
                residual=base.activations if base.weights != "fp32" else "fp32",
                pointwise=base.activations,
            )
        return base.model_copy(update=update)

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return llamafactory.render(ctx)


register(LlamaFactory())
