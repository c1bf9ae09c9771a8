"""Precision policy: one dtype per tensor class, from Setup.precision.

| precision | frozen/base weights | trainable (master) | grads | optimizer states | activations |
|-----------|---------------------|--------------------|-------|------------------|-------------|
| fp32      | fp32 | fp32 | fp32 | fp32 | fp32 |
| bf16/fp16 | 16-bit | 16-bit | 16-bit | 16-bit (torch keeps states in the param dtype) | 16-bit |
| amp-*     | fp32 | fp32 | fp32 | fp32 | 16-bit, with autocast's 16-bit weight copies |

``bf16``/``fp16`` mean what trainers do with ``bf16=True``/``fp16=True``: weights loaded in
16 bits and the forward run under ``torch.autocast`` (accelerate ``Accelerator.prepare_model``
wraps ``model.forward`` in autocast whenever mixed precision is set). So every matmul runs in
16 bits and saves a 16-bit input, even for fp32 LoRA adapters.

LoRA adapters are fp32 whatever the base: PEFT's ``autocast_adapter_dtype=True`` upcasts
bf16/fp16 adapter weights (peft ``tuners_utils.cast_adapter_dtype``), so their grads and
optimizer states are fp32 too.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from vramplan.setup import Setup


class Dtypes(BaseModel):
    model_config = ConfigDict(frozen=True)
    weights: str
    master: str
    grads: str
    states: str
    act: str
    autocast: bool
    adapter: str = "fp32"


def dtypes(setup: Setup) -> Dtypes:
    return _dtypes(setup.precision)


@lru_cache(maxsize=16)
def _dtypes(p: str) -> Dtypes:
    if p == "fp32":
        return Dtypes(weights="fp32", master="fp32", grads="fp32", states="fp32", act="fp32", autocast=False)
    if p in ("bf16", "fp16"):
        return Dtypes(weights=p, master=p, grads=p, states=p, act=p, autocast=True)
    half = p.removeprefix("amp-")
    return Dtypes(weights="fp32", master="fp32", grads="fp32", states="fp32", act=half, autocast=True)


def act_bytes(setup: Setup) -> int:
    """Bytes per activation element."""
    return 4 if dtypes(setup).act == "fp32" else 2


def upcast_kbit(setup: Setup) -> bool:
    """QLoRA after PEFT ``prepare_model_for_kbit_training``: embeddings, norms and lm_head are
    fp32 (not on GPTQ models), so the residual stream and every non-matmul op run in fp32."""
    return setup.method == "qlora" and setup.quant != "gptq-int4"


def residual_bytes(setup: Setup) -> int:
    """Bytes per element of the residual stream: fp32 under AMP (fp32 embeddings plus
    16-bit linear outputs promote to fp32), in fp32 and after k-bit upcasting, else 16-bit."""
    return 4 if dtypes(setup).weights == "fp32" or upcast_kbit(setup) else 2


def pointwise_bytes(setup: Setup) -> int:
    """Bytes per element of MLP intermediates (outside autocast's matmul list): bitsandbytes
    linears return their input's dtype (``out.to(inp_dtype)``), fp32 after k-bit upcasting."""
    return 4 if upcast_kbit(setup) else act_bytes(setup)
