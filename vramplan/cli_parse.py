"""The command line's parsers: the plan command's, and trace/measure's, both with one flag per
Setup field, generated from the field (its help line is the field's description, setup.py).

Numbers are read as ASCII digits only; a parse error is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Any, Literal, NoReturn, get_args, get_origin

from vramplan import limits
from vramplan.errors import cut, one_line, shown
from vramplan.setup import Setup

EXIT_FITS, EXIT_NO_FIT, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141  # 128 + SIGINT, 128 + SIGPIPE, as a shell reports them
#: the longest one-line message the CLI writes; argparse's "unrecognized arguments" echo all of them
MESSAGE_CHARS = 400


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        text = cut(one_line(message), MESSAGE_CHARS)
        sys.stderr.write(f"vramplan: error: {text}\n")
        raise SystemExit(EXIT_BAD_INPUT)


# ASCII digits only: int() and float() would also take full-width or Arabic-Indic digits,
# underscores (1_000) and spaces, which no flag means.
_INT = re.compile(r"[+-]?[0-9]{1,30}")  # a longer one is past every bound: said as the bound
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an integer of at most 30 ASCII digits, got {shown(text)}")
    return int(text)


def parse_gpus(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    if not _INT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {shown(text)}")
    return int(text)


def parse_float(text: str) -> float:
    value = float(text) if _FLOAT.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number like 0.5 or 1e-4, got {shown(text)}")
    return value


def parse_steps(text: str) -> int:
    steps = parse_int(text)
    if not 1 <= steps <= limits.MAX_STEPS:
        raise argparse.ArgumentTypeError(f"run 1 to {limits.MAX_STEPS} optimizer steps, got {steps}")
    return steps


#: the Setup fields, each a flag of plan, trace and measure
SETUP_FLAGS: tuple[str, ...] = tuple(Setup.model_fields)


def flag_name(field: str) -> str:
    """The flag of a Setup field: ``--field-name``, or the one its ``json_schema_extra`` names."""
    extra = Setup.model_fields[field].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + field.replace("_", "-")


def _shown_default(field: str) -> str:
    info = Setup.model_fields[field]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("searched"):
        return "the planner's choice"
    if extra.get("shown_default"):
        return str(extra["shown_default"])
    value = info.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value in ("", ()):
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_setup_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Setup field, in the fields' order: its help line and default from the field;
    choices from a Literal, integers and numbers read as ASCII digits, booleans as
    ``--x/--no-x``. Every flag defaults to None (not given: the planner or Setup decides)."""
    for field, info in Setup.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        # argparse formats help with %, so a literal one is doubled
        text = f"{info.description} (default: {_shown_default(field)})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": field, "default": None, "help": text}
        if extra.get("metavar"):
            kw["metavar"] = extra["metavar"]
        typ = info.annotation
        if get_origin(typ) is Literal:
            kw["choices"] = get_args(typ)
        elif typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typ is int:
            kw["type"] = parse_gpus if extra.get("auto") else parse_int
        elif typ is float:
            kw["type"] = parse_float
        p.add_argument(flag_name(field), **kw)


def plan_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vramplan",
        description="Plan GPU memory for fine-tuning MODEL on GPU.",
        epilog="Other commands (each with --help): 'vramplan trace MODEL' traces training steps with fake"
        " tensors; 'vramplan measure MODEL' runs them on this machine's GPU; 'vramplan validate' compares"
        " estimates with traces or measured runs; 'vramplan fit MODEL' tables what fits by method and"
        " sequence length, and the longest context per card; 'vramplan models [QUERY]' and 'vramplan gpus'"
        " list the catalogs. Exit 0 fits (or tight: fits, not the margin measured runs ask for), 1 does not"
        " fit, 2 bad input, 3 internal error (add --debug, with any command, for its traceback).",
    )
    from vramplan import __version__

    p.add_argument("--version", action="version", version=f"vramplan {__version__}")
    p.add_argument("model", help="catalog name or hub id (qwen2.5-7b, Qwen/Qwen2.5-7B-Instruct) or a config.json path")
    p.add_argument(
        "--gpu",
        default="4090",
        help="card name (4090, a100-80g, h100, ...) or auto: this machine's first visible GPU with the capacity torch"
        " reads on it, else nvidia-smi's card (default: 4090)",
    )
    p.add_argument(
        "--trainer",
        help="the trainer whose run is planned: trl, swift, llamafactory, axolotl, or hf (your own transformers"
        " Trainer script); default: the --emit target, else trl",
    )
    add_setup_flags(p)
    p.add_argument(
        "--transformers",
        metavar="4|5",
        help="the transformers major version the run uses, where it changes memory (a mixture of experts'"
        " modules); default: the installed one, else 5",
    )
    p.add_argument(
        "--host-ram", type=parse_float, help="GiB of RAM per node, checked against what CPU offload puts there"
    )
    p.add_argument("--json", action="store_true", help="print plan(...).model_dump_json()")
    p.add_argument(
        "--emit", metavar="TARGET", help="write the plan as a config for trl, swift, llamafactory or axolotl"
    )
    p.add_argument("--out", metavar="DIR", help="directory for the emitted files (default: print them)")
    p.add_argument("--data", metavar="FILE", default="data.jsonl", help="dataset the emitted config trains on")
    p.add_argument("--force", action="store_true", help="emit even when the plan does not fit")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.add_argument("--samples", type=parse_int, help="training samples (with --avg-tokens): prints the wall time")
    p.add_argument("--epochs", type=parse_float, default=1.0, help="passes over the samples (default 1)")
    p.add_argument(
        "--dataset-tokens", type=parse_int, help="tokens in the dataset: prints the wall time (packed to --seq-len)"
    )
    p.add_argument(
        "--price-per-hour", type=parse_float, help="price of one GPU for an hour: prints the cost of the run"
    )
    p.add_argument("--report", metavar="FILE.html", help="write the plan as one self-contained HTML page")
    p.add_argument("--plot", metavar="FILE.png", help="draw the peak by term and the alternatives to a PNG")
    return p


def run_parser(command: str) -> argparse.ArgumentParser:
    what = {
        "trace": "Trace training steps of MODEL with fake tensors (no GPU needed).",
        "measure": "Run training steps of MODEL on the local CUDA card and read the peak (vramplan's own loop;"
        " 'vramplan measure [MODEL] [flags | --from DIR] -- COMMAND' measures your own training command, one"
        " row per rank in a CSV: 'vramplan measure --help --' lists its flags).",
    }[command]
    p = Parser(prog=f"vramplan {command}", description=what)
    p.add_argument("model")
    add_setup_flags(p)
    p.add_argument(
        "--steps",
        type=parse_steps,
        default=2,
        help="optimizer steps to run, 1 to 1000 (default 2: the second is steady)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--verbose", action="store_true", help="show the libraries' own warnings and logs (silenced by default)"
    )
    p.add_argument("--plot", help="draw the live-memory timeline to FILE.png or FILE.html")
    p.add_argument(
        "--record",
        nargs="?",
        const="",
        metavar="PATH",
        help="append the result to PATH (default ./vramplan-runs.jsonl in the working directory; never the package)",
    )
    p.add_argument("--report", metavar="FILE.html", help="write the plan for --gpu with this timeline as a page")
    p.add_argument("--gpu", help="card the --report plans for (default 4090, said in the output)")
    if command == "trace":
        p.add_argument("--real-cpu", action="store_true", help="run the steps for real on the CPU (tiny models)")
        p.add_argument(
            "--trainer",
            help="trace this trainer's own step as its emitted config runs it: trl, swift, llamafactory, axolotl"
            " (default: vramplan's generic loop, what --trainer hf plans)",
        )
    return p


def console() -> Any:
    """The rich console the commands print to (imported when one is needed)."""
    from rich.console import Console

    return Console()
