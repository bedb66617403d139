"""The durable writeback queue: ops over a connection, committed by one writer thread with group
commit. SQLite (one file in WAL mode, `Store`) is the embedded default; PostgreSQL
(`reconciler.stores.postgres`) runs the very same ops, so several replicas can share one queue.

Every change goes through `store.run(op)`: the op (a plain function over a `Conn`, e.g. a
`sqlite3.Connection`, defined in this module) is queued to the single writer thread, which takes
every op waiting, runs them in ONE transaction (each in its own savepoint, so one failing op does
not undo the others), commits (SQLite: `synchronous=FULL`, an fsync), and only then resolves the
callers' futures. So an accepted request is on disk before its 202 is sent, and a burst of a
thousand requests costs a handful of fsyncs instead of a thousand.

The ops are module-level functions so `pmsctl writebacks` can run the very same SQL on its own
connection (`connect()` + `with conn:`), e.g. while the service is stopped; `busy_timeout` lets
the CLI and a running service share the file.

`(practice_id, caller_id)` is unique: `insert` returns the existing record for a replay and never
makes a second row, so a caller id can never become a second note.

Intake stores through `Insert` ops, which the writer groups: all the `Insert`s of one group
commit become one SELECT (replays) and one multi-row INSERT, not a statement each. That matters
more than the SQL itself: every SQLite statement gives up the GIL, and in a process whose other
threads are busy in Python taking it back costs up to one switch interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from reconciler import private
from reconciler.writeback.errors import StoreError
from reconciler.writeback.model import (
    OPEN_STATUSES,
    RETRYABLE_SKIPS,
    Kind,
    Status,
    WritebackRecord,
    WritebackRequest,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Rows(Protocol):
    """What an op reads back from `Conn.execute`: the DB-API cursor subset the ops use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn(Protocol):
    """The connection an op runs on: `sqlite3.Connection` itself, or a backend's adapter that
    takes the same SQL (`?` placeholders; `UPDATE ... FROM (VALUES ...)` with `columnN` names,
    `ON CONFLICT`, `RETURNING`, which SQLite and PostgreSQL share)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Rows: ...


Op = Callable[["Conn"], T]

SCHEMA_VERSION = 1
_DDL = """
CREATE TABLE IF NOT EXISTS writebacks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    practice_id TEXT NOT NULL,
    caller_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    type TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    text TEXT NOT NULL,
    filename TEXT,
    content_type TEXT,
    content BLOB,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    target_type_id TEXT,
    provider_id TEXT,
    pms_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (practice_id, caller_id)
);
CREATE INDEX IF NOT EXISTS writebacks_by_practice ON writebacks (practice_id, status, seq);
CREATE INDEX IF NOT EXISTS writebacks_by_status ON writebacks (status, seq);
"""
_COLUMNS = (
    "seq, id, practice_id, caller_id, fingerprint, kind, type, patient_id, occurred_at, text, "
    "filename, content_type, {content}, status, reason, message, target_type_id, provider_id, "
    "pms_id, attempts, next_attempt_at, created_at, updated_at, sent_at"
)
_WITH_CONTENT = _COLUMNS.format(content="content")
_WITHOUT_CONTENT = _COLUMNS.format(content="NULL")
_OPEN = tuple(s.value for s in OPEN_STATUSES)


#: The queue holds patients' note texts and documents: only its owner may read it
#: (`reconciler.private`, shared with every other file that holds patient data).
FILE_MODE = private.FILE_MODE
DIR_MODE = private.DIR_MODE


def connect(path: str | os.PathLike[str], *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (and create or migrate) the queue file; the caller owns the connection.

    A missing folder is created 0700 and a missing file 0600 (its -wal and -shm follow); an
    existing file loses any group and other access. An existing folder is left as it is (it may
    be a mounted volume or shared with other files): give it 0700 yourself.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        private.private_dir(parent)
        private.private_file(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open the writeback queue: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: the queue has schema version {version}, this pmsctl knows "
                f"{SCHEMA_VERSION}; use a newer pmsctl"
            )
        conn.executescript(_DDL)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path}: cannot use the writeback queue: {exc}") from exc
    return conn


def _row(row: Sequence[Any]) -> WritebackRecord:
    (seq, id_, practice_id, caller_id, fingerprint, kind, type_, patient_id, occurred_at, text,
     filename, content_type, content, status, reason, message, target_type_id, provider_id,
     pms_id, attempts, next_attempt_at, created_at, updated_at, sent_at) = row  # fmt: skip
    request = WritebackRequest(
        practice_id=practice_id,
        caller_id=caller_id,
        kind=Kind(kind),
        type=type_,
        patient_id=patient_id,
        occurred_at=occurred_at,
        text=text,
        filename=filename,
        content_type=content_type,
        content=bytes(content) if content is not None else None,
    )
    assert request.id == id_, f"row {seq}: stored id {id_} does not match its practice/caller id"
    return WritebackRecord(
        seq=seq,
        request=request,
        status=Status(status),
        fingerprint=fingerprint,
        created_at=created_at,
        updated_at=updated_at,
        reason=reason,
        message=message,
        target_type_id=target_type_id,
        provider_id=provider_id,
        pms_id=pms_id,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        sent_at=sent_at,
    )


# --- ops: plain functions over a connection, run inside a transaction by the caller ---


def insert(
    conn: Conn,
    request: WritebackRequest,
    *,
    status: Status,
    now: float,
    reason: str | None = None,
    message: str | None = None,
    target_type_id: str | None = None,
    provider_id: str | None = None,
) -> tuple[WritebackRecord, bool]:
    """Store a new request, or return the one already stored for its caller id (created=False)."""
    fp = request.fingerprint()
    cur = conn.execute(
        "INSERT INTO writebacks (id, practice_id, caller_id, fingerprint, kind, type, patient_id,"
        " occurred_at, text, filename, content_type, content, status, reason, message,"
        " target_type_id, provider_id, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (practice_id, caller_id) DO NOTHING RETURNING seq",
        (
            request.id,
            request.practice_id,
            request.caller_id,
            fp,
            request.kind.value,
            request.type,
            request.patient_id,
            request.occurred_at,
            request.text,
            request.filename,
            request.content_type,
            request.content,
            status.value,
            reason,
            message,
            target_type_id,
            provider_id,
            now,
            now,
        ),
    )
    row = cur.fetchone()
    if row is None:  # a replay: answer with what is stored
        existing = get(conn, request.id)
        assert existing is not None
        return existing, False
    record = WritebackRecord(
        seq=int(row[0]),
        request=request,
        status=status,
        fingerprint=fp,
        created_at=now,
        updated_at=now,
        reason=reason,
        message=message,
        target_type_id=target_type_id,
        provider_id=provider_id,
    )
    return record, True


_INSERT_COLUMNS = (
    "id, practice_id, caller_id, fingerprint, kind, type, patient_id, occurred_at, text, filename,"
    " content_type, content, status, reason, message, target_type_id, provider_id, created_at,"
    " updated_at"
)
_INSERT_ROW = "(" + ",".join("?" * 19) + ")"
_GROUP_ROWS = 500  # rows per multi-row statement (19 parameters each; SQLite allows 32,766)


@dataclass(frozen=True)
class Insert:
    """An `insert()` as a value, so the writer can store a group commit's worth in one statement
    (`insert_many`). Called as an op on its own, it is exactly `insert()`."""

    request: WritebackRequest
    status: Status
    now: float
    reason: str | None = None
    message: str | None = None
    target_type_id: str | None = None
    provider_id: str | None = None

    def __call__(self, conn: Conn) -> tuple[WritebackRecord, bool]:
        return insert(
            conn,
            self.request,
            status=self.status,
            now=self.now,
            reason=self.reason,
            message=self.message,
            target_type_id=self.target_type_id,
            provider_id=self.provider_id,
        )

    def record(self, seq: int, fingerprint: str) -> WritebackRecord:
        """The record this insert stores, as row `seq`."""
        return WritebackRecord(
            seq=seq,
            request=self.request,
            status=self.status,
            fingerprint=fingerprint,
            created_at=self.now,
            updated_at=self.now,
            reason=self.reason,
            message=self.message,
            target_type_id=self.target_type_id,
            provider_id=self.provider_id,
        )


def insert_many(conn: Conn, inserts: Sequence[Insert]) -> list[tuple[WritebackRecord, bool]]:
    """`insert()` for each, in order, in a few statements; the same results as one by one.

    A caller id already stored, or used earlier in `inserts`, is a replay: (that record, False).
    Runs inside the writer's transaction; the new rows' seqs come back with `RETURNING`
    (matched by id: neither backend promises RETURNING rows in VALUES order).
    """
    wanted = list(dict.fromkeys(ins.request.id for ins in inserts))
    stored: dict[str, WritebackRecord] = {}
    for k in range(0, len(wanted), _GROUP_ROWS):
        ids = wanted[k : k + _GROUP_ROWS]
        rows = conn.execute(
            f"SELECT {_WITHOUT_CONTENT} FROM writebacks WHERE id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        stored.update((rec.id, rec) for rec in map(_row, rows))
    fresh: list[Insert] = []  # the first insert of each caller id not stored yet, in order
    seen = set(stored)
    for ins in inserts:
        if ins.request.id not in seen:
            seen.add(ins.request.id)
            fresh.append(ins)
    created: set[str] = set()
    for k in range(0, len(fresh), _GROUP_ROWS):
        chunk = fresh[k : k + _GROUP_ROWS]
        params: list[Any] = []
        prints: list[str] = []
        for ins in chunk:
            r = ins.request
            fp = r.fingerprint()
            prints.append(fp)
            params += (r.id, r.practice_id, r.caller_id, fp, r.kind.value, r.type, r.patient_id,
                       r.occurred_at, r.text, r.filename, r.content_type, r.content,
                       ins.status.value, ins.reason, ins.message, ins.target_type_id,
                       ins.provider_id, ins.now, ins.now)  # fmt: skip
        rows = conn.execute(
            f"INSERT INTO writebacks ({_INSERT_COLUMNS}) VALUES "
            + ",".join([_INSERT_ROW] * len(chunk))
            + " RETURNING id, seq",
            params,
        ).fetchall()
        seqs = {str(wid): int(seq) for wid, seq in rows}
        assert len(seqs) == len(chunk)
        for ins, fp in zip(chunk, prints, strict=True):
            stored[ins.request.id] = ins.record(seqs[ins.request.id], fp)
            created.add(ins.request.id)
    out: list[tuple[WritebackRecord, bool]] = []
    for ins in inserts:
        wid = ins.request.id
        out.append((stored[wid], wid in created))
        created.discard(wid)  # a later one with the same caller id is a replay of this one
    return out


def get(conn: Conn, writeback_id: str, *, content: bool = False) -> WritebackRecord | None:
    """One record by id (without the document bytes unless asked)."""
    cols = _WITH_CONTENT if content else _WITHOUT_CONTENT
    row = conn.execute(f"SELECT {cols} FROM writebacks WHERE id = ?", (writeback_id,)).fetchone()
    return _row(row) if row else None


def list_records(
    conn: Conn,
    *,
    statuses: Sequence[str] = (),
    practice_id: str | None = None,
    limit: int = 500,
    after_seq: int = 0,
) -> list[WritebackRecord]:
    """Records in arrival order, filtered by status and practice (no document bytes)."""
    where = ["seq > ?"]
    args: list[Any] = [after_seq]
    if statuses:
        where.append(f"status IN ({','.join('?' * len(statuses))})")
        args.extend(statuses)
    if practice_id is not None:
        where.append("practice_id = ?")
        args.append(practice_id)
    args.append(limit)
    rows = conn.execute(
        f"SELECT {_WITHOUT_CONTENT} FROM writebacks WHERE {' AND '.join(where)}"
        " ORDER BY seq LIMIT ?",
        args,
    ).fetchall()
    return [_row(r) for r in rows]


def open_head(conn: Conn, practice_id: str, limit: int) -> list[WritebackRecord]:
    """The practice's oldest undelivered records, in arrival order, with their document bytes."""
    rows = conn.execute(
        f"SELECT {_WITH_CONTENT} FROM writebacks WHERE practice_id = ? AND status IN (?, ?)"
        " ORDER BY seq LIMIT ?",
        (practice_id, *_OPEN, limit),
    ).fetchall()
    return [_row(r) for r in rows]


def practices_with_open(conn: Conn) -> list[str]:
    """Every practice with something still to deliver."""
    rows = conn.execute(
        "SELECT DISTINCT practice_id FROM writebacks WHERE status IN (?, ?)", _OPEN
    ).fetchall()
    return [r[0] for r in rows]


def mark_sending(conn: Conn, writeback_id: str, *, now: float) -> int:
    """Record that an attempt starts; returns the attempt number (durable, so a crash loop is capped)."""
    row = conn.execute(
        "UPDATE writebacks SET status = ?, attempts = attempts + 1, updated_at = ?"
        " WHERE id = ? AND status IN (?, ?) RETURNING attempts",
        (Status.SENDING.value, now, writeback_id, *_OPEN),
    ).fetchone()
    return int(row[0]) if row else 0


def mark_sent(conn: Conn, writeback_id: str, pms_id: str, *, now: float) -> bool:
    """The PMS has it: keep its id, drop the document bytes (no longer needed)."""
    cur = conn.execute(
        "UPDATE writebacks SET status = ?, pms_id = ?, sent_at = ?, updated_at = ?, reason = NULL,"
        " message = NULL, content = NULL WHERE id = ? AND status IN (?, ?)",
        (Status.SENT.value, pms_id, now, now, writeback_id, *_OPEN),
    )
    return cur.rowcount == 1


def mark_failed(conn: Conn, writeback_id: str, reason: str, message: str, *, now: float) -> bool:
    """Delivery gave up: keep the reason for `pmsctl writebacks list --failed`."""
    cur = conn.execute(
        "UPDATE writebacks SET status = ?, reason = ?, message = ?, updated_at = ?"
        " WHERE id = ? AND status IN (?, ?)",
        (Status.FAILED.value, reason, message, now, writeback_id, *_OPEN),
    )
    return cur.rowcount == 1


def resolve(conn: Conn, writeback_id: str, type_id: str, provider_id: str, *, now: float) -> bool:
    """Decide a record stored undecided (the PMS had not answered at intake): write it under this
    note type (or category) id as this provider."""
    cur = conn.execute(
        "UPDATE writebacks SET target_type_id = ?, provider_id = ?, message = NULL, updated_at = ?"
        " WHERE id = ? AND status IN (?, ?)",
        (type_id, provider_id, now, writeback_id, *_OPEN),
    )
    return cur.rowcount == 1


def mark_skipped(conn: Conn, writeback_id: str, reason: str, message: str, *, now: float) -> bool:
    """Decided at delivery not to write it (the PMS, once it answered, or the spec said no)."""
    cur = conn.execute(
        "UPDATE writebacks SET status = ?, reason = ?, message = ?, updated_at = ?"
        " WHERE id = ? AND status IN (?, ?)",
        (Status.SKIPPED.value, reason, message, now, writeback_id, *_OPEN),
    )
    return cur.rowcount == 1


def defer(conn: Conn, writeback_id: str, until: float, message: str, *, now: float) -> bool:
    """Back to pending until `until` (a temporary error); the message says what went wrong."""
    cur = conn.execute(
        "UPDATE writebacks SET status = ?, next_attempt_at = ?, message = ?, updated_at = ?"
        " WHERE id = ? AND status IN (?, ?)",
        (Status.PENDING.value, until, message, now, writeback_id, *_OPEN),
    )
    return cur.rowcount == 1


class ChangeKind(StrEnum):
    """The delivery state changes the drainer makes (see `Change`)."""

    SENDING = "sending"  # mark_sending
    SENT = "sent"  # mark_sent
    FAILED = "failed"  # mark_failed
    DEFER = "defer"  # defer


@dataclass(frozen=True)
class Change:
    """One of the drainer's state changes as a value, so the writer can apply a group commit's
    worth with one UPDATE per kind (`apply_changes`). Called as an op on its own, it is the
    matching function above. Returns nothing: the drainer does not need the answers."""

    kind: ChangeKind
    writeback_id: str
    now: float
    pms_id: str = ""  # SENT
    reason: str = ""  # FAILED
    message: str = ""  # FAILED, DEFER
    until: float = 0.0  # DEFER

    def __call__(self, conn: Conn) -> None:
        wid, now = self.writeback_id, self.now
        if self.kind is ChangeKind.SENDING:
            mark_sending(conn, wid, now=now)
        elif self.kind is ChangeKind.SENT:
            mark_sent(conn, wid, self.pms_id, now=now)
        elif self.kind is ChangeKind.FAILED:
            mark_failed(conn, wid, self.reason, self.message, now=now)
        else:
            defer(conn, wid, self.until, self.message, now=now)


_CHANGE_SETS = {
    ChangeKind.SENDING: "status = ?, attempts = attempts + v.column2, updated_at = v.column3",
    ChangeKind.SENT: "status = ?, pms_id = v.column2, sent_at = v.column3, updated_at = v.column3,"
    " reason = NULL, message = NULL, content = NULL",
    ChangeKind.FAILED: "status = ?, reason = v.column2, message = v.column3, updated_at = v.column4",
    ChangeKind.DEFER: "status = ?, next_attempt_at = v.column2, message = v.column3,"
    " updated_at = v.column4",
}


def _change_values(change: Change, times: int) -> tuple[Any, ...]:
    """The VALUES row of one change (id first), matching `_CHANGE_SETS`."""
    c = change
    if c.kind is ChangeKind.SENDING:
        return (c.writeback_id, times, c.now)
    if c.kind is ChangeKind.SENT:
        return (c.writeback_id, c.pms_id, c.now)
    if c.kind is ChangeKind.FAILED:
        return (c.writeback_id, c.reason, c.message, c.now)
    return (c.writeback_id, c.until, c.message, c.now)


_CHANGE_STATUS = {
    ChangeKind.SENDING: Status.SENDING,
    ChangeKind.SENT: Status.SENT,
    ChangeKind.FAILED: Status.FAILED,
    ChangeKind.DEFER: Status.PENDING,
}


def apply_changes(conn: Conn, changes: Sequence[Change]) -> None:
    """Apply `changes` with one UPDATE per kind; the same end state as one by one, in order.

    Kinds go in the order a record moves (sending, then sent / failed / defer), which is the
    order the drainer makes one record's changes in; two `sending`s of one record count two
    attempts. Whatever comes after a record's final change (the drainer makes one per turn, and
    waits for it before the next turn) is applied one by one, after, in order.
    """
    by_kind: dict[ChangeKind, dict[str, tuple[Change, int]]] = {k: {} for k in ChangeKind}
    later: list[Change] = []
    ended: set[str] = set()  # records with a final change in the groups
    for change in changes:
        wid = change.writeback_id
        if wid in ended:
            later.append(change)
        elif change.kind is ChangeKind.SENDING:
            seen = by_kind[change.kind].get(wid)
            times = 1 if seen is None else seen[1] + 1
            by_kind[change.kind][wid] = (change, times)  # the latest time, every attempt
        else:
            by_kind[change.kind][wid] = (change, 1)
            ended.add(wid)
    for kind, group in by_kind.items():
        if not group:
            continue
        sets = _CHANGE_SETS[kind]
        rows = [_change_values(c, n) for c, n in group.values()]
        for k in range(0, len(rows), _GROUP_ROWS):
            chunk = rows[k : k + _GROUP_ROWS]
            row = "(" + ",".join("?" * len(chunk[0])) + ")"
            conn.execute(
                f"UPDATE writebacks SET {sets} FROM (VALUES {','.join([row] * len(chunk))}) AS v"
                " WHERE writebacks.id = v.column1 AND writebacks.status IN (?, ?)",
                [_CHANGE_STATUS[kind].value, *(x for r in chunk for x in r), *_OPEN],
            )
    for change in later:
        change(conn)


def retry(conn: Conn, writeback_id: str, *, now: float) -> WritebackRecord | None:
    """Put a failed record back in its practice's queue (attempts start over), or a record skipped
    for what the PMS said (`RETRYABLE_SKIPS`: it goes back undecided and is decided again against
    the PMS); None if it is neither."""
    cur = conn.execute(
        "UPDATE writebacks SET status = ?, attempts = 0, next_attempt_at = 0, reason = NULL,"
        " updated_at = ? WHERE id = ? AND (status = ? OR (status = ? AND reason IN (?, ?, ?)))",
        (Status.PENDING.value, now, writeback_id, Status.FAILED.value, Status.SKIPPED.value,
         *(r.value for r in RETRYABLE_SKIPS)),
    )  # fmt: skip
    return get(conn, writeback_id) if cur.rowcount == 1 else None


def retry_all(conn: Conn, *, practice_id: str | None = None, now: float) -> list[str]:
    """Retry every failed record (of one practice, or all); returns their ids."""
    args: list[Any] = [Status.PENDING.value, now, Status.FAILED.value]
    where = "status = ?"
    if practice_id is not None:
        where += " AND practice_id = ?"
        args.append(practice_id)
    rows = conn.execute(
        "UPDATE writebacks SET status = ?, attempts = 0, next_attempt_at = 0, reason = NULL,"
        f" updated_at = ? WHERE {where} RETURNING id",
        args,
    ).fetchall()
    return [r[0] for r in rows]


def counts(conn: Conn, practice_id: str | None = None) -> dict[str, int]:
    """{sent, skipped, pending, failed} for one practice (or all); `sending` counts as pending."""
    out = {"sent": 0, "skipped": 0, "pending": 0, "failed": 0}
    if practice_id is None:
        rows = conn.execute("SELECT status, count(*) FROM writebacks GROUP BY status").fetchall()
    else:
        rows = conn.execute(
            "SELECT status, count(*) FROM writebacks WHERE practice_id = ? GROUP BY status",
            (practice_id,),
        ).fetchall()
    for status, n in rows:
        key = Status.PENDING.value if status == Status.SENDING.value else status
        out[key] = out.get(key, 0) + int(n)
    return out


def open_count(conn: Conn) -> int:
    """How many records are still to deliver (all practices): the queue depth."""
    row = conn.execute("SELECT count(*) FROM writebacks WHERE status IN (?, ?)", _OPEN).fetchone()
    return int(row[0])


# --- the writer thread ---

_Item = tuple[Callable[[Conn], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class _OpFailed(Exception):
    """An op raised inside an unisolated batch: the batch is run again op by op."""


def _settle(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the event loop: hand every op of one commit its result."""
    for fut, ok, value in results:
        if fut.done():  # the caller gave up (cancelled); the op is committed all the same
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class QueueStore(Protocol):
    """The durable writeback queue as the API, the drainer and the service use it; `Store`
    (SQLite, the default) and the PostgreSQL backend (`reconciler.stores.postgres`) implement it.

    `run`/`submit` commit an op (a function of this module over a `Conn`) in a group commit;
    `read` runs a read-only op now, on the calling thread. `claim(practice_id)` makes this
    process the only one delivering that practice until `release(practice_id)`: a queue several
    processes share (PostgreSQL) answers False while another process holds it."""

    #: Where the queue is, for messages: a file path, or a URL without its password.
    path: str
    #: Group commits so far (for the benchmarks).
    commits: int

    def open(self) -> None: ...

    def close(self) -> None: ...

    async def run(self, op: Callable[[Conn], T]) -> T: ...

    def submit(self, op: Callable[[Conn], T]) -> asyncio.Future[T]: ...

    def read(self, op: Callable[[Conn], T]) -> T: ...

    async def claim(self, practice_id: str) -> bool: ...

    async def holds(self, practice_id: str) -> bool:
        """Whether this process's claim on `practice_id` still stands (asked before each PMS
        write: a claim lost with its connection must not go on writing beside the next owner)."""
        ...

    async def release(self, practice_id: str) -> None: ...


class GroupCommitStore:
    """One writer thread with group commit over a backend's connection; `await store.run(op)`
    runs an op in the next group commit. A backend provides the hooks below (connections, the
    BEGIN statement, its error class); the batching, savepoints and wake-ups are shared."""

    #: The statement that opens the writer's transaction.
    begin = "BEGIN"
    #: The backend's error class (a failed commit fails every op of its batch).
    errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, path: str, *, max_batch: int = 1000) -> None:
        self.path = path
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._local = threading.local()
        self._readers: list[Any] = []
        #: Readers in use right now (one entry per read in progress).
        self._busy: list[Any] = []
        self._readers_lock = threading.Lock()
        self.commits = 0  # group commits so far (for the benchmark)

    # --- backend hooks ---

    def connect_writer(self) -> Any:
        """A new connection for the writer thread (schema ready); it must have a `Conn`'s
        `execute` and a `close()`."""
        raise NotImplementedError

    def connect_reader(self) -> Any:
        """A new read-only connection for one reading thread."""
        raise NotImplementedError

    def describe(self, exc: BaseException) -> str:
        """`exc` as a message may show it (a backend masks what must not be shown)."""
        return str(exc)

    async def claim(self, practice_id: str) -> bool:
        """True: this process alone delivers `practice_id` (one process per queue: always)."""
        return True

    async def holds(self, practice_id: str) -> bool:
        """True while `claim(practice_id)` stands (one process per queue: always)."""
        return True

    async def release(self, practice_id: str) -> None:
        """Give up `claim(practice_id)`."""

    # --- shared ---

    def open(self) -> None:
        """Open the queue (creating it) and start the writer thread."""
        if self._thread is not None:
            return
        self._conn = self.connect_writer()
        self._thread = threading.Thread(target=self._writer, name="writeback-store", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish what is queued, stop the writer thread and close the connections."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._readers_lock:
            for reader in self._readers:
                # A reader another thread is using right now (a sweep's read still running
                # after its task was cancelled) is closed by that thread when its read ends:
                # closing a connection under a running statement can crash the interpreter.
                if not any(reader is busy for busy in self._busy):
                    reader.close()
            self._readers.clear()
        self._local = threading.local()

    async def run(self, op: Callable[[Conn], T]) -> T:
        """Run `op(conn)` in the next group commit; returns once it is committed."""
        return await self.submit(op)

    def submit(self, op: Callable[[Conn], T]) -> asyncio.Future[T]:
        """Queue `op` for the next group commit without waiting; the future settles after it."""
        if self._thread is None:
            raise StoreError(f"{self.path}: the writeback queue is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, fut, loop))
        return fut

    def read(self, op: Callable[[Conn], T]) -> T:
        """Run a read-only op now, on this thread's own connection (readers never block)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect_reader()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        with self._readers_lock:
            self._busy.append(conn)
        try:
            result: T = op(conn)
        finally:
            with self._readers_lock:
                self._busy.remove(conn)
                orphaned = not any(conn is reader for reader in self._readers)
            if orphaned:  # the store was closed while this read ran (see `close`)
                conn.close()
        return result

    def _writer(self) -> None:
        conn = self._conn
        assert conn is not None
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(conn, batch)

    def _commit(self, conn: Any, batch: list[_Item]) -> None:
        try:
            results = self._run_batch(conn, batch, isolate=False)
        except _OpFailed:
            # One op raised: run them again, each in a savepoint, so only that one is undone.
            results = self._run_batch(conn, batch, isolate=True)
        self._notify(batch, results)

    def _run_batch(
        self, conn: Any, batch: list[_Item], *, isolate: bool
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        grouped: dict[int, Any] = {}
        try:
            conn.execute(self.begin)
            if not isolate:
                grouped = self._run_grouped(conn, batch)
            for k, (op, fut, _) in enumerate(batch):
                if k in grouped:
                    results.append((fut, True, grouped[k]))
                    continue
                if not isolate:
                    try:
                        results.append((fut, True, op(conn)))
                    except Exception as exc:
                        raise _OpFailed from exc
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:  # one op's failure must not undo its neighbours
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((fut, False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((fut, True, value))
            conn.execute("COMMIT")
            self.commits += 1
        except _OpFailed:
            with contextlib.suppress(*self.errors):
                conn.execute("ROLLBACK")
            raise
        except self.errors as exc:
            with contextlib.suppress(*self.errors):
                conn.execute("ROLLBACK")
            why = self.describe(exc)
            log.error("writeback queue %s: commit failed: %s", self.path, why)
            error = StoreError(f"{self.path}: commit failed: {why}")
            results = [(fut, False, error) for _, fut, _ in batch]
        return results

    @staticmethod
    def _run_grouped(conn: Conn, batch: list[_Item]) -> dict[int, Any]:
        """Run the batch's `Insert`s, then its `Change`s, each kind in one go; their results by
        position. They go ahead of the batch's other ops, which changes no result: inserts touch
        new rows only, changes touch open records only the drainer changes, and the other ops
        (retries of failed records, reads) are concurrent requests either order may serve."""
        inserts = [(k, op) for k, (op, _, _) in enumerate(batch) if isinstance(op, Insert)]
        changes = [(k, op) for k, (op, _, _) in enumerate(batch) if isinstance(op, Change)]
        grouped: dict[int, Any] = {}
        try:
            if len(inserts) > 1:
                values = insert_many(conn, [op for _, op in inserts])
                grouped.update((k, v) for (k, _), v in zip(inserts, values, strict=True))
            if len(changes) > 1:
                apply_changes(conn, [op for _, op in changes])
                grouped.update((k, None) for k, _ in changes)
        except Exception as exc:
            raise _OpFailed from exc
        return grouped

    def _notify(
        self, batch: list[_Item], results: list[tuple[asyncio.Future[Any], bool, Any]]
    ) -> None:
        # Only now, after the commit, are the callers told: one wake-up per loop per commit.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, _, loop), result in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append(result)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, items)


class Store(GroupCommitStore):
    """The SQLite queue file (WAL mode) with one writer thread: the embedded default."""

    begin = "BEGIN IMMEDIATE"
    errors = (sqlite3.Error,)

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "FULL", max_batch: int = 1000
    ) -> None:
        super().__init__(os.fspath(path), max_batch=max_batch)
        #: SQLite's `synchronous` setting for the file (FULL: an fsync per commit).
        self.synchronous = synchronous

    def connect_writer(self) -> sqlite3.Connection:
        return connect(self.path, synchronous=self.synchronous)

    def connect_reader(self) -> sqlite3.Connection:
        conn = connect(self.path, synchronous=self.synchronous)
        conn.execute("PRAGMA query_only=ON")
        return conn


def now() -> float:
    """Wall-clock seconds (records carry wall times; delays use the same clock)."""
    return time.time()
