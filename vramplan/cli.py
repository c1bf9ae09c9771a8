"""The command line: parse, call the library, render.

Exit 0 fits, 1 does not fit (``validate`` with bounds: a bound broken), 2 bad input (one line
on stderr naming the field), 3 an internal error (a bug: one line asking for a report;
``--debug`` anywhere in the arguments adds the traceback), 130 interrupted, 141 stdout closed
early (piped into ``head``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# A command-line run needs no pydantic plugins; skipping their discovery (an entry-point scan
# of every installed distribution) saves a noticeable part of start-up.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from vramplan.cli_parse import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_FITS,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO_FIT,
    MESSAGE_CHARS,
    Parser,
    console,
    plan_parser,
    run_parser,
)
from vramplan.cli_plan import cmd_plan as _cmd_plan  # the default command (tests replace it here)
from vramplan.cli_plan import write_files
from vramplan.cli_run import run_command
from vramplan.errors import DoesNotFit, VramplanError, cut, one_line, shown
from vramplan.limits import MAX_SEQ_LEN

#: re-exported: the parsers, and write_files (the emitted set written all or nothing)
__all__ = ["COMMANDS", "EXIT_BAD_INPUT", "EXIT_FITS", "EXIT_NO_FIT", "main", "plan_parser", "run_parser", "write_files"]


def _listing(rows: list[dict[str, object]], columns: dict[str, str], table: object, as_json: bool) -> None:
    """A catalog listing: ``--json`` a list of objects; on a terminal the rich table; piped, one
    tab-separated line a row with a header (whole names, one row a line, for grep and cut)."""
    if as_json:
        print(json.dumps(rows, indent=1))
    elif sys.stdout.isatty():
        console().print(table)
    else:
        print("\t".join(columns.values()))
        for row in rows:
            print("\t".join("" if row[k] is None else str(row[k]) for k in columns))


def _cmd_gpus(argv: list[str]) -> int:
    from vramplan.gpus import gpu_catalog
    from vramplan.render import gpus_table

    p = Parser(prog="vramplan gpus", description="List the GPU catalog.")
    p.add_argument("--json", action="store_true", help="print every card's figures as JSON")
    args = p.parse_args(argv)
    gpus = list(gpu_catalog().values())
    columns = {
        "key": "key",
        "name": "name",
        "memory_mib": "MiB",
        "bf16_tflops_dense": "bf16 TFLOPs",
        "memory_bandwidth_gb_s": "GB/s",
        "architecture": "arch",
    }
    rows: list[dict[str, object]] = [{**g.model_dump(), "memory_mib": g.memory_mib} for g in gpus]
    _listing(rows, columns, gpus_table(gpus, console().width), args.json)
    return EXIT_FITS


def _cmd_models(argv: list[str]) -> int:
    from vramplan.arch.registry import family
    from vramplan.models import catalog_names, catalog_sources, load_model
    from vramplan.params import param_counts
    from vramplan.render import models_table

    p = Parser(prog="vramplan models", description="List catalog models matching QUERY.")
    p.add_argument("query", nargs="?", default="", help="part of a name, hub id or alias (default: every model)")
    p.add_argument("--json", action="store_true", help="print the matching models as JSON")
    args = p.parse_args(argv)
    q = args.query.lower()
    sources = catalog_sources()
    rows: list[dict[str, object]] = []
    shown_rows: list[tuple[str, str, str, str, int, str]] = []
    for name in catalog_names():
        src = sources[name]
        if q and not any(q in k.lower() for k in [name, src.hub_id, *src.aliases]):
            continue
        spec = load_model(name)
        total, published = param_counts(spec).total, src.published_params_text or ""
        fam = family(spec.model_type)  # the arch/ module that reads it (catalog types all have one)
        fam_name = fam.name if fam is not None else "-"
        shown_rows.append((name, src.hub_id, spec.model_type, fam_name, total, published))
        rows.append(
            {
                "name": name,
                "hub_id": src.hub_id,
                "aliases": src.aliases,
                "model_type": spec.model_type,
                "family": fam_name,
                "params": total,
                "published_params": published,
            }
        )
    if not rows:
        raise VramplanError("query", f"no catalog model matches {shown(args.query)}")
    table = models_table(shown_rows)
    columns = {
        "name": "name",
        "hub_id": "hub id",
        "model_type": "type",
        "family": "family",
        "params": "params",
        "published_params": "published",
    }
    _listing(rows, columns, table, args.json)
    return EXIT_FITS


def _cmd_validate(argv: list[str]) -> int:
    p = Parser(
        prog="vramplan validate",
        description="Compare the analytic estimate with recorded traces (--traced) or measured GPU runs (--csv FILE);"
        " with --max-median-error or --max-underestimate, exit 1 when the runs break a bound (a CI gate).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--traced",
        nargs="?",
        const="",
        metavar="PATH",
        help="against traced steps: the package's tables/measured/traces.jsonl, or the records at PATH"
        " ('vramplan trace ... --record PATH')",
    )
    what.add_argument(
        "--csv",
        metavar="FILE",
        help="against measured runs in the published-measurements schema (tables/measured/published.csv, or your own)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--max-median-error",
        metavar="P",
        help="with --csv: fail (exit 1) when the median |error| of the compared rows is above P%%",
    )
    p.add_argument(
        "--max-underestimate",
        metavar="P",
        help="with --csv: fail (exit 1) when a row's estimate is more than P%% under its measurement",
    )
    p.add_argument(
        "--junit",
        metavar="FILE",
        help="with a bound: write the result as JUnit XML, one testcase a row (failed, passed or skipped)",
    )
    args = p.parse_args(argv)
    from vramplan.gate import Bounds, parse_bound

    bounds = Bounds(
        max_median_error_pct=None
        if args.max_median_error is None
        else parse_bound(args.max_median_error, "max_median_error"),
        max_underestimate_pct=None
        if args.max_underestimate is None
        else parse_bound(args.max_underestimate, "max_underestimate"),
    )
    if args.junit is not None and not bounds.given:
        raise VramplanError("junit", "it records the gate's result: give --max-median-error and/or --max-underestimate")
    if args.csv is not None:
        return _validate_csv(args.csv, args.json, bounds, args.junit)
    if bounds.given:
        raise VramplanError("traced", "the bounds apply to measured runs: give them with --csv FILE")
    return _validate_traced(args.traced, args.json)


def _validate_traced(given: str, as_json: bool) -> int:
    """Traced steps against the estimate: the package's own table, or the records at ``given``."""
    from pathlib import Path

    from vramplan.validate import summarize, traced_records

    path = Path(given) if given else None
    if path is not None and not path.is_file():
        raise VramplanError("traced", f"{one_line(given)} is not a file: give the records 'trace --record PATH' wrote")
    rows, skipped = traced_records(path)
    summary = summarize(rows, skipped)
    if not summary.count:
        why = ", ".join(f"{reason} {n}" for reason, n in summary.skipped.items())
        raise VramplanError(
            "traced",
            "no recorded trace to compare"
            + (f" in {one_line(given)}" if given else "")
            + (f" ({sum(summary.skipped.values())} records skipped: {why})" if why else "")
            + (": 'vramplan trace ... --record PATH' appends one" if given else ": run benchmarks/trace_grid.py"),
        )
    if as_json:
        print(summary.model_dump_json())
    else:
        from vramplan.render import validation_table

        console().print(validation_table(summary))
    return EXIT_FITS


def _validate_csv(path: str, as_json: bool, bounds: Any = None, junit: str | None = None) -> int:
    """Every row compared or listed as excluded with its reason; only a problem with the
    file as a whole (or no row that can be compared) is bad input. With bounds (vramplan/gate.py):
    the rows that break them, one line each, the summary line, exit 1 when a bound fails, and
    the JUnit file written whole or not at all."""
    from pathlib import Path

    from vramplan.published import compare_csv, require_usable, summarize

    if junit is not None:
        _check_junit_target(junit)
    rows = compare_csv(Path(path))
    require_usable(rows, Path(path))
    summary = summarize(rows)
    result = None
    if bounds is not None and bounds.given:
        from vramplan.gate import check

        result = check(rows, summary, bounds)
    if as_json:
        data = {"rows": [r.model_dump() for r in rows], "summary": summary.model_dump()}
        if result is not None:
            data["gate"] = result.model_dump()
        print(json.dumps(data))
    else:
        from vramplan.render import published_table

        console().print(published_table(rows, summary))
    if result is None:
        return EXIT_FITS
    from vramplan.gate import failure_lines, junit_xml

    if junit is not None:
        from vramplan.files import write_file_atomically

        write_file_atomically(junit, junit_xml(result, f"vramplan validate {Path(path).name}"), field="junit")
    # the CI log's lines: on stderr under --json, whose stdout is the JSON alone
    out = sys.stderr if as_json else sys.stdout
    for line in failure_lines(result):
        print(line, file=out)
    return EXIT_FITS if result.ok else EXIT_NO_FIT


def _check_junit_target(junit: str) -> None:
    """The JUnit file's folder must exist and the path must not be a folder: refused before the comparison."""
    from pathlib import Path

    target = Path(junit)
    if target.is_dir():
        raise VramplanError("junit", f"{one_line(junit)} is a folder: give the file to write")
    if not target.parent.is_dir():
        raise VramplanError("junit", f"{one_line(str(target.parent))} is not a folder")


def _cmd_fit(argv: list[str]) -> int:
    from vramplan.fit_table import CARDS, SEQ_LENS, fit_renderable, fit_table

    p = Parser(
        prog="vramplan fit",
        description="What fits MODEL on GPU by method and sequence length (micro-batch 1, checkpointing), and the"
        " longest context each method fits on each of several cards.",
    )
    p.add_argument("model", help="catalog name, hub id or path to a config.json")
    p.add_argument("--gpu", default="4090", help="the card of the method table (default: 4090)")
    p.add_argument("--trainer", default="trl", help="the trainer whose run the numbers describe (default: trl)")
    p.add_argument(
        "--seq-lens",
        default=",".join(map(str, SEQ_LENS)),
        help=f"comma-separated sequence lengths of the method table (default: {','.join(map(str, SEQ_LENS))})",
    )
    p.add_argument(
        "--cards",
        default=",".join(CARDS),
        help=f"comma-separated cards of the context table (default: {','.join(CARDS)})",
    )
    p.add_argument("--json", action="store_true", help="print the tables as JSON")
    args = p.parse_args(argv)
    seqs: list[int] = []
    for part in (s.strip() for s in args.seq_lens.split(",") if s.strip()):
        if not part.isdigit() or not 1 <= int(part) <= MAX_SEQ_LEN:
            raise VramplanError("seq_lens", f"{shown(part)}: give whole token counts from 1 to {MAX_SEQ_LEN:,}")
        seqs.append(int(part))
    if not seqs:
        raise VramplanError("seq_lens", "give at least one sequence length")
    cards = tuple(c.strip() for c in args.cards.split(",") if c.strip())
    table = fit_table(args.model, args.gpu, trainer=args.trainer, seq_lens=tuple(sorted(set(seqs))), cards=cards)
    if args.json:
        print(table.model_dump_json())
    else:
        console().print(fit_renderable(table))
    return EXIT_FITS


def _measure_command(argv: list[str]) -> int:
    """``vramplan measure ... -- COMMAND``: the user's own run measured (vramplan/measure_run.py)."""
    from vramplan.measure_run import main as measure_main

    return measure_main(argv)


COMMANDS = {
    "fit": _cmd_fit,
    "validate": _cmd_validate,
    "gpus": _cmd_gpus,
    "models": _cmd_models,
    "trace": lambda argv: run_command("trace", argv),
    "measure": lambda argv: _measure_command(argv) if "--" in argv else run_command("measure", argv),
}


def _stdout_gone() -> None:
    """Point stdout at /dev/null once its reader has gone, so the interpreter's last flush
    writes nowhere instead of printing a BrokenPipeError (the Python docs' SIGPIPE recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # in-process (captured) stdout has no descriptor
        pass


def _internal_error(exc: BaseException) -> str:
    try:
        what = f"{type(exc).__name__}: {exc}"
    except Exception:  # a message that cannot itself be printed
        what = type(exc).__name__
    what = cut(one_line(what), MESSAGE_CHARS)
    return f"vramplan: internal error: {what}; please report it with the command (run with --debug for the traceback)"


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return _cmd_plan(argv)


def _escape_unencodable() -> None:
    """A name the terminal's encoding cannot write (a config folder named in CJK under
    ``PYTHONIOENCODING=ascii``) is written as ``\\u6a21`` rather than failing the run."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _escape_unencodable()
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at exit
        return code
    except DoesNotFit as err:
        sys.stderr.write(f"vramplan: {err}\n")
        return EXIT_NO_FIT
    except VramplanError as err:
        sys.stderr.write(f"vramplan: error: {err}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(_internal_error(exc) + "\n")
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
