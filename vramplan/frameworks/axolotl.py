"""axolotl: ``config.yml`` for ``axolotl train`` (vramplan/frameworks/files/axolotl.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, register
from vramplan.frameworks.files import axolotl
from vramplan.frameworks.files.common import Context, integral_alpha
from vramplan.policy import Policy, default_policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec


class Axolotl(Framework):
    name = "axolotl"
    title = "axolotl YAML (axolotl train)"
    package = "axolotl"
    python_env = "VRAMPLAN_AXOLOTL_PYTHON"
    tracer = "vramplan.trace.axolotl_sft"
    established = "0.19"

    def adapt(self, setup: Setup, spec: ModelSpec) -> tuple[Setup, list[str]]:
        notes: list[str] = []
        if setup.precision.startswith("amp-"):
            half = setup.precision.removeprefix("amp-")
            notes.append(f"no fp32 master weights under autocast: {half} weights throughout (re-estimated)")
            setup = setup.model_copy(update={"precision": half})
        if setup.quant in ("gptq-int4", "awq-int4"):
            notes.append(
                f"{setup.quant}: emitted as bitsandbytes nf4 (axolotl's gptq needs a GPTQ checkpoint; re-estimated)"
            )
            setup = setup.model_copy(update={"quant": "bnb-nf4"})
        return integral_alpha(setup, notes), notes

    def policy(self, setup: Setup) -> Policy:
        """axolotl 0.19.0's run of the emitted config (axolotl/ in the 0.19.0 wheel):

        - QLoRA and LoRA on LLM.int8 (``load_in_4bit``/``load_in_8bit``): loaders/model.py
          ``ModelLoader._prepare_model_for_quantization`` runs PEFT's
          ``prepare_model_for_kbit_training`` (fp32 norms, embeddings, lm_head), then
          ``_apply_post_model_load_setup``'s "Converting modules to {torch_dtype}"
          (``_convert_embedding_modules_dtype``, for every LoRA/QLoRA adapter) casts the norms,
          ``embed_tokens`` and ``lm_head`` back to the 16-bit dtype. So no k-bit upcast remains:
          those modules, and the ``lora_modules_to_save`` copies PEFT makes of them, are 16-bit,
          and the residual stream and MLP intermediates stay 16-bit. (Biases, few, stay fp32.)
        - LoRA adapters stay fp32 (PEFT's ``autocast_adapter_dtype``; axolotl passes
          ``peft_autocast_adapter_dtype`` only when set, loaders/adapter.py).
        - Fused LoRA kernels: utils/schemas/config.py ``check_auto_enable_lora_kernels`` turns
          ``lora_mlp_kernel``/``lora_qkv_kernel``/``lora_o_kernel``/``lora_embedding_kernel`` on
          when none is set; the emitted config sets all four false
          (frameworks/files/axolotl.py), so PEFT's LoRA forward runs, which the terms count.
        - Checkpointing: utils/config/__init__.py ``normalize_config`` sets
          ``gradient_checkpointing_kwargs={"use_reentrant": True}`` unless
          ``unfrozen_parameters`` is set; with it (the emitted freeze) the trainer builder
          passes ``{"use_reentrant": False}`` (core/builders/base.py
          ``_configure_gradient_checkpointing``). No term reads the difference yet: both paths save
          each checkpointed layer's input and recompute one layer at a time in backward.
        - Full and freeze in 16 bits (no adapter) under sdpa/eager: ``_configure_embedding_dtypes``
          first runs ``_convert_embedding_modules_dtype(..., dist_dtype=torch.float32,
          before_kbit_train_or_finetune=True)``: every module with "norm" in its name and
          ``embed_tokens``/``lm_head`` go to fp32; the pass back to the 16-bit dtype runs only for
          an adapter, FSDP, ``cut_cross_entropy`` or an attention that ``attn_needs_dtype_cast``
          (utils/schemas/config.py: all but ``sdpa``/``eager``; flash attention needs 16-bit
          inputs). So the embedding, lm_head and norms train in fp32 (their grads and AdamW
          moments too: ``upcast_modules``), the fp32 embedding output keeps the residual stream in
          fp32, and autocast makes a 16-bit copy of lm_head for its matmul.
        - Padding: ``pad_to_sequence_len: true`` in the emitted config, every batch at
          ``sequence_len`` (``fixed``). A sample longer than ``sequence_len`` is dropped:
          utils/data/utils.py ``handle_long_seq_in_dataset``, ``excess_length_strategy`` None meaning
          'drop' (``over_cap``).
        - The run's other phases (memory/run.py): ``setup_deepspeed_env`` (utils/trainer.py) sets
          ``ACCELERATE_DEEPSPEED_ZERO3_INIT=true`` under stage 3 and makes an ``HfTrainerDeepSpeedConfig``
          before the model loads: ZeRO-3 loads under ``zero.Init`` (``zero3_init``). No evaluation by
          default (``val_set_size`` 0.0, utils/schemas/config.py); when on, ``eval_batch_size`` defaults
          to ``micro_batch_size`` (utils/config/__init__.py ``normalize_config``: ``eval_batch=None``).
          ``AxolotlTrainer`` is a ``Trainer`` (core/trainers/base.py), no ``predict_with_generate``, and
          no ``compute_metrics`` is passed to it anywhere in the package: loss only (``eval_logits``).
        - ZeRO runs the repository's deepspeed_configs/zero2.json / zero3_bf16.json
          (``deepspeed_configs`` "axolotl", tables/deepspeed_configs.json).
        """
        base = default_policy(setup)
        update: dict[str, object] = {
            "eval_batch": None,
            "eval_logits": False,
            "eval_generate": False,
            "deepspeed_configs": "axolotl",
            "over_cap": "drop",
        }
        if setup.method == "qlora" and base.weights != "fp32":
            update.update(
                kbit_upcast=False,
                kbit_modules=base.weights,
                extra_trainable=base.weights,
                residual=base.activations,
                pointwise=base.activations,
            )
        if setup.method in ("full", "freeze") and base.weights != "fp32" and setup.attention != "flash-attn-2":
            update.update(upcast_modules="fp32", residual="fp32")
        if setup.method == "freeze":  # (read only where layers are checkpointed)
            update["reentrant_checkpointing"] = False
        return base.model_copy(update=update)

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return axolotl.render(ctx)


register(Axolotl())
