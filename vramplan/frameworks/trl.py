"""TRL: a self-contained ``train.py`` (``SFTTrainer``, or ``GRPOTrainer`` for GRPO plans) with
PEFT and bitsandbytes, and its launch on several GPUs (vramplan/frameworks/files/trl.py, files/launch.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, Refusal, register
from vramplan.frameworks.files import launch, trl
from vramplan.frameworks.files.common import Context
from vramplan.policy import Policy, default_policy
from vramplan.setup import DEEPSPEED, PARALLELS, Setup
from vramplan.spec import ModelSpec


class Trl(Framework):
    name = "trl"
    title = "TRL SFTTrainer/GRPOTrainer script (python train.py, accelerate launch on several GPUs)"
    package = "trl"
    tracer = "vramplan.trace.trl_sft"
    established = "1.16"
    images = True
    grpo = True
    moe_all_linear = True
    vision_models = True
    layouts = PARALLELS

    def supports(self, setup: Setup, spec: ModelSpec) -> list[Refusal]:
        out = super().supports(setup, spec)
        if setup.method == "qlora" and setup.parallel in ("zero3", "fsdp"):
            text = (
                f"trl: QLoRA under {setup.parallel} is not emitted: sharding 4-bit weights needs"
                " bnb_4bit_quant_storage and no prepare_model_for_kbit_training (its fp32 upcasts break the"
                " uniform dtype the sharder needs), which the estimate does not model; plan with --parallel ddp,"
                " zero1, zero2 or device_map"
            )
            out.append(Refusal(field="emit", code="qlora_sharded", text=text))
        return out

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        """What TRL can run of ``setup``, and what changed."""
        notes: list[str] = []
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(
                f"{setup.quant} needs a pre-quantized checkpoint, which this script does not make:"
                " it quantizes with bitsandbytes nf4 instead (re-estimated)"
            )
            setup = setup.model_copy(update={"quant": "bnb-nf4"})
        if (
            setup.precision == "fp16"
            and setup.parallel not in DEEPSPEED  # DeepSpeed's own loss scaler steps fp32 masters of fp16 weights
            and (setup.method in ("full", "freeze") or (setup.method == "lora" and setup.trainable_extra))
        ):
            notes.append(
                "fp16 weights that train cannot be unscaled by the fp16 GradScaler: fp32 master weights under fp16"
                " autocast (amp-fp16, re-estimated)"
            )
            setup = setup.model_copy(update={"precision": "amp-fp16"})
        setup = launch.adapt_precision(setup, notes)
        setup = launch.adapt_optimizer(setup, notes)
        return setup, notes

    def policy(self, setup: Setup) -> Policy:
        """What the emitted ``train.py`` runs under TRL 1.16.0 (``SFTTrainer``); GRPO plans keep
        the generic policy, whose fused head rl.py models on its own. From the generic loop
        (:func:`~vramplan.policy.default_policy`: transformers ``Trainer``, accelerate's
        autocast, PEFT, and the script's own ``prepare_model_for_kbit_training`` under QLoRA),
        TRL changes:

        - ``loss_chain="fused_head"``: ``SFTTrainer.__init__`` calls ``add_fused_lm_head(...,
          outputs=("log_probs", "entropy", "is_top1"))`` (trl/trainer/sft_trainer.py; the head in
          trl/trainer/utils.py ``add_fused_lm_head``) and ``SFTTrainer.compute_loss`` calls
          ``model(**inputs, fused_lm_head=True)``: the loss, the ``entropy`` and
          ``mean_token_accuracy`` metrics come from the chunked kernel
          (trl/kernels/chunked_logprob.py ``ChunkedLogProbFunction``), no logits are built. The
          script sets neither ``label_smoothing_factor`` nor ``compute_loss_func``, the two
          paths that run a second, full-logits forward.
        - ``adapter="bf16"`` (and ``extra_trainable``, the ``modules_to_save`` copies) under
          QLoRA: ``SFTTrainer.__init__``, ``if _is_quantized_model``, casts every parameter that
          requires grad (but DoRA's magnitude) with ``param.data.to(torch.bfloat16)``, after
          ``get_peft_model``; whatever the run's 16-bit dtype. Under LoRA PEFT's fp32 adapters
          stay (``autocast_adapter_dtype=True``), except with DeepSpeed ZeRO-3, where
          ``SFTTrainer.__init__`` passes ``autocast_adapter_dtype=False``: the adapters keep the
          base weights' dtype.
        - ``reentrant_checkpointing=False``: the script's SFTConfig sets
          ``gradient_checkpointing_kwargs={"use_reentrant": False}`` (files/trl.py
          ``trl_settings``; TRL's own default only applies below transformers 5), except PEFT under
          ZeRO-3, where ``SFTTrainer.__init__`` forces ``use_reentrant=True``.
        - ``padding="longest"``: the script passes no collator, so SFTTrainer builds
          ``DataCollatorForLanguageModeling`` (``torch_call``: ``pad`` to the batch's longest
          sample, ``pad_to_multiple_of`` ``"auto"`` is off outside Neuron) with ``packing=False``
          and ``padding_free=False``; ``max_length`` truncates each sample to ``seq_len``
          (``SFTTrainer._prepare_dataset``).
        - The run's other phases (memory/run.py): the emitted script builds ``SFTConfig`` with the
          DeepSpeed config before ``from_pretrained`` (files/templates/sft.py), so ZeRO-3 loads under
          ``zero.Init`` (``zero3_init``); evaluation is off (``eval_strategy`` "no"), at 8 sequences when
          on (``per_device_eval_batch_size``), and loss-only (no ``compute_metrics``): the
          TrainingArguments defaults. ``eval_generate=False``: ``SFTTrainer`` is a ``Trainer``
          (trl/trainer/sft_trainer.py ``class SFTTrainer(_BaseTrainer)``), not a ``Seq2SeqTrainer``.
        """
        base = default_policy(setup)
        if setup.rl != "none":
            return base
        update: dict[str, object] = {"loss_chain": "fused_head", "padding": "longest", "eval_generate": False}
        if setup.method == "qlora":
            update["adapter"] = update["extra_trainable"] = "bf16"
        elif setup.is_lora and setup.parallel == "zero3":
            update["adapter"] = base.weights
        if setup.parallel != "fsdp":  # under FSDP the checkpointing is FSDP's own (files/trl.py)
            update["reentrant_checkpointing"] = setup.is_lora and setup.parallel == "zero3"
        return base.model_copy(update=update)

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return trl.render(ctx)


register(Trl())
