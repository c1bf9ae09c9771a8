"""The trace and measure commands: the Setup the flags describe, the run, its outputs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any

from vramplan.cli_parse import EXIT_FITS, EXIT_NO_FIT, SETUP_FLAGS, run_parser
from vramplan.cli_parse import console as rich_console
from vramplan.errors import VramplanError


def _setup_from_args(args: argparse.Namespace, command: str = "trace") -> tuple[Any, list[str]]:
    """The Setup the flags describe, as the planner fills it for the model, and the notes on
    the defaults it took; refused (one line) if the harness cannot run it. Torch-free."""
    from vramplan.trace.preflight import resolve_setup

    fields = {k: getattr(args, k) for k in SETUP_FLAGS if getattr(args, k, None) is not None}
    return resolve_setup(args.model, fields, command=command)


def run_command(command: str, argv: list[str]) -> int:
    """trace / measure: every check runs before torch is imported, the outputs are written
    all or nothing after the run."""
    args = run_parser(command).parse_args(argv)
    from vramplan.report import check_output

    if args.plot:
        check_output(args.plot, "plot", (".png", ".html", ".htm"), needs_matplotlib=args.plot.lower().endswith(".png"))
    if args.report:
        check_output(args.report, "report", (".html", ".htm"))
        if args.plot and os.path.realpath(args.plot) == os.path.realpath(args.report):
            raise VramplanError("report", "--report and --plot name the same file: give each its own")
    if command == "measure" and args.plot:
        raise VramplanError("plot", "measure reads torch's peak counters, which keep no timeline: --plot is for trace")
    fw = _trainer(args) if command == "trace" else None
    record = None if args.record is None else _check_record_folder(args.record)
    if fw is None:
        _require_trace_extra(command)
    setup, notes = _setup_from_args(args, command)
    if fw is not None:
        setup, notes = _adapted(fw, args.model, setup, notes)
    if command == "trace" and args.real_cpu:
        from vramplan.trace.preflight import refuse_if_too_big

        refuse_if_too_big(args.model, setup)
    traced_plan = None
    if args.report:
        from vramplan.planner import plan

        traced_plan = plan(args.model, args.gpu or "4090", **setup.model_dump())  # the traced setup, every field pinned
        if args.gpu is None:
            notes = [
                *notes,
                f"the report plans for the {traced_plan.gpu.name} (--gpu's default): pass --gpu for your card",
            ]
    if not args.verbose:
        from vramplan.trace.quiet import quiet_libraries

        quiet_libraries()
    console = rich_console() if not args.json else None
    status = console.status(f"{command}: importing torch") if console else None
    if status:
        status.start()
    started = time.perf_counter()

    def progress(message: str) -> None:
        """The status line: what runs (the phase and step, once steps run) and the time so far."""
        if status:
            status.update(f"{command}: {message} ({time.perf_counter() - started:,.0f} s)")

    try:
        # what libraries print on stdout while they run (DeepSpeed's accelerator line on import) goes to
        # stderr: stdout is the result's alone (--json is read by programs)
        if fw is not None:
            from vramplan.trace.trainer import trace_trainer

            progress(f"tracing {fw.name}'s own step")
            with contextlib.redirect_stdout(sys.stderr):
                result = trace_trainer(fw, args.model, setup, args.steps)
            notes = [*notes, _against_estimate(fw, args.model, result)]
        elif command == "measure":
            from vramplan.trace import run

            with contextlib.redirect_stdout(sys.stderr):
                result = run.measure(args.model, setup, args.steps, progress=progress)
        else:
            from vramplan.trace import run

            with contextlib.redirect_stdout(sys.stderr):
                result = run.trace(args.model, setup, args.steps, fake=not args.real_cpu, progress=progress)
    finally:
        if status:
            status.stop()
    if notes:
        result = result.model_copy(update={"notes": [*notes, *result.notes]})
    _write_trace_pictures(result, args.plot, args.report, traced_plan)
    if record is not None:
        from vramplan.records import append_row, make_row

        append_row(make_row(result), record)
    if console is None:
        print(result.model_dump_json(exclude={"timeline"}))
    else:
        from vramplan.render import trace_renderable

        console.print(trace_renderable(result))
        for path in (args.plot, args.report):
            if path:
                print(f"wrote {path}")
    if record is not None:  # on stderr under --json, whose stdout is the result alone
        print(f"recorded in {record}", file=sys.stderr if console is None else sys.stdout)
    return EXIT_FITS if result.outcome == "ok" else EXIT_NO_FIT


#: what trace and measure import to build and run a step (the ``trace`` extra)
TRACE_MODULES = ("torch", "transformers", "accelerate", "peft")


def _require_trace_extra(command: str) -> None:
    """The generic loop needs the ``trace`` extra: a missing module is named with the install
    command before anything runs (found without importing it)."""
    from importlib.util import find_spec

    missing = [m for m in TRACE_MODULES if find_spec(m) is None]
    if missing:
        raise VramplanError(
            command,
            f"needs {', '.join(missing)}: pip install 'vramplan[trace]' (install the torch build you want first)",
        )


def _trainer(args: argparse.Namespace) -> Any:
    """The trainer whose own step ``trace --trainer`` runs, or None for the generic loop
    (``hf``: the loop trace/run.py traces is the plain transformers one); the flags its
    traces cannot serve are refused first."""
    if args.trainer in (None, "hf"):
        return None
    from vramplan.frameworks import framework
    from vramplan.trace.trainer import where

    fw = framework(args.trainer)
    for flag, given in (("real_cpu", args.real_cpu), ("plot", args.plot), ("record", args.record is not None)):
        if given:
            why = {
                "real_cpu": "it is traced with fake tensors only",
                "plot": "it is traced without a timeline",
                "record": f"its grid is recorded by benchmarks/trainer_trace_grid.py --trainer {fw.name}",
            }[flag]
            raise VramplanError(flag.replace("_", "-"), f"not with --trainer {fw.name}: {why}")
    where(fw)  # refused now, before the model is read, if no Python here has the trainer
    return fw


def _adapted(fw: Any, model: str, setup: Any, notes: list[str]) -> tuple[Any, list[str]]:
    """The Setup the trainer's emitted config runs (``Framework.adapt``), refused in one
    line where the trainer cannot run it."""
    from vramplan.models import load_model

    spec = load_model(model)
    refusals = fw.supports(setup, spec)
    if refusals:
        raise refusals[0].error()
    adapted, changes = fw.adapt(setup, spec)
    return adapted, [*notes, *(f"{fw.name}: {c}" for c in changes)]


def _against_estimate(fw: Any, model: str, result: Any) -> str:
    """The plan's figure for what was traced: the estimate under ``fw``'s policy, less what
    only CUDA spends, and its error against the traced peak."""
    from vramplan.memory import estimate
    from vramplan.memory.phases import traceable_bytes
    from vramplan.models import load_model

    est = traceable_bytes(estimate(load_model(model), result.setup, policy=fw.policy(result.setup)))
    err = 100 * (est - result.peak_bytes) / result.peak_bytes
    return (
        f"the plan under {fw.name}'s policy: {est / 2**30:.2f} GiB allocated without CUDA's workspaces,"
        f" {err:+.1f}% against this trace"
    )


def _check_record_folder(given: str) -> Any:
    """The file --record appends to (``given``, or ./vramplan-runs.jsonl): refused before the
    run if it is inside the installed package or cannot be written."""
    from pathlib import Path

    from vramplan.records import refuse_package_path, user_records_path

    target = user_records_path(given)
    refuse_package_path(target)
    if target.is_dir():
        raise VramplanError("record", f"{target} is a folder: give the file to append to")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise VramplanError("record", f"cannot append to {target}: it is not writable")
        return target
    folder = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise VramplanError("record", f"cannot create {target}: {Path(folder)} is not writable")
    return target


def _write_trace_pictures(result: Any, plot: str | None, report: str | None, traced_plan: Any) -> None:
    """The timeline (--plot) and the page (--report), all or nothing."""
    if not plot and not report:
        return
    from vramplan.files import write_files_atomically

    pairs = []
    if plot:
        from vramplan.plot import plot_content

        pairs.append((plot, plot_content(result, plot)))
    if report:
        from vramplan.plot import timeline_svg
        from vramplan.report import report_page

        svg = timeline_svg(result) if result.timeline else None
        pairs.append((report, report_page(traced_plan, timeline_svg=svg, traced_phases=result.phases)))
    write_files_atomically(pairs, field="plot" if plot else "report")
