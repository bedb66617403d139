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
        [--replicate K]

kustomize's render time grows faster than the fleet, so a 10,000-practice render can take far
longer than pmsctl's part on a loaded machine. `--replicate K` also measures pmsctl's part alone
on K times the fleet: the two real renders of `--count` practices are repeated K times in
memory with each copy's practice names and ids made unique (`-00001` -> `-00001-r3`; the overlay
paths in the transformer annotations stay, they name real files), then read,
diffed, grouped and rendered as `-o json` in this process, as `pmsctl diff --kustomize` does
after its renders. It checks the group's count (K times the real one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import git

REPO = Path(__file__).resolve().parent.parent

PMSCTL = Path(sys.executable).with_name("pmsctl")
RENDERED = re.compile(
    r"rendered with .*?: .*? ([0-9.]+)s, .*? ([0-9.]+)s \(at the same time: ([0-9.]+)s\); "
    r"trees written in ([0-9.]+)s$",
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


def replicated(text: str, times: int) -> str:
    """`times` copies of a render, each copy's names and ids suffixed `-r<copy>`."""
    name = re.compile(r"\b([a-z]+(?:-[a-z]+)*-\d{5})\b")
    lines = text.splitlines(keepends=True)
    # The overlay paths in the transformer annotations stay: they name real files.
    copies = [
        "".join(line if "configuredIn:" in line else name.sub(rf"\1-r{k}", line) for line in lines)
        for k in range(times)
    ]
    return "---\n".join(copies)


def processing(
    repo: Path, count: int, times: int, renderer: str | None, off: int, kept: int
) -> None:
    """Time pmsctl's part (read both renders, diff, group, render JSON) on `times` x the fleet."""
    from reconciler.review.diff import diff_practices
    from reconciler.review.grouped import group_report, render_json
    from reconciler.review.kustomize import find_renderer, overlay_mentions, render_all
    from reconciler.review.rendered import StreamCache, load_stream

    with tempfile.TemporaryDirectory(prefix="bench-fleet-trees-") as scratch:
        git(repo, "worktree", "add", "-q", "--detach", f"{scratch}/base", "main~1")
        found = find_renderer(renderer)
        base, head = render_all(
            found,
            [(Path(scratch) / "base", "fleet", "base"), (repo, "fleet", "head")],
            Path(scratch),
        )
        git(repo, "worktree", "remove", "--force", f"{scratch}/base")
    texts = [replicated(r.normalised_text(), times) for r in (base, head)]
    started = time.perf_counter()
    cpu = time.process_time()
    cache = StreamCache()
    sides = [
        load_stream(t, source_path=r.repo_path, cache=cache)
        for t, r in zip(texts, (base, head), strict=True)
    ]
    report = diff_practices(sides[0].resources, sides[1].resources)
    overrides = overlay_mentions(sides[1].documents, repo, "fleet")
    grouped = group_report(report, sides[0].resources, sides[1].resources, overrides=overrides)
    out = render_json(grouped)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    [group] = grouped.groups
    if len(group.practices) != off * times or len(group.kept) != kept * times:
        sys.exit(f"wrong group: {len(group.practices)} / {len(group.kept)}")
    print(
        f"  pmsctl's part alone on {count * times:,} practices ({times} copies of the render): "
        f"{wall:.2f} s wall, {cpu:.2f} s CPU; group of {len(group.practices):,}, "
        f"{len(group.kept):,} kept; "
        f"{len(out) / 1e6:.1f} MB of JSON"
    )


def main() -> None:
    """Build the fleet, run the diff once, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="practices (default 10000)")
    parser.add_argument("--kustomize-command", help="renderer (default: pmsctl's own choice)")
    parser.add_argument(
        "--replicate", type=int, default=0, help="also time pmsctl's part on K x the fleet"
    )
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
        base_s, head_s, both_s, trees_s = (float(found.group(i)) for i in (1, 2, 3, 4))
        print(
            f"practices {args.count:,}: group of {off:,} turned off, {kept:,} kept by an override\n"
            f"  kustomize renders (run at the same time): base {base_s:.1f} s, head {head_s:.1f} s,"
            f" both {both_s:.1f} s\n"
            f"  pmsctl diff --kustomize wall: {wall:.1f} s\n"
            f"  beyond the renders: {wall - both_s:.2f} s (of which git writing the refs' trees:"
            f" {trees_s:.2f} s)"
        )
        if args.replicate:
            processing(repo, args.count, args.replicate, args.kustomize_command, off, kept)


if __name__ == "__main__":
    main()
