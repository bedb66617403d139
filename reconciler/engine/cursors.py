"""The cursor store: where each (practice key, sync kind) poller left off, in SQLite.

A poller saves its cursor only after the sink accepted that page's events, so a crash or restart
re-reads (and re-emits, with the same event ids) at most the last page: changes are never lost.
Cursors outlive `Engine.remove()` (a deleted and re-created practice resumes where it was);
`forget(key)` drops them.

`CursorCommits` is how the engine saves them: the cursors of every poll that finished publishing
meanwhile go to the store together, in one transaction (`put_many`) on a worker thread, and each
`save()` returns only once its cursor is stored (group commit, as the JSONL sink does with its
fsyncs). At an initial sync of thousands of practices one transaction per poll, on the event
loop, delayed every poll by the write and, now and then, by a WAL checkpoint's fsync.

`SqliteCursorStore(":memory:")` works for throwaway runs; the operator uses a file on a volume.
The store has one writer (one operator process per file; see `reconciler.kube.leader`), so it keeps
the cursors it read or wrote in memory: a poll's `get()` costs a dict lookup instead of a SELECT,
while every `put()` still goes to SQLite before it returns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from reconciler import private


class CursorStore(Protocol):
    """Load and save poller cursors; `None` means 'from the beginning'."""

    def get(self, key: str, kind: str) -> str | None: ...

    def put(self, key: str, kind: str, cursor: str) -> None: ...

    def forget(self, key: str) -> None: ...

    def close(self) -> None: ...


class SqliteCursorStore:
    """Cursors in one SQLite table (WAL mode); calls are short and synchronous by design."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            # Cursors name practices and their PMS's record ids: the owner's alone.
            private.private_dir(Path(self.path).parent)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        # Reads of cursors not in memory have a connection of their own: `get()` runs on the
        # event loop, and the writer's lock may be held by a group commit on a worker thread
        # for as long as the disk takes (WAL lets the read go on meanwhile).
        self._reader = self._db
        self._read_lock = self._lock
        # (key, kind) -> cursor, for every cursor this store read or wrote (write-through).
        self._cache: dict[tuple[str, str], str] = {}
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cursors ("
                " practice_key TEXT NOT NULL, kind TEXT NOT NULL, cursor TEXT NOT NULL,"
                " updated_at REAL NOT NULL, PRIMARY KEY (practice_key, kind))"
            )
        # Tightened once SQLite made the file and, after the WAL switch, its -wal and -shm (later
        # ones take the file's 0600); until then the file sits in the 0700 folder made above.
        if self.path != ":memory:":
            private.private_file(self.path)
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._read_lock = threading.Lock()

    def get(self, key: str, kind: str) -> str | None:
        cached = self._cache.get((key, kind))
        if cached is not None:
            return cached
        with self._read_lock:
            row = self._reader.execute(
                "SELECT cursor FROM cursors WHERE practice_key = ? AND kind = ?", (key, kind)
            ).fetchone()
        if row is None:
            return None  # not cached: "no cursor yet" is asked once per poller anyway
        cursor = str(row[0])
        # A put that finished meanwhile wins: it is newer than what was read.
        return self._cache.setdefault((key, kind), cursor)

    def put(self, key: str, kind: str, cursor: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursors (practice_key, kind, cursor, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (practice_key, kind) DO UPDATE SET cursor = excluded.cursor,"
                " updated_at = excluded.updated_at",
                (key, kind, cursor, time.time()),
            )
            # Only once SQLite has it: a failed write must not leave a cursor that was never saved.
            self._cache[(key, kind)] = cursor

    def put_many(self, cursors: Sequence[tuple[str, str, str]]) -> None:
        """Save (key, kind, cursor) triples in one transaction: all of them or, on an error,
        none (the cache then keeps the cursors from before)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO cursors (practice_key, kind, cursor, updated_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (practice_key, kind) DO UPDATE"
                    " SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                    [(key, kind, cursor, now) for key, kind, cursor in cursors],
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            for key, kind, cursor in cursors:
                self._cache[(key, kind)] = cursor

    def forget(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM cursors WHERE practice_key = ?", (key,))
            for k in [k for k in self._cache if k[0] == key]:
                del self._cache[k]

    def all(self) -> dict[tuple[str, str], str]:
        """Every stored cursor (for tests and `pmsctl` diagnostics)."""
        with self._lock:
            rows = self._db.execute("SELECT practice_key, kind, cursor FROM cursors").fetchall()
        return {(str(k), str(kind)): str(c) for k, kind, c in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()
        if self._reader is not self._db:
            with self._read_lock:
                self._reader.close()

    def __repr__(self) -> str:
        return f"SqliteCursorStore({self.path!r})"


class CursorCommits:
    """Group commit of cursor saves: `await save(key, kind, cursor)` returns once the cursor is
    stored, or raises what the store raised. Saves that arrive while a write runs go together in
    the next one, on a worker thread (`put_many` when the store has it; `put` one by one there
    otherwise). One writer at a time, so a store's writes never overlap."""

    def __init__(self, store: CursorStore) -> None:
        self._store = store
        self._pending: list[tuple[str, str, str, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Transactions written (one per group).
        self.commits = 0

    async def save(self, key: str, kind: str, cursor: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((key, kind, cursor, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="pmsctl-cursors")
        await done

    async def _write_all(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, [(k, kind, c) for k, kind, c, _ in group])
            except Exception as exc:
                for *_, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            self.commits += 1
            for *_, done in group:
                if not done.done():
                    done.set_result(None)

    def _write(self, cursors: list[tuple[str, str, str]]) -> None:
        put_many = getattr(self._store, "put_many", None)
        if put_many is not None:
            put_many(cursors)
            return
        for key, kind, cursor in cursors:
            self._store.put(key, kind, cursor)
