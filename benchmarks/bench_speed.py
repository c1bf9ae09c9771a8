"""Speed of the plain planner: CLI wall time and plan() time (not a timed test).

    python benchmarks/bench_speed.py [--runs 20]

Targets (2-core machine): `vramplan qwen2.5-7b --gpu 4090` median <= 0.3 s; plan() <= 50 ms;
the plain CLI imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def cli_times(runs: int) -> list[float]:
    exe = shutil.which("vramplan")
    cmd = [exe] if exe else [sys.executable, "-m", "vramplan"]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "qwen2.5-7b", "--gpu", "4090"], capture_output=True, check=True)
        out.append(time.perf_counter() - t0)
    return out


def plan_times(runs: int) -> list[float]:
    from vramplan import plan
    from vramplan.memory.phases import forget_estimates

    plan("qwen2.5-7b", gpu="4090")  # warm: catalog files read once per process
    out = []
    for _ in range(runs):
        forget_estimates()  # each run weighs its setups afresh (plan() keeps estimates it made)
        t0 = time.perf_counter()
        plan("qwen2.5-7b", gpu="4090")
        out.append(time.perf_counter() - t0)
    return out


def heavy_imports() -> list[str]:
    code = (
        "import sys, io, contextlib, vramplan.cli as c\n"
        "with contextlib.redirect_stdout(io.StringIO()): c.main(['qwen2.5-7b', '--gpu', '4090'])\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def compile_package() -> None:
    """pip byte-compiles an installed package; an editable checkout under
    PYTHONDONTWRITEBYTECODE=1 (as on these machines) never does, and would time the compiler."""
    import compileall
    import pathlib

    import vramplan

    compileall.compile_dir(str(pathlib.Path(vramplan.__file__).parent), quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    compile_package()
    cli = cli_times(args.runs)
    first_plan = time.perf_counter()
    from vramplan import plan

    plan("qwen2.5-7b", gpu="4090")
    first_plan = time.perf_counter() - first_plan
    warm = plan_times(args.runs * 5)
    heavy = heavy_imports()
    print("| measure | median | min | max | target |")
    print("|---|---|---|---|---|")
    print(
        f"| CLI `vramplan qwen2.5-7b --gpu 4090` wall | {statistics.median(cli):.3f} s | {min(cli):.3f} s "
        f"| {max(cli):.3f} s | <= 0.3 s |"
    )
    print(
        f"| plan() incl. search, warm | {statistics.median(warm) * 1e3:.1f} ms | {min(warm) * 1e3:.1f} ms "
        f"| {max(warm) * 1e3:.1f} ms | <= 50 ms |"
    )
    print(f"| plan() first call in a process (imports + catalog) | {first_plan * 1e3:.1f} ms | | | |")
    print(f"| heavy modules imported by the plain CLI | {' '.join(heavy) or 'none'} | | | none |")
    ok = statistics.median(cli) <= 0.3 and statistics.median(warm) <= 0.05 and not heavy
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
