"""The family registry: which reader turns a config.json of each ``model_type`` into a ModelSpec.

A family is one module under ``vramplan/arch/`` (or anywhere else) that defines a :class:`Family`
and calls :func:`register` with it once; :func:`spec_from_config` dispatches on the config's
``model_type``. Everything the memory terms, the trace and the emitters need to know about a
family is declared on the ModelSpec its reader returns (``fused_qkv``, ``norm_scale_fp32``,
``decoder_layer``, ``chat_templates``, ``remote_code``, ...), so nothing outside ``arch/`` tests a
model_type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vramplan.errors import VramplanError, shown
from vramplan.spec import ModelSpec

#: ``read(name, config, where) -> ModelSpec``; ``where`` names the file in error messages.
Reader = Callable[[str, dict[str, Any], str], ModelSpec]
#: ``restack(spec, major) -> ModelSpec``: the spec as transformers ``major`` builds the family.
Restack = Callable[[ModelSpec, int], ModelSpec]


@dataclass(frozen=True)
class Family:
    """One model family: its name, the ``model_type`` values it reads, and its reader.

    ``remote_code``: empty when transformers ships the family's modeling code; otherwise why a
    trace cannot build it and what to trace instead (the reader sets ``ModelSpec.remote_code``).
    """

    name: str
    model_types: tuple[str, ...]
    read: Reader
    remote_code: str = ""
    title: str = ""  # how messages name the family (default: ``name``)
    #: for a family whose modules differ between transformers major versions (vramplan/stack.py):
    #: the spec its reader returned, rebuilt as that version builds it; None: the same in all
    restack: Restack | None = None
    #: what the family's modules are under a transformers major (the plan's stack note); None: MoE experts'
    stack_effect: Callable[[int], str] | None = None

    @property
    def label(self) -> str:
        return self.title or self.name


_BY_TYPE: dict[str, Family] = {}


def register(fam: Family) -> Family:
    """Add ``fam`` for each of its model types; a type another family already reads is refused."""
    taken = [mt for mt in fam.model_types if mt in _BY_TYPE and _BY_TYPE[mt].name != fam.name]
    if taken:
        raise ValueError(f"family {fam.name!r}: model_type {', '.join(taken)} is read by another family")
    for mt in fam.model_types:
        _BY_TYPE[mt] = fam
    return fam


def family(model_type: object) -> Family | None:
    """The family that reads ``model_type``, or None."""
    return _BY_TYPE.get(model_type) if isinstance(model_type, str) else None


def families() -> tuple[Family, ...]:
    """Every registered family, once each, by name."""
    return tuple(sorted({f.name: f for f in _BY_TYPE.values()}.values(), key=lambda f: f.name))


def for_transformers(spec: ModelSpec, major: int) -> ModelSpec:
    """``spec`` as transformers ``major`` builds it: its family's ``restack``, or ``spec`` itself
    when the family's modules are the same in every version (``spec.transformers`` stays 0)."""
    fam = family(spec.model_type)
    if fam is None or fam.restack is None or spec.transformers == major:
        return spec
    return fam.restack(spec, major)


def supported_model_types() -> tuple[str, ...]:
    return tuple(sorted(_BY_TYPE))


def spec_from_config(config: dict[str, Any], name: str = "model", where: str = "config.json") -> ModelSpec:
    """Parse a config.json dict into a ModelSpec; bad or missing fields raise VramplanError."""
    if not isinstance(config, dict):
        raise VramplanError(where, "must be a JSON object")
    mt = config.get("model_type")
    fam = family(mt)
    if fam is None:
        if not isinstance(mt, str) or not mt:
            raise VramplanError(
                "model_type",
                f"{shown(mt)} is not supported ({where}); supported: {', '.join(supported_model_types())}",
            )
        from vramplan.arch import generic  # (generic reads through decoder.py, which imports nothing of this)

        return generic.read(name, config, where, supported_model_types())
    return fam.read(name, config, where)
