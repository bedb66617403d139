"""Soak: long random hostile histories through every driver; prints lost and doubled per kind.

The same harness and checker as tests/test_capture_property.py (`pms_simulator.capture`,
`pms_simulator.checker`), run for much longer: for each PMS (Open Dental, Dentrix, Eaglesoft) a
fresh simulator on a loopback port with its adversary on (changes in the same second as reads and
between pages, undefined list order, 429 with Retry-After, connections cut mid-body), a real
driver on a real client, restarted mid-read now and then, through a seeded random history of at
least `--changes` office changes. The simulated clock only moves by the history's ticks.

    .venv/bin/python bench/soak_capture.py                      # 10,000 changes per PMS
    .venv/bin/python bench/soak_capture.py --changes 2000 --pms OpenDental --seed 7

Prints progress, one report per PMS and one JSON line (`{"bench": "soak_capture", ...}`). Exits
1 when anything was lost, doubled or phantom (or fewer changes were made than asked), 2 when
`--max-seconds` ran out first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from pms_simulator import Simulator
from pms_simulator.adversary import AdversaryConfig
from pms_simulator.capture import Report, random_history, run_history

PMSES = ("OpenDental", "Dentrix", "Eaglesoft")


class OutOfTime(Exception):
    """The soak's time bound ran out."""


async def soak_one(pms: str, changes: int, seed: int, deadline: float) -> tuple[Report, float]:
    rng = random.Random(f"{seed}:{pms}")
    history = random_history(rng, changes)
    config = AdversaryConfig(seed=rng.randrange(2**32))
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now > deadline:
            raise OutOfTime(f"{pms}: out of time at step {done} of {total}")
        if now - last[0] >= 10 or done == total:
            last[0] = now
            print(f"  {pms}: step {done}/{total} ({now - started:.0f} s)", flush=True)

    sim = Simulator(db=":memory:")
    try:
        async with sim.serve(host="127.0.0.1", port=0):
            report = await run_history(
                sim, f"soak-{pms}", pms, history, config=config, progress=progress
            )
    finally:
        sim.close()
    return report, time.monotonic() - started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--changes", type=int, default=10_000, help="office changes per PMS")
    parser.add_argument("--pms", action="append", choices=PMSES, help="repeatable; default all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800, help="bound for the whole soak")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    results = {}
    failed = False
    for pms in args.pms or PMSES:
        print(f"{pms}: at least {args.changes} changes, seed {args.seed}", flush=True)
        try:
            report, seconds = await soak_one(pms, args.changes, args.seed, deadline)
        except OutOfTime as exc:
            print(str(exc), flush=True)
            return 2
        print("\n".join(report.lines()), f"\n  {seconds:.0f} s", flush=True)
        failed |= not report.ok
        if sum(report.changes.values()) < args.changes:
            print(f"  {pms}: only {sum(report.changes.values())} changes made", flush=True)
            failed = True
        for verdict in report.verdicts.values():
            for example in verdict.examples:
                print(f"    {example}")
        results[pms] = {
            "seconds": round(seconds, 1),
            "changes": sum(report.changes.values()),
            "polls": report.polls,
            "failed_polls": report.failed_polls,
            "restarts": report.restarts,
            **{
                kind: {"required": v.required, "delivered": v.delivered, "lost": v.lost,
                       "doubled": v.doubled, "phantom": v.phantom}
                for kind, v in report.verdicts.items()
            },
        }  # fmt: skip
    print(json.dumps({"bench": "soak_capture", "seed": args.seed, "results": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
