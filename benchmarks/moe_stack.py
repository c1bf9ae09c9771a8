"""Mixture-of-experts plans held to traces under the transformers major version they assume.

transformers 4 and 5 build Mixtral and Qwen3-MoE differently (vramplan/stack.py): per-expert
``nn.Linear`` layers that bitsandbytes quantizes and ``all-linear`` adapts one by one, against
fused expert parameters left 16-bit. This script traces small configs of both families
(vramplan/trace/run.py's harness, run for real on the CPU) under whichever transformers the running Python
has, estimates each with the spec as that version builds it (``for_transformers``), and appends
the rows to ``tables/measured/moe_stack.jsonl``; ``--table`` writes ``benchmarks/moe_stack.md``
from the rows. Run it once per environment, one configuration at a time:

    PYTHONPATH=. /work/venvs/tf4/bin/python benchmarks/moe_stack.py            # transformers 4
    PYTHONPATH=. python benchmarks/moe_stack.py                                # transformers 5
    PYTHONPATH=. python benchmarks/moe_stack.py --table          # the table from the rows
    PYTHONPATH=. python benchmarks/moe_stack.py --reestimate     # the rows' estimates again, then the table

tests/test_transformers_stack_trace.py re-estimates every row (analytic) and traces one
transformers 4 row again in that environment (``VRAMPLAN_TF4_PYTHON``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "tables" / "measured" / "moe_stack.jsonl"
TABLE = ROOT / "benchmarks" / "moe_stack.md"

#: small configs of the two families: 2 layers, 4 experts (2 per token), a 4096-token vocabulary
#: so the experts, not the loss chain, hold most of the memory
CONFIGS: dict[str, dict[str, Any]] = {
    "mixtral-tiny": {
        "model_type": "mixtral",
        "architectures": ["MixtralForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "vocab_size": 4096,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
    "qwen3-moe-tiny": {
        "model_type": "qwen3_moe",
        "architectures": ["Qwen3MoeForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 768,
        "moe_intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "vocab_size": 4096,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    },
}

ATTN = "q_proj,k_proj,v_proj,o_proj"
#: the setups traced: LoRA on the attention and all-linear, QLoRA nf4 on the attention and all-linear
#: (dropout 0 under all-linear, as transformers 5's ParamWrapper requires; the same under 4 to compare)
SETUPS: list[dict[str, Any]] = [
    {"method": "lora", "lora_targets": ATTN, "grad_checkpointing": False},
    {"method": "lora", "lora_targets": "all-linear", "lora_dropout": 0.0, "grad_checkpointing": False},
    {"method": "qlora", "quant": "bnb-nf4", "lora_targets": ATTN, "grad_checkpointing": False},
    {
        "method": "qlora",
        "quant": "bnb-nf4",
        "lora_targets": "all-linear",
        "lora_dropout": 0.0,
        "grad_checkpointing": False,
    },
]
COMMON = {"seq_len": 256, "micro_batch": 1, "precision": "bf16", "optimizer": "adamw", "attention": "sdpa"}


def setup_of(fields: dict[str, Any]) -> Any:
    from vramplan.setup import make_setup

    return make_setup(**{**COMMON, **fields})


def estimate_row(config: dict[str, Any], fields: dict[str, Any], major: int) -> int:
    """What the plan says for a recorded row: the traceable bytes of the estimate for the spec
    as transformers ``major`` builds it (vramplan/validate.py ``compare_row``'s figure)."""
    from vramplan.arch import for_transformers, spec_from_config
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes

    spec = for_transformers(spec_from_config(config, name="tiny", where="config"), major)
    return traceable_bytes(estimate(spec, setup_of(fields)))


def trace_row(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Trace one configuration under the installed transformers, and estimate it."""
    from vramplan.stack import installed_transformers, transformers_major
    from vramplan.trace.run import trace, versions

    major, _ = transformers_major()
    config = CONFIGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        result = trace(str(path), setup_of(fields), steps=2, fake=False, keep_timeline=False)
    est = estimate_row(config, fields, major)
    return {
        "model": name,
        "transformers": major,
        "versions": {**versions(), "transformers": installed_transformers() or ""},
        "setup": {**COMMON, **fields},
        "config": config,
        "peak_bytes": result.peak_bytes,
        "peak_phase": result.peak_phase,
        "estimate_bytes": est,
        "error_pct": round(100 * (est - result.peak_bytes) / result.peak_bytes, 2),
    }


def read_rows() -> list[dict[str, Any]]:
    if not ROWS.exists():
        return []
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def _label(fields: dict[str, Any]) -> str:
    targets = "all-linear" if fields.get("lora_targets") == "all-linear" else "attention"
    quant = f" {fields['quant']}" if fields.get("quant") else ""
    return f"{fields['method']}{quant} {targets}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Mixture-of-experts plans against traces, per transformers major version",
        "",
        "Written by `benchmarks/moe_stack.py --table` from `tables/measured/moe_stack.jsonl`; held by",
        "`tests/test_transformers_stack_trace.py` (every row within 3%). Small configs (2 layers, hidden 256,",
        "4 experts, 2 per token, vocabulary 4096), seq 256, batch 1, bf16, sdpa, AdamW, no checkpointing,",
        "two steps run for real on the CPU under the live-storage counter (vramplan/trace/run.py, `fake=False`:",
        "transformers 4 routes tokens through `nonzero` and indexes its experts by value, which fake tensors",
        "cannot follow). The estimate is the plan's allocated figure without CUDA-only terms, for the spec as",
        "that transformers builds it (vramplan/stack.py).",
        "",
        "| model | transformers | setup | traced MiB | estimate MiB | error |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], _label(r["setup"]), r["transformers"])):
        lines.append(
            f"| {r['model']} | {r['versions']['transformers']} | {_label(r['setup'])} |"
            f" {r['peak_bytes'] / 2**20:.2f} | {r['estimate_bytes'] / 2**20:.2f} | {r['error_pct']:+.2f}% |"
        )
    return "\n".join(lines) + "\n"


def reestimate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their estimates made again by the current code (the traces stay)."""
    out = []
    for r in rows:
        fields = {k: v for k, v in r["setup"].items() if k not in COMMON}
        est = estimate_row(r["config"], fields, r["transformers"])
        error = round(100 * (est - r["peak_bytes"]) / r["peak_bytes"], 2)
        out.append({**r, "estimate_bytes": est, "error_pct": error})
    return out


def main(argv: list[str]) -> int:
    if argv == ["--reestimate"]:
        ROWS.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in reestimate(read_rows())))
        return main(["--table"])
    if argv == ["--table"]:
        TABLE.write_text(table(read_rows()))
        print(f"wrote {TABLE}")
        return 0
    from vramplan.stack import transformers_major

    major, _ = transformers_major()
    names = argv or list(CONFIGS)
    rows = [r for r in read_rows() if r["transformers"] != major or r["model"] not in names]
    for name in names:
        for fields in SETUPS:
            row = trace_row(name, fields)
            print(f"{name} t{major} {_label(fields)}: {row['error_pct']:+.2f}%", flush=True)
            rows.append(row)
            ROWS.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
