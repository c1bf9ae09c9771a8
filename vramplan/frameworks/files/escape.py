"""Writing user values into generated files.

Every value that reaches an emitted file goes through one of these: a Python literal
(``py_literal``), a shell word (``sh_quote``), a YAML scalar (``yaml_scalar``), JSON
(``json.dumps``), or a comment line (``comment_block``). Values no format can hold are
refused first (``check_text``).
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from vramplan.errors import VramplanError, one_line


def check_text(field: str, value: str) -> str:
    """``value`` if every emitted format can hold it; else a one-line error naming ``field``.
    NUL cannot reach a path or an argument; a lone surrogate (an undecodable byte in a file
    name) cannot be written as UTF-8 text."""
    if "\x00" in value:
        raise VramplanError(field, f"{value!r} holds a NUL character, which no file name or argument can")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise VramplanError(field, f"{value!r} is not valid UTF-8 text: rename it to emit a config for it")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise VramplanError("emit", f"{value} is not a finite number: no trainer option takes it")
    return value


def printable(text: str) -> str:
    """``text`` for one comment line: every character Python does not print (line breaks
    of any kind: \\n, \\r, U+0085, U+2028, U+2029; other controls; bidirectional
    overrides) written as its escape, so a value cannot end the comment it sits in."""
    return one_line(text)


def comment_block(lines: list[str], marker: str = "# ") -> str:
    """The comment lines of an emitted file, each on one line (:func:`printable`)."""
    return "\n".join(marker + printable(line) for line in lines)


def py_literal(value: Any) -> str:
    """A Python literal for a str/int/float/bool/None or a list/tuple/dict of them:
    ``repr``, which escapes every non-printable character, after refusing NaN/inf
    (``repr`` gives ``nan``, a name the script does not define)."""
    _walk_finite(value)
    return repr(value)


def _walk_finite(value: Any) -> None:
    if isinstance(value, float):
        _finite(value)
    elif isinstance(value, dict):
        for v in value.values():
            _walk_finite(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _walk_finite(v)


def sh_quote(value: str) -> str:
    """One shell word that expands to exactly ``value``, on one line: ``shlex.quote`` (single
    quotes, so ``$()``, backticks, ``#``, ``;`` are literal); a value with a character that
    does not print (a line break, a tab, U+2028) is written as ``$'...'`` with those
    characters' UTF-8 bytes as octal escapes, which every locale reads alike (bash, zsh, ksh;
    POSIX.1-2024 sh, "Dollar-Single-Quotes")."""
    if value.isprintable():
        return shlex.quote(value)
    out = []
    for ch in value:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return "$'" + "".join(out) + "'"


#: a module name PEFT, ms-swift, LLaMA-Factory and axolotl can all be given (letters,
#: digits, ``_``, and ``.`` between parts: ``q_proj``, ``mlp.gate_proj``, ``layers.0.fc1``)
MODULE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def check_module_names(field: str, names: list[str]) -> list[str]:
    """Module names as given, or a one-line error naming ``field`` and the first bad one."""
    for name in names:
        if not MODULE_NAME.fullmatch(name):
            raise VramplanError(
                field, f"{name!r} is not a module name: use letters, digits, '_' and '.' (like q_proj,mlp.up_proj)"
            )
    return names


#: scalars a YAML 1.1 reader (PyYAML, OmegaConf) resolves to a bool, null or float when written plain
YAML_RESOLVED = frozenset(
    ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".inf", ".nan", "-.inf", "+.inf"]
)


def yaml_quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar that reads back exactly: ``"`` and ``\\``
    escaped, and every character YAML does not print or reads as a line break (C0/C1
    controls, DEL, U+0085, U+2028, U+2029, the BOM) written as an escape (YAML 1.1 spec,
    5.1 character set and 5.7 escaped characters)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xFFFD and code not in (0x2028, 0x2029, 0xFEFF)) or code > 0xFFFF:
            if 0xD800 <= code <= 0xDFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(ch)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def yaml_scalar(value: Any) -> str:
    """A YAML scalar or flow list; strings plain only when they read back as the same
    string, else double-quoted (:func:`yaml_quote`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        _finite(value)
        text = repr(value)  # YAML 1.1 (PyYAML, OmegaConf) reads 1e-05 as a string: write 1.0e-05
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_scalar(str(k))}: {yaml_scalar(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./-]*", text) and not re.match(r"\.[0-9]", text)  # .5 is a float
    if plain and text.lower() not in YAML_RESOLVED:
        return text
    return yaml_quote(text)


def yaml_text(items: list[tuple[str, Any, str]]) -> str:
    """``key: value  # comment`` lines; a list of dicts is written as a block."""
    lines = []
    for key, value, comment in items:
        tail = f"  # {printable(comment)}" if comment else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{key}:{tail}")
            for d in value:
                first = True
                for k, v in d.items():
                    lines.append(f"  {'- ' if first else '  '}{k}: {yaml_scalar(v)}")
                    first = False
        else:
            lines.append(f"{key}: {yaml_scalar(value)}{tail}")
    return "\n".join(lines) + "\n"
