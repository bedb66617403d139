"""Benchmark: files/second of `pmsctl validate`, `check-jsonschema` and bare YAML parsing.

Generates N realistic, valid practice files (default 10,000; `--count`) under bench/out/, then
times, in the same run and each as a fresh process over the same files:

- `pmsctl validate DIR` (positions, duplicate keys, schema, cross-document checks);
- `check-jsonschema --schemafile schemas/... FILES` (the same schema; its YAML loader is ruamel);
- bare parsing: a Python process that reads every file and calls `yaml.load(CSafeLoader)`.

Each measurement is the best of `--repeat` runs (default 1). Prints a small table and one JSON
line (`{"bench": "validate", ...}`) for tooling. Nothing is faked; the figures depend on the
machine, so the README quotes a run with its date and core count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


def timed(cmd: list[str], repeat: int, expect: int = 0) -> float:
    """Best wall-clock seconds of `repeat` runs; the command must exit with `expect`."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False
        )
        elapsed = time.perf_counter() - start
        if proc.returncode != expect:
            raise SystemExit(f"{cmd[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
        best = min(best, elapsed)
    return best


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

    results: dict[str, float] = {}
    results["bare YAML parsing (CSafeLoader)"] = timed(
        [sys.executable, "-c", _BARE, str(listing)], args.repeat
    )
    results["pmsctl validate"] = timed(
        [str(BIN / "pmsctl"), "validate", str(args.out)], args.repeat
    )
    if not args.skip_check_jsonschema:
        results["check-jsonschema"] = timed(
            [str(BIN / "check-jsonschema"), "--schemafile", str(SCHEMA), *map(str, files)],
            args.repeat,
        )

    rates = {name: args.count / seconds for name, seconds in results.items()}
    mine = rates["pmsctl validate"]
    print(f"{args.count} files, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'tool':34} {'seconds':>8} {'files/s':>9} {'pmsctl is':>10}")
    for name, seconds in results.items():
        ratio = mine / rates[name]
        print(f"{name:34} {seconds:8.2f} {rates[name]:9.0f} {ratio:9.2f}x")
    line = {
        "bench": "validate",
        "files": args.count,
        "seconds": {k: round(v, 3) for k, v in results.items()},
        "files_per_second": {k: round(v, 1) for k, v in rates.items()},
    }
    if "check-jsonschema" in rates:
        line["speedup_vs_check_jsonschema"] = round(mine / rates["check-jsonschema"], 2)
    line["slowdown_vs_bare_parsing"] = round(rates["bare YAML parsing (CSafeLoader)"] / mine, 2)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
