"""Replay traced steps through the caching allocator and compare the reserved tier with the
planner's (allocated + the cached logits' block, before the fitted slack).

    python3 benchmarks/allocator_replay.py [--limit N] [--every K]

For each single-process grid configuration (vramplan.validate.GRID; every K-th one), two
traced steps are replayed (vramplan/trace/allocator.py). Printed per row: the traced
allocated peak, the replay's reserved peak, what the step's own fragmentation adds
(replayed - traced), the planner's ``overhead/logits_segment`` for the same setup, what the
fitted slack base would have to cover of the difference, the least a card must offer for
the replayed stream (``needed``: torch releases wholly free segments before it reports
out-of-memory) and the planner's reserved tier, which sits under its fit verdict.
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--every", type=int, default=1)
    args = ap.parse_args()
    if args.every < 1 or args.limit < 0:
        ap.error("--every must be at least 1 and --limit at least 0")

    from vramplan.memory.phases import estimate
    from vramplan.models import load_model
    from vramplan.trace.run import trace
    from vramplan.validate import grid_setups

    gib = 2**30
    rows = [(m, s) for m, s in grid_setups() if s.parallel == "none" and s.num_gpus == 1 and s.rl == "none"]
    rows = rows[:: args.every][: args.limit or None]
    print(
        f"{'model':<22} {'setup':<44} {'traced':>7} {'replay':>7} {'frag':>6} {'logits':>6} {'rest':>6}"
        f" {'needed':>7} {'plan':>7}  GiB"
    )
    for model, setup in rows:
        t0 = time.perf_counter()
        try:
            r = trace(model, setup, steps=2, keep_timeline=False)
        except Exception as exc:  # reported, not fatal
            print(f"{model:<22} FAILED {type(exc).__name__}: {str(exc)[:120]}")
            continue
        est = estimate(load_model(model), setup)
        seg = est.terms.get("overhead/logits_segment", 0)
        frag = (r.simulated_reserved_bytes or 0) - r.peak_bytes
        label = f"{setup.method} {setup.quant} {setup.precision} s{setup.seq_len}x{setup.micro_batch}"
        label += " gc" if setup.grad_checkpointing else ""
        print(
            f"{model:<22} {label:<44} {r.peak_bytes / gib:7.2f} {(r.simulated_reserved_bytes or 0) / gib:7.2f}"
            f" {frag / gib:6.2f} {seg / gib:6.2f} {(frag - seg) / gib:6.2f}"
            f" {(r.simulated_needed_bytes or 0) / gib:7.2f} {est.reserved_bytes / gib:7.2f}"
            f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
