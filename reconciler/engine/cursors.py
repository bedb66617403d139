"""The cursor store: where each (practice key, sync kind) poller left off, in SQLite.

A poller saves its cursor only after the sink accepted that page's events, so a crash or restart
re-reads (and re-emits, with the same event ids) at most the last page: changes are never lost.
Cursors outlive `Engine.remove()` (a deleted and re-created practice resumes where it was);
`forget(key)` drops them.

`SqliteCursorStore(":memory:")` works for throwaway runs; the operator uses a file on a volume.
The store has one writer (one operator process per file; see `reconciler.kube.leader`), so it keeps
the cursors it read or wrote in memory: a poll's `get()` costs a dict lookup instead of a SELECT,
while every `put()` still goes to SQLite before it returns.
"""

from __future__ import annotations

import sqlite3
import threading
import time
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

    def get(self, key: str, kind: str) -> str | None:
        cached = self._cache.get((key, kind))
        if cached is not None:
            return cached
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM cursors WHERE practice_key = ? AND kind = ?", (key, kind)
            ).fetchone()
            if row is None:
                return None  # not cached: "no cursor yet" is asked once per poller anyway
            cursor = self._cache[(key, kind)] = str(row[0])
        return cursor

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

    def __repr__(self) -> str:
        return f"SqliteCursorStore({self.path!r})"
