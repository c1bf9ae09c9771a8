"""Regenerate tables/measured/lengths_runs.csv: ms-swift's benchmark of one harness run twice,
once with every sample cut to ``--max_length`` and once with the longer samples dropped, so that
the published reserved peaks of the two can be held against ``--lengths fixed`` and ``variable``.

    python3 benchmarks/curate_lengths_runs.py

Sources (github.com/modelscope/ms-swift, docs/source/LLM/Benchmark.md; the harness is
scripts/benchmark/test_memory_time/run_single.py at the same commit, which prints
``torch.cuda.max_memory_reserved`` after ``sft_main``: the reserved tier):

- **@cfcb67265** (2023-12-14, "Add benchmark"): ``truncation_strategy='truncation_left'`` and
  ``train_dataset_sample=1000``. swift/llm/sft.py picks the rows with
  ``random_state.permutation(train_dataset_sample)``: a permutation of range(1000), so the
  dataset's first 1000 rows, not a random 1000. Samples longer than ``--max_length`` are cut to
  it, shorter ones stay short. Published in MiB.
- **@a5cea9453** (2024-01-03; the tables of 97e4d198b "Update benchmark 0101" plus more models):
  the default ``truncation_strategy='delete'`` (swift/llm/utils/template.py ``_encode`` returns
  None for a sample over ``max_length`` and ``dataset_map`` drops it) and
  ``train_dataset_sample = -1`` (all 4959 rows) at ``max_length <= 2048``, else 1000 (the first
  1000 rows again). Published in GiB.

Both: cls-fudan-news-zh, ``--dataset_test_ratio 0`` (no evaluation), ``--save_strategy no``,
batch 1 unless stated, ``gradient_accumulation_steps = ceil(16 / batch)`` (swift/llm/utils/
argument.py), LoRA r8 alpha 32 on Qwen's ``c_attn`` unless stated, gradient checkpointing and
flash-attn on unless stated, bf16 (``select_dtype``: ``bf16=True`` in the training arguments, so
accelerate runs the forward under autocast), A100 80 GB, torch 2.1.1, one epoch, samples in a
random order (``train_sampler_random``: transformers' RandomSampler), the same order at every run
of the same samples: every run is seeded alike (run_single.py ``global_seed=42`` ->
``seed=get_seed(random_state)``, the first draw of the same RandomState; sft.py
``seed_everything(args.seed)``; the Trainer's ``set_seed(args.seed)``, 42 by default), so the
rows at one cap, whatever the model, rank, targets or attention, meet one order of one set of
lengths (Qwen 1.8B, 7B and 14B share the tokenizer).

The lengths: the benchmark gives the dataset's token counts under Qwen's tokenizer, 3234.4 +-
2547.5, min 91, max 19548 (4959 rows). A row over all 4959 rows at cap ``L`` keeps the samples
of length <= L; the mean of a log-normal with that mean and spread cut to 91..L is its
``avg_tokens`` (``kept_mean``). Rows over the first 1000 rows carry the same number but are not
held to it (``first 1000 rows`` in notes): the statistic is the whole dataset's, and those rows
are shorter: at 8192 the truncated and the deleting runs read 47.42 and 48.41 GiB, about the
same stream, where the statistic puts 5% of the samples above 8192 (cut to the cap in one run,
dropped in the other, the two would part by several loss chains). A
``truncation_left`` row is compared as fixed where at least 60% of the samples reach the cap
(the log-normal's share above it); at 4096 and 8192 most samples stay shorter than the cap, the
row is variable-like and is kept ``excluded:`` (an atom at the cap is not a distribution
memory/lengths.py takes).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tables" / "measured" / "lengths_runs.csv"
COLUMNS = (
    "id source trainer trainer_version model method quant precision lora_rank lora_alpha lora_targets trainable_extra "
    "optimizer seq_len lengths micro_batch grad_accum grad_checkpointing attention num_gpus parallel offload gpu "
    "measured_value measured_unit measurement outcome settings notes"
).split()

MEAN, SD, LO = 3234.4, 2547.5, 91
FIXED_SRC = "github.com/modelscope/ms-swift docs/source/LLM/Benchmark.md @cfcb67265 (truncation_left, first 1000 rows)"
VAR_SRC = "github.com/modelscope/ms-swift docs/source/LLM/Benchmark.md @a5cea9453 (truncation_strategy delete)"
MODELS = {"qwen-1_8b-chat": "qwen-1.8b", "qwen-7b-chat": "qwen-7b", "qwen-14b-chat": "qwen-14b"}

# (table, model, max_length, batch, flash, gc, rank, targets, method, value) as published; the
# value is MiB at cfcb67265 and GiB at a5cea9453. Rows the catalog cannot express (chatglm,
# baichuan2, yi-6b, openbuddy, GPTQ) and two-GPU rows are left out.
FIXED_MIB = [
    ("max_length", "qwen-1_8b-chat", 512, 4610),
    ("max_length", "qwen-1_8b-chat", 1024, 5576),
    ("max_length", "qwen-1_8b-chat", 2048, 7624),
    ("max_length", "qwen-1_8b-chat", 4096, 17324),
    ("max_length", "qwen-1_8b-chat", 8192, 36620),
    ("max_length", "qwen-7b-chat", 512, 15926),
    ("max_length", "qwen-7b-chat", 1024, 17096),
    ("max_length", "qwen-7b-chat", 2048, 19362),
    ("max_length", "qwen-7b-chat", 4096, 29264),
    ("max_length", "qwen-7b-chat", 8192, 48560),
    ("max_length", "qwen-14b-chat", 512, 28466),
    ("max_length", "qwen-14b-chat", 1024, 29708),
    ("max_length", "qwen-14b-chat", 2048, 32186),
    ("max_length", "qwen-14b-chat", 4096, 42098),
    ("max_length", "qwen-14b-chat", 8192, 61412),
]
FIXED_OTHER_MIB = [  # qwen-7b-chat at 2048: (table, batch, flash, gc, rank, targets, MiB)
    ("batch_size", 2, True, True, 8, "c_attn", 24842),
    ("batch_size", 4, True, True, 8, "c_attn", 34842),
    ("batch_size", 8, True, True, 8, "c_attn", 54844),
    ("flash_gc", 1, True, False, 8, "c_attn", 30316),
    ("flash_gc", 1, False, True, 8, "c_attn", 19422),
    ("flash_gc", 1, False, False, 8, "c_attn", 42260),
    ("lora", 1, True, True, 2, "c_attn", 19300),
    ("lora", 1, True, True, 64, "c_attn", 20728),
    ("lora", 1, True, True, 8, "all-linear", 19670),
]
VAR_GIB = [
    ("max_length", "qwen-1_8b-chat", 512, 6.99),
    ("max_length", "qwen-1_8b-chat", 1024, 10.71),
    ("max_length", "qwen-1_8b-chat", 2048, 16.35),
    ("max_length", "qwen-1_8b-chat", 4096, 23.80),
    ("max_length", "qwen-1_8b-chat", 8192, 37.03),
    ("max_length", "qwen-7b-chat", 512, 18.01),
    ("max_length", "qwen-7b-chat", 1024, 21.73),
    ("max_length", "qwen-7b-chat", 2048, 27.74),
    ("max_length", "qwen-7b-chat", 4096, 35.31),
    ("max_length", "qwen-7b-chat", 8192, 48.41),
    ("max_length", "qwen-14b-chat", 512, 30.14),
    ("max_length", "qwen-14b-chat", 1024, 34.43),
    ("max_length", "qwen-14b-chat", 2048, 40.14),
    ("max_length", "qwen-14b-chat", 4096, 47.95),
    ("max_length", "qwen-14b-chat", 8192, 60.74),
]
VAR_OTHER_GIB = [
    ("batch_size", 2, True, True, 8, "c_attn", 43.11),
    ("batch_size", 4, True, True, 8, "c_attn", 63.81),
    ("batch_size", 8, True, True, 8, "c_attn", 76.14),
    ("flash_gc", 1, True, False, 8, "c_attn", 37.70),
    ("flash_gc", 1, False, True, 8, "c_attn", 27.71),
    ("flash_gc", 1, False, False, 8, "c_attn", 57.67),
    ("lora", 1, True, True, 2, "c_attn", 27.72),
    ("lora", 1, True, True, 64, "c_attn", 27.85),
    ("lora", 1, True, True, 8, "all-linear", 27.87),
]


def _lognormal() -> tuple[float, float]:
    s2 = math.log(1 + (SD / MEAN) ** 2)
    return math.log(MEAN) - s2 / 2, math.sqrt(s2)


def _cdf(x: float) -> float:
    mu, s = _lognormal()
    return 0.5 * (1 + math.erf((math.log(x) - mu) / (s * math.sqrt(2))))


def kept_share(cap: int) -> float:
    """The share of the dataset's samples of length in 91..cap (the log-normal of the statistic)."""
    return (_cdf(cap) - _cdf(LO)) / (1 - _cdf(LO))


def kept_mean(cap: int) -> int:
    """The mean length of the samples kept at ``cap`` (log-normal cut to 91..cap): the partial
    expectation of a log-normal, E[X; X <= c] = exp(mu + s^2/2) Phi((ln c - mu - s^2) / s)."""
    mu, s = _lognormal()

    def partial(c: float) -> float:
        return math.exp(mu + s * s / 2) * 0.5 * (1 + math.erf((math.log(c) - mu - s * s) / (s * math.sqrt(2))))

    return round((partial(cap) - partial(LO)) / (_cdf(cap) - _cdf(LO)))


def _gib(mib: int) -> str:
    """A published MiB figure in GiB (the table's other commit prints GiB), to 3 decimals."""
    return f"{mib / 1024:.3f}"


def _row(
    rid: str,
    source: str,
    model: str,
    cap: int,
    batch: int,
    flash: bool,
    gc: bool,
    rank: int,
    targets: str,
    value: str,
    unit: str,
    lengths: str,
    notes: str,
) -> dict[str, str]:
    settings = f"avg_tokens={kept_mean(cap)}" if lengths == "variable" else ""
    return {
        "id": rid,
        "source": source,
        "trainer": "swift",
        "trainer_version": "1.5" if "cfcb67265" in source else "1.6",
        "model": model,
        "method": "lora",
        "quant": "none",
        "precision": "bf16",
        "lora_rank": str(rank),
        "lora_alpha": "32",
        "lora_targets": targets,
        "trainable_extra": "",
        "optimizer": "adamw",
        "seq_len": str(cap),
        "lengths": lengths,
        "micro_batch": str(batch),
        "grad_accum": str(math.ceil(16 / batch)),
        "grad_checkpointing": "true" if gc else "false",
        "attention": "flash-attn-2" if flash else "eager",
        "num_gpus": "1",
        "parallel": "none",
        "offload": "none",
        "gpu": "a100-80g",
        "measured_value": value,
        "measured_unit": unit,
        "measurement": "reserved",
        "outcome": "ok",
        "settings": settings,
        "notes": notes,
    }


def curate() -> list[dict[str, str]]:
    rows = []
    for table, name, cap, mib in FIXED_MIB:
        share = 1 - kept_share(cap)
        note = f"published {mib} MiB; {share:.0%} of the samples reach the cap (log-normal of the statistic)"
        note += "; first 1000 rows"
        if share < 0.6:
            note = (
                "excluded: truncation_left with most samples below the cap (lengths vary, an atom at the cap); " + note
            )
        rows.append(
            _row(f"f-{table}-{MODELS[name]}-{cap}", FIXED_SRC, MODELS[name], cap, 1, True, True, 8, "c_attn",
                 _gib(mib), "GiB", "fixed", note)
        )  # fmt: skip
    for table, batch, flash, gc, rank, targets, mib in FIXED_OTHER_MIB:
        rows.append(
            _row(f"f-{table}-qwen-7b-b{batch}-{'fa' if flash else 'eager'}-{'gc' if gc else 'nogc'}-r{rank}-{targets}",
                 FIXED_SRC, "qwen-7b", 2048, batch, flash, gc, rank, targets, _gib(mib), "GiB", "fixed",
                 f"published {mib} MiB; {1 - kept_share(2048):.0%} of the samples reach the cap; first 1000 rows")
        )  # fmt: skip
    for table, name, cap, gib in VAR_GIB:
        share = kept_share(cap)
        note = f"samples over {cap} dropped: {share:.0%} kept, mean {kept_mean(cap)} (log-normal of the statistic)"
        if cap <= 2048:
            note += "; all 4959 rows"
        else:
            note = (
                f"excluded: the dataset's first 1000 rows, whose lengths the 4959 rows' statistic does not give; {note}"
            )
        rows.append(
            _row(f"v-{table}-{MODELS[name]}-{cap}", VAR_SRC, MODELS[name], cap, 1, True, True, 8, "c_attn",
                 f"{gib:.2f}", "GiB", "variable", note)
        )  # fmt: skip
    for table, batch, flash, gc, rank, targets, gib in VAR_OTHER_GIB:
        rows.append(
            _row(f"v-{table}-qwen-7b-b{batch}-{'fa' if flash else 'eager'}-{'gc' if gc else 'nogc'}-r{rank}-{targets}",
                 VAR_SRC, "qwen-7b", 2048, batch, flash, gc, rank, targets, f"{gib:.2f}", "GiB", "variable",
                 f"samples over 2048 dropped: {kept_share(2048):.0%} kept, mean {kept_mean(2048)}; all 4959 rows")
        )  # fmt: skip
    return rows


def write(rows: list[dict[str, str]], path: Path = OUT) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    write(curate())
    print(f"wrote {OUT}")
