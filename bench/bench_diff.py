"""Benchmark: `pmsctl diff` across 10,000 practices of which 500 changed.

Real: a git repository in a temporary folder (made with the `git` CLI), 10,000 generated
PracticeWriteback files committed on `main`, 500 of them edited in the working tree (provider,
interval, writeback and suspend changes in turn), and the installed `pmsctl` run as a
subprocess, as a user or CI would run it. Reported: wall seconds per run (best and median of
`--runs`) and CPU seconds (pmsctl plus its git children, which is what matters on a shared
machine), for the default text output and for `-o markdown`. The run checks that the report
counts exactly the 500 changed practices, so a fast wrong answer does not pass.

    .venv/bin/python bench/bench_diff.py [--practices 10000] [--changed 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import git, timed

PMSCTL = Path(sys.executable).with_name("pmsctl")

TEMPLATE = """\
# yaml-language-server: $schema=../schemas/practicewriteback.v1alpha1.schema.json
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: practice-{i:05d}
  namespace: dental
spec:
  practiceId: practice-{i:05d}
  displayName: Practice {i:05d}
  pms:
    type: OpenDental
    url: https://od-{i:05d}.example.com/api/v1
    credentialsSecretRef:
      name: practice-{i:05d}-od
  providerId: "{provider}"
  writeback:
    outgoingSms:
      allow: {sms}
      noteType: Text Message
    outgoingEmail:
      allow: true
      noteType: Email
    missedCall:
      allow: true
      noteType: Missed Call
  documents:
    insuranceVerification:
      writeTo: Insurance Verification
  sync:
    appointmentStatus:
      enabled: true
      interval: 15s
    appointments:
      enabled: true
      interval: {interval}
    patients:
      enabled: true
      interval: 30s
  suspend: {suspend}
"""


def practice(i: int, variant: int | None = None) -> str:
    """The text of practice i; `variant` 0-3 picks one kind of change."""
    values = {"provider": "7", "sms": "true", "interval": "60s", "suspend": "false"}
    if variant == 0:
        values["provider"] = "12"
    elif variant == 1:
        values["interval"] = "30s"
    elif variant == 2:
        values["sms"] = "false"
    elif variant == 3:
        values["suspend"] = "true"
    return TEMPLATE.format(i=i, **values)


def make_repo(root: Path, practices: int, changed: int) -> None:
    """A repository with `practices` files on main and `changed` of them edited."""
    folder = root / "practices"
    folder.mkdir(parents=True)
    for i in range(practices):
        (folder / f"practice-{i:05d}.yaml").write_text(practice(i))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "practices")
    step = practices // changed
    for n in range(changed):
        i = n * step
        (folder / f"practice-{i:05d}.yaml").write_text(practice(i, variant=n % 4))


def time_diff(root: Path, *extra: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of pmsctl and its git children, the run)."""
    return timed([str(PMSCTL), "diff", "--base", "main", *extra], root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--practices", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmsctl-bench-diff-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_repo(root, args.practices, args.changed)
        print(
            f"repository: {args.practices} practices, {args.changed} changed "
            f"(made in {time.perf_counter() - t0:.1f}s)"
        )
        _, _, check = time_diff(root, "-o", "json")
        if check.returncode != 1:
            print(f"unexpected exit code {check.returncode}: {check.stderr}", file=sys.stderr)
            return 2
        summary = json.loads(check.stdout)["summary"]
        if (
            summary["changed"] != args.changed
            or summary["unchanged"] != args.practices - args.changed
        ):
            print(f"wrong answer: {summary}", file=sys.stderr)
            return 2
        for label, extra in (("text", ()), ("markdown", ("-o", "markdown"))):
            runs = [time_diff(root, *extra) for _ in range(args.runs)]
            wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
            print(
                f"pmsctl diff -o {label:<8}  wall best {min(wall):.2f}s "
                f"median {statistics.median(wall):.2f}s  CPU best {min(cpu):.2f}s "
                f"median {statistics.median(cpu):.2f}s  ({args.runs} runs)"
            )
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
