"""Emit a plan as a configuration for the trainer the user already has.

``emit(plan, target)`` returns the files to write (name -> text) and the command that
starts the run. Every file opens with the same comment block: model, GPU, the estimated
peak per tier, the headroom, and why each memory-relevant setting was chosen, with the
numbers. A choice the target cannot express is replaced by the nearest one it can, said
in the header, and the numbers are re-estimated for what is actually emitted.

Targets: ``trl`` (a self-contained Python script: TRL ``SFTTrainer`` + PEFT + bitsandbytes),
``swift`` (the ms-swift ``swift sft`` command line), ``llamafactory`` (YAML for
``llamafactory-cli train``), ``axolotl`` (YAML for ``axolotl train``). Torch-free.

Every target also writes the run around the step the plan counted: the batches' lengths (every
batch padded to the planned length, to its longest sample, or packed) and the evaluation during
training (its held-out set, batch, loss or kept logits or generation), each beside its number; what a
target cannot write is refused, naming the field (:mod:`vramplan.frameworks.files.run_options`).

On several GPUs the trl target also writes the launch: ``accelerate_config.yaml`` for DDP,
DeepSpeed ZeRO-1/2/3 (with ``ds_config.json``) and FSDP2, or a single process with
``device_map="auto"`` and a ``max_memory`` per card (:mod:`vramplan.frameworks.files.launch`);
the other targets emit one GPU or DDP.

Each target is a trainer in :mod:`vramplan.frameworks` (what it refuses, adapts and runs) whose
files :mod:`vramplan.frameworks.files` writes; this package sits above both.
"""

from __future__ import annotations

from vramplan.emit.emitter import Emitted, emit
from vramplan.frameworks import TARGETS

__all__ = ["TARGETS", "Emitted", "emit"]
