"""The model catalog: real config.json files in ``tables/models/<name>/`` with provenance.

Names resolve case-insensitively: the catalog name (``qwen2.5-7b``), its hub id
(``Qwen/Qwen2.5-7B``), any alias from ``source.json`` (``Qwen/Qwen2.5-7B-Instruct``), the
alias without its organisation (``qwen2.5-7b-instruct``), and a path to a local
``config.json`` or to a folder holding one. Any other Hub id (``Org/Name``) is read from its
``config.json`` on the Hub (hub.py: fetched once, cached, never weights or code).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan.arch import spec_from_config
from vramplan.errors import VramplanError, shown
from vramplan.hub import config_bytes, is_repo_id
from vramplan.limits import MAX_CONFIG_BYTES, MAX_PATH_CHARS
from vramplan.spec import ModelSpec
from vramplan.tables import tables_dir


class ModelSource(BaseModel):
    """Provenance of a catalog config (``tables/models/<name>/source.json``)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    name: str
    hub_id: str
    aliases: list[str] = []
    config_verbatim: bool = True
    config_source: str = ""
    config_cross_check: str = ""
    published_params: int | None = None
    published_params_text: str | None = None
    published_params_source: str | None = None
    notes: str = ""


def models_dir() -> Path:
    return tables_dir() / "models"


def _keys(src: ModelSource) -> set[str]:
    keys = {src.name, src.hub_id, src.hub_id.split("/")[-1]}
    for alias in src.aliases:
        keys |= {alias, alias.split("/")[-1]}
    return {k.lower() for k in keys if k}


@lru_cache(maxsize=1)
def catalog_sources() -> dict[str, ModelSource]:
    """Every catalog entry's provenance, by catalog name."""
    out: dict[str, ModelSource] = {}
    for src_file in sorted(models_dir().glob("*/source.json")):
        src = ModelSource.model_validate_json(src_file.read_text())
        out[src.name] = src
    return out


@lru_cache(maxsize=1)
def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name, src in catalog_sources().items():
        for key in _keys(src):
            index.setdefault(key, name)
    return index


def catalog_names() -> list[str]:
    return sorted(catalog_sources())


def _read_config(path: Path, where: str) -> dict[str, Any]:
    """The JSON object in ``path``: a regular file of at most MAX_CONFIG_BYTES, UTF-8, valid
    JSON, not nested past what the parser can hold. Every failure is one VramplanError."""
    name = shown(str(path))
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise VramplanError(where, f"{name} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise VramplanError(
                where, f"{name} holds {info.st_size:,} bytes; a config.json has at most {MAX_CONFIG_BYTES:,}"
            )
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise VramplanError(where, f"cannot read {name}: {exc.strerror or exc}") from None
    return _parse_config(raw, name, where)


def _parse_config(raw: bytes, name: str, where: str) -> dict[str, Any]:
    """The JSON object in ``raw`` (the bytes of the config.json ``name``)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise VramplanError(where, f"{name} is not UTF-8 text (byte {exc.start:,}: {exc.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VramplanError(where, f"{name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise VramplanError(where, f"{name} nests arrays or objects too deeply to read") from None
    except ValueError:  # an integer past Python's int-from-string limit (sys.get_int_max_str_digits)
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise VramplanError(where, f"{name} holds an integer of more than {limit:,} digits") from None
    if not isinstance(data, dict):
        raise VramplanError(where, f"{name} must hold a JSON object, not a {type(data).__name__}")
    return data


def resolve_model_name(query: str) -> str:
    """Catalog name for what a user typed; unknown names raise with the nearest entries by
    family and size (:func:`nearest_models`)."""
    name = _index().get(query.strip().lower())
    if name is None:
        near = nearest_models(query)
        hint = f"; nearest by family and size: {', '.join(near)}" if near else ""
        raise VramplanError(
            "model",
            f"unknown model {shown(query)}{hint} (or its hub id, Org/Name, to read its config.json from the Hub,"
            " or a path to a config.json; 'vramplan models' lists all)",
        )
    return name


#: a size in a model's name: 7b, 0.5b, 135m, 8x7b (experts x size)
_SIZE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])$")
#: name parts that say nothing of the family
_NOISE = {"instruct", "chat", "hf", "it", "base", "model", "v0", "v1", "v2", "v3", "hub"}


def _parts(text: str) -> tuple[set[str], float | None]:
    """The family words of a model name and its size in billions of parameters (None: unsaid)."""
    words, size = set(), None
    for part in re.split(r"[-_/ ]+", text.lower()):
        m = _SIZE.match(part)
        if m and size is None:
            size = float(m[2]) * (1e-3 if m[3] == "m" else 1.0) * (int(m[1]) if m[1] else 1)
        elif part not in _NOISE and re.search("[a-z]", part):  # "3" in gemma-3 is no family of its own
            words.add(part)
            words.update(re.findall(r"[a-z]+", part))  # qwen2.5 -> qwen, llama3 -> llama
    return words, size


def nearest_models(query: str, n: int = 3) -> list[str]:
    """The catalog entries nearest to an unknown ``query``: most family words in common (from
    the names, hub ids and aliases), then the nearest size (from the name, else the counted
    parameters), each shown with its model_type and size so that a different architecture under
    a similar name shows. With no family word in common, only a near spelling is offered."""
    import math

    from vramplan.params import param_counts

    words, size = _parts(query.strip()[:200])
    scored = []
    for name, src in catalog_sources().items():
        theirs: set[str] = set()
        for key in (name, src.hub_id, *src.aliases):
            theirs |= _parts(key)[0]
        common = len(words & theirs)
        if not common:
            continue
        # what the entry's own name adds (vl, coder, ...; not a version: qwen2.5 is qwen) counts against it
        mine = {w for w in _parts(name)[0] if w.isalpha()}
        spec = load_model(name)
        billions = param_counts(spec).total / 1e9
        gap = abs(math.log(size / billions)) if size else 0.0
        scored.append((-common, len(mine - words), gap, name, f"{name} ({spec.model_type}, {billions:.1f}B)"))
    if not scored:  # no family word in common: a misspelling, if anything
        return difflib.get_close_matches(query.strip().lower()[:100], catalog_names(), n, cutoff=0.8)
    return [shown for *_, shown in sorted(scored)[:n]]


def _local_path(query: str) -> Path | None:
    """The config.json ``query`` names on disk, or None when it names no file or folder (a
    catalog name then). A path that cannot be looked at raises with the reason."""
    if "\0" in query:
        raise VramplanError("model", f"{shown(query)} holds a NUL character")
    try:
        path = Path(query).expanduser()
    except RuntimeError:  # "~user" for a user this machine does not know
        raise VramplanError("model", f"cannot expand {shown(query)}: no such user's home directory") from None
    try:
        if path.exists():
            return path / "config.json" if path.is_dir() else path
    except OSError as exc:
        if not query.endswith(".json"):
            return None  # too long a name for a path (ENAMETOOLONG): try it as a catalog name
        raise VramplanError("model", f"cannot read {shown(query)}: {exc.strerror or exc}") from None
    return path if query.endswith(".json") else None


def load_config(query: str, *, hub: bool = True) -> tuple[str, dict[str, Any]]:
    """``(name, config dict)`` for a catalog name/alias, a local config path, or (``hub``) a
    Hub id outside the catalog, whose config.json hub.py fetches."""
    if isinstance(query, os.PathLike):
        query = os.fspath(query)
    if not isinstance(query, str) or not query.strip():
        raise VramplanError("model", f"name a model or a config.json path, got {shown(query)}")
    if len(query) > MAX_PATH_CHARS:
        raise VramplanError("model", f"{shown(query)} is longer than {MAX_PATH_CHARS:,} characters")
    cfg_path = _local_path(query)
    if cfg_path is not None:
        try:
            found = cfg_path.exists()
        except OSError:
            found = False
        if not found:
            raise VramplanError("model", f"no config.json at {shown(str(cfg_path))}")
        return cfg_path.parent.name or "model", _read_config(cfg_path, "model")
    if hub and query.strip().lower() not in _index() and is_repo_id(query.strip()):
        repo_id = query.strip()
        return repo_id, _parse_config(config_bytes(repo_id), f"{repo_id}'s config.json", "model")
    name = resolve_model_name(query)
    return name, _read_config(models_dir() / name / "config.json", "model")


def load_model(query: str, *, hub: bool = True) -> ModelSpec:
    """ModelSpec for a catalog name/alias, a path to a config.json (or its folder), or (``hub``)
    a Hub id outside the catalog. ``hub=False`` answers from this machine alone (validate's
    rows: a gate gives the same answer everywhere)."""
    if isinstance(query, os.PathLike):
        query = os.fspath(query)
    if not isinstance(query, str):
        raise VramplanError("model", f"name a model or a config.json path, got {shown(query)}")
    return _load_model(query, hub)


@lru_cache(maxsize=64)
def _load_model(query: str, hub: bool = True) -> ModelSpec:
    name, cfg = load_config(query, hub=hub)
    return spec_from_config(cfg, name=name, where="model config.json")
