"""``vramplan measure [MODEL] [setup flags | --from DIR] [--out runs.csv] -- COMMAND...``: run the
user's own training command and record its memory, one row per rank.

The command runs unchanged (no shell: the words after ``--``), with a generated
``sitecustomize.py`` first on ``PYTHONPATH`` (the user's own ``PYTHONPATH`` after it, and the
``sitecustomize`` it hides loaded in turn) that installs vramplan/measure_hook.py in every Python
process of the run; each process that used CUDA leaves a JSON record in a temporary folder.
Once the command has ended, whatever its end (an exit status, an out-of-memory error, SIGTERM),
the records become rows of the published-measurements schema (vramplan/measure_rows.py), added
to the CSV ``--out`` names (default ``./vramplan-runs.csv``): the whole file is written to a
temporary beside it, fsynced and renamed over it (``os.replace``), under an exclusive ``flock`` of
its folder, so a reader sees the old file or the new one and two runs ending together both land.
The rows are what ``vramplan validate --csv`` reads. The exit status is the command's (128 + N
for a command killed by signal N, as a shell says it); only bad input before the run is 2.

SIGTERM sent to vramplan is passed to the command and every process under it (a batch
scheduler's stop), and vramplan waits for them and records what they left; Ctrl-C
reaches the command from the terminal, and vramplan waits for it. The processes measured are
those the command starts on this machine: on several nodes, run it on each (each adds its own
ranks' rows). No torch import here.
``vramplan measure MODEL`` without ``--`` is vramplan's own loop on this machine's card
(cli_run.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vramplan.cli_parse import EXIT_BAD_INPUT, EXIT_INTERNAL, SETUP_FLAGS, Parser, add_setup_flags
from vramplan.errors import VramplanError, cut, one_line, shown
from vramplan.frameworks import names
from vramplan.gpus import resolve_gpu
from vramplan.measure_rows import MEASUREMENTS, make_rows, read_setup_document, resolve_setup

RUNS_CSV = "vramplan-runs.csv"
HOOK_MODULE = "vramplan_measure_hook"
SITECUSTOMIZE = '''\
"""Written by vramplan measure: the memory hook, then the sitecustomize this file hides."""
import os as _os
import sys as _sys

try:
    import {hook}

    {hook}.install()
except Exception as _exc:  # the run goes on unmeasured rather than not at all
    _sys.stderr.write("vramplan measure: hook not installed: %s\\n" % (_exc,))


def _next_sitecustomize():
    import importlib.machinery
    import importlib.util

    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in _sys.path if _os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_next_sitecustomize()
'''


def measure_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vramplan measure",
        usage="vramplan measure [MODEL] [setup flags | --from DIR] [--out FILE.csv] -- COMMAND ...",
        description="Run your own training COMMAND (torchrun ..., swift sft ..., llamafactory-cli train x.yaml,"
        " bash DIR/run.sh) and record each rank's peak memory as a row of the published-measurements schema,"
        " for 'vramplan validate --csv'. The setup comes from --from DIR (the folder --emit --out wrote) or from"
        " MODEL and the flags. Exit status: the command's. ('vramplan measure MODEL' without '--' runs"
        " vramplan's own loop on this card.)",
    )
    p.add_argument("model", nargs="?", help="catalog name or config.json path (default: the --from folder's)")
    p.add_argument(
        "--from", dest="from_dir", metavar="DIR", help="the folder 'vramplan MODEL --emit T --out DIR' wrote"
    )
    add_setup_flags(p)
    p.add_argument("--trainer", help="the trainer the command runs, if the hook cannot tell (default: what it sees)")
    p.add_argument("--gpu", help="the card, if torch's device name is not in the catalog (default: what torch reports)")
    p.add_argument(
        "--out", metavar="FILE", help=f"the CSV the rows are added to (default ./{RUNS_CSV}; never the package)"
    )
    p.add_argument(
        "--measurement",
        choices=MEASUREMENTS,
        default="reserved",
        help="the tier measured_value holds: allocated, reserved (max_memory_reserved, default) or device (NVML);"
        " every row keeps all three in allocated_gib, reserved_gib, device_gib",
    )
    p.add_argument("--json", action="store_true", help="print the rows written as JSON")
    return p


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """(vramplan's arguments, the command): the words before and after the first ``--``."""
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def main(argv: list[str]) -> int:
    own, command = split_command(argv)
    args = measure_parser().parse_args(own)
    if not command:
        raise VramplanError(
            "command", "give the command to measure after --: vramplan measure ... -- torchrun train.py"
        )
    plan = _planned(args)
    target = check_out(args.out)
    _check_command(command)
    for warning in plan.pop("warnings"):  # once every check has passed: the run starts now
        sys.stderr.write(f"vramplan measure: {warning}\n")
    run = _run(command)
    records = run["records"]
    status = run["status"]
    if not records:
        sys.stderr.write(
            f"vramplan measure: no process of the command used CUDA (exit status {status}): nothing recorded in"
            f" {one_line(str(target))}\n"
        )
        return status
    world = max((int(r.get("world_size") or 1) for r in records), default=1)
    if len(records) < world:
        sys.stderr.write(
            f"vramplan measure: {len(records)} of {world} ranks left a record (a rank killed by SIGKILL, the kernel's"
            " out-of-memory killer among them, or one that never used CUDA, writes none)\n"
        )
    meta = {
        **plan,
        "id": _run_id(run["started"]),
        "source": cut(one_line(f"vramplan measure on {socket.gethostname()}: {shown_command(command)}"), 400),
        "measurement": args.measurement,
        "exit_status": status,
        "date": run["started"].isoformat(timespec="seconds"),
    }
    if os.path.exists(meta["model"]):  # a config.json path: read by validate relative to the CSV
        meta["model"] = os.path.relpath(os.path.abspath(meta["model"]), target.parent.resolve())
    try:
        from vramplan.measure_csv import append_rows

        rows = append_rows(target, make_rows(records, meta))
    except VramplanError as err:
        sys.stderr.write(f"vramplan: error: {err}\n")
        return status or EXIT_BAD_INPUT
    except Exception as exc:  # a bug: said as the CLI says one, and the command's status still returned
        sys.stderr.write(f"vramplan: internal error: {type(exc).__name__}: {cut(one_line(str(exc)), 300)}\n")
        return status or EXIT_INTERNAL
    _report(rows, target, args.json)
    return status


def _planned(args: argparse.Namespace) -> dict[str, Any]:
    """The Setup, model, trainer and card the run is recorded under (torch-free, before it runs)."""
    doc = read_setup_document(args.from_dir) if args.from_dir else None
    model = args.model or (doc or {}).get("model")
    if not model:
        raise VramplanError("model", "give MODEL and the setup flags, or --from DIR (the folder --emit --out wrote)")
    given = {k: getattr(args, k) for k in SETUP_FLAGS if getattr(args, k, None) is not None}
    num_gpus_given = "num_gpus" in given and given["num_gpus"] != "auto" or doc is not None
    if given.get("num_gpus") == "auto":
        del given["num_gpus"]
    setup = resolve_setup(doc, given)
    notes: list[str] = []
    warnings = _model_warnings(model)
    if doc is None:
        defaulted = [
            f for f in ("method", "precision", "seq_len", "micro_batch", "grad_checkpointing") if f not in given
        ]
        if defaulted:
            shown_defaults = ", ".join(f"{f}={getattr(setup, f)}" for f in defaulted)
            warnings.append(f"not given, Setup's defaults recorded: {shown_defaults}")
            notes.append(f"Setup defaults recorded for {', '.join(defaulted)}")
    else:
        notes.append(f"setup from {Path(args.from_dir).resolve().name}/vramplan-setup.json")
    if args.trainer is not None and args.trainer not in names():
        raise VramplanError("trainer", f"unknown trainer {shown(args.trainer)}; trainers: {', '.join(names())}")
    return {
        "warnings": warnings,
        "model": model,
        "setup": setup,
        "trainer": args.trainer or (doc or {}).get("trainer") or "",
        "gpu": resolve_gpu(args.gpu).key if args.gpu else (doc or {}).get("gpu") or "",
        "notes": notes,
        "num_gpus_given": num_gpus_given,
    }


def _model_warnings(model: str) -> list[str]:
    """A model ``validate`` cannot read is said before the run (the rows are recorded anyway)."""
    from vramplan.models import load_model

    try:
        load_model(model, hub=False)
    except (VramplanError, OSError) as exc:
        why = cut(one_line(str(exc)), 200)
        return [f"{shown(model)} is not a catalog model or config.json here ({why}); validate will exclude its rows"]
    return []


def check_out(given: str | None) -> Path:
    """The CSV the rows go to, refused before the run when it is inside the package, a folder,
    not writable, or an existing file that is not of the published-measurements schema."""
    from vramplan.published import read_records
    from vramplan.records import package_dir

    target = Path(given) if given else Path.cwd() / RUNS_CSV
    resolved = target.resolve()
    if resolved == package_dir() or package_dir() in resolved.parents:
        raise VramplanError(
            "out", f"{one_line(str(target))} is inside the installed vramplan package: give a path of your own"
        )
    if target.is_dir():
        raise VramplanError("out", f"{one_line(str(target))} is a folder: give the CSV file to add the rows to")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise VramplanError("out", f"cannot write into {one_line(str(folder))}: not a writable folder")
    if target.exists():
        try:
            read_records(target)
        except VramplanError as err:
            raise VramplanError("out", err.message) from None
    return target


#: a word naming a secret (``--hub_token``, ``--wandb-key``, ``HF_TOKEN=...``): its value is not recorded
_SECRET = re.compile(r"(token|secret|password|passwd|api[-_]?key|access[-_]?key|auth)", re.IGNORECASE)


def shown_command(command: list[str]) -> str:
    """The command as the ``source`` column records it (a file the user may commit): the value
    given to an option or variable that names a secret is written ``***``."""
    out: list[str] = []
    hide_next = False
    for word in command:
        name, eq, _ = word.partition("=")
        if hide_next and not word.startswith("-"):
            out.append("***")
        elif eq and _SECRET.search(name):
            out.append(f"{name}=***")
        else:
            out.append(word)
        hide_next = word.startswith("-") and not eq and bool(_SECRET.search(word))
    return shlex.join(out)


def _check_command(command: list[str]) -> None:
    """The program must be one this environment can start (found on PATH, or an executable path)."""
    exe = command[0]
    found = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
    if found is None:
        hint = " (give the command as separate words after --)" if " " in exe else ""
        raise VramplanError("command", f"{shown(exe)} is not a program this environment can run{hint}")


def _run_id(started: _dt.datetime) -> str:
    return "m" + started.strftime("%Y%m%d-%H%M%S")


def hook_environment(folder: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: the hook's folder first on PYTHONPATH, the records folder named."""
    from vramplan.measure_hook import ENV_DIR

    hook_dir = folder / "hook"
    records = folder / "records"
    hook_dir.mkdir()
    records.mkdir()
    source = Path(__file__).with_name("measure_hook.py").read_text(encoding="utf-8")
    (hook_dir / f"{HOOK_MODULE}.py").write_text(source, encoding="utf-8")
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hook=HOOK_MODULE), encoding="utf-8")
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook_dir), out.get("PYTHONPATH", "")) if p)
    out[ENV_DIR] = str(records)
    return out


def read_hook_records(folder: Path) -> list[dict[str, Any]]:
    """The records the run's processes left (a file that is not one JSON object is said and skipped)."""
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"vramplan measure: skipped {path.name}: {exc}\n")
            continue
        if isinstance(rec, dict) and rec.get("phases") is not None:
            out.append(rec)
    return out


def _run(command: list[str]) -> dict[str, Any]:
    """Run the command with the hook, wait for it (SIGTERM passed on), gather the records."""
    started = _dt.datetime.now(_dt.timezone.utc)
    folder = Path(tempfile.mkdtemp(prefix="vramplan-measure-"))
    try:
        env = hook_environment(folder)
        try:
            proc = subprocess.Popen(command, env=env)
        except OSError as exc:
            hint = " (give the command as separate words after --)" if " " in command[0] else ""
            raise VramplanError("command", f"cannot run {shown(command[0])}: {exc.strerror or exc}{hint}") from None
        signalled: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            """SIGTERM to the command and every process under it: a shell (``bash run.sh``) dies of
            it at once and would leave its python running, unrecorded."""
            tree = [proc.pid, *descendants(proc.pid)]
            signalled.extend(tree)
            for pid in tree:
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass

        handlers = {}
        if sys.platform != "win32":
            handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, forward)
        handlers[signal.SIGINT] = signal.signal(signal.SIGINT, lambda s, f: None)
        try:
            code = proc.wait()
            _wait_gone(signalled[1:])  # the processes signalled under it write their records as they die
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
        records = read_hook_records(folder / "records")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"status": 128 - code if code < 0 else code, "records": records, "started": started}


def descendants(pid: int) -> list[int]:
    """The processes under ``pid``, read from ``/proc`` (Linux; none elsewhere), nearest first."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after the command name, which may hold spaces
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        found = children.get(todo.pop(0), [])
        out.extend(found)
        todo.extend(found)
    return out


def _wait_gone(pids: list[int], timeout_s: float = 60.0) -> None:
    """Until every process in ``pids`` has exited (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except OSError:
                break
            if _zombie(pid):
                break
            time.sleep(0.05)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] == b"Z"


def _report(rows: list[dict[str, str]], target: Path, as_json: bool) -> None:
    """The rows written: JSON, or one line a rank with the estimate's error as ``validate`` gives
    it, and where they went (on stderr under --json)."""
    from vramplan.published import compare

    if as_json:
        print(json.dumps(rows))
    out = sys.stderr if as_json else sys.stdout
    for row in rows:
        what = f"{row['measured_value']} GiB {row['measurement']}" if row["measured_value"] else "no peak"
        phase = f" at {row['peak_phase']}" if row["peak_phase"] else ""
        tiers = f"allocated {row['allocated_gib'] or '-'}, reserved {row['reserved_gib'] or '-'}"
        tiers += f", device {row['device_gib'] or '-'} GiB"
        print(
            f"{row['id']}: {row['outcome']}, {what}{phase} ({tiers}); {_against(compare, row, target.parent)}", file=out
        )
    print(f"recorded {len(rows)} row{'s' if len(rows) != 1 else ''} in {one_line(str(target))}", file=out)


def _against(compare: Any, row: dict[str, str], base: Path) -> str:
    """What ``validate`` will say of the row: the estimate and its error, the verdict of an
    out-of-memory row, or why it is excluded."""
    try:
        c = compare({k: v.strip() for k, v in row.items()}, base)
    except Exception as exc:  # the row is recorded either way; validate will say the same
        return f"not compared: {type(exc).__name__}"
    if c.excluded:
        return f"excluded: {cut(c.reason, 160)}"
    if c.outcome == "oom":
        return f"the estimate says {c.verdict} on {row['gpu']}"
    est = c.estimate_bytes / 2**30 if c.estimate_bytes is not None else 0.0
    return f"estimate {est:.2f} GiB {c.tier}, {c.error_pct:+.1f}%"
