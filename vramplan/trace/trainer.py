"""``vramplan trace --trainer NAME``: a trainer's own training step traced, where that trainer is.

A trainer's tracer (``Framework.tracer``, e.g. trace/trl_sft.py) imports the trainer itself, so
it runs in a Python that has it: this one when the trainer is installed beside vramplan, else
the Python its ``Framework.python_env`` variable names (a trainer whose pins clash with the
planner's lives in its own venv: ``.ci/venv-<name>.sh``). There the tracer runs as
``python -m vramplan.trace.trainer`` with the request as JSON on stdin and the
:class:`~vramplan.trace.result.TraceResult` as JSON on stdout. Torch-free until the tracer runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

from vramplan.errors import VramplanError

if TYPE_CHECKING:
    from vramplan.frameworks.base import Framework
    from vramplan.setup import Setup
    from vramplan.trace.result import TraceResult

#: the child's exit status for a refusal it printed as one ``field: text`` line on stderr
_REFUSED = 2


def where(fw: Framework) -> str | None:
    """The Python that traces ``fw``'s step: ``None`` for this one (the trainer is installed
    here), else the interpreter its ``python_env`` variable names; refused in one line when
    neither has it or it has no tracer."""
    from vramplan.frameworks.base import installed_version

    if not fw.tracer:
        raise VramplanError(
            "trainer", f"{fw.name}: its own step is not traced yet; trace the generic loop (omit --trainer)"
        )
    other = os.environ.get(fw.python_env, "") if fw.python_env else ""
    if other:
        if not os.path.isfile(other) or not os.access(other, os.X_OK):
            raise VramplanError("trainer", f"{fw.python_env}={other!r} is not an executable Python")
        return other
    if installed_version(fw.package) is not None:
        return None
    hint = f", or set {fw.python_env} to a Python that has it" if fw.python_env else ""
    raise VramplanError(
        "trainer", f"tracing {fw.name}'s own step needs {fw.package} here (pip install {fw.package}){hint}"
    )


def trace_trainer(fw: Framework, model: str, setup: Setup, steps: int) -> TraceResult:
    """Trace ``steps`` steps of ``fw``'s own trainer running ``setup`` on ``model``."""
    from vramplan.trace.result import TraceResult

    python = where(fw)
    if python is None:
        return _run(fw.tracer, fw.name, model, setup, steps)
    request = json.dumps(
        {"tracer": fw.tracer, "trainer": fw.name, "model": model, "setup": setup.model_dump(), "steps": steps}
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run(
        [python, "-m", "vramplan.trace.trainer"], input=request, capture_output=True, text=True, env=env
    )
    if done.returncode == _REFUSED and done.stderr.strip():
        field, _, text = done.stderr.strip().splitlines()[-1].partition(": ")
        raise VramplanError(field, text)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{fw.name}'s traced step failed in {python} (exit {done.returncode}):\n{tail}")
    return TraceResult.model_validate_json(done.stdout.strip().splitlines()[-1])


def _run(tracer: str, name: str, model: str, setup: Setup, steps: int) -> TraceResult:
    module: Any = import_module(tracer)
    result: TraceResult = module.trace_sft(model, setup, steps)
    return result.model_copy(update={"trainer": name})


def main() -> int:
    """The child: the request on stdin (the tracer's module path, not the trainer's name: a
    trainer registered by the user's code is not registered in this process), the result on
    stdout's last line."""
    from vramplan.setup import Setup
    from vramplan.trace.quiet import quiet_libraries

    request = json.loads(sys.stdin.read())
    quiet_libraries()
    try:
        setup = Setup(**request["setup"])
        result = _run(request["tracer"], request["trainer"], request["model"], setup, int(request["steps"]))
    except VramplanError as exc:
        print(f"{exc.field}: {exc.message}", file=sys.stderr)
        return _REFUSED
    print(result.model_dump_json(exclude={"timeline"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
