"""ms-swift: the ``swift sft`` command line in ``run.sh`` (vramplan/frameworks/files/swift.py), and what
ms-swift 4.x runs for it (read from ms-swift 4.6.0; file paths below are inside the ``swift`` package)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import swift
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.policy import Policy, default_policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class Swift(Framework):
    name = "swift"
    title = "ms-swift command line (swift sft)"
    package = "ms-swift"
    python_env = "VRAMPLAN_SWIFT_PYTHON"
    tracer = "vramplan.trace.swift_sft"
    established = "4.6"
    remote_code = True

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(
                f"{setup.quant}: point --model at a {setup.quant.split('-')[0].upper()} checkpoint (detected on load)"
            )
        return integral_alpha(setup, notes), notes

    def policy(self, setup: Setup) -> Policy:
        """ms-swift 4.x's ``swift sft`` step, where it differs from the generic loop (default_policy):

        - **QLoRA keeps no k-bit upcast.** swift never calls PEFT's ``prepare_model_for_kbit_training``
          (no call anywhere in the package; the model is built by ``model/register.py`` ``get_model_processor``
          with ``torch_dtype`` and the ``BitsAndBytesConfig`` of ``arguments/base_args/quant_args.py``
          ``QuantizeArguments.get_quantization_config``, and the adapters added by ``tuners/peft.py``). So what
          bitsandbytes leaves unquantized (embeddings, lm_head, norms) stays in ``--torch_dtype``, the
          residual stream and the MLP intermediates run in the 16-bit activation dtype (no fp32 promotion),
          and ``modules_to_save`` copies train in the weights' dtype.
        - **QLoRA leaves a VLM's vision tower unquantized.** ``QuantizeArguments.get_quantization_config`` passes
          ``llm_int8_skip_modules`` from ``get_modules_to_not_convert``: the model_arch's ``vision_tower`` and
          ``aligner`` plus lm_head, so bitsandbytes leaves the tower's linears in ``--torch_dtype``
          (``quantize_vision`` False; Qwen2-VL-2B QLoRA: the trace held 0.84 GiB more than an estimate with a
          4-bit tower).
        - **Adapters stay fp32**: ``--lora_dtype`` defaults to None (``arguments/tuner_args.py``), and
          ``tuners/peft.py`` ``_cast_adapter_dtype_hook`` then leaves PEFT's ``autocast_adapter_dtype`` upcast on.
        - **Reentrant checkpointing**: ``trainers/mixin.py`` ``SwiftMixin._fix_gradient_checkpointing`` patches
          ``torch.utils.checkpoint.checkpoint`` to ``use_reentrant=True`` unless ``gradient_checkpointing_kwargs``
          says otherwise — except under plain DDP (``is_dist()`` without DeepSpeed/FSDP), where it is False.
          The field stays True here: a policy is made from method/precision/quant only (POLICY_INPUTS), and no
          term reads the flag yet (the DDP difference is not counted).
        - **Loss chain: full logits, as the bound.** ``trainers/seq2seq_trainer.py`` ``Seq2SeqTrainer._prepare_inputs``
          turns ``use_logits_to_keep`` on (``trainers/mixin.py`` ``get_use_logits_to_keep``: True when the model's
          forward takes ``logits_to_keep``, as every text decoder in transformers 5 does) and
          ``SwiftMixin.prepare_logits_to_keep`` keeps the labelled positions (micro-batch 1) or the suffix from the
          batch's earliest label (micro-batch > 1). Both reach every position when every token is labelled (a
          one-token prompt, or pretraining-style data), so the full-logits count is the only bound the plan has
          without the dataset's label fraction; the loss after it is the model's own ``ForCausalLMLoss``.
          ``SwiftMixin._compute_acc`` (called from ``Seq2SeqTrainer.compute_loss``) takes ``logits.argmax(-1)``,
          an int64 per kept position (8 bytes a token against the loss chain's >= 6 x vocab bytes), not counted:
          ``compute_acc`` (``metrics/acc.py``) moves it to the host at once; the 16 KiB of Qwen2.5-7B at 2048
          tokens sit below the estimate's resolution.
        - **Padding: to the longest sample of the batch** (``SwiftMixin._get_data_collator`` passes
          ``padding_to=None`` except for longlora; ``template/base.py`` ``Template._data_collator``), and samples
          longer than ``--max_length`` are dropped (``truncation_strategy`` 'delete', not truncated:
          arguments/base_args/template_args.py ``TemplateArguments.__post_init__`` makes it 'raise' for the
          template, and dataset/utils.py ``EncodePreprocessor``, a ``RowPreprocessor``, drops a row whose
          encoding raises ``MaxLengthError``, preprocessor/core.py ``batched_preprocess``; ``over_cap``). Every batch is
          at most ``micro_batch x seq_len`` tokens, so ``fixed`` (what the terms count) stays the bound: ``longest``
          would need the dataset's length distribution.

        Held to swift's own step: vramplan/trace/swift_sft.py traces the emitted command through swift's
        ``SftArguments``, ``TunerMixin.prepare_model`` and ``Seq2SeqTrainer`` under fake tensors over the swift
        grid (vramplan/trace/swift_grid.py, benchmarks/swift_trace_grid.md). With every token but the first
        labelled, ``logits_to_keep`` keeps every position and the step holds the full chain the terms count
        (bf16 logits, the fp32 upcast, log-softmax, its backward temporaries); at micro-batch 1 the boolean
        ``logits_to_keep`` index copies the last hidden states (``b x s x h`` 16-bit bytes, 14 MiB for
        Qwen2.5-7B at 2048) and the accuracy argmax adds 8 bytes a position: both inside the bounds, not
        counted. Reentrant checkpointing (swift's patch in effect) holds the peak the terms count. The k-bit
        dtypes above are what the QLoRA traces hold. Nothing else had to move.

        The run's other phases (memory/run.py): ``SftArguments.__post_init__`` builds the training
        arguments (with ``--deepspeed``) before the model loads, so ZeRO-3 loads under ``zero.Init``
        (``zero3_init``). No evaluation by default: ``split_dataset_ratio`` is 0. (arguments/base_args/
        data_args.py) and without a validation set ``eval_strategy`` becomes 'no' (arguments/sft_args.py);
        when on, one sequence per GPU (``per_device_eval_batch_size`` 1, trainers/arguments.py), loss-only
        (``eval_metric`` None for causal_lm, ``_init_metric``); the ``acc`` metric keeps the argmax
        (metrics/acc.py ``preprocess_logits_for_metrics``); ``predict_with_generate`` generates up to
        ``max_new_tokens`` 64 (sft_args.py) through its infer engine, with no loss forward
        (trainers/seq2seq_trainer.py ``Seq2SeqTrainer.prediction_step``; ``eval_generate_loss``), inside
        ``unwrap_model_for_generation(..., gather_deepspeed3_params=args.ds3_gather_for_generation)``, True by
        default (trainers/arguments.py): under ZeRO-3 the whole model is gathered on every rank
        (utils/transformers_utils.py, ``deepspeed.zero.GatheredParameters``; ``eval_generate_gathers``).
        ZeRO runs ``--deepspeed default-zero2``/``default-zero3``: swift/llm/ds_config/zero{2,3}.json
        (``deepspeed_configs`` "swift", tables/deepspeed_configs.json). ``--packing true`` turns
        ``padding_free`` on, which ``SftArguments._check_padding_free`` (arguments/sft_args.py) refuses
        without a flash-attention ``--attn_impl`` (``packing_needs_flash``).
        """
        base = default_policy(setup).model_copy(
            update={
                "eval_batch": 1,
                "eval_argmax": True,
                "eval_new_tokens": 64,
                "eval_generate_loss": False,
                "eval_generate_gathers": True,
                "deepspeed_configs": "swift",
                "packing_needs_flash": True,
                "over_cap": "drop",
            }
        )
        if setup.method != "qlora" or setup.quant == "gptq-int4":
            return base
        return base.model_copy(
            update=dict(
                kbit_upcast=False,
                kbit_modules=base.weights,
                residual=base.activations if base.weights != "fp32" else "fp32",
                pointwise=base.activations,
                extra_trainable=base.weights,
                quantize_vision=False,
            )
        )

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return swift.render(ctx)


register(Swift())
