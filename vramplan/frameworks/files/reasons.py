"""Why each memory-relevant setting is what it is: the estimate with the setting changed,
on the same card, in device-tier GiB."""

from __future__ import annotations

from typing import Any

from vramplan.errors import VramplanError
from vramplan.frameworks.files.common import gib
from vramplan.gpus import GPU
from vramplan.memory import Estimate, estimate, vision
from vramplan.policy import PolicyOf, default_policy
from vramplan.setup import Setup
from vramplan.spec import ModelSpec
from vramplan.units import GIB


def _dev(spec: ModelSpec, setup: Setup, policy: PolicyOf, gpu: GPU, **change: Any) -> int | None:
    try:
        s = setup.model_copy(update=change)
        Setup.model_validate(s.model_dump())
        return estimate(spec, s, policy=policy(s), card_bytes=gpu.memory_bytes, nvlink=gpu.nvlink).device_bytes
    except (VramplanError, ValueError):
        return None


def reasons(
    spec: ModelSpec, setup: Setup, est: Estimate, gpu: GPU, policy: PolicyOf = default_policy
) -> dict[str, str]:
    """Why each memory-relevant setting is what it is, with the device-tier numbers that
    decide it (the estimate with the setting changed, on the same card, run by the trainer
    whose ``policy`` it is)."""
    out: dict[str, str] = {}
    here = est.device_bytes
    cap = gpu.memory_bytes

    def verdict(n: int | None) -> str:
        if n is None:
            return "not possible here"
        return f"{gib(n)}, {'fits' if n <= cap else 'does not fit'}"

    at = f"at seq {setup.seq_len} x micro-batch {setup.micro_batch}"
    if setup.grad_checkpointing:
        off = _dev(spec, setup, policy, gpu, grad_checkpointing=False)
        if off is not None:
            out["grad_checkpointing"] = f"saves {gib(off - here)} {at} (off: {verdict(off)})"
    else:
        on = _dev(spec, setup, policy, gpu, grad_checkpointing=True)
        if on is not None:
            out["grad_checkpointing"] = f"off: on would save {gib(here - on)} and cost ~30% speed"
    more = _dev(spec, setup, policy, gpu, micro_batch=setup.micro_batch + 1)
    if more is not None:
        out["micro_batch"] = f"one more sample per step adds {gib(more - here)} ({verdict(more)})"
    if setup.grad_accum > 1:
        out["grad_accum"] = (
            f"effective batch {setup.micro_batch * setup.grad_accum} without its activations; "
            "gradients are kept between micro-batches"
        )
    out["seq_len"] = "the estimate counts every sample at this length: shorter samples need less"
    if setup.method in ("lora", "qlora"):
        full = _dev(spec, setup, policy, gpu, method="full", quant="none", trainable_extra=())
        out["method"] = (
            f"{setup.method}: {est.trainable_params:,} trainable; full fine-tuning would need {verdict(full)}"
        )
        if setup.method == "qlora":
            base = _dev(spec, setup, policy, gpu, method="lora", quant="none")
            out["quant"] = f"{setup.quant} base weights; a 16-bit base would need {verdict(base)}"
        out["lora_rank"] = f"r={setup.lora_rank}: adapters plus their grads and optimizer state are small"
    else:
        lora = _dev(spec, setup, policy, gpu, method="lora", quant="none")
        out["method"] = f"{setup.method}: {est.trainable_params:,} trainable; LoRA would need {verdict(lora)}"
    if setup.optimizer in ("adamw", "adamw-fused", "paged-adamw-32bit"):
        eight = _dev(spec, setup, policy, gpu, optimizer="adamw-8bit")
        if eight is not None and here - eight > 0:
            out["optimizer"] = f"{setup.optimizer}: 8-bit AdamW would save {gib(here - eight)}"
        else:
            out["optimizer"] = f"{setup.optimizer}: its state is small here"
    else:
        adamw = _dev(spec, setup, policy, gpu, optimizer="adamw")
        if adamw is not None:
            out["optimizer"] = f"{setup.optimizer}: saves {gib(adamw - here)} against AdamW"
    if setup.precision in ("bf16", "fp16"):
        amp = _dev(spec, setup, policy, gpu, precision="amp-" + setup.precision)
        out["precision"] = (
            f"{setup.precision} weights under autocast; fp32 master weights (AMP) would need {verdict(amp)}"
        )
    else:
        out["precision"] = f"{setup.precision}"
    if setup.attention != "eager":
        eager = _dev(spec, setup, policy, gpu, attention="eager")
        if eager is not None and eager - here >= GIB // 100:
            out["attention"] = f"{setup.attention}: eager attention would add {gib(eager - here)}"
        elif eager is not None:
            out["attention"] = f"{setup.attention}: eager attention would peak about the same here"
    if setup.vllm != "none":
        from vramplan.memory import rl

        share = rl.vllm_share_bytes(setup, cap)
        held = "freed outside generation (sleep mode)" if setup.vllm_sleep else "held through the step"
        out["vllm"] = (
            f"vLLM colocated takes {gib(share)} of the card, {held};"
            f" room for {rl.vllm_concurrent_sequences(spec, setup, cap, vision.image_tokens(spec, setup))}"
            " full-length sequences at once"
        )
    if setup.images_per_sample:
        smaller = _dev(spec, setup, policy, gpu, images_per_sample=0, image_size="")
        if smaller is not None:
            out["image_size"] = f"the images add {gib(here - smaller)} over text-only prompts"
    return out
