"""Emit a plan as a configuration for the trainer the user already has.

``emit(plan, target)`` returns the files to write (name -> text) and the command that
starts the run. Every file opens with the same comment block: model, GPU, the estimated
peak per tier, the headroom, and why each memory-relevant setting was chosen, with the
numbers. A choice the target cannot express is replaced by the nearest one it can, said
in the header, and the numbers are re-estimated for what is actually emitted.

Targets: ``trl`` (a self-contained Python script: TRL ``SFTTrainer`` + PEFT + bitsandbytes),
``swift`` (the ms-swift ``swift sft`` command line), ``llamafactory`` (YAML for
``llamafactory-cli train``), ``axolotl`` (YAML for ``axolotl train``). Torch-free.

On several GPUs the trl target also writes the launch: ``accelerate_config.yaml`` for DDP,
DeepSpeed ZeRO-1/2/3 (with ``ds_config.json``) and FSDP2, or a single process with
``device_map="auto"`` and a ``max_memory`` per card (:mod:`vramplan.emit.launch`); the other
targets emit one GPU or DDP.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from vramplan.emit.common import TARGETS, Emitted, emit

__all__ = ["TARGETS", "Emitted", "emit"]


class _Package(ModuleType):
    """This package, callable as :func:`emit`: ``from vramplan import emit`` gives the package
    (Python binds a subpackage over a same-named attribute of its parent), and
    ``emit(plan, "trl")`` is ``vramplan.emit.emit(plan, "trl")``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Emitted:
        return emit(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
