#!/usr/bin/env bash
# The transformers 4 environment for tests/test_transformers_stack_trace.py: a mixture of experts is built
# differently by transformers 4 (per-expert nn.Linear layers), so one of its plans is traced there. Made again
# only when it does not hold exactly the pinned versions (constraints-tf4.txt); prints the venv's python on
# stdout, the install time on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
TF4_VENV="${VRAMPLAN_TF4_VENV:-$HOME/.cache/vramplan-tf4}"
if ! "$TF4_VENV/bin/python" -m pip freeze 2>/dev/null | grep -v '^-e' | diff -q - <(grep -v '^#' constraints-tf4.txt) >/dev/null; then
    start=$(date +%s)
    python3 -m venv --clear "$TF4_VENV"
    # torch first, alone: a plain resolve of "torch" would pull a CUDA build.
    "$TF4_VENV/bin/python" -m pip install -q -c constraints-tf4.txt torch==2.13.0 >&2
    "$TF4_VENV/bin/python" -m pip install -q -c constraints-tf4.txt transformers peft bitsandbytes accelerate pydantic rich >&2
    echo "transformers 4 venv installed in $(( $(date +%s) - start ))s" >&2
else
    echo "transformers 4 venv up to date ($TF4_VENV)" >&2
fi
echo "$TF4_VENV/bin/python"
