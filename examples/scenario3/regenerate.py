"""Regenerate the emitted configs for shared/SCENARIOS.md case 3: Qwen2.5-7B-Instruct LoRA
(r8, alpha 32, all-linear, bf16, micro-batch 1 x accumulation 16, max length 2048) on one
RTX 4090 D, for every target.

    python3 examples/scenario3/regenerate.py

Writes examples/scenario3/<target>/ (a test checks the files match a fresh emit).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vramplan import plan
from vramplan.emit import TARGETS, emit

HERE = Path(__file__).resolve().parent
PINNED = dict(
    method="lora",
    precision="bf16",
    lora_rank=8,
    lora_alpha=32,
    lora_targets="all-linear",
    micro_batch=1,
    grad_accum=16,
    seq_len=2048,
)


def emitted() -> dict[str, dict[str, str]]:
    plans = {t: plan("Qwen/Qwen2.5-7B-Instruct", gpu="4090d", trainer=t, **PINNED) for t in TARGETS}
    return {t: emit(p, t, data="self_cognition.jsonl").files for t, p in plans.items()}


def main() -> None:
    for target, files in emitted().items():
        out = HERE / target
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for name, text in files.items():
            (out / name).write_text(text)
            if name.endswith((".sh", ".py")):
                (out / name).chmod(0o755)
        print(f"{target}: {', '.join(sorted(files))}")


if __name__ == "__main__":
    main()
