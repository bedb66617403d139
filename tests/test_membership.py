"""Replicas sharing the fleet, below Kopf: the members and bucket claims in a real PostgreSQL
(`reconciler.stores.claims`) and the practices each replica runs (`reconciler.kube.membership`).

Real: the PostgreSQL server of tests/pg.py (each test its own database), the advisory locks,
`pg_locks`, a backend terminated by the server. The apply/forget callbacks record which replica
runs which practice, so every step can check that no practice runs on two replicas. `sync()` is
called directly, one replica after the other, so every disagreement between the replicas' views
of the members is a step of the test, not a race.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from timing import eventually

from reconciler.engine import ring
from reconciler.engine.clock import FakeClock
from reconciler.kube.membership import FENCE_AFTER, SharedFleet, keep_catalogs
from reconciler.kube.run import share_group
from reconciler.stores.claims import DEAD_AFTER, FleetClaims, OwnedQueueStore, lock_space
from reconciler.stores.postgres import PostgresBackend

KEYS = [f"clinics/p{n:03d}" for n in range(60)]


def body(key: str, generation: int = 1, **meta: Any) -> dict[str, Any]:
    ns, name = key.split("/")
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", "generation": generation,
                     **meta},
        "spec": {"practiceId": f"pid-{name}"},
    }  # fmt: skip


class Fleet:
    """Replicas over one database, and who runs what."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: dict[str, set[str]] = {}  # key -> replicas running it
        self.applies: list[tuple[str, str]] = []
        self.replicas: dict[str, SharedFleet] = {}

    def add(
        self, label: str, clock: FakeClock | None = None, gate: asyncio.Event | None = None
    ) -> SharedFleet:
        claims = FleetClaims(PostgresBackend(self.url), "test-group")

        async def apply(b: Mapping[str, Any]) -> None:
            key = f"{b['metadata']['namespace']}/{b['metadata']['name']}"
            if gate is not None:  # a slow PMS: the reconcile waits
                await gate.wait()
            self.running.setdefault(key, set()).add(label)
            self.applies.append((label, key))

        async def forget(key: str) -> None:
            self.running.setdefault(key, set()).discard(label)

        fleet = SharedFleet(claims, apply=apply, forget=forget, clock=clock)
        self.replicas[label] = fleet
        return fleet

    def check_no_overlap(self) -> None:
        twice = {k: r for k, r in self.running.items() if len(r) > 1}
        assert not twice, f"practices running on two replicas: {twice}"

    def owners(self) -> dict[str, str]:
        self.check_no_overlap()
        return {k: next(iter(r)) for k, r in self.running.items() if r}

    async def sync(self, *labels: str) -> None:
        for label in labels:
            await self.replicas[label].sync()
            self.check_no_overlap()

    def close(self) -> None:
        for f in self.replicas.values():
            f.claims.close()


@pytest.fixture
def fleet(pg_url: str) -> Iterator[Fleet]:
    f = Fleet(pg_url)
    yield f
    f.close()


async def observe_all(replica: SharedFleet, keys: list[str] = KEYS) -> None:
    for key in keys:
        await replica.observe(None, body(key))


async def test_replicas_divide_the_practices_and_never_run_one_twice(fleet: Fleet) -> None:
    a = fleet.add("a")
    await observe_all(a)
    await fleet.sync("a")
    assert len(fleet.owners()) == len(KEYS) and set(fleet.owners().values()) == {"a"}

    b = fleet.add("b")
    await observe_all(b)
    # b sees two members and wants half, but a still holds those claims: b gets nothing yet.
    await fleet.sync("b")
    assert set(fleet.owners().values()) == {"a"}
    # a gives its lost half up (forgets, then releases); b takes it on its next look.
    await fleet.sync("a", "b")
    owners = fleet.owners()
    assert len(owners) == len(KEYS)
    members = sorted([a.claims.name or "", b.claims.name or ""])
    assert a.members == b.members == members
    for key, label in owners.items():
        want = ring.owner(f"pid-{key.split('/')[1]}", members)
        assert fleet.replicas[label].claims.name == want
    shares = {label: sum(1 for o in owners.values() if o == label) for label in "ab"}
    assert all(10 <= n <= 50 for n in shares.values()), shares

    # A third member: only practices moving to it move, about a third.
    before = dict(owners)
    c = fleet.add("c")
    await observe_all(c)
    await fleet.sync("c", "a", "b", "c")
    after = fleet.owners()
    assert len(after) == len(KEYS)
    moved = [k for k in KEYS if after[k] != before[k]]
    assert {after[k] for k in moved} == {"c"}
    assert 0.15 <= len(moved) / len(KEYS) <= 0.5, len(moved)


async def test_a_replica_that_dies_is_replaced_at_the_next_look(fleet: Fleet, pg_url: str) -> None:
    a, b = fleet.add("a"), fleet.add("b")
    await observe_all(a)
    await observe_all(b)
    await fleet.sync("a", "b", "a", "b")
    assert set(fleet.owners().values()) == {"a", "b"}
    # a's process dies: the server ends its session, and its locks go with it at once.
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND objsubid = 2 AND classid = %s::bigint::oid AND objid = %s::bigint::oid",
            (lock_space("test-group", "member"), int(a.claims.name or 0)),
        )
    fleet.running = {k: r - {"a"} for k, r in fleet.running.items()}  # a is gone
    await fleet.sync("b")
    assert b.members == [b.claims.name]
    assert len(fleet.owners()) == len(KEYS) and set(fleet.owners().values()) == {"b"}


async def test_a_replica_that_loses_the_store_stops_every_practice(
    fleet: Fleet, pg_url: str
) -> None:
    a = fleet.add("a")
    await observe_all(a)
    await fleet.sync("a")
    assert len(a.applied) == len(KEYS)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND objsubid = 2 AND classid = %s::bigint::oid",
            (lock_space("test-group", "member"),),
        )
    # The next look finds the connection gone: every practice stops, the claims are empty...
    await a.sync()
    assert not a.applied and not any(fleet.running.values())
    assert a.claims.held == frozenset()
    # ...and the one after joins again and takes them back.
    await a.sync()
    assert len(a.applied) == len(KEYS)


async def test_a_replica_cut_off_from_the_store_stops_its_practices_before_it_is_replaced(
    fleet: Fleet, pg_url: str
) -> None:
    clock = FakeClock()
    a = fleet.add("a", clock)
    await observe_all(a)
    await fleet.sync("a")
    assert len(a.applied) == len(KEYS)
    assert gauge("pmsctl_share_buckets") == ring.BUCKETS
    assert gauge("pmsctl_share_members") == 1 and gauge("pmsctl_share_fenced") == 0
    assert DEAD_AFTER > FENCE_AFTER
    with psycopg.connect(pg_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2"
            " AND classid = %s::bigint::oid",
            (lock_space("test-group", "member"),),
        ).fetchone()
    assert row is not None
    backend = int(row[0])
    # The server stops answering this replica (its backend frozen: a network cut, as the
    # replica sees it); the next look hangs.
    os.kill(backend, signal.SIGSTOP)
    try:
        look = asyncio.create_task(a.sync())
        await clock.advance(FENCE_AFTER - 1)
        assert not await a.check_fence()
        assert len(a.applied) == len(KEYS)
        await clock.advance(1)
        assert await a.check_fence()
        assert a.fenced and not a.applied and not any(fleet.running.values())
        assert gauge("pmsctl_share_fenced") == 1 and gauge("pmsctl_share_buckets") == 0
        assert not look.done()
    finally:
        os.kill(backend, signal.SIGCONT)
    # The server answers again and still holds the claims: the look finishes, and this replica
    # runs its practices again.
    await look
    assert not a.fenced and len(a.applied) == len(KEYS)
    assert gauge("pmsctl_share_fenced") == 0
    assert gauge("pmsctl_share_buckets") == ring.BUCKETS


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"group": "test-group"})


async def test_the_looks_go_on_while_a_long_takeover_applies(fleet: Fleet) -> None:
    clock, slow_pms = FakeClock(), asyncio.Event()
    a = fleet.add("a", clock, slow_pms)
    await observe_all(a)
    # Every reconcile of the takeover waits on the PMS; the looks must not wait for them, or
    # the replica would fence itself (and stop everything) in the middle of a big takeover.
    for _ in range(int(FENCE_AFTER) + 2):
        look = asyncio.create_task(a.sync(wait=False))
        await eventually(look.done, 10, "a look that does not wait for the applies")
        await clock.advance(1)
        assert not await a.check_fence()
    assert not any(fleet.running.values())
    slow_pms.set()
    await a.sync()
    assert len(fleet.owners()) == len(KEYS) and not a.fenced


async def test_status_patches_do_not_reapply_but_spec_changes_and_deletes_do(
    fleet: Fleet,
) -> None:
    a = fleet.add("a")
    await observe_all(a)
    await fleet.sync("a")
    key = KEYS[0]
    fleet.applies.clear()
    await a.observe("MODIFIED", {**body(key), "status": {"conditions": []}})
    assert fleet.applies == []
    await a.observe("MODIFIED", body(key, generation=2))
    assert fleet.applies == [("a", key)]
    await a.observe(
        "MODIFIED",
        body(key, generation=2, annotations={"writeback.dental.dev/reconcile-requested-at": "t1"}),
    )
    assert fleet.applies == [("a", key), ("a", key)]
    await a.observe("DELETED", body(key, generation=2))
    assert fleet.running[key] == set() and key not in a.applied


async def test_a_practice_created_while_running_goes_to_its_owner_only(fleet: Fleet) -> None:
    a, b = fleet.add("a"), fleet.add("b")
    await fleet.sync("a", "b", "a", "b")
    for key in KEYS:
        await a.observe("ADDED", body(key))
        await b.observe("ADDED", body(key))
        fleet.check_no_overlap()
    owners = fleet.owners()
    assert len(owners) == len(KEYS) and set(owners.values()) == {"a", "b"}


async def test_only_the_owner_claims_a_practice_for_delivery(fleet: Fleet, pg_url: str) -> None:
    a, b = fleet.add("a"), fleet.add("b")
    await fleet.sync("a", "b", "a", "b")
    pid = "pid-p000"
    owner, other = (a, b) if a.claims.owns(pid) else (b, a)
    assert not other.claims.owns(pid)
    queues = [OwnedQueueStore(PostgresBackend(pg_url), f.claims.owns) for f in (owner, other)]
    try:
        assert await queues[1].claim(pid) is False
        assert await queues[0].claim(pid) is True
    finally:
        await queues[0].release(pid)
        for q in queues:
            q.close()


def test_the_claims_of_the_whole_fleet_stay_within_the_lock_table(
    fleet: Fleet, pg_url: str
) -> None:
    claims = [FleetClaims(PostgresBackend(pg_url), "big") for _ in range(3)]
    try:
        names = [c.join() for c in claims]
        for c, name in zip(claims, names, strict=True):
            c.claim(ring.buckets_of(name, names))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*), current_setting('max_locks_per_transaction')::int"
                " * current_setting('max_connections')::int FROM pg_locks"
                " WHERE locktype = 'advisory' AND classid IN (%s::bigint::oid, %s::bigint::oid)",
                (lock_space("big", "member"), lock_space("big", "bucket")),
            ).fetchone()
        assert row is not None
        held, room = row
        print(f"advisory locks held by 3 replicas: {held}; lock table room: {room}")
        # Every bucket once, plus one lock per member, however many practices there are.
        assert held == ring.BUCKETS + 3
        assert sum(len(c.held) for c in claims) == ring.BUCKETS
    finally:
        for c in claims:
            c.close()


async def test_a_stopped_replica_applies_nothing_more(fleet: Fleet) -> None:
    a = fleet.add("a")
    await observe_all(a, KEYS[:5])
    await fleet.sync("a")
    await a.stop()
    await a.observe("ADDED", body(KEYS[5]))
    assert KEYS[5] not in fleet.running and len(a.applied) == 5


async def test_catalogs_outlive_a_practice_leaving_a_replica() -> None:
    seen: list[tuple[str, object]] = []

    async def listener(key: str, catalog: Any) -> None:
        seen.append((key, catalog))

    publish = keep_catalogs(listener)
    await publish("clinics/a", None)  # the practice moved to another replica: keep its catalog
    catalog = object()
    await publish("clinics/a", catalog)
    assert seen == [("clinics/a", catalog)]


def test_replicas_with_the_same_scope_are_one_group_whatever_the_spelling() -> None:
    def args(selector: str | None) -> argparse.Namespace:
        return argparse.Namespace(selector=selector)

    assert share_group(args("shard=a, tier=x"), ["b", "a"]) == share_group(
        args("tier=x,shard=a"), ["a", "b"]
    )
    assert share_group(args("shard=a"), None) != share_group(args("shard=b"), None)
    assert share_group(args(None), ["a"]) != share_group(args(None), None)
    assert lock_space("g1", "member") != lock_space("g2", "member")
    assert lock_space("g1", "member") != lock_space("g1", "bucket")
    assert all(0 < lock_space(g, w) < 2**31 for g in ("", "g1") for w in ("member", "bucket"))
