#!/usr/bin/env bash
# LLaMA-Factory 0.9.5 in its own venv (it pins transformers<=5.6.0, peft<=0.18.1, trl<=0.24, which clash
# with this project's stack), for tests/test_llamafactory_parse.py. Rebuilt only when its `pip freeze`
# differs from constraints-llamafactory.txt; prints the venv's python on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VRAMPLAN_LLAMAFACTORY_VENV:-$HOME/.cache/vramplan-llamafactory}"
if ! "$VENV/bin/python" -m pip freeze 2>/dev/null | grep -v '^-e' | diff -q - <(grep -v '^#' constraints-llamafactory.txt) >/dev/null; then
    start=$(date +%s)
    python3 -m venv --clear "$VENV" >&2
    # torch first, at the pinned version: llamafactory needs torchvision and torchaudio, which come only
    # beside torch 2.14.1 (the build on this machine's disk, which runs on the CPU), not the project's 2.13.0
    "$VENV/bin/python" -m pip install -q -c constraints-llamafactory.txt torch >&2
    # bitsandbytes (not one of its requirements) for the QLoRA steps
    "$VENV/bin/python" -m pip install -q -c constraints-llamafactory.txt llamafactory==0.9.5 bitsandbytes >&2
    echo "llamafactory venv installed in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
