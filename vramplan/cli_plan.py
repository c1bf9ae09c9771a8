"""The plan command: parse, plan, then print the plan, write its trainer files (``--emit``), its
page or picture (``--report``, ``--plot``), and the run's wall time and cost."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vramplan import limits
from vramplan.cli_parse import EXIT_FITS, EXIT_NO_FIT, console, plan_parser
from vramplan.errors import VramplanError, shown
from vramplan.setup_rules import check_run_options

#: bounds of the plan flags that are not Setup fields: (name, smallest allowed, largest allowed)
RUN_BOUNDS = (
    ("samples", 1, limits.MAX_SAMPLES),
    ("avg_tokens", 1, limits.MAX_SEQ_LEN),
    ("dataset_tokens", 1, limits.MAX_DATASET_TOKENS),
    ("epochs", 0, limits.MAX_EPOCHS),
    ("price_per_hour", 0, limits.MAX_PRICE_PER_HOUR),
)  # --host-ram is checked by plan() itself


def _check_run_numbers(args: argparse.Namespace) -> None:
    """Each run-length and cost flag within its bounds (integers from 1; the float ones
    above 0), the bound said in the message."""
    for flag, lo, hi in RUN_BOUNDS:
        value = getattr(args, flag)
        if value is None:
            continue
        if isinstance(value, int) and not lo <= value <= hi:
            raise VramplanError(flag, f"must be an integer from {lo:,} to {hi:,}, got {shown(value)}")
        if isinstance(value, float) and not (lo < value <= hi):
            raise VramplanError(flag, f"must be above {lo} and at most {limits.said(hi)}, got {shown(value)}")


def cmd_plan(argv: list[str]) -> int:
    from vramplan.planner import plan

    args = plan_parser().parse_args(argv)
    emit_flags = (
        "emit",
        "out",
        "data",
        "force",
        "overwrite",
        "samples",
        "epochs",
        "dataset_tokens",
        "price_per_hour",
        "report",
        "plot",
    )
    check_run_options(vars(args))  # setup_rules.RUN_RULES
    _check_run_numbers(args)
    if args.emit is not None and (args.report or args.plot):
        raise VramplanError(
            "report", "--report/--plot draw the plan; run them without --emit (the page holds the trl config)"
        )
    if args.report or args.plot:
        from vramplan.report import check_output

        if args.report:
            check_output(args.report, "report", (".html", ".htm"))
        if args.plot:
            check_output(args.plot, "plot", (".png",), needs_matplotlib=True)
    if args.emit is None and (args.out or args.force or args.overwrite):
        raise VramplanError("emit", "--out/--force/--overwrite go with --emit trl|swift|llamafactory|axolotl")
    if args.emit is not None:
        from vramplan.emit import TARGETS

        if args.emit not in TARGETS:
            raise VramplanError("emit", f"unknown target {shown(args.emit)}; targets: {', '.join(TARGETS)}")
    trainer = _trainer(args.trainer, args.emit)
    skip = ("model", "gpu", "json", "host_ram", "trainer", "transformers", *emit_flags)
    fields = {k: v for k, v in vars(args).items() if k not in skip}
    result = plan(
        args.model, gpu=args.gpu, host_ram_gib=args.host_ram, trainer=trainer, transformers=args.transformers, **fields
    )
    for note in result.notes:
        if note.code == "trainer.version":
            sys.stderr.write(f"vramplan: warning: {note.text}\n")
    if args.emit is not None:
        return _emit(result, args)
    timing, line, cost = _run_time(result, args)
    _write_pictures(result, args.report, args.plot, line)
    if args.json:
        data = json.loads(result.model_dump_json())
        if timing is not None:
            data["time"] = {**timing.model_dump(), "cost": cost}
        print(json.dumps(data))
    else:
        console().print(result)
        if line:
            print(line)
        for path in (args.report, args.plot):
            if path:
                print(f"wrote {path}")
    return EXIT_FITS if result.fits else EXIT_NO_FIT


def _trainer(trainer: str | None, target: str | None) -> str:
    """The trainer planned for: ``--trainer``, else the ``--emit`` target (the files are that
    trainer's, so its run is the one planned), else trl. ``--emit`` for another trainer than
    ``--trainer`` names is refused: the files would describe a run the plan did not."""
    if trainer is not None and target is not None and trainer != target:
        raise VramplanError(
            "trainer",
            f"--trainer {shown(trainer)} and --emit {target} disagree: --emit writes the planned trainer's files;"
            f" drop --trainer, or use --trainer {target}",
        )
    return trainer or target or "trl"


def _write_pictures(result: Any, report: str | None, plot: str | None, line: str | None) -> None:
    """The page and the PNG, all or nothing (vramplan.files): neither appears until both are written."""
    if not report and not plot:
        return
    import functools

    from vramplan.files import write_files_atomically
    from vramplan.report import draw_plan_png, report_page

    pairs: list[tuple[str, Any]] = []
    if plot:
        pairs.append((plot, functools.partial(draw_plan_png, result)))
    if report:
        pairs.append((report, report_page(result, time_line=line)))
    write_files_atomically(pairs, field="plot" if plot else "report")


def _run_time(result: Any, args: argparse.Namespace) -> tuple[Any, str | None, float | None]:
    """The wall time (and cost) of the run the flags describe, and the line that says it."""
    dist = result.setup.lengths_file
    if args.samples is None and args.dataset_tokens is None and dist is None:
        return None, None, None
    from vramplan.models import load_model
    from vramplan.tables import tables_dir
    from vramplan.timing import wall_time

    spec = load_model(result.source or result.model)
    seq = result.setup.seq_len
    if args.dataset_tokens is None and dist is not None:  # the file's samples, as the trainer keeps them
        from vramplan.frameworks import framework

        over = framework(result.trainer).policy(result.setup).over_cap
        samples = args.samples if args.samples is not None else dist.kept_samples(seq, over)
        avg = max(1, round(dist.kept_mean(seq, over)))
        what = f"{samples:,} samples of {dist.source} x {avg} tokens on average"
        if result.setup.lengths == "packed":
            tokens = samples * avg
            samples, avg = -(-tokens // seq), seq
            what += f", packed into {samples:,} sequences of {seq}"
    elif args.dataset_tokens is not None:
        samples, avg = -(-args.dataset_tokens // seq), seq
        what = f"{args.dataset_tokens:,} dataset tokens packed into {samples:,} sequences of {seq}"
    else:
        samples, avg = args.samples, args.avg_tokens
        what = f"{samples:,} samples x {avg} tokens"
    timing = wall_time(spec, result.setup, result.gpu, samples=samples, avg_tokens=avg, epochs=args.epochs)
    m, sec = divmod(round(timing.seconds), 60)
    h, m = divmod(m, 60)
    err = json.loads((tables_dir() / "timing.json").read_text()).get("error", {})
    cost = None
    priced = ""
    if args.price_per_hour is not None:
        gpus = result.setup.world_size
        cost = timing.seconds / 3600 * args.price_per_hour * gpus
        priced = f"; cost {cost:,.2f} at {args.price_per_hour:g} per GPU-hour x {gpus} GPU{'s' if gpus > 1 else ''}"
    line = (
        f"time: {timing.tokens:,} tokens ({what} x {args.epochs:g} epochs) at ~{timing.tokens_per_second:,.0f}"
        f" tokens/s: {timing.steps:,} optimizer steps of {timing.seconds_per_step:.2f} s = {h}:{m:02d}:{sec:02d}"
        f"{priced} (time model fitted on published A100 speeds: median error {err.get('median_abs_pct', '?')}%,"
        f" 90th percentile {err.get('p90_abs_pct', '?')}%)"
    )
    return timing, line, cost


def _emit(result: Any, args: argparse.Namespace) -> int:
    from pathlib import Path

    from vramplan.emit import emit
    from vramplan.frameworks.files.common import printable, sh_quote

    data = str(Path(args.data).resolve()) if args.out and Path(args.data).exists() else args.data
    out = emit(result, args.emit, data=data, force=args.force)
    if args.out:
        from vramplan.measure_rows import SETUP_FILE, setup_document

        # what the files run, for 'vramplan measure --from DIR -- bash DIR/run.sh'
        planned = setup_document(result.model, result.source, result.gpu.key, args.emit, out.setup)
        written = write_files(args.out, {**out.files, SETUP_FILE: planned}, overwrite=args.overwrite)
        names = ", ".join(printable(w) for w in written)
        sys.stderr.write(f"wrote {names}\nrun: cd {sh_quote(args.out)} && {out.command}\n")
    elif args.json:
        print(out.model_dump_json())
    else:
        for name, text in out.files.items():
            print(f"==> {name} <==\n{text}")
        print(f"run: {out.command}")
    return EXIT_FITS if out.fits else EXIT_NO_FIT


def write_files(out_dir: str, files: dict[str, str], *, overwrite: bool) -> list[str]:
    """Write ``files`` into ``out_dir`` all or nothing (:func:`vramplan.emit.write.write_set`);
    existing files are replaced only with ``overwrite``."""
    from vramplan.emit.write import write_set

    return write_set(out_dir, files, overwrite=overwrite)
