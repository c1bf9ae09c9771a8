"""The model catalog: real config.json files in ``tables/models/<name>/`` with provenance.

Names resolve case-insensitively: the catalog name (``qwen2.5-7b``), its hub id
(``Qwen/Qwen2.5-7B``), any alias from ``source.json`` (``Qwen/Qwen2.5-7B-Instruct``), the
alias without its organisation (``qwen2.5-7b-instruct``), and a path to a local
``config.json`` or to a folder holding one.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError, closest
from vramplan.spec import ModelSpec, spec_from_config
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
    try:
        text = path.read_text()
    except OSError as exc:
        raise VramplanError(where, f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VramplanError(where, f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise VramplanError(where, f"{path} must hold a JSON object")
    return data


def resolve_model_name(query: str) -> str:
    """Catalog name for what a user typed; unknown names raise with the closest entries."""
    name = _index().get(query.strip().lower())
    if name is None:
        near = closest(query, sorted(set(_index())))
        hint = f"; closest: {', '.join(near)}" if near else ""
        raise VramplanError(
            "model", f"unknown model {query!r}{hint} (or pass a path to a config.json; 'vramplan models' lists all)"
        )
    return name


def load_config(query: str) -> tuple[str, dict[str, Any]]:
    """``(name, config dict)`` for a catalog name/alias or a local config path."""
    path = Path(query).expanduser()
    if path.exists() or query.endswith(".json"):
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise VramplanError("model", f"no config.json at {cfg_path}")
        return cfg_path.parent.name or "model", _read_config(cfg_path, "model")
    name = resolve_model_name(query)
    return name, _read_config(models_dir() / name / "config.json", "model")


@lru_cache(maxsize=64)
def load_model(query: str) -> ModelSpec:
    """ModelSpec for a catalog name/alias or a path to a config.json (or its folder)."""
    name, cfg = load_config(query)
    return spec_from_config(cfg, name=name, where="model config.json")
