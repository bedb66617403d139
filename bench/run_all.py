"""Run every benchmark in bench/ at the sizes the README reports, one after another.

`make bench` runs this. It takes many minutes on 2 cores; each benchmark prints its own table and
a JSON line. Pass `--quick` for small sizes (a smoke run that proves the benchmarks still work).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL: list[list[str]] = [
    ["bench_validate.py", "--count", "10000"],
    ["bench_diff.py", "--practices", "10000", "--changed", "500", "--runs", "3"],
    ["bench_plan.py", "--practices", "10000", "--changed", "500", "--runs", "3"],
    ["bench_drivers.py", "--practices", "200", "--duration", "60"],
    ["bench_scale.py", "scheduler", "--counts", "1000,3000,10000"],
    ["bench_scale.py", "engine", "--counts", "100,300,1000"],
    ["bench_writeback.py", "--practices", "1000"],
    ["bench_share.py", "--practices", "10000"],
    ["bench_apply.py", "--n", "1000"],
]
QUICK: list[list[str]] = [
    ["bench_validate.py", "--count", "300", "--skip-check-jsonschema"],
    ["bench_diff.py", "--practices", "500", "--changed", "25", "--runs", "1"],
    ["bench_plan.py", "--practices", "500", "--changed", "25", "--runs", "1"],
    ["bench_drivers.py", "--practices", "10", "--duration", "5"],
    ["bench_scale.py", "scheduler", "--counts", "100", "--duration", "3"],
    ["bench_writeback.py", "--practices", "20"],
    ["bench_share.py", "--practices", "300", "--looks", "3"],
    ["bench_apply.py", "--n", "20", "--no-kubectl"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args()
    failed = 0
    for argv in QUICK if args.quick else FULL:
        print(f"\n=== {' '.join(argv)}", flush=True)
        start = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]])
        print(f"=== {argv[0]} exit {rc} after {time.monotonic() - start:.0f}s", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
