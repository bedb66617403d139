"""Benchmark: `pmsctl diff --kustomize` on a generated fleet with a base change.

Real: a git repository in a temporary folder (the `git` CLI), the example fleet written by
`examples/fleet/generate.py --count N` and committed on `main`, then a second commit that turns
outgoing SMS writeback off in the Open Dental and Dentrix bases (a change to every practice of
those PMSs but the ones with the component or a local override). The installed `pmsctl` runs
as a subprocess with the renderer found on PATH or named by `--kustomize-command`:

    pmsctl diff --kustomize fleet main~1..main -o json

Reported: wall seconds of the whole command, kustomize's render seconds for each side (pmsctl
prints them on stderr), and the difference: what pmsctl itself adds beyond the two renders
(reading both streams, diffing, grouping, rendering the report). The run checks the group it
expects (its practice count and the number kept by a local override), so a fast wrong answer
does not pass.

    .venv/bin/python bench/bench_fleet.py [--count 10000] [--kustomize-command 'kubectl kustomize']
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PMSCTL = Path(sys.executable).with_name("pmsctl")
RENDERED = re.compile(
    r"rendered with .*?: .*? ([0-9.]+)s, .*? ([0-9.]+)s \(at the same time: ([0-9.]+)s\)$",
    re.MULTILINE,
)


def _generator() -> object:
    spec = importlib.util.spec_from_file_location(
        "fleet_generate", REPO / "examples" / "fleet" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, env=env, capture_output=True)


def main() -> None:
    """Build the fleet, run the diff once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="practices (default 10000)")
    parser.add_argument("--kustomize-command", help="renderer (default: pmsctl's own choice)")
    args = parser.parse_args()
    gen = _generator()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        repo = Path(tmp)
        git(repo, "init", "-q", "-b", "main")
        gen.write(repo / "fleet", args.count)  # type: ignore[attr-defined]
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "fleet")
        old = "outgoingSms: {allow: true, noteType: Text Message}"
        for base in ("opendental", "dentrix"):
            path = repo / "fleet" / "base" / base / "practice.yaml"
            path.write_text(path.read_text().replace(old, "outgoingSms: {allow: false}"))
        git(repo, "commit", "-qam", "SMS writeback off")

        off = kept = 0
        for i, (_, row) in enumerate(gen.practices(args.count)):  # type: ignore[attr-defined]
            if row[1] in ("OpenDental", "Dentrix") and i % 10 != 3:
                if i % 20 in (1, 7):
                    kept += 1
                else:
                    off += 1

        command = [str(PMSCTL), "diff", "--kustomize", str(repo / "fleet"), "main~1..main"]
        command += ["-o", "json"]
        if args.kustomize_command:
            command += ["--kustomize-command", args.kustomize_command]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 1:
            sys.exit(f"pmsctl diff exited {done.returncode}:\n{done.stderr[-2000:]}")
        [group] = json.loads(done.stdout)["groups"]
        if group["count"] != off or len(group["keptByLocalOverride"]) != kept:
            sys.exit(f"wrong group: {group['count']} / {len(group['keptByLocalOverride'])}")
        found = RENDERED.search(done.stderr)
        if found is None:
            sys.exit(f"no render times on stderr:\n{done.stderr[-2000:]}")
        base_s, head_s, both_s = (float(found.group(i)) for i in (1, 2, 3))
        print(
            f"practices {args.count:,}: group of {off:,} turned off, {kept:,} kept by an override\n"
            f"  kustomize renders (run at the same time): base {base_s:.1f} s, head {head_s:.1f} s,"
            f" both {both_s:.1f} s\n"
            f"  pmsctl diff --kustomize wall: {wall:.1f} s\n"
            f"  beyond the renders: {wall - both_s:.2f} s"
        )


if __name__ == "__main__":
    main()
