"""The DeepSpeed config a ZeRO run uses: the fields that move memory, read from a ds_config.json.

A :class:`ZeroConfig` holds them as the file has them, ``"auto"`` as None: transformers fills
those from the model (``HfTrainerDeepSpeedConfig.trainer_config_finalize``, transformers
integrations/deepspeed.py: ``reduce_bucket_size`` hidden², ``stage3_prefetch_bucket_size``
int(0.9 hidden²), ``stage3_param_persistence_threshold`` 10 hidden), and :meth:`ZeroConfig.resolved`
does the same. A key the file leaves out takes DeepSpeed's default (deepspeed/runtime/zero/config.py
``DeepSpeedZeroConfig`` at 0.15.4: buckets 5e8, prefetch 5e7, persistence 1e5, live and reuse 1e9,
sub groups 1e9, ``overlap_comm`` true at stage 3 only, ``contiguous_gradients`` true). DeepSpeed
reads the stage-3 keys with or without their ``stage3_`` prefix (the field aliases).

Each trainer's shipped configs are data (tables/deepspeed_configs.json); the trainer's policy names
its set (``Policy.deepspeed_configs``) and a user's own file (``Setup.deepspeed_config``, the CLI's
``--deepspeed FILE``) replaces it. This module reads only data: Setup and Policy import it.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vramplan.errors import VramplanError
from vramplan.tables import tables_dir

FIELD = "deepspeed_config"
#: DeepSpeedZeroConfig's defaults (deepspeed/runtime/zero/config.py, 0.15.4)
DEFAULT_BUCKET = 500_000_000
DEFAULT_PREFETCH = 50_000_000
DEFAULT_PERSISTENCE = 100_000
DEFAULT_LIVE = DEFAULT_REUSE = DEFAULT_SUB_GROUP = 1_000_000_000
#: the 'optimizer' block: None (the trainer hands its torch optimizer in), DeepSpeed's fused Adam
#: (``FusedAdam``, no step temporaries), or torch's AdamW (``"torch_adam": true``)
DsOptimizer = Literal["fused", "torch"] | None
_STAGE3_KEYS = {
    "prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "param_persistence_threshold": "stage3_param_persistence_threshold",
    "max_live_parameters": "stage3_max_live_parameters",
    "max_reuse_distance": "stage3_max_reuse_distance",
    "gather_16bit_weights_on_model_save": "stage3_gather_16bit_weights_on_model_save",
}


class ZeroConfig(BaseModel):
    """A ds_config.json's ZeRO part: frozen and hashable (a Setup field). Sizes are elements;
    None is ``"auto"`` (see :meth:`resolved`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    """Where the values come from: a table key (``llamafactory/zero2``) or the user's file."""
    stage: Literal[0, 1, 2, 3]
    overlap_comm: bool
    """Stages 1-2: a second reduce buffer (``DeepSpeedZeroOptimizer.backward``)."""
    contiguous_gradients: bool = True
    reduce_bucket_size: int | None = DEFAULT_BUCKET
    allgather_bucket_size: int = DEFAULT_BUCKET
    round_robin_gradients: bool = False
    prefetch_bucket_size: int | None = DEFAULT_PREFETCH
    param_persistence_threshold: int | None = DEFAULT_PERSISTENCE
    max_live_parameters: int = DEFAULT_LIVE
    max_reuse_distance: int = DEFAULT_REUSE
    sub_group_size: int = DEFAULT_SUB_GROUP
    gather_16bit_weights_on_model_save: bool = False
    offload_optimizer: bool = False
    offload_param: bool = False
    optimizer: DsOptimizer = None

    def resolved(self, hidden_size: int) -> ZeroConfig:
        """The ``"auto"`` sizes as transformers fills them for a model of ``hidden_size``
        (``trainer_config_finalize``: hidden², and at stage 3 int(0.9 hidden²) and 10 hidden)."""
        h = hidden_size
        update: dict[str, int] = {}
        if self.reduce_bucket_size is None:
            update["reduce_bucket_size"] = h * h
        if self.prefetch_bucket_size is None:
            update["prefetch_bucket_size"] = int(0.9 * h * h) if self.stage == 3 else DEFAULT_PREFETCH
        if self.param_persistence_threshold is None:
            update["param_persistence_threshold"] = 10 * h if self.stage == 3 else DEFAULT_PERSISTENCE
        return self.model_copy(update=update) if update else self

    def zero_block(self) -> dict[str, Any]:
        """The ``zero_optimization`` keys that move memory, as a ds_config.json writes them (stage and
        offload are the emitter's); sizes must be resolved first (:meth:`resolved`)."""
        block: dict[str, Any] = {"overlap_comm": self.overlap_comm, "contiguous_gradients": self.contiguous_gradients}
        if self.stage < 3:
            block.update(allgather_partitions=True, allgather_bucket_size=self.allgather_bucket_size)
            block.update(reduce_scatter=True, reduce_bucket_size=self.reduce_bucket_size)
            if self.round_robin_gradients:
                block["round_robin_gradients"] = True
            return block
        block["reduce_bucket_size"] = self.reduce_bucket_size
        block["stage3_prefetch_bucket_size"] = self.prefetch_bucket_size
        block["stage3_param_persistence_threshold"] = self.param_persistence_threshold
        block["stage3_max_live_parameters"] = self.max_live_parameters
        block["stage3_max_reuse_distance"] = self.max_reuse_distance
        block["sub_group_size"] = self.sub_group_size
        block["stage3_gather_16bit_weights_on_model_save"] = self.gather_16bit_weights_on_model_save
        return block


def _size(zero: dict[str, Any], key: str, default: int | None, where: str) -> int | None:
    value = zero.get(key, default)
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise VramplanError(FIELD, f"{where}: zero_optimization.{key} must be a count of elements or 'auto'")
    return int(value)


def _flag(zero: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = zero.get(key, default)
    if not isinstance(value, bool):
        raise VramplanError(FIELD, f"{where}: zero_optimization.{key} must be true or false")
    return value


def _offloaded(zero: dict[str, Any], key: str) -> bool:
    block = zero.get(key)
    return isinstance(block, dict) and block.get("device", "none") not in ("none", None)


def _optimizer(ds: dict[str, Any], where: str) -> DsOptimizer:
    block = ds.get("optimizer")
    if block is None:
        return None
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise VramplanError(FIELD, f"{where}: 'optimizer' must be an object with a 'type'")
    params = block.get("params") or {}
    return "torch" if isinstance(params, dict) and params.get("torch_adam") is True else "fused"


def parse(ds: Any, source: str) -> ZeroConfig:
    """A ZeroConfig from a ds_config.json's content; a file DeepSpeed would refuse, or one without
    ZeRO, raises VramplanError naming ``deepspeed_config``."""
    if not isinstance(ds, dict):
        raise VramplanError(FIELD, f"{source}: a ds_config.json is a JSON object")
    zero = ds.get("zero_optimization")
    if not isinstance(zero, dict):
        raise VramplanError(FIELD, f"{source}: no 'zero_optimization' object")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3) or isinstance(stage, bool):
        raise VramplanError(FIELD, f"{source}: zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    for short, long in _STAGE3_KEYS.items():
        if long in zero:
            zero = {**zero, short: zero[long]}
    overlap = zero.get("overlap_comm")
    return ZeroConfig(
        source=source,
        stage=stage,
        overlap_comm=stage == 3 if overlap is None else _flag(zero, "overlap_comm", False, source),
        contiguous_gradients=_flag(zero, "contiguous_gradients", True, source),
        reduce_bucket_size=_size(zero, "reduce_bucket_size", DEFAULT_BUCKET, source),
        allgather_bucket_size=_size(zero, "allgather_bucket_size", DEFAULT_BUCKET, source) or DEFAULT_BUCKET,
        round_robin_gradients=_flag(zero, "round_robin_gradients", False, source),
        prefetch_bucket_size=_size(zero, "prefetch_bucket_size", DEFAULT_PREFETCH, source),
        param_persistence_threshold=_size(zero, "param_persistence_threshold", DEFAULT_PERSISTENCE, source),
        max_live_parameters=_size(zero, "max_live_parameters", DEFAULT_LIVE, source) or 0,
        max_reuse_distance=_size(zero, "max_reuse_distance", DEFAULT_REUSE, source) or 0,
        sub_group_size=_size(zero, "sub_group_size", DEFAULT_SUB_GROUP, source) or 0,
        gather_16bit_weights_on_model_save=_flag(zero, "gather_16bit_weights_on_model_save", False, source),
        offload_optimizer=_offloaded(zero, "offload_optimizer"),
        offload_param=_offloaded(zero, "offload_param"),
        optimizer=_optimizer(ds, source),
    )


def read_file(path: str) -> ZeroConfig:
    """The ZeroConfig of the ds_config.json at ``path`` (``--deepspeed FILE``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise VramplanError(FIELD, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise VramplanError(FIELD, f"{path} is not UTF-8 text") from None
    try:
        ds = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VramplanError(FIELD, f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return parse(ds, path)


def load(value: Any) -> Any:
    """Setup's validator for the field: a path is read, a dict parsed, a ZeroConfig kept."""
    if isinstance(value, str):
        return read_file(value)
    if isinstance(value, dict) and "zero_optimization" in value:
        return parse(value, "the ds_config given")
    return value


@cache
def _table() -> dict[str, dict[str, Any]]:
    data = json.loads((tables_dir() / "deepspeed_configs.json").read_text(encoding="utf-8"))
    return dict(data["configs"])


def shipped(trainer: str, stage: int) -> ZeroConfig:
    """The config ``trainer`` ships for ``stage`` (tables/deepspeed_configs.json), else vramplan's."""
    table = _table()
    key = f"{trainer}/zero{stage}"
    row = table.get(key) or table[f"vramplan/zero{stage}"]
    ds: dict[str, Any] = {"zero_optimization": row["zero_optimization"]}
    if row.get("optimizer"):
        ds["optimizer"] = {"type": row["optimizer"]}
    return parse(ds, key if key in table else f"vramplan/zero{stage}")


def table_rows() -> dict[str, dict[str, Any]]:
    """The shipped configs as the table holds them (key -> row), for emitting and tests."""
    return _table()
