"""A stand-in for torchrun: ``launch_stub.py N SCRIPT ARGS...`` starts N Python processes with
RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE set, waits for all, and exits 1 if any failed
(torch.distributed.run's agent does the same). It never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    n, command = int(sys.argv[1]), sys.argv[2:]
    procs = []
    for rank in range(n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n)}
        procs.append(subprocess.Popen([sys.executable, *command], env={**env, "LOCAL_WORLD_SIZE": str(n)}))
    codes = [p.wait() for p in procs]
    return 1 if any(codes) else 0


if __name__ == "__main__":
    sys.exit(main())
