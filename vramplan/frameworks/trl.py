"""TRL: a self-contained ``train.py`` (``SFTTrainer``, or ``GRPOTrainer`` for GRPO plans) with
PEFT and bitsandbytes, and its launch on several GPUs (vramplan/frameworks/files/trl.py, files/launch.py)."""

from __future__ import annotations

from vramplan.frameworks.base import Framework, Refusal, register
from vramplan.frameworks.files import launch, trl
from vramplan.frameworks.files.common import Context
from vramplan.setup import DEEPSPEED, PARALLELS, Setup
from vramplan.spec import ModelSpec


class Trl(Framework):
    name = "trl"
    title = "TRL SFTTrainer/GRPOTrainer script (python train.py, accelerate launch on several GPUs)"
    package = "trl"
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

    def render(self, ctx: Context) -> tuple[dict[str, str], str]:
        return trl.render(ctx)


register(Trl())
