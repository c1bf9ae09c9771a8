"""The analytic estimate against traced real training steps: the grid, and the comparison.

The grid spans what users plan: methods, models, sequence lengths, micro-batches,
checkpointing, attention, LoRA rank/targets/dropout, optimizers. Its traces are recorded
in ``tables/measured/traces.jsonl`` (``benchmarks/trace_grid.py`` fills in missing ones),
so comparing does not retrace. A record that cannot be compared (not a JSON object, a
field missing or invalid, a model the catalog no longer has) is skipped and counted, never
fatal. Torch-free.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from vramplan.errors import VramplanError
from vramplan.memory import estimate
from vramplan.memory.phases import traceable_bytes
from vramplan.models import load_model
from vramplan.records import read_records
from vramplan.setup import Setup, make_setup, recorded_setup

QV = "q_proj,v_proj"
ATTN = "q_proj,k_proj,v_proj,o_proj"


def _grid() -> list[tuple[str, dict[str, Any]]]:
    g: list[tuple[str, dict[str, Any]]] = []
    # Qwen2.5-7B LoRA: checkpointing, attention, dropout, rank, targets, shape
    for gc in (True, False):
        for attn in ("sdpa", "eager"):
            for dropout in (0.0, 0.05):
                g.append(
                    ("qwen2.5-7b", dict(method="lora", grad_checkpointing=gc, attention=attn, lora_dropout=dropout))
                )
    for rank, targets in ((16, QV), (64, "all-linear"), (256, "all-linear"), (256, QV), (8, QV)):
        g.append(("qwen2.5-7b", dict(method="lora", lora_rank=rank, lora_targets=targets)))
    for seq, mb in ((256, 8), (512, 4), (1024, 2), (4096, 1), (8192, 1), (16384, 1), (32768, 1), (2048, 4)):
        g.append(("qwen2.5-7b", dict(method="lora", seq_len=seq, micro_batch=mb)))
    g.append(("qwen2.5-7b", dict(method="lora", trainable_extra=("embeddings", "lm_head"), seq_len=1024)))
    g.append(("qwen2.5-7b", dict(method="lora", trainable_extra=("lm_head",), optimizer="adamw-fused")))
    g.append(("qwen2.5-7b", dict(method="lora", grad_accum=4, seq_len=1024)))
    # QLoRA
    for quant in ("bnb-nf4", "bnb-nf4-dq", "bnb-fp4"):
        for gc in (True, False):
            g.append(("qwen2.5-7b", dict(method="qlora", quant=quant, grad_checkpointing=gc, seq_len=1024)))
    g.append(("qwen2.5-7b", dict(method="qlora", quant="bnb-nf4", seq_len=8192)))
    g.append(("qwen2.5-7b", dict(method="qlora", quant="bnb-nf4", lora_rank=64, micro_batch=4, seq_len=512)))
    g.append(
        ("qwen2.5-7b", dict(method="qlora", quant="bnb-nf4", optimizer="adamw-8bit", trainable_extra=("lm_head",)))
    )
    g.append(("qwen2.5-14b", dict(method="qlora", quant="bnb-nf4-dq", seq_len=2048)))
    # LoRA on an LLM.int8 base
    g.append(("qwen2.5-7b", dict(method="qlora", quant="bnb-int8", seq_len=1024)))
    g.append(("qwen2.5-7b", dict(method="qlora", quant="bnb-int8", grad_checkpointing=False, seq_len=512)))
    g.append(("llama-3.1-8b", dict(method="qlora", quant="bnb-int8", lora_targets=QV, seq_len=2048)))
    g.append(("qwen2.5-0.5b", dict(method="qlora", quant="bnb-int8", grad_checkpointing=False, micro_batch=4)))
    g.append(("llama-3.1-8b", dict(method="qlora", quant="bnb-nf4", attention="eager", seq_len=1024)))
    g.append(("mistral-7b-v0.3", dict(method="qlora", quant="bnb-nf4-dq", lora_targets=QV, seq_len=4096)))
    g.append(("gemma-2-9b", dict(method="qlora", quant="bnb-nf4", attention="eager", seq_len=1024)))
    # full fine-tuning, AMP and pure bf16, every optimizer
    for prec in ("amp-bf16", "bf16"):
        for opt in ("adamw", "adamw-fused", "adamw-8bit", "sgd", "adafactor"):
            g.append(("qwen2.5-0.5b", dict(method="full", precision=prec, optimizer=opt, grad_checkpointing=False)))
        for gc, attn, mb in ((True, "sdpa", 4), (False, "eager", 1), (True, "eager", 2)):
            g.append(
                (
                    "qwen2.5-0.5b",
                    dict(method="full", precision=prec, grad_checkpointing=gc, attention=attn, micro_batch=mb),
                )
            )
    g.append(("qwen2.5-0.5b", dict(method="full", precision="bf16", seq_len=32768, grad_checkpointing=True)))
    g.append(("qwen2.5-0.5b", dict(method="full", precision="fp32", seq_len=512, grad_checkpointing=False)))
    g.append(("qwen2.5-0.5b", dict(method="full", precision="bf16", grad_accum=4, seq_len=1024)))
    g.append(("qwen2.5-7b", dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=1024)))
    g.append(("qwen2.5-7b", dict(method="full", precision="amp-bf16", optimizer="adafactor", seq_len=512)))
    g.append(("llama-3.2-1b", dict(method="full", precision="amp-bf16", micro_batch=4, seq_len=1024)))
    g.append(("llama-3.2-1b", dict(method="full", precision="bf16", optimizer="sgd", grad_checkpointing=False)))
    g.append(("phi-3-mini", dict(method="full", precision="bf16", optimizer="adamw-8bit", seq_len=1024)))
    # freeze
    for layers, opt in ((2, "adamw"), (4, "adamw-8bit"), (8, "sgd")):
        g.append(
            (
                "qwen2.5-7b",
                dict(
                    method="freeze",
                    freeze_trainable_layers=layers,
                    optimizer=opt,
                    grad_checkpointing=False,
                    seq_len=1024,
                ),
            )
        )
    g.append(("qwen2.5-0.5b", dict(method="freeze", precision="amp-bf16", freeze_trainable_layers=6)))
    # other models, LoRA
    for model in (
        "qwen2.5-0.5b",
        "qwen2.5-14b",
        "llama-3.1-8b",
        "mistral-7b-v0.3",
        "qwen3-8b",
        "phi-3-mini",
        "llama-3.2-3b",
        "qwen1.5-7b",
    ):
        g.append((model, dict(method="lora")))
        spec = load_model(model)
        targets = spec.attention[0].name if spec.fused_qkv else QV  # one projection holds q, k and v
        g.append(
            (model, dict(method="lora", grad_checkpointing=False, lora_targets=targets, seq_len=1024, micro_batch=2))
        )
    g.append(("gemma-2-9b", dict(method="lora", attention="eager", seq_len=1024)))
    g.append(("gemma-2-9b", dict(method="lora", attention="eager", grad_checkpointing=False, seq_len=512)))
    g.append(("llama-3.1-8b", dict(method="lora", lora_rank=128, optimizer="adafactor", seq_len=4096)))
    g.append(("llama-3.1-8b", dict(method="lora", optimizer="sgd", lora_dropout=0.1, micro_batch=8, seq_len=256)))
    # QLoRA at many tokens with the MLP frozen: the peak is a layer's MLP backward, its gradients
    # in the fp32 of PEFT's k-bit preparation (activations.frozen_mlp_backward_bytes)
    qlora_attn = dict(method="qlora", quant="bnb-nf4", lora_rank=16, lora_alpha=16, seq_len=4096, micro_batch=4)
    g.append(("mistral-7b-v0.1", dict(qlora_attn, lora_targets=ATTN)))
    g.append(("mistral-7b-v0.1", dict(qlora_attn, lora_targets=QV)))
    # and with the MLP adapted: the peak is down_proj's adapter in the re-run (recomputed_down_adapter_bytes)
    g.append(("mistral-7b-v0.1", dict(qlora_attn, lora_targets="all-linear")))
    # mixture of experts (LoRA on attention: PEFT's all-linear wraps the fused experts)
    g.append(("qwen3-30b-a3b", dict(method="lora", lora_targets=ATTN, seq_len=1024)))
    g.append(
        (
            "qwen3-30b-a3b",
            dict(method="lora", lora_targets=ATTN, lora_dropout=0.0, seq_len=512, grad_checkpointing=False),
        )
    )
    g.append(("mixtral-8x7b", dict(method="lora", lora_targets=ATTN, seq_len=1024)))
    # all-linear on MoE: PEFT's ParamWrapper also adapts the router and the fused experts
    g.append(("qwen3-30b-a3b", dict(method="lora", lora_dropout=0.0, seq_len=1024)))
    g.append(("qwen3-30b-a3b", dict(method="lora", lora_dropout=0.0, seq_len=512, grad_checkpointing=False)))
    g.append(("mixtral-8x7b", dict(method="lora", lora_dropout=0.0, seq_len=1024, lora_rank=16)))
    # vision-language: Qwen2-VL with images (tokens, frozen or trained tower)
    g.append(("qwen2-vl-2b", dict(method="lora", seq_len=512, image_size="1024x1024")))
    g.append(("qwen2-vl-2b", dict(method="lora", seq_len=256, image_size="448x448", grad_checkpointing=False)))
    g.append(("qwen2-vl-2b", dict(method="full", seq_len=256, image_size="672x672")))
    g.append(
        ("qwen2-vl-2b", dict(method="lora", seq_len=1024, image_size="800x600", images_per_sample=2, micro_batch=2))
    )
    # Qwen2.5-VL: window attention in most tower blocks
    g.append(("qwen2.5-vl-3b", dict(method="lora", seq_len=512, image_size="448x448")))
    g.append(("qwen2.5-vl-3b", dict(method="full", seq_len=256, image_size="672x672")))
    g.append(("qwen2.5-vl-3b", dict(method="lora", seq_len=512, image_size="1024x1024", grad_checkpointing=False)))
    # full fine-tuning with the tower (and the projector) kept frozen
    g.append(("qwen2-vl-2b", dict(method="full", seq_len=256, image_size="672x672", freeze_vision=True)))
    g.append(
        (
            "qwen2-vl-2b",
            dict(method="full", seq_len=256, image_size="672x672", freeze_vision=True, freeze_projector=True),
        )
    )
    # a video: frame pairs through the tower, their tokens in the sequence
    g.append(("qwen2-vl-2b", dict(method="lora", seq_len=512, video_frames=16, video_size="640x360")))
    g.append(("qwen2-vl-2b", dict(method="full", seq_len=256, video_frames=7, video_size="448x448")))
    g.append(
        (
            "qwen2-vl-2b",
            dict(method="lora", seq_len=256, video_frames=8, video_size="1280x720", grad_checkpointing=False),
        )
    )
    return g


GRID = _grid()


def grid_setups() -> list[tuple[str, Setup]]:
    return [(model, make_setup(**fields)) for model, fields in GRID]


#: which trace kind each estimate term belongs to
TERM_KIND = {
    "weights/frozen": "weights",
    "weights/quant_state": "weights",
    "weights/trainable": "trainable_weights",
    "gradients": "gradients",
    "weights/autocast_copies": "activations",
    "activations/saved": "activations",
    "activations/recompute": "activations",
    "loss/log_softmax": "activations",
    "loss/forward_chain": "activations",
    "loss/softcap": "activations",
    "loss/backward_temporaries": "temporaries",
    "activations/backward_transient": "temporaries",
    "optimizer/step_temporaries": "temporaries",
}


class Comparison(BaseModel):
    model_config = ConfigDict(frozen=True)
    model: str
    setup: Setup
    estimate_bytes: int
    traced_bytes: int
    error_pct: float
    error_bytes: int
    estimate_phase: str
    traced_phase: str
    differs_most: str


class Summary(BaseModel):
    model_config = ConfigDict(frozen=True)
    count: int
    median_abs_pct: float
    p90_abs_pct: float
    max_abs_pct: float
    underestimates: int
    worst_underestimate_pct: float
    rows: list[Comparison]
    #: records left out, by reason (not JSON objects, missing or invalid fields, not plannable)
    skipped: dict[str, int] = {}


def _kinds(terms: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in terms.items():
        kind = TERM_KIND.get(name, "optimizer_state" if name.startswith("optimizer/") else None)
        if kind:
            out[kind] = out.get(kind, 0) + value
    return out


def compare_row(row: dict[str, Any]) -> Comparison:
    setup = recorded_setup(row["setup"])
    est = estimate(load_model(row["model"]), setup)
    mine = traceable_bytes(est)
    traced = int(row["peak_bytes"])
    kinds = _kinds(est.terms)
    diffs = {k: kinds.get(k, 0) - int(v) for k, v in row.get("by_kind", {}).items()}
    worst = max(diffs, key=lambda k: abs(diffs[k])) if diffs else "-"
    return Comparison(
        model=row["model"],
        setup=setup,
        estimate_bytes=mine,
        traced_bytes=traced,
        error_pct=100 * (mine - traced) / traced,
        error_bytes=mine - traced,
        estimate_phase=est.phase,
        traced_phase=str(row.get("peak_phase")),
        differs_most=f"{worst} ({diffs.get(worst, 0) / 2**30:+.3f} GiB)",
    )


def _problem(row: dict[str, Any]) -> str:
    """Why a trace record cannot be compared ('' when it can): the fields compare_row reads."""
    if not isinstance(row.get("model"), str) or not row["model"]:
        return "no model"
    if not isinstance(row.get("setup"), dict):
        return "no setup"
    peak = row.get("peak_bytes")
    if not isinstance(peak, int) or isinstance(peak, bool) or peak <= 0:
        return "invalid peak_bytes"
    kinds = row.get("by_kind", {})
    if not isinstance(kinds, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in kinds.values()):
        return "invalid by_kind"
    if not isinstance(row.get("versions", {}), dict):
        return "invalid versions"
    try:
        recorded_setup(row["setup"])
    except ValidationError:
        return "invalid setup"
    return ""


def traced_records(path: Path | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``(rows, skipped)``: the newest recorded trace of each (model, Setup, library
    versions), and the records left out by reason. The Setup is normalised first, so rows
    written by older versions of the schema still pair up; lines that are not JSON objects
    and trace records without the fields the comparison reads are skipped and counted."""
    records, unreadable = read_records(path)
    skipped: Counter[str] = Counter()
    if unreadable:
        skipped["not a JSON object"] = unreadable
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in records:
        if row.get("backend") != "trace" or row.get("outcome") != "ok":
            continue
        why = _problem(row)
        if why:
            skipped[why] += 1
            continue
        setup = recorded_setup(row["setup"]).model_dump_json()
        latest[(row["model"], setup, repr(sorted(row.get("versions", {}).items())))] = row
    return list(latest.values()), dict(skipped)


def traced_rows() -> list[dict[str, Any]]:
    """The newest recorded trace of each (model, Setup, library versions); see traced_records."""
    return traced_records()[0]


def summarize(rows: list[dict[str, Any]], skipped: dict[str, int] | None = None) -> Summary:
    """The comparison of every row; a row whose model or Setup the planner refuses (a bad
    input, VramplanError) is skipped and counted, anything else propagates."""
    why: Counter[str] = Counter(skipped or {})
    comps = []
    for row in rows:
        try:
            comps.append(compare_row(row))
        except VramplanError as exc:
            why[f"invalid {exc.field}"] += 1
    comps.sort(key=lambda c: -abs(c.error_pct))
    errs = sorted(abs(c.error_pct) for c in comps)
    unders = [c.error_pct for c in comps if c.error_pct < 0]
    return Summary(
        count=len(comps),
        median_abs_pct=statistics.median(errs) if errs else 0.0,
        p90_abs_pct=errs[min(len(errs) - 1, int(0.9 * len(errs)))] if errs else 0.0,
        max_abs_pct=errs[-1] if errs else 0.0,
        underestimates=len(unders),
        worst_underestimate_pct=min(unders, default=0.0),
        rows=comps,
        skipped=dict(why.most_common()),
    )
