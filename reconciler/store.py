"""The cursor store: where each (practice key, sync kind) poller left off, in SQLite.

A poller saves its cursor only after the sink accepted that page's events, so a crash or restart
re-reads (and re-emits, with the same event ids) at most the last page: changes are never lost.
Cursors outlive `Engine.remove()` (a deleted and re-created practice resumes where it was);
`forget(key)` drops them.

`SqliteCursorStore(":memory:")` works for throwaway runs; the operator uses a file on a volume.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol


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
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS cursors ("
                " practice_key TEXT NOT NULL, kind TEXT NOT NULL, cursor TEXT NOT NULL,"
                " updated_at REAL NOT NULL, PRIMARY KEY (practice_key, kind))"
            )

    def get(self, key: str, kind: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM cursors WHERE practice_key = ? AND kind = ?", (key, kind)
            ).fetchone()
        return str(row[0]) if row else None

    def put(self, key: str, kind: str, cursor: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO cursors (practice_key, kind, cursor, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (practice_key, kind) DO UPDATE SET cursor = excluded.cursor,"
                " updated_at = excluded.updated_at",
                (key, kind, cursor, time.time()),
            )

    def forget(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM cursors WHERE practice_key = ?", (key,))

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
