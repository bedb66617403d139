"""Benchmark: files/second of `pmsctl validate`, `check-jsonschema` and bare YAML parsing.

Generates N realistic, valid practice files (default 10,000; `--count`) under bench/out/, then
times, in the same run and each as a fresh process over the same files:

- `pmsctl validate DIR` (positions, duplicate keys, schema, cross-document checks);
- `check-jsonschema --schemafile schemas/... FILES` (the same schema; its YAML loader is ruamel);
- bare parsing: a Python process that reads every file and calls `yaml.load(CSafeLoader)`.

Each measurement is the best of `--repeat` runs (default 1), in wall-clock seconds and in CPU
seconds of the measured process (the steadier figure on a shared machine). Prints a small table and one JSON
line (`{"bench": "validate", ...}`) for tooling. Nothing is faked; the figures depend on the
machine, so the README quotes a run with its date and core count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "practicewriteback.v1alpha1.schema.json"
BIN = Path(sys.executable).parent

_NOTE_TYPES = {
    "outgoingSms": "Text Message",
    "incomingSms": "Text Message",
    "outgoingEmail": "Email",
    "incomingCall": "Phone Call",
    "outgoingCall": "Phone Call",
    "missedCall": "Missed Call",
    "patientNote": "Patient Note",
    "taskNote": "Task",
    "insuranceVerification": "Insurance Verification",
}
_PMS = {
    "OpenDental": ("http://127.0.0.1:8830/api/v1", ["1", "2", "3", "7", "12"]),
    "Dentrix": ("https://bridge.{slug}.example.com/bridge/v1", ["DDS1", "DDS2", "HYG1", "HYG2"]),
    "Eaglesoft": ("https://bridge.{slug}.example.com/bridge/v1", ["DCM", "GGY", "HYG", "AB1"]),
}


def practice_yaml(i: int, rng: random.Random) -> str:
    """One valid practice file, varied by a seeded generator."""
    pms = rng.choice(sorted(_PMS))
    url, providers = _PMS[pms]
    slug = f"practice-{i:05d}"
    lines = [
        "# yaml-language-server: $schema=../../schemas/practicewriteback.v1alpha1.schema.json",
        "apiVersion: writeback.dental.dev/v1alpha1",
        "kind: PracticeWriteback",
        "metadata:",
        f"  name: {slug}",
        "  namespace: dental-practices",
        "spec:",
        f"  practiceId: {slug}",
        f"  displayName: Practice {i} Family Dentistry",
        "  pms:",
        f"    type: {pms}",
        f"    url: {url.format(slug=slug)}",
        "    credentialsSecretRef:",
        f"      name: {slug}-pms",
        f"    timeoutSeconds: {rng.choice([5, 10, 10, 15])}",
        f'  providerId: "{rng.choice(providers)}"',
        "  writeback:",
    ]
    for key, note in _NOTE_TYPES.items():
        if rng.random() < 0.8:
            lines.append(f"    {key}: {{allow: true, noteType: {note}}}")
        else:
            lines.append(f"    {key}: {{allow: false}}")
    lines += [
        "  documents:",
        "    insuranceVerification:",
        "      writeTo: Insurance Verification",
        "    accountStatement:",
        "      writeTo: Statements",
        "  sync:",
        f"    appointmentStatus: {{enabled: true, interval: {rng.choice(['15s', '10s', '30s'])}}}",
        f"    appointments: {{enabled: true, interval: {rng.choice(['60s', '1m', '2m'])}}}",
        f"    patients: {{enabled: {str(rng.random() < 0.9).lower()}, interval: 30s}}",
        f"  patientProfilePhotos: {str(rng.random() < 0.2).lower()}",
        "  suspend: false",
    ]
    return "\n".join(lines) + "\n"


def generate(folder: Path, count: int, seed: int = 7) -> list[Path]:
    """Write `count` files into `folder` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"practice-{i:05d}.yaml"
        path.write_text(practice_yaml(i, rng), encoding="utf-8")
        paths.append(path)
    return paths


_BARE = """
import sys, yaml
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
files = open(sys.argv[1]).read().split("\\n")
for name in files:
    with open(name, "rb") as f:
        yaml.load(f.read(), Loader=loader)
"""


def timed(cmd: list[str], repeat: int, expect: int = 0) -> tuple[float, float]:
    """Best wall-clock seconds and best CPU seconds (user + system of the child) of `repeat`
    runs; the command must exit with `expect`. CPU time is the steadier figure on a shared
    machine, where wall-clock time also measures everybody else's load."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != expect:
            raise SystemExit(f"{cmd[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return best_wall, best_cpu


def main(argv: list[str] | None = None) -> int:
    """Generate, measure, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--count", type=int, default=10_000, help="number of practice files (default 10000)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per tool; the best counts (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "validate", help="where the files go"
    )
    parser.add_argument(
        "--skip-check-jsonschema", action="store_true", help="leave out the slow peer"
    )
    args = parser.parse_args(argv)

    files = generate(args.out, args.count)
    listing = args.out.parent / "validate-files.txt"
    listing.write_text("\n".join(map(str, files)), encoding="utf-8")

    results: dict[str, tuple[float, float]] = {}
    bare = "bare YAML parsing (CSafeLoader)"
    results[bare] = timed([sys.executable, "-c", _BARE, str(listing)], args.repeat)
    results["pmsctl validate"] = timed(
        [str(BIN / "pmsctl"), "validate", str(args.out)], args.repeat
    )
    if not args.skip_check_jsonschema:
        results["check-jsonschema"] = timed(
            [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, files)],
            args.repeat,
        )

    n = args.count
    wall = {name: n / w for name, (w, _) in results.items()}
    cpu = {name: n / c for name, (_, c) in results.items()}
    print(f"{n} files, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"{'tool':34} {'wall s':>8} {'files/s':>8} {'CPU s':>8} {'files/CPU-s':>12} {'pmsctl (CPU)':>13}"
    )
    for name, (w, c) in results.items():
        ratio = cpu["pmsctl validate"] / cpu[name]
        print(f"{name:34} {w:8.2f} {wall[name]:8.0f} {c:8.2f} {cpu[name]:12.0f} {ratio:12.2f}x")
    line: dict[str, object] = {
        "bench": "validate",
        "files": n,
        "wall_seconds": {k: round(w, 3) for k, (w, _) in results.items()},
        "cpu_seconds": {k: round(c, 3) for k, (_, c) in results.items()},
        "files_per_second_wall": {k: round(v, 1) for k, v in wall.items()},
        "files_per_cpu_second": {k: round(v, 1) for k, v in cpu.items()},
        "slowdown_vs_bare_parsing_cpu": round(cpu[bare] / cpu["pmsctl validate"], 2),
        "slowdown_vs_bare_parsing_wall": round(wall[bare] / wall["pmsctl validate"], 2),
    }
    if "check-jsonschema" in results:
        line["speedup_vs_check_jsonschema_cpu"] = round(
            cpu["pmsctl validate"] / cpu["check-jsonschema"], 2
        )
        line["speedup_vs_check_jsonschema_wall"] = round(
            wall["pmsctl validate"] / wall["check-jsonschema"], 2
        )
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
