"""`pmsctl simulate`: run the PMS simulator (Open Dental API + bridge agent API) until Ctrl-C.

Registers every practice found in the PracticeWriteback YAML files under `--practices` (reading
only `spec.practiceId` and `spec.pms.type`, so it runs on files the validator would reject for
other reasons), prints each practice's base URL and the simulator-made credentials, and serves
with the simulated clock ticking. The credentials are made up by the simulator for development;
they are not real PMS credentials.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pms_drivers import records


def register(sub: Any) -> None:
    """Add the `simulate` subcommand."""
    p = sub.add_parser(
        "simulate",
        help="run the PMS simulator (Open Dental and bridge agent APIs) on loopback",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8830, help="port to listen on (default 8830; 0 = any)"
    )
    p.add_argument(
        "--db", default=":memory:", help="SQLite file for the state, or :memory: (default)"
    )
    p.add_argument(
        "--practices", metavar="PATH", help="a PracticeWriteback YAML file or a folder of them"
    )
    p.add_argument(
        "--tick-seconds",
        type=float,
        default=2.0,
        help="real seconds between clock ticks (default 2)",
    )
    p.add_argument(
        "--tick-minutes", type=float, default=1.0, help="simulated minutes per tick (default 1)"
    )
    p.add_argument(
        "--no-autotick",
        action="store_true",
        help="keep the simulated clock still (drive it via POST /_admin/advance)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=50.0,
        help="requests per second per practice (default 50)",
    )
    p.set_defaults(func=run)


class PracticesError(Exception):
    """A practices file could not be read; the message names the file and the field."""


def find_practices(path: Path) -> list[tuple[str, str, str]]:
    """(practice id, PMS type, file) for every PracticeWriteback document under `path`."""
    import yaml

    if not path.exists():
        raise PracticesError(f"{path}: no such file or folder (pass --practices PATH)")
    files = sorted(path.rglob("*.y*ml")) if path.is_dir() else [path]
    found: list[tuple[str, str, str]] = []
    for file in files:
        try:
            docs = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError) as exc:
            raise PracticesError(f"{file}: cannot read YAML: {exc}") from exc
        for doc in docs:
            if (
                not isinstance(doc, dict)
                or doc.get("kind", "PracticeWriteback") != "PracticeWriteback"
            ):
                continue
            spec = doc.get("spec")
            if not isinstance(spec, dict):
                raise PracticesError(
                    f"{file}: spec: missing; a PracticeWriteback needs spec.practiceId and spec.pms.type"
                )
            pid = spec.get("practiceId")
            pms = spec.get("pms", {}).get("type") if isinstance(spec.get("pms"), dict) else None
            if not isinstance(pid, str) or not pid:
                raise PracticesError(f"{file}: spec.practiceId: missing or not a string")
            if pms not in records.RECORDS:
                raise PracticesError(
                    f"{file}: spec.pms.type: {pms!r} is not one of {', '.join(records.RECORDS)}"
                )
            found.append((pid, pms, str(file)))
    return found


def run(args: argparse.Namespace) -> int:
    """Run `pmsctl simulate`; returns the exit code."""
    import asyncio
    import sqlite3

    try:
        practices = find_practices(Path(args.practices)) if args.practices else []
    except PracticesError as exc:
        print(f"pmsctl simulate: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, practices))
    except OSError as exc:
        print(f"pmsctl simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, sqlite3.Error) as exc:  # bad --tick-*/--rate-limit, --db not SQLite
        print(
            f"pmsctl simulate: {exc} (--db {args.db})"
            if isinstance(exc, sqlite3.Error)
            else f"pmsctl simulate: {exc}",
            file=sys.stderr,
        )
        return 2


async def _serve(args: argparse.Namespace, practices: list[tuple[str, str, str]]) -> int:
    import asyncio
    import signal

    from pms_simulator import Simulator

    sim = Simulator(
        args.db,
        autotick=not args.no_autotick,
        tick_seconds=args.tick_seconds,
        tick_minutes=args.tick_minutes,
        rate_limit_per_second=args.rate_limit,
        burst=max(1.0, args.rate_limit * 2),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim.serve(args.host, args.port) as url:
        rows = []
        for pid, pms, _file in practices:
            creds = sim.add_practice(pid, pms)
            rows.append(
                (pid, pms, sim.base_url(pms), " ".join(f"{k}={v}" for k, v in creds.items()))
            )
        print(f"PMS simulator listening on {url} (admin API: {url}/_admin)")
        print(f"simulated clock: {sim.now.isoformat()}, " + (
            f"{args.tick_minutes:g} simulated min every {args.tick_seconds:g} s" if not args.no_autotick
            else "still (POST /_admin/advance moves it)"))  # fmt: skip
        if rows:
            print(
                "Simulator credentials below are made up by the simulator (not real PMS credentials):"
            )
            _table(("PRACTICE", "PMS", "BASE URL", "SIMULATOR CREDENTIALS"), rows)
        else:
            print(
                "No practices yet: pass --practices PATH or POST /_admin/practices {practiceId, pms}."
            )
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
    sim.close()
    print("PMS simulator stopped.", flush=True)
    return 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
