"""The trainers vramplan plans for and emits: one module each, registered by name.

``framework(name)`` gives a :class:`Framework`: ``supports(setup, spec)`` (refusals as
data), ``adapt(setup, spec)``, ``policy(setup)`` (what the memory terms read) and
``render(ctx)`` (the files and the command). ``TARGETS`` are those ``--emit`` writes for;
``hf``, the plain transformers Trainer loop, is planned for and has no files. A new trainer
is one module that subclasses :class:`Framework` and calls :func:`register`.
"""

from __future__ import annotations

from vramplan.frameworks import axolotl, hf, llamafactory, swift, trl
from vramplan.frameworks.base import Framework, Refusal, framework, names, register

#: the emit targets, in the order they are offered.
TARGETS = ("trl", "swift", "llamafactory", "axolotl")
#: the built-in trainers' modules (each registers itself on import).
BUILT_IN = (trl, swift, llamafactory, axolotl, hf)

__all__ = ["BUILT_IN", "TARGETS", "Framework", "Refusal", "framework", "names", "register"]
