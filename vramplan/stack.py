"""The library stack a plan assumes where its version changes memory: transformers' major version.

transformers 4 and 5 build a mixture of experts differently, and the memory follows:

- transformers 4 (``models/mixtral/modeling_mixtral.py`` ``MixtralSparseMoeBlock``,
  ``models/qwen3_moe/modeling_qwen3_moe.py`` ``Qwen3MoeSparseMoeBlock``): the router is an
  ``nn.Linear`` and the experts an ``nn.ModuleList`` of MLPs of ``nn.Linear`` layers
  (Mixtral ``w1``/``w2``/``w3``, Qwen3-MoE ``gate_proj``/``up_proj``/``down_proj``).
  bitsandbytes' ``replace_with_bnb_linear`` quantizes every one of them; PEFT's ``all-linear``
  puts an adapter on each.
- transformers 5 (``MixtralExperts`` / ``Qwen3MoeExperts`` and ``*TopKRouter``): the experts
  are two fused 3D ``nn.Parameter`` stacks (``gate_up_proj``, ``down_proj``) and the router a
  bare weight. Not ``nn.Linear``: bitsandbytes leaves them 16-bit (fp32 after PEFT's k-bit
  upcast) and PEFT adapts them only through ``target_parameters`` (its ``ParamWrapper``).
- Qwen3-VL-MoE (arch/qwen3_vl.py) fuses its experts in both: transformers 4.57's
  ``Qwen3VLMoeTextExperts`` already holds ``gate_up_proj``/``down_proj`` as parameters; only its
  router is an ``nn.Linear`` there.

:func:`transformers_major` reads the installed release from its package metadata (no import);
a plan takes it unless told (``plan(..., transformers=4)``, ``--transformers 4``).
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

from vramplan.errors import VramplanError, shown

#: the transformers major versions a plan can assume
TRANSFORMERS_MAJORS = (4, 5)
#: assumed when transformers is not installed (or its major is not one of the above)
DEFAULT_TRANSFORMERS = 5

Source = Literal["given", "installed", "default"]


def installed_transformers() -> str | None:
    """The installed transformers release (``5.25.0``), from its metadata; None if absent."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def transformers_major(given: object = None) -> tuple[int, Source]:
    """The major version a plan assumes and where it came from: ``given`` (4 or 5; ``"4"``
    from the command line too), else the installed release's major when it is 4 or 5, else 5.
    Anything else given raises VramplanError naming ``transformers``."""
    if given is not None:
        value = given
        if isinstance(given, str) and given.strip().isdigit():
            value = int(given.strip())
        if not isinstance(value, int) or isinstance(value, bool) or value not in TRANSFORMERS_MAJORS:
            raise VramplanError("transformers", f"give the transformers major version, 4 or 5; got {shown(given)}")
        return value, "given"
    release = installed_transformers()
    head = (release or "").split(".", 1)[0]
    if head.isdigit() and int(head) in TRANSFORMERS_MAJORS:
        return int(head), "installed"
    return DEFAULT_TRANSFORMERS, "default"
