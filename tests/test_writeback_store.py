"""The writeback queue file: group commit, idempotent intake, state changes, reopening.

Real: SQLite files in a temporary directory, the writer thread, the asyncio loop. Nothing faked.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from reconciler.writeback import store as ops
from reconciler.writeback.errors import StoreError
from reconciler.writeback.model import Status, parse_request
from reconciler.writeback.store import Store


def request(caller: str, practice: str = "p1", text: str = "hi", patient: str = "7"):  # type: ignore[no-untyped-def]
    return parse_request(
        practice,
        {"callerId": caller, "type": "outgoingSms", "patientId": patient,
         "occurredAt": "2026-11-26T09:15:00Z", "text": text},
    )  # fmt: skip


async def test_concurrent_inserts_share_commits_and_all_land_in_arrival_order(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "q.db")
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
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "q.db")
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


async def test_one_failing_op_does_not_undo_the_others_in_its_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.db")
    store.open()
    try:

        def boom(conn: sqlite3.Connection) -> None:
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


async def test_records_move_through_sending_sent_failed_and_retry(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = Store(path)
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
    store = Store(path)
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


def test_a_queue_file_that_cannot_be_created_is_named_in_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"file/q\.db: cannot open the writeback queue"):
        ops.connect(blocker / "q.db")


async def test_grouped_inserts_answer_like_single_ones_and_store_rows_in_arrival_order(
    tmp_path: Path,
) -> None:
    """`Insert` ops of one group commit go in one statement (insert_many): new ones get the seq
    they were stored under, a caller id already stored or used earlier in the same commit is a
    replay, and the rows land in the order the requests arrived."""
    store = Store(tmp_path / "q.db")
    store.open()
    try:
        (old, _) = await store.run(ops.Insert(request("old"), Status.PENDING, 1.0))
        statements: list[str] = []
        assert store._conn is not None
        store._conn.set_trace_callback(statements.append)
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


async def test_a_grouped_insert_that_fails_is_refused_alone(tmp_path: Path) -> None:
    """A failing op in a batch of Inserts makes the writer rerun the batch op by op: the other
    inserts are stored, the failing op's caller gets its error."""
    store = Store(tmp_path / "q.db")
    store.open()
    try:

        def boom(conn: sqlite3.Connection) -> None:
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
    tmp_path: Path,
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
        store = Store(tmp_path / f"{grouped}.db")
        store.open()
        try:
            for r in (a, b, c, d):
                await store.run(ops.Insert(r, Status.PENDING, 1.0))
            statements: list[str] = []
            assert store._conn is not None
            store._conn.set_trace_callback(statements.append)
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


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_the_queue_files_are_private_to_their_owner_whatever_the_umask(
    tmp_path: Path,
) -> None:
    import os

    old = os.umask(0o002)  # a typical shared-group umask: files 0664, folders 0775
    try:
        folder = tmp_path / "state" / ".pmsctl"
        store = Store(folder / "writebacks.db")
        store.open()
        try:
            await store.run(ops.Insert(request("m1"), Status.PENDING, ops.now()))
            assert store.read(lambda c: ops.counts(c))["pending"] == 1  # the reader made -shm too
            files = {p.name: _mode(p) for p in folder.iterdir()}
        finally:
            store.close()
        assert _mode(folder) == 0o700
        assert files.pop("writebacks.db") == 0o600
        assert files == {"writebacks.db-wal": 0o600, "writebacks.db-shm": 0o600}

        # A file left readable by an older version (or a copy) is made private on open.
        loose = tmp_path / "loose.db"
        ops.connect(loose).close()
        os.chmod(loose, 0o644)
        ops.connect(loose).close()
        assert _mode(loose) == 0o600
    finally:
        os.umask(old)
