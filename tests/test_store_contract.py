"""The store contract: the writeback queue and the poller cursors behave the same on every backend.

Each test runs on the embedded SQLite files and on a real PostgreSQL server (`pg_server`,
tests/pg.py): group commit, idempotent intake, state changes, reopening, grouped statements,
cursors. Real: SQLite files in a temporary directory or a fresh database of the test's own, the
writer thread, the asyncio loop. Nothing faked.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine.cursors import CursorStore, SqliteCursorStore
from reconciler.stores.postgres import PgConn, PostgresBackend
from reconciler.writeback import store as ops
from reconciler.writeback.errors import StoreError
from reconciler.writeback.model import Status, parse_request
from reconciler.writeback.store import GroupCommitStore, QueueStore, Store


def request(caller: str, practice: str = "p1", text: str = "hi", patient: str = "7"):  # type: ignore[no-untyped-def]
    return parse_request(
        practice,
        {"callerId": caller, "type": "outgoingSms", "patientId": patient,
         "occurredAt": "2026-11-26T09:15:00Z", "text": text},
    )  # fmt: skip


@dataclass
class Backing:
    """One backend under test: `make(name)` a queue store, `cursors(name)` a cursor store; the
    same name is the same queue (file or database)."""

    kind: str
    make: Callable[[str], QueueStore]
    cursors: Callable[[str], CursorStore]
    opened: list[Any] = field(default_factory=list)


@pytest.fixture(params=["sqlite", "postgresql"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    if request.param == "sqlite":
        yield Backing(
            "sqlite",
            lambda name: Store(tmp_path / f"{name}.db"),
            lambda name: SqliteCursorStore(tmp_path / f"{name}.db"),
        )
        return
    server = request.getfixturevalue("pg_server")
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    urls: dict[str, str] = {}

    def url(name: str) -> str:
        if name not in urls:
            urls[name] = server.database(f"t_{digest}_{name.lower()}")
        return urls[name]

    yield Backing(
        "postgresql",
        lambda name: PostgresBackend(url(name)).queue_store(),
        lambda name: PostgresBackend(url(name)).cursor_store(),
    )


def trace(store: QueueStore, sink: Callable[[str], object]) -> None:
    """Have the writer's connection report every statement it runs to `sink`."""
    assert isinstance(store, GroupCommitStore)
    conn = store._conn
    if isinstance(conn, sqlite3.Connection):
        conn.set_trace_callback(sink)
    else:
        assert isinstance(conn, PgConn)
        conn.trace = sink


async def test_concurrent_inserts_share_commits_and_all_land_in_arrival_order(
    backing: Backing,
) -> None:
    store = backing.make("q")
    store.open()
    try:
        results = await asyncio.gather(
            *(store.run(lambda c, i=i: ops.insert(c, request(f"c{i}"), status=Status.PENDING, now=1.0))
              for i in range(300))
        )  # fmt: skip
        assert all(created for _, created in results)
        assert store.commits < 300  # group commit: many requests per fsync
        head = store.read(lambda c: ops.open_head(c, "p1", 1000))
        assert [r.request.caller_id for r in head] == [f"c{i}" for i in range(300)]
    finally:
        store.close()


async def test_a_replayed_caller_id_returns_the_stored_record_and_adds_no_row(
    backing: Backing,
) -> None:
    store = backing.make("q")
    store.open()
    try:
        first, created = await store.run(
            lambda c: ops.insert(c, request("same"), status=Status.PENDING, now=1.0)
        )
        again, created_again = await store.run(
            lambda c: ops.insert(c, request("same", text="other"), status=Status.SKIPPED, now=2.0)
        )
        assert created and not created_again
        assert again.id == first.id and again.status is Status.PENDING
        assert again.fingerprint != request("same", text="other").fingerprint()
        assert store.read(lambda c: ops.counts(c, "p1")) == {
            "sent": 0, "skipped": 0, "pending": 1, "failed": 0,
        }  # fmt: skip
    finally:
        store.close()


async def test_one_failing_op_does_not_undo_the_others_in_its_batch(backing: Backing) -> None:
    store = backing.make("q")
    store.open()
    try:

        def boom(conn: ops.Conn) -> None:
            ops.insert(conn, request("bad"), status=Status.PENDING, now=1.0)
            raise RuntimeError("no")

        outcomes = await asyncio.gather(
            store.run(lambda c: ops.insert(c, request("a"), status=Status.PENDING, now=1.0)),
            store.run(boom),
            store.run(lambda c: ops.insert(c, request("b"), status=Status.PENDING, now=1.0)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], RuntimeError)
        ids = [r.request.caller_id for r in store.read(lambda c: ops.list_records(c))]
        assert ids == ["a", "b"]
    finally:
        store.close()


async def test_records_move_through_sending_sent_failed_and_retry(backing: Backing) -> None:
    store = backing.make("q")
    store.open()
    a = request("a")
    b = request("b")
    await store.run(lambda c: ops.insert(c, a, status=Status.PENDING, now=1.0))
    await store.run(lambda c: ops.insert(c, b, status=Status.PENDING, now=1.0))
    assert await store.run(lambda c: ops.mark_sending(c, a.id, now=2.0)) == 1
    assert await store.run(lambda c: ops.mark_sending(c, a.id, now=2.0)) == 2
    assert await store.run(lambda c: ops.mark_sent(c, a.id, "900", now=3.0))
    await store.run(lambda c: ops.mark_failed(c, b.id, "PmsRejected", "HTTP 400", now=3.0))
    assert await store.run(lambda c: ops.mark_sending(c, a.id, now=4.0)) == 0  # sent stays sent
    store.close()

    # Reopened: everything is still there.
    store = backing.make("q")
    store.open()
    try:
        sent = store.read(lambda c: ops.get(c, a.id))
        assert sent is not None and sent.status is Status.SENT and sent.pms_id == "900"
        assert sent.attempts == 2
        failed = store.read(lambda c: ops.list_records(c, statuses=["failed"]))
        assert [f.message for f in failed] == ["HTTP 400"]
        back = await store.run(lambda c: ops.retry(c, b.id, now=5.0))
        assert back is not None and back.status is Status.PENDING and back.attempts == 0
        assert await store.run(lambda c: ops.retry(c, a.id, now=5.0)) is None  # not failed
        assert store.read(lambda c: ops.practices_with_open(c)) == ["p1"]
    finally:
        store.close()


async def test_grouped_inserts_answer_like_single_ones_and_store_rows_in_arrival_order(
    backing: Backing,
) -> None:
    """`Insert` ops of one group commit go in one statement (insert_many): new ones get the seq
    they were stored under, a caller id already stored or used earlier in the same commit is a
    replay, and the rows land in the order the requests arrived."""
    store = backing.make("q")
    store.open()
    try:
        (old, _) = await store.run(ops.Insert(request("old"), Status.PENDING, 1.0))
        statements: list[str] = []
        trace(store, statements.append)
        results = await asyncio.gather(
            store.run(ops.Insert(request("a"), Status.PENDING, 2.0, target_type_id="11")),
            store.run(ops.Insert(request("old", text="changed"), Status.PENDING, 2.0)),
            store.run(
                ops.Insert(
                    request("b", practice="p2"),
                    Status.SKIPPED,
                    2.0,
                    reason="NotAllowed",
                    message="off",
                )
            ),
            store.run(ops.Insert(request("a", text="again"), Status.PENDING, 2.0)),
            store.run(ops.Insert(request("c"), Status.PENDING, 2.0)),
        )
        assert store.commits == 2  # the first insert, then the other five in one commit
        inserts = [s for s in statements if s.startswith("INSERT")]
        assert len(inserts) == 1 and len(statements) == 4, statements  # BEGIN SELECT INSERT COMMIT
        created = [(r.request.caller_id, was_new) for r, was_new in results]
        assert created == [("a", True), ("old", False), ("b", True), ("a", False), ("c", True)]
        assert (
            results[1][0].fingerprint
            == old.fingerprint
            != request("old", "p1", "changed").fingerprint()
        )
        assert results[3][0].fingerprint != request("a", text="again").fingerprint()
        rows = store.read(lambda c: ops.list_records(c))
        new = [(results[k][0].seq, name) for k, name in ((0, "a"), (2, "b"), (4, "c"))]
        assert [(r.seq, r.request.caller_id) for r in rows] == [(old.seq, "old"), *new]
        assert [r.seq for r in rows] == sorted({r.seq for r in rows})
        by_id = {r.id: r for r in rows}
        for record, was_new in results:
            stored = by_id[record.id]
            assert (stored.status, stored.reason, stored.target_type_id, stored.created_at) == (
                record.status, record.reason, record.target_type_id, record.created_at,
            )  # fmt: skip
            if was_new:
                assert stored == record
    finally:
        store.close()


async def test_a_grouped_insert_that_fails_is_refused_alone(backing: Backing) -> None:
    """A failing op in a batch of Inserts makes the writer rerun the batch op by op: the other
    inserts are stored, the failing op's caller gets its error."""
    store = backing.make("q")
    store.open()
    try:

        def boom(conn: ops.Conn) -> None:
            raise RuntimeError("no")

        outcomes = await asyncio.gather(
            store.run(ops.Insert(request("a"), Status.PENDING, 1.0)),
            store.run(boom),
            store.run(ops.Insert(request("b"), Status.PENDING, 1.0)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], RuntimeError)
        assert [r.request.caller_id for r in store.read(lambda c: ops.list_records(c))] == [
            "a",
            "b",
        ]
    finally:
        store.close()


async def test_grouped_state_changes_end_where_the_same_changes_one_by_one_end(
    backing: Backing,
) -> None:
    """The drainer's `Change`s of one group commit are applied with one UPDATE per kind
    (apply_changes); the records end exactly as when each change is committed on its own."""
    S, SENT, F, D = (ops.ChangeKind.SENDING, ops.ChangeKind.SENT, ops.ChangeKind.FAILED,
                     ops.ChangeKind.DEFER)  # fmt: skip
    a, b, c, d = (request(x) for x in "abcd")
    changes = [
        ops.Change(S, a.id, 2.0), ops.Change(S, b.id, 2.0), ops.Change(S, a.id, 2.5),
        ops.Change(SENT, a.id, 3.0, pms_id="900"), ops.Change(S, c.id, 3.0),
        ops.Change(F, b.id, 3.0, reason="PmsRejected", message="HTTP 400"),
        ops.Change(D, c.id, 3.5, message="HTTP 503", until=60.0), ops.Change(S, d.id, 4.0),
        ops.Change(S, a.id, 5.0),  # a is sent: this one changes nothing
    ]  # fmt: skip
    ends = []
    for grouped in (True, False):
        store = backing.make(f"g{int(grouped)}")
        store.open()
        try:
            for r in (a, b, c, d):
                await store.run(ops.Insert(r, Status.PENDING, 1.0))
            statements: list[str] = []
            trace(store, statements.append)
            if grouped:
                await asyncio.gather(*(store.run(ch) for ch in changes))
                assert store.commits == 5
                updates = [s for s in statements if s.startswith("UPDATE")]
                grouped_updates = [s for s in updates if "FROM (VALUES" in s]
                # One per kind, and the `sending` after a's final change on its own.
                assert (len(grouped_updates), len(updates)) == (4, 5), statements
            else:
                for ch in changes:
                    await store.run(ch)
            ends.append(store.read(lambda c: ops.list_records(c)))
        finally:
            store.close()
    assert ends[0] == ends[1]
    by_caller = {r.request.caller_id: r for r in ends[0]}
    assert (by_caller["a"].status, by_caller["a"].attempts, by_caller["a"].pms_id) == (
        Status.SENT, 2, "900",
    )  # fmt: skip
    assert (by_caller["b"].status, by_caller["b"].reason) == (Status.FAILED, "PmsRejected")
    assert (by_caller["c"].status, by_caller["c"].next_attempt_at) == (Status.PENDING, 60.0)
    assert (by_caller["d"].status, by_caller["d"].attempts) == (Status.SENDING, 1)


def test_a_group_of_cursors_is_saved_in_one_transaction_or_not_at_all(backing: Backing) -> None:
    """`put_many`, which the engine's cursor group commit uses, on both backends: a group lands
    whole, and a group with one bad row leaves the database and the cache as they were."""
    store = backing.cursors("g")
    try:
        store.put_many([("ns/a", "patients", "p1"), ("ns/a", "appointments", "a1")])  # type: ignore[attr-defined]
        store.put("ns/b", "patients", "b1")
        with pytest.raises(StoreError if backing.kind == "postgresql" else sqlite3.Error):
            store.put_many(  # type: ignore[attr-defined]
                [("ns/a", "patients", "p2"), ("ns/b", "patients", None)]  # NOT NULL cursor
            )
        assert store.get("ns/a", "patients") == "p1"
    finally:
        store.close()
    reopened = backing.cursors("g")
    try:
        assert reopened.all() == {  # type: ignore[attr-defined]
            ("ns/a", "patients"): "p1",
            ("ns/a", "appointments"): "a1",
            ("ns/b", "patients"): "b1",
        }
    finally:
        reopened.close()


def test_cursors_are_saved_replaced_forgotten_and_survive_a_reopen(backing: Backing) -> None:
    store = backing.cursors("c")
    assert store.get("ns/a", "patients") is None
    store.put("ns/a", "patients", "c1")
    store.put("ns/a", "patients", "c2")
    store.put("ns/a", "appointments", "x")
    store.put("ns/b", "patients", "y")
    store.close()
    store = backing.cursors("c")  # a new process: nothing cached
    try:
        assert store.get("ns/a", "patients") == "c2"
        assert store.get("ns/a", "appointments") == "x"
        store.forget("ns/a")
        assert store.get("ns/a", "patients") is None
        assert store.all() == {("ns/b", "patients"): "y"}  # type: ignore[attr-defined]
    finally:
        store.close()
    again = backing.cursors("c")
    try:
        assert again.get("ns/a", "appointments") is None  # forgotten for good, not just uncached
    finally:
        again.close()


async def test_claims_are_exclusive_between_stores_sharing_a_queue(backing: Backing) -> None:
    """Two stores on one queue (two processes): a practice claimed by one cannot be claimed by
    the other until released, and closing a store (a process that dies) drops its claims. The
    SQLite file has one process by design: every claim succeeds."""
    one, two = backing.make("q"), backing.make("q")
    one.open()
    two.open()
    try:
        assert await one.claim("p1")
        shared = backing.kind != "sqlite"
        assert await two.claim("p1") is not shared
        assert await two.claim("p2")
        if shared:
            await one.release("p1")
            assert await two.claim("p1")
            assert not await one.claim("p1")
            two.close()  # stops holding p1 and p2
            assert await one.claim("p1") and await one.claim("p2")
    finally:
        one.close()
        two.close()


async def test_a_claim_whose_connection_died_no_longer_holds(backing: Backing) -> None:
    """`holds()`, asked before every PMS write: true while the claim stands, false once its
    session is gone (PostgreSQL: the backend terminated, as when a network cut or a database
    restart drops it) even after the store has connected again for other claims, and false for
    a practice never claimed or released. The SQLite file has one process: always true."""
    one, two = backing.make("h"), backing.make("h")
    one.open()
    two.open()
    try:
        assert await one.claim("p1")
        assert await one.holds("p1")
        if backing.kind == "sqlite":
            assert await one.holds("never-claimed")
            return
        assert not await one.holds("never-claimed")
        await one.release("p1")
        assert not await one.holds("p1")
        assert await one.claim("p1")
        lock_conn = one._lock_conn  # type: ignore[attr-defined]
        assert lock_conn is not None
        backend_pid = lock_conn.info.backend_pid
        with one.backend.connect() as admin:  # type: ignore[attr-defined]
            admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,))
        assert not await one.holds("p1")
        assert await two.claim("p1")  # the next owner may take it at once
        assert await one.claim("p2")  # a new claim connection ...
        assert not await one.holds("p1")  # ... does not hold what the old one held
        assert await one.holds("p2")
    finally:
        one.close()
        two.close()


async def test_closing_the_store_lets_a_read_in_progress_finish(backing: Backing) -> None:
    """A read still running on a worker thread when the store closes (a drainer sweep whose
    task was cancelled at shutdown) finishes on its connection, which is closed after it:
    closing it under the running statement crashed the interpreter."""
    store = backing.make("r")
    store.open()
    started, go = threading.Event(), threading.Event()

    def slow(conn: ops.Conn) -> list[Any]:
        started.set()
        assert go.wait(10)
        return ops.list_records(conn)  # the connection, used after close() was called

    reading = asyncio.get_running_loop().run_in_executor(None, store.read, slow)
    assert await asyncio.to_thread(started.wait, 10)
    store.close()
    go.set()
    assert await reading == []


async def test_one_caller_id_sent_through_two_stores_at_once_is_stored_once(
    backing: Backing,
) -> None:
    """Two processes on one queue take the same requests at the same time (a client retrying
    on another replica): each caller id is stored once, one answer says created, and both
    answers carry the same record."""
    one, two = backing.make("q"), backing.make("q")
    one.open()
    two.open()
    try:
        results = await asyncio.gather(
            *(s.run(ops.Insert(request(f"c{i}"), Status.PENDING, 1.0))
              for i in range(60) for s in (one, two))
        )  # fmt: skip
        answers: dict[str, list[tuple[int, bool]]] = {}
        for record, created in results:
            answers.setdefault(record.id, []).append((record.seq, created))
        assert len(answers) == 60
        for got in answers.values():
            assert sorted(created for _, created in got) == [False, True]
            assert len({seq for seq, _ in got}) == 1
        assert len(one.read(lambda c: ops.list_records(c))) == 60
    finally:
        one.close()
        two.close()
