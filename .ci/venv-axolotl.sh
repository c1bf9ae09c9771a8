#!/usr/bin/env bash
# axolotl 0.19.0 in its own venv (it pins transformers==5.16.1, which clashes
# with this project's stack), for tests/test_axolotl_parse.py. Rebuilt only when its `pip freeze`
# differs from constraints-axolotl.txt; prints the venv's python on the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VRAMPLAN_AXOLOTL_VENV:-$HOME/.cache/vramplan-axolotl}"
if ! "$VENV/bin/python" -m pip freeze 2>/dev/null | grep -v '^-e' | diff -q - <(grep -v '^#' constraints-axolotl.txt) >/dev/null; then
    start=$(date +%s)
    python3 -m venv --clear "$VENV" >&2
    # the CPU torch first: a plain torch requirement would pull a multi-GB CUDA build
    "$VENV/bin/python" -m pip install -q -c constraints-axolotl.txt torch==2.13.0 >&2
    "$VENV/bin/python" -m pip install -q -c constraints-axolotl.txt axolotl==0.19.0 >&2
    echo "axolotl venv installed in $(( $(date +%s) - start )) s" >&2
fi
echo "$VENV/bin/python"
