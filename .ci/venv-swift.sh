#!/usr/bin/env bash
# The ms-swift environment for tests/test_swift_parse.py: ms-swift pins transformers/peft/trl ranges that clash
# with the project's, so it lives in its own venv. Made again only when it does not hold exactly the pinned
# versions (constraints-swift.txt); prints the venv's python on stdout, the install time on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
SWIFT_VENV="${VRAMPLAN_SWIFT_VENV:-$HOME/.cache/vramplan-swift}"
if ! "$SWIFT_VENV/bin/python" -m pip freeze 2>/dev/null | grep -v '^-e' | diff -q - <(grep -v '^#' constraints-swift.txt) >/dev/null; then
    start=$(date +%s)
    python3 -m venv --clear "$SWIFT_VENV"
    # torch first, alone: a plain resolve of ms-swift's "torch" would pull a CUDA build.
    "$SWIFT_VENV/bin/python" -m pip install -q -c constraints-swift.txt torch==2.13.0 >&2
    # bitsandbytes (not one of its requirements) for the traced QLoRA steps (vramplan/trace/swift_sft.py)
    "$SWIFT_VENV/bin/python" -m pip install -q -c constraints-swift.txt ms-swift==4.6.0 bitsandbytes >&2
    echo "ms-swift venv installed in $(( $(date +%s) - start ))s" >&2
else
    echo "ms-swift venv up to date ($SWIFT_VENV)" >&2
fi
echo "$SWIFT_VENV/bin/python"
