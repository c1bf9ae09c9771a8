"""The command line: parse, call the library, render. Exit 0 fits, 1 does not fit, 2 bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from vramplan.errors import VramplanError
from vramplan.setup import ATTENTIONS, METHODS, OPTIMIZERS, PRECISIONS, QUANTS

EXIT_FITS, EXIT_NO_FIT, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        sys.stderr.write(f"vramplan: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def plan_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vramplan", description="Plan GPU memory for fine-tuning MODEL on GPU.")
    p.add_argument("model", help="catalog name or hub id (qwen2.5-7b, Qwen/Qwen2.5-7B-Instruct) or a config.json path")
    p.add_argument("--gpu", default="4090", help="card name (4090, a100-80g, h100, ...) or auto")
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
    p.add_argument("--gpus", dest="num_gpus", type=_int)
    p.add_argument("--json", action="store_true", help="print plan(...).model_dump_json()")
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
        raise VramplanError("query", f"no catalog model matches {args.query!r}")
    _console().print(models_table(rows))
    return EXIT_FITS


def _cmd_plan(argv: list[str]) -> int:
    from vramplan.planner import plan

    args = plan_parser().parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("model", "gpu", "json")}
    result = plan(args.model, gpu=args.gpu, **fields)
    if args.json:
        print(result.model_dump_json())
    else:
        _console().print(result)
    return EXIT_FITS if result.fits else EXIT_NO_FIT


COMMANDS = {"gpus": _cmd_gpus, "models": _cmd_models}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return _cmd_plan(argv)
    except VramplanError as err:
        sys.stderr.write(f"vramplan: error: {err}\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
