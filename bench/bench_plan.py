"""Benchmark: `pmsctl plan BASE..HEAD --catalogs FILE` across 10,000 practices of which 500 changed.

Real: a git repository in a temporary folder (made with the `git` CLI), 10,000 generated
PracticeWriteback files committed on `main`, a second commit that edits 500 of them (provider,
interval, writeback and note-type changes in turn; every tenth edit misspells a note type), an
exported catalog file holding all 10,000 practices' catalogs (in the layout `pmsctl catalog
export` writes), and the installed `pmsctl` run as a subprocess, as a CI job would run it. Reported: wall
seconds per run (best and median of `--runs`) and CPU seconds (pmsctl plus its git children),
for the text and the markdown output. The run checks the answer (500 practices checked, the
misspelled ones failing, exit code 1), so a fast wrong answer does not pass.

    .venv/bin/python bench/bench_plan.py [--practices 10000] [--changed 500] [--runs 3]
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

from reconciler.api.catalog import dump_catalog_list

PMSCTL = Path(sys.executable).with_name("pmsctl")

TEMPLATE = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: practice-{i:05d}
  namespace: dental
spec:
  practiceId: practice-{i:05d}
  pms:
    type: OpenDental
    url: https://od-{i:05d}.example.com/api/v1
    credentialsSecretRef:
      name: practice-{i:05d}-od
  providerId: "{provider}"
  writeback:
    outgoingSms:
      allow: {sms}
      noteType: {note}
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
"""

NOTE_TYPES = ["Text Message", "Email", "Missed Call", "Phone Call", "Patient Note", "Task"]
CATEGORIES = ["Insurance Verification", "Statements", "Patient Pictures", "X-Rays"]


def practice(i: int, variant: int | None = None) -> str:
    """The text of practice i; `variant` 0-3 picks one kind of change, 4 a misspelled name."""
    values = {"provider": "7", "sms": "true", "interval": "60s", "note": "Text Message"}
    if variant == 0:
        values["provider"] = "12"
    elif variant == 1:
        values["interval"] = "30s"
    elif variant == 2:
        values["sms"] = "false"
    elif variant == 3:
        values["note"] = "Phone Call"
    elif variant == 4:
        values["note"] = "Text Msg"
    return TEMPLATE.format(i=i, **values)


def catalog(i: int) -> dict[str, object]:
    """The PracticeCatalog of practice i, as an export holds it."""
    return {
        "apiVersion": "writeback.dental.dev/v1alpha1",
        "kind": "PracticeCatalog",
        "metadata": {"namespace": "dental", "name": f"practice-{i:05d}"},
        "practiceId": f"practice-{i:05d}",
        "pms": {"type": "OpenDental", "version": "24.3.36"},
        "providers": [
            {"id": str(n), "name": f"Dr. Provider {n}", "active": n != 3} for n in range(1, 15)
        ],
        "noteTypes": [
            {"id": str(200 + n), "name": name, "hidden": False} for n, name in enumerate(NOTE_TYPES)
        ],
        "documentCategories": [
            {"id": str(300 + n), "name": name, "hidden": False, "uses": ["write", "read"]}
            for n, name in enumerate(CATEGORIES)
        ],
        "readAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {"providers": 14, "noteTypes": len(NOTE_TYPES), "documentCategories": 4},
    }


def make_repo(root: Path, practices: int, changed: int) -> int:
    """`practices` files on main~1, `changed` of them edited on main, and catalogs.json beside
    the repository; returns how many edits misspell a note type."""
    folder = root / "repo" / "practices"
    folder.mkdir(parents=True)
    for i in range(practices):
        (folder / f"practice-{i:05d}.yaml").write_text(practice(i))
    repo = root / "repo"
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "practices")
    step = practices // changed
    misspelled = 0
    for n in range(changed):
        i = n * step
        variant = 4 if n % 10 == 9 else n % 4
        misspelled += variant == 4
        (folder / f"practice-{i:05d}.yaml").write_text(practice(i, variant=variant))
    git(repo, "commit", "-q", "-a", "-m", "edits")
    # The layout `pmsctl catalog export` writes (one catalog a line).
    export = dump_catalog_list([catalog(i) for i in range(practices)])
    (root / "catalogs.json").write_text(export)
    return misspelled


def time_plan(root: Path, *extra: str) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall seconds, CPU seconds of pmsctl and its git children, the run)."""
    cmd = [str(PMSCTL), "plan", "main~1..main", "--catalogs", str(root / "catalogs.json"), *extra]
    return timed(cmd, root / "repo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--practices", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pmsctl-bench-plan-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        misspelled = make_repo(root, args.practices, args.changed)
        size = (root / "catalogs.json").stat().st_size / 1e6
        print(
            f"repository: {args.practices} practices, {args.changed} changed, {misspelled} "
            f"misspelled; catalogs.json {size:.1f} MB (made in {time.perf_counter() - t0:.1f}s)"
        )
        _, _, check = time_plan(root, "-o", "json")
        if check.returncode != 1:
            print(f"unexpected exit code {check.returncode}: {check.stderr}", file=sys.stderr)
            return 2
        report = json.loads(check.stdout)
        failing = [p["key"] for p in report["practices"] if any(n["failing"] for n in p["names"])]
        if len(report["practices"]) != args.changed or len(failing) != misspelled:
            print(
                f"wrong answer: {len(report['practices'])} checked, {len(failing)} failing",
                file=sys.stderr,
            )
            return 2
        results = {}
        for label, extra in (("text", ()), ("markdown", ("-o", "markdown"))):
            runs = [time_plan(root, *extra) for _ in range(args.runs)]
            wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
            results[label] = {"wall_best": min(wall), "cpu_best": min(cpu)}
            print(
                f"pmsctl plan -o {label:<8}  wall best {min(wall):.2f}s "
                f"median {statistics.median(wall):.2f}s  CPU best {min(cpu):.2f}s "
                f"median {statistics.median(cpu):.2f}s  ({args.runs} runs)"
            )
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(json.dumps({"bench": "plan", "practices": args.practices, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
