"""Check emitted options against a trainer's own option table (tables/emit/<target>.json).

The tables are derived from each project's argument dataclasses / config schema (sources
and versions inside each file). A check names every unknown key, every value of a type the
option does not accept, and every value outside its choices.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from vramplan.tables import tables_dir

PY_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


@lru_cache(maxsize=8)
def option_table(name: str) -> dict[str, Any]:
    return json.loads((tables_dir() / "emit" / f"{name}.json").read_text())


def _known_keys(table: dict[str, Any]) -> set[str]:
    keys = set(table["options"])
    all_keys = table.get("all_keys")
    if isinstance(all_keys, dict):
        for v in all_keys.values():
            if isinstance(v, list):
                keys.update(v)
            elif isinstance(v, str):
                pass
        keys.update(k for k, v in all_keys.items() if isinstance(v, str))
    elif isinstance(all_keys, list):
        keys.update(all_keys)
    return keys


def _accepts(value: Any, opt: dict[str, Any]) -> bool:
    kinds = opt.get("accepts") or [opt.get("type", "str")]
    if value is None:
        return bool(opt.get("nullable", True))
    for kind in kinds:
        t = PY_TYPES.get(kind)
        if t is None:
            return True
        if t is int and isinstance(value, bool):
            continue
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return True
        if isinstance(value, t):
            return True
    return False


def check(name: str, options: dict[str, Any]) -> list[str]:
    """Problems with ``options`` for trainer ``name`` ('' list when they are all valid)."""
    table = option_table(name)
    known = _known_keys(table)
    problems = []
    for key, value in options.items():
        if key not in known:
            problems.append(f"{key}: not an option of {name}")
            continue
        opt = table["options"].get(key)
        if opt is None:
            continue
        if not _accepts(value, opt):
            problems.append(f"{key}: {value!r} is not {'/'.join(opt.get('accepts') or [opt.get('type', '?')])}")
            continue
        choices = opt.get("choices")
        if choices and value is not None and not isinstance(value, (list, dict)) and value not in choices:
            problems.append(f"{key}: {value!r} not in {choices}")
    return problems
