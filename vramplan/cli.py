"""The command line: parse, call the library, render.

Exit 0 fits, 1 does not fit, 2 bad input (one line on stderr naming the field), 3 an internal
error (a bug: one line asking for a report; ``--debug`` anywhere in the arguments adds the
traceback), 130 interrupted, 141 stdout closed early (piped into ``head``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any, NoReturn

# A command-line run needs no pydantic plugins; skipping their discovery (an entry-point scan
# of every installed distribution) saves a noticeable part of start-up.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from vramplan import limits
from vramplan.errors import DoesNotFit, VramplanError, cut, one_line, shown
from vramplan.setup import (
    ATTENTIONS,
    FSDP_SHARDINGS,
    KV_CACHES,
    METHODS,
    OFFLOADS,
    OPTIMIZERS,
    PARALLELS,
    PRECISIONS,
    QUANTS,
    RLS,
    VLLMS,
)

EXIT_FITS, EXIT_NO_FIT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE, as a shell reports them
#: the longest one-line message the CLI writes; argparse's "unrecognized arguments" echo all of them
MESSAGE_CHARS = 400


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        text = cut(one_line(message), MESSAGE_CHARS)
        sys.stderr.write(f"vramplan: error: {text}\n")
        raise SystemExit(EXIT_BAD_INPUT)


# ASCII digits only: int() and float() would also take full-width or Arabic-Indic digits,
# underscores (1_000) and spaces, which no flag means.
_INT = re.compile(r"[+-]?[0-9]{1,30}")  # a longer one is past every bound: said as the bound
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def _int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an integer of at most 30 ASCII digits, got {shown(text)}")
    return int(text)


def _gpus(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {shown(text)}")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number like 0.5 or 1e-4, got {shown(text)}")
    return value


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


SETUP_FLAGS = (
    "method",
    "quant",
    "precision",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "trainable_extra",
    "freeze_trainable_layers",
    "optimizer",
    "seq_len",
    "micro_batch",
    "grad_accum",
    "grad_checkpointing",
    "attention",
    "num_gpus",
    "num_nodes",
    "parallel",
    "offload",
    "fsdp_sharding",
    "kv_cache",
    "image_size",
    "images_per_sample",
    "video_frames",
    "video_size",
    "freeze_vision",
    "freeze_projector",
    "rl",
    "num_generations",
    "completion_len",
    "beta",
    "vllm",
    "vllm_gpu_memory_utilization",
    "vllm_sleep",
)


def plan_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vramplan",
        description="Plan GPU memory for fine-tuning MODEL on GPU.",
        epilog="Exit 0 fits, 1 does not fit, 2 bad input, 3 internal error (add --debug, with any"
        " command, for its traceback).",
    )
    p.add_argument("model", help="catalog name or hub id (qwen2.5-7b, Qwen/Qwen2.5-7B-Instruct) or a config.json path")
    p.add_argument("--gpu", default="4090", help="card name (4090, a100-80g, h100, ...) or auto")
    _add_setup_flags(p)
    p.add_argument("--host-ram", type=_float, help="GiB of RAM per node, checked against what CPU offload puts there")
    p.add_argument("--json", action="store_true", help="print plan(...).model_dump_json()")
    p.add_argument(
        "--emit", metavar="TARGET", help="write the plan as a config for trl, swift, llamafactory or axolotl"
    )
    p.add_argument("--out", metavar="DIR", help="directory for the emitted files (default: print them)")
    p.add_argument("--data", metavar="FILE", default="data.jsonl", help="dataset the emitted config trains on")
    p.add_argument("--force", action="store_true", help="emit even when the plan does not fit")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.add_argument("--samples", type=_int, help="training samples (with --avg-tokens): prints the wall time")
    p.add_argument("--avg-tokens", type=_int, help="average tokens per sample")
    p.add_argument("--epochs", type=_float, default=1.0, help="passes over the samples (default 1)")
    p.add_argument(
        "--dataset-tokens", type=_int, help="tokens in the dataset: prints the wall time (packed to --seq-len)"
    )
    p.add_argument("--price-per-hour", type=_float, help="price of one GPU for an hour: prints the cost of the run")
    p.add_argument("--report", metavar="FILE.html", help="write the plan as one self-contained HTML page")
    p.add_argument("--plot", metavar="FILE.png", help="draw the peak by term and the alternatives to a PNG")
    return p


def _add_setup_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--quant", choices=QUANTS)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--lora-rank", type=_int)
    p.add_argument("--lora-alpha", type=_float)
    p.add_argument("--lora-dropout", type=_float)
    p.add_argument("--lora-targets", help="all-linear or comma-separated module names")
    p.add_argument("--trainable-extra", help="comma-separated: embeddings,lm_head")
    p.add_argument("--freeze-trainable-layers", type=_int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--seq-len", type=_int)
    p.add_argument("--micro-batch", type=_int)
    p.add_argument("--grad-accum", type=_int)
    p.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--attention", choices=ATTENTIONS)
    p.add_argument(
        "--gpus",
        dest="num_gpus",
        type=_gpus,
        help="GPUs in the run (per node with --nodes), or auto: the fewest that fit",
    )
    p.add_argument("--nodes", dest="num_nodes", type=_int, help="machines in the run, --gpus each (default 1)")
    p.add_argument("--parallel", choices=PARALLELS, help="multi-GPU layout (estimates are per GPU)")
    p.add_argument("--offload", choices=OFFLOADS, help="CPU offload under ZeRO/FSDP")
    p.add_argument(
        "--fsdp-sharding", choices=FSDP_SHARDINGS, help="FSDP: full_shard (default), shard_grad_op, hybrid_shard"
    )
    p.add_argument("--kv-cache", choices=KV_CACHES, help="inference: KV cache dtype (auto = the run dtype)")
    p.add_argument("--image-size", help="VLMs: WIDTHxHEIGHT of each image (implies one image per sample)")
    p.add_argument("--images-per-sample", type=_int, help="VLMs: images in each training sample")
    p.add_argument("--video-frames", type=_int, help="VLMs: frames sampled from the one video in each sample")
    p.add_argument("--video-size", help="VLMs: WIDTHxHEIGHT of the video's frames (default 448x448)")
    p.add_argument(
        "--freeze-vision", action=argparse.BooleanOptionalAction, default=None, help="VLM full: keep the tower frozen"
    )
    p.add_argument(
        "--freeze-projector",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="VLM full: keep the projector (merger) frozen",
    )
    p.add_argument(
        "--rl", choices=RLS, help="reinforcement fine-tuning (TRL GRPOTrainer); --seq-len is prompt + completion"
    )
    p.add_argument("--num-generations", type=_int, help="GRPO: completions per prompt (TRL default 8)")
    p.add_argument("--completion-len", type=_int, help="GRPO: max completion tokens (TRL default 512)")
    p.add_argument("--beta", type=_float, help="GRPO: KL weight; above 0 a reference model runs (TRL default 0)")
    p.add_argument("--vllm", choices=VLLMS, help="GRPO: generate with vLLM inside the training process (colocate)")
    p.add_argument(
        "--vllm-memory",
        dest="vllm_gpu_memory_utilization",
        type=_float,
        help="GRPO + vLLM: the card's fraction vLLM takes (TRL vllm_gpu_memory_utilization, default 0.3)",
    )
    p.add_argument(
        "--vllm-sleep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GRPO + vLLM: free vLLM's share outside generation (TRL vllm_enable_sleep_mode)",
    )


def run_parser(command: str) -> argparse.ArgumentParser:
    what = {
        "trace": "Trace training steps of MODEL with fake tensors (no GPU needed).",
        "measure": "Run training steps of MODEL on the local CUDA card and read the peak.",
    }[command]
    p = _Parser(prog=f"vramplan {command}", description=what)
    p.add_argument("model")
    _add_setup_flags(p)
    p.add_argument(
        "--steps", type=_steps, default=2, help="optimizer steps to run, 1 to 1000 (default 2: the second is steady)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", help="draw the live-memory timeline to FILE.png or FILE.html")
    p.add_argument("--record", action="store_true", help="append the result to tables/measured/traces.jsonl")
    p.add_argument("--report", metavar="FILE.html", help="write the plan for --gpu with this timeline as a page")
    p.add_argument("--gpu", default="4090", help="card the --report plans for (default 4090)")
    if command == "trace":
        p.add_argument("--real-cpu", action="store_true", help="run the steps for real on the CPU (tiny models)")
    return p


def _console() -> Any:
    from rich.console import Console

    return Console()


def _cmd_gpus(argv: list[str]) -> int:
    from vramplan.gpus import gpu_catalog
    from vramplan.render import gpus_table

    p = _Parser(prog="vramplan gpus", description="List the GPU catalog.")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    gpus = list(gpu_catalog().values())
    if args.json:
        import json

        print(json.dumps([g.model_dump() for g in gpus], indent=1))
    else:
        _console().print(gpus_table(gpus))
    return EXIT_FITS


def _cmd_models(argv: list[str]) -> int:
    from vramplan.models import catalog_names, catalog_sources, load_model
    from vramplan.params import param_counts
    from vramplan.render import models_table

    p = _Parser(prog="vramplan models", description="List catalog models matching QUERY.")
    p.add_argument("query", nargs="?", default="")
    args = p.parse_args(argv)
    q = args.query.lower()
    sources = catalog_sources()
    rows = []
    for name in catalog_names():
        src = sources[name]
        if q and not any(q in k.lower() for k in [name, src.hub_id, *src.aliases]):
            continue
        spec = load_model(name)
        rows.append((name, src.hub_id, spec.model_type, param_counts(spec).total, src.published_params_text or ""))
    if not rows:
        raise VramplanError("query", f"no catalog model matches {shown(args.query)}")
    _console().print(models_table(rows))
    return EXIT_FITS


def _cmd_plan(argv: list[str]) -> int:
    from vramplan.planner import plan

    args = plan_parser().parse_args(argv)
    emit_flags = (
        "emit",
        "out",
        "data",
        "force",
        "overwrite",
        "samples",
        "avg_tokens",
        "epochs",
        "dataset_tokens",
        "price_per_hour",
        "report",
        "plot",
    )
    if (args.samples is None) != (args.avg_tokens is None):
        raise VramplanError("samples", "--samples and --avg-tokens go together (the wall time needs both)")
    if args.dataset_tokens is not None and args.samples is not None:
        raise VramplanError("dataset_tokens", "give --dataset-tokens or --samples with --avg-tokens, not both")
    if args.rl not in (None, "none") and (args.samples is not None or args.dataset_tokens is not None):
        raise VramplanError(
            "samples", "the time model does not cover GRPO's generation yet: drop --samples/--dataset-tokens"
        )
    if args.price_per_hour is not None and args.samples is None and args.dataset_tokens is None:
        raise VramplanError("price_per_hour", "the cost needs the run's length: add --dataset-tokens or --samples")
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
    fields = {k: v for k, v in vars(args).items() if k not in ("model", "gpu", "json", "host_ram", *emit_flags)}
    result = plan(args.model, gpu=args.gpu, host_ram_gib=args.host_ram, **fields)
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
        _console().print(result)
        if line:
            print(line)
        for path in (args.report, args.plot):
            if path:
                print(f"wrote {path}")
    return EXIT_FITS if result.fits else EXIT_NO_FIT


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
    if args.samples is None and args.dataset_tokens is None:
        return None, None, None
    from vramplan.models import load_model
    from vramplan.tables import tables_dir
    from vramplan.timing import wall_time

    spec = load_model(result.source or result.model)
    if args.dataset_tokens is not None:
        seq = result.setup.seq_len
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
    from vramplan.emit.common import printable, sh_quote

    data = str(Path(args.data).resolve()) if args.out and Path(args.data).exists() else args.data
    out = emit(result, args.emit, data=data, force=args.force)
    if args.out:
        written = write_files(args.out, out.files, overwrite=args.overwrite)
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


def _setup_from_args(args: argparse.Namespace, command: str = "trace") -> tuple[Any, list[str]]:
    """The Setup the flags describe, as the planner fills it for the model, and the notes on
    the defaults it took; refused (one line) if the harness cannot run it. Torch-free."""
    from vramplan.trace.preflight import resolve_setup

    fields = {k: getattr(args, k) for k in SETUP_FLAGS if getattr(args, k, None) is not None}
    return resolve_setup(args.model, fields, command=command)


def _steps(text: str) -> int:
    steps = _int(text)
    if not 1 <= steps <= limits.MAX_STEPS:
        raise argparse.ArgumentTypeError(f"run 1 to {limits.MAX_STEPS} optimizer steps, got {steps}")
    return steps


def _run(command: str, argv: list[str]) -> int:
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
    if args.record:
        _check_record_folder()
    setup, notes = _setup_from_args(args, command)
    if command == "trace" and args.real_cpu:
        from vramplan.trace.preflight import refuse_if_too_big

        refuse_if_too_big(args.model, setup)
    traced_plan = None
    if args.report:
        from vramplan.planner import plan

        traced_plan = plan(args.model, args.gpu, **setup.model_dump())  # the traced setup, every field pinned
    from vramplan.trace.quiet import quiet_libraries

    quiet_libraries()
    console = _console() if not args.json else None
    status = console.status(f"{command}: importing torch") if console else None
    if status:
        status.start()

    def progress(message: str) -> None:
        if status:
            status.update(f"{command}: {message}")

    try:
        from vramplan.trace import run

        if command == "measure":
            result = run.measure(args.model, setup, args.steps, progress=progress)
        else:
            result = run.trace(args.model, setup, args.steps, fake=not args.real_cpu, progress=progress)
    finally:
        if status:
            status.stop()
    if notes:
        result = result.model_copy(update={"notes": [*notes, *result.notes]})
    _write_trace_pictures(result, args.plot, args.report, traced_plan)
    if args.record:
        from vramplan.records import append_row, make_row

        append_row(make_row(result))
    if console is None:
        print(result.model_dump_json(exclude={"timeline"}))
    else:
        from vramplan.render import trace_renderable

        console.print(trace_renderable(result))
    return EXIT_FITS if result.outcome == "ok" else EXIT_NO_FIT


def _check_record_folder() -> None:
    """--record appends to tables/measured/traces.jsonl: refuse before the run if it cannot."""
    from pathlib import Path

    from vramplan.records import records_path

    target = records_path()
    if target.exists():
        if not os.access(target, os.W_OK):
            raise VramplanError("record", f"cannot append to {target}: it is not writable")
        return
    folder = next(p for p in [target.parent, *target.parent.parents] if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise VramplanError("record", f"cannot create {target}: {Path(folder)} is not writable")


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
        pairs.append((report, report_page(traced_plan, timeline_svg=svg)))
    write_files_atomically(pairs, field="plot" if plot else "report")


def _cmd_validate(argv: list[str]) -> int:
    p = _Parser(
        prog="vramplan validate",
        description="Compare the analytic estimate with recorded traces (--traced) or measured GPU runs (--csv FILE).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--traced", action="store_true", help="against traced steps in tables/measured/traces.jsonl")
    what.add_argument(
        "--csv",
        metavar="FILE",
        help="against measured runs in the published-measurements schema (tables/measured/published.csv, or your own)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.csv:
        return _validate_csv(args.csv, args.json)
    from vramplan.validate import summarize, traced_records

    rows, skipped = traced_records()
    summary = summarize(rows, skipped)
    if not summary.count:
        why = ", ".join(f"{reason} {n}" for reason, n in summary.skipped.items())
        raise VramplanError(
            "traced",
            "no recorded trace to compare"
            + (f" ({sum(summary.skipped.values())} records skipped: {why})" if why else "")
            + ": run benchmarks/trace_grid.py or 'vramplan trace ... --record'",
        )
    if args.json:
        print(summary.model_dump_json())
    else:
        from vramplan.render import validation_table

        _console().print(validation_table(summary))
    return EXIT_FITS


def _validate_csv(path: str, as_json: bool) -> int:
    """Every row compared or listed as excluded with its reason; only a problem with the
    file as a whole (or no row that can be compared) is bad input."""
    from pathlib import Path

    from vramplan.published import compare_csv, require_usable, summarize

    rows = compare_csv(Path(path))
    require_usable(rows, Path(path))
    summary = summarize(rows)
    if as_json:
        print(json.dumps({"rows": [r.model_dump() for r in rows], "summary": summary.model_dump()}))
    else:
        from vramplan.render import published_table

        _console().print(published_table(rows, summary))
    return EXIT_FITS


COMMANDS = {
    "validate": _cmd_validate,
    "gpus": _cmd_gpus,
    "models": _cmd_models,
    "trace": lambda argv: _run("trace", argv),
    "measure": lambda argv: _run("measure", argv),
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
