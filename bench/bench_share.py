"""Benchmark: what `pmsctl operator --share` costs its replicas and PostgreSQL at fleet size.

N replicas (`SharedFleet` over `FleetClaims`, each with its own connection, in this process)
know the same `--practices` practices; their apply/forget only count, so what is measured is
the sharing itself: settling (every replica looks until the assignment is stable), the share of
each, one steady look (the members read from `pg_locks`, the buckets compared, nothing moving),
and the advisory locks the fleet holds against the room in PostgreSQL's lock table. Then one
replica leaves and one joins: the practices that moved. PostgreSQL is a server started here
(tests/pg.py) or `--pg-url`.

    .venv/bin/python bench/bench_share.py                          # 10,000 practices, 3 replicas
    .venv/bin/python bench/bench_share.py --practices 1000 --looks 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import tests_pg  # noqa: E402


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """`url`, or a PostgreSQL server started for the run from tests/pg.py."""
    if url:
        yield url
        return
    pg = tests_pg()
    base = Path(tempfile.mkdtemp(prefix="pmsctl-bench-pg-"))
    try:
        with pg.start_server(base) as server:
            yield server.database("bench_share")
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    import psycopg

    from reconciler.engine import ring
    from reconciler.kube.membership import SharedFleet
    from reconciler.stores.claims import FleetClaims, lock_space
    from reconciler.stores.postgres import PostgresBackend

    running: dict[str, str] = {}  # practice key -> replica
    twice = 0

    def replica(label: str) -> SharedFleet:
        async def apply(body: Mapping[str, Any]) -> None:
            nonlocal twice
            key = body["metadata"]["name"]
            if running.get(key, label) != label:
                twice += 1
            running[key] = label

        async def forget(key: str) -> None:
            running.pop(key.split("/")[1], None)

        return SharedFleet(FleetClaims(PostgresBackend(url), "bench"), apply=apply, forget=forget)

    bodies = [
        {
            "metadata": {"namespace": "c", "name": f"p{n:05d}", "uid": f"u{n}", "generation": 1},
            "spec": {"practiceId": f"practice-{n:05d}"},
        }
        for n in range(args.practices)
    ]
    fleet = {f"r{i}": replica(f"r{i}") for i in range(args.replicas)}
    for f in fleet.values():
        for b in bodies:
            await f.observe(None, b)

    def settled() -> bool:
        """Every replica holds exactly the buckets the ring gives it, and runs their practices."""
        members = sorted(f.claims.name or "" for f in fleet.values())
        return len(running) == args.practices and all(
            f.members == members and f.claims.held == ring.buckets_of(f.claims.name or "", members)
            for f in fleet.values()
        )

    async def settle() -> tuple[float, int]:
        start, rounds = time.perf_counter(), 0
        while True:
            rounds += 1
            for f in fleet.values():
                await f.sync()
            if settled():
                return time.perf_counter() - start, rounds

    settle_s, rounds = await settle()
    shares = {label: sum(1 for r in running.values() if r == label) for label in fleet}
    first = next(iter(fleet.values()))
    start = time.perf_counter()
    for _ in range(args.looks):
        await first.sync()
    look_ms = (time.perf_counter() - start) / args.looks * 1000
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), current_setting('max_locks_per_transaction')::int"
            " * current_setting('max_connections')::int FROM pg_locks"
            " WHERE locktype = 'advisory' AND classid IN (%s::bigint::oid, %s::bigint::oid)",
            (lock_space("bench", "member"), lock_space("bench", "bucket")),
        ).fetchone()
    locks, room = row if row else (0, 0)

    before = dict(running)
    leaving = fleet.pop("r0")
    await leaving.stop()
    leaving.claims.close()
    for key in [k for k, r in running.items() if r == "r0"]:
        del running[key]
    await settle()
    left_moved = sum(1 for k in running if running[k] != before[k])
    assert len(running) == args.practices
    before = dict(running)
    fleet["r-new"] = replica("r-new")
    for b in bodies:
        await fleet["r-new"].observe(None, b)
    await settle()
    joined_moved = sum(1 for k in running if running[k] != before[k])
    for f in fleet.values():
        f.claims.close()
    return {
        "practices": args.practices,
        "replicas": args.replicas,
        "settle_s": round(settle_s, 3),
        "settle_rounds": rounds,
        "shares": shares,
        "steady_look_ms": round(look_ms, 2),
        "advisory_locks": int(locks),
        "lock_table_room": int(room),
        "moved_on_leave": left_moved,
        "moved_on_join": joined_moved,
        "applied_on_two_replicas": twice,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--practices", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--looks", type=int, default=20, help="steady looks to time")
    parser.add_argument("--pg-url", default=None, help="an existing database (default: start one)")
    args = parser.parse_args()
    with postgres(args.pg_url) as url:
        result = asyncio.run(run(args, url))
    n = result["practices"]
    print(f"{n} practices, {result['replicas']} replicas")
    print(f"  settled in {result['settle_s']} s ({result['settle_rounds']} rounds of looks)")
    print(f"  shares: {result['shares']}")
    print(f"  one steady look: {result['steady_look_ms']} ms")
    print(
        f"  advisory locks held: {result['advisory_locks']} (lock table room {result['lock_table_room']})"
    )
    print(
        f"  a replica leaving moved {result['moved_on_leave']} ({result['moved_on_leave'] / n:.0%})"
    )
    print(
        f"  a replica joining moved {result['moved_on_join']} ({result['moved_on_join'] / n:.0%})"
    )
    print(f"  applied on two replicas at once: {result['applied_on_two_replicas']}")
    print(json.dumps(result))
    return 0 if result["applied_on_two_replicas"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
