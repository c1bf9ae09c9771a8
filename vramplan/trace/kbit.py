"""QLoRA as trainers build it: bitsandbytes 4-bit linears (transformers
``replace_with_bnb_linear``, lm_head kept), PEFT ``prepare_model_for_kbit_training``
(non-quantized parameters upcast to fp32), then LoRA adapters.

Fake tensors: ``Params4bit`` cannot be created under ``FakeTensorMode``, so each weight is
quantized by bitsandbytes' own ``quantize_4bit`` (it has a fake kernel) and installed as a
plain ``nn.Parameter`` holding the packed uint8 data, with ``.quant_state`` set — what
``Linear4bit.forward`` reads.
"""

from __future__ import annotations

from typing import Any

import torch

from vramplan.setup import Setup
from vramplan.trace.parts import embedding_name, lora_config, materialize_fake

COMPUTE_DTYPE = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "amp-bf16": torch.bfloat16,
    "amp-fp16": torch.float16,
}


def _bnb_config(setup: Setup) -> Any:
    from transformers import BitsAndBytesConfig

    if setup.quant == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if setup.quant == "bnb-fp4" else "nf4",
        bnb_4bit_use_double_quant=setup.quant == "bnb-nf4-dq",
        bnb_4bit_compute_dtype=COMPUTE_DTYPE[setup.precision],
    )


def _quantize_int8(model: Any) -> list[Any]:
    """LLM.int8: each Linear8bitLt weight becomes row-wise int8 (``CB``) with one fp32 scale
    per output row (``SCB``), through bitsandbytes' ``int8_vectorwise_quant`` (fake kernel
    included) — what ``Int8Params`` does when it reaches the GPU."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    extra: list[Any] = []
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            cb, scb, _ = bf.int8_vectorwise_quant(module.weight.data.to(torch.float16))
            param = torch.nn.Parameter(cb, requires_grad=False)
            param.CB, param.SCB = cb, scb  # type: ignore[attr-defined]
            module.weight = param
            extra.append(scb)
    return extra


def _quantize_linears(model: Any, setup: Setup, fake: bool) -> list[Any]:
    """Quantize every bnb Linear4bit weight; returns the quant-state tensors it made."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    if setup.quant == "bnb-int8":
        return _quantize_int8(model)

    quant_type = "fp4" if setup.quant == "bnb-fp4" else "nf4"
    dq = setup.quant == "bnb-nf4-dq"
    extra: list[Any] = []
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        w = module.weight.data.to(torch.bfloat16)
        if fake:
            packed, state = bf.quantize_4bit(w, blocksize=64, compress_statistics=dq, quant_type=quant_type)
            param = torch.nn.Parameter(packed, requires_grad=False)
            param.quant_state = state  # type: ignore[attr-defined]
            module.weight = param
        else:
            weight = bnb.nn.Params4bit(
                data=w, requires_grad=False, quant_type=quant_type, compress_statistics=dq, blocksize=64
            )
            module.weight = weight.to(w.device)  # type: ignore[misc]  # quantizes on a real device
            state = module.weight.quant_state
        extra.append(state.absmax)
        if state.nested:
            extra += [state.state2.absmax, state.state2.code]
    return extra


def build_qlora(hf: Any, setup: Setup, *, fake: bool, device: str, fake_mode: Any) -> Any:
    """A QLoRA model: 4-bit base, k-bit preparation, LoRA adapters (and modules_to_save)."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    ctx = torch.device("meta") if fake else torch.device(device)
    with ctx:
        model = AutoModelForCausalLM.from_config(hf, dtype=torch.bfloat16)
    real = {} if fake else {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=_bnb_config(setup))
    model.is_loaded_in_4bit = setup.quant != "bnb-int8"
    model.is_loaded_in_8bit = setup.quant == "bnb-int8"
    model.is_quantized = True
    quant_tensors: list[Any] = []
    if not fake:  # real weights in, quantized for real, before k-bit preparation
        for name, module in model.named_modules():
            if name in real:  # the bnb module was made on meta: give it the real weight and bias
                module.weight = torch.nn.Parameter(real[name].weight.data, requires_grad=False)
                if real[name].bias is not None:
                    module.bias = torch.nn.Parameter(real[name].bias.data, requires_grad=False)
        with torch.no_grad():
            quant_tensors = _quantize_linears(model, setup, fake=False)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(setup, setup.lora_target_list(), embedding_name(model)))
    if fake:  # materialise under fake mode, then quantize with bitsandbytes' fake kernels
        import bitsandbytes.functional as bf

        if "dynamic" not in bf.name2qmap:  # double quant's code table cannot be built from fakes
            bf.name2qmap["dynamic"] = bf.create_dynamic_map()
        materialize_fake(model, fake_mode)
        with fake_mode:
            quant_tensors = _quantize_linears(model, setup, fake=True)
    model._vramplan_quant_tensors = quant_tensors
    return model
