"""The PostgreSQL backend: the writeback queue and the poller cursors in one database that every
replica shares (`--store postgresql://USER@HOST/DB`).

- The queue runs the very same ops as the SQLite file (`reconciler.writeback.store`): `PgConn`
  hands them a psycopg connection that takes SQLite's `?` placeholders. The writer thread and
  its group commit are `GroupCommitStore`'s; a commit here is PostgreSQL's (WAL flush).
- Several replicas accept writebacks into the one table; delivery of a practice is claimed with
  a session-level advisory lock (`claim`), so one replica at a time delivers it, in `seq` order.
  A replica that dies drops its connection and with it its claims.
- The schema is versioned (`MIGRATIONS`, the table `pmsctl_schema`), applied at start under a
  transaction-level advisory lock, so replicas starting together apply each migration once;
  `pmsctl store migrate` applies them ahead of a rollout.
- The password comes from the URL or from a file (`password_file`); it never appears in a
  message: every message names the store by `scrub(url)` and has the password masked.

Driver: psycopg 3, synchronous, on the writer thread (see docs/store.md for the measurement
against asyncpg).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg

from reconciler.stores import scrub
from reconciler.writeback.errors import StoreError
from reconciler.writeback.store import GroupCommitStore

log = logging.getLogger(__name__)

SCHEMES = ("postgresql", "postgres")

#: Versioned schema changes, applied in order; a database at a higher version than the last
#: one here belongs to a newer pmsctl and is refused.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "writeback queue and poller cursors",
        """
CREATE TABLE writebacks (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    content BYTEA,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT,
    target_type_id TEXT,
    provider_id TEXT,
    pms_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    sent_at DOUBLE PRECISION,
    UNIQUE (practice_id, caller_id)
);
CREATE INDEX writebacks_by_practice ON writebacks (practice_id, status, seq);
CREATE INDEX writebacks_by_status ON writebacks (status, seq);
CREATE TABLE cursors (
    practice_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    cursor TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (practice_key, kind)
);
""",
    ),
    (
        2,
        "practice settings every replica reads; notifications of new writebacks",
        """
CREATE TABLE practice_settings (
    practice_id TEXT PRIMARY KEY,
    snapshot JSONB NOT NULL,
    version BIGINT NOT NULL DEFAULT 1,
    owner TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE FUNCTION pmsctl_notify_writeback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pmsctl_writebacks', NEW.practice_id);
    RETURN NULL;
END $$;
CREATE TRIGGER writebacks_notify AFTER INSERT ON writebacks
    FOR EACH ROW EXECUTE FUNCTION pmsctl_notify_writeback();
CREATE FUNCTION pmsctl_notify_settings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pmsctl_practice_settings',
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.practice_id ELSE NEW.practice_id END);
    RETURN NULL;
END $$;
CREATE TRIGGER practice_settings_notify AFTER INSERT OR UPDATE OR DELETE ON practice_settings
    FOR EACH ROW EXECUTE FUNCTION pmsctl_notify_settings();
""",
    ),
)
#: NOTIFY channels (one database is one store): a new writeback (payload: its practice id) and
#: a changed or removed `practice_settings` row (payload: the practice id).
WRITEBACK_CHANNEL = "pmsctl_writebacks"
SETTINGS_CHANNEL = "pmsctl_practice_settings"
SCHEMA_VERSION = MIGRATIONS[-1][0]
#: The advisory lock key migrations run under (any constant no other application uses).
MIGRATION_LOCK = 0x706D_7363_746C_0001
#: Practice claims are advisory locks on hashtextextended(this prefix || practice id).
CLAIM_PREFIX = "pmsctl-writeback:"


def _url_password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    for k, v in parse_qsl(parts.query):
        if k == "password":
            return v
    return None


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """SQLite's `?` placeholders as psycopg's `%s` (the ops hold no `?` or `%` otherwise)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn:
    """A psycopg connection that runs the queue's ops (a `reconciler.writeback.store.Conn`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn
        #: Called with each statement before it runs (like sqlite3's trace callback; for tests).
        self.trace: Callable[[str], object] | None = None

    def execute(self, sql: str, parameters: Any = None, /) -> psycopg.Cursor[Any]:
        if self.trace is not None:
            self.trace(sql)
        if parameters is None:
            return self.raw.execute(sql.encode())  # as is: no placeholders to replace
        return self.raw.execute(_placeholders(sql), parameters)

    def close(self) -> None:
        self.raw.close()


class PostgresBackend:
    """One PostgreSQL database as pmsctl's store: connections, migrations, the queue, the cursors."""

    def __init__(self, url: str, *, password_file: str | Path | None = None) -> None:
        if urlsplit(url).scheme not in SCHEMES:
            raise StoreError(f"{scrub(url)}: not a postgresql:// URL")
        self.url = url
        #: The URL for messages: the password masked.
        self.name = scrub(url)
        self._password: str | None = None
        if password_file is not None:
            try:
                self._password = Path(password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise StoreError(
                    f"{password_file}: cannot read the store password: {exc.strerror}"
                ) from exc
        self._secrets = [s for s in (self._password, _url_password(url)) if s]

    def clean(self, exc: BaseException) -> str:
        """`exc`'s message with the URL scrubbed and the password masked."""
        text = str(exc).replace(self.url, self.name)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def connect(self, application_name: str = "pmsctl", **options: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection (`options`: more libpq connection parameters); StoreError
        (password masked) when it cannot connect."""
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": application_name,
            **options,
        }
        if self._password is not None:
            kwargs["password"] = self._password
        kwargs.setdefault("connect_timeout", 10)
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: cannot connect: {self.clean(exc)}") from None

    def migrate(self) -> tuple[int, int]:
        """Apply the missing migrations under the migration lock; (version before, after)."""
        conn = self.connect()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS pmsctl_schema (version INTEGER PRIMARY KEY,"
                    " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                row = conn.execute("SELECT coalesce(max(version), 0) FROM pmsctl_schema").fetchone()
                before = int(row[0]) if row else 0
                if before > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.name}: the store has schema version {before}, this pmsctl knows "
                        f"{SCHEMA_VERSION}; use a newer pmsctl"
                    )
                for version, description, ddl in MIGRATIONS:
                    if version <= before:
                        continue
                    conn.execute(ddl.encode())
                    conn.execute(
                        "INSERT INTO pmsctl_schema (version, description) VALUES (%s, %s)",
                        (version, description),
                    )
                    log.info("store %s: applied migration %d (%s)", self.name, version, description)
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: migration failed: {self.clean(exc)}") from None
        finally:
            conn.close()
        return before, SCHEMA_VERSION

    def version(self) -> tuple[int, int]:
        """(the store's schema version, 0 before any migration; the version this pmsctl knows)."""
        conn = self.connect()
        try:
            exists = conn.execute("SELECT to_regclass('pmsctl_schema') IS NOT NULL").fetchone()
            current = 0
            if exists and exists[0]:
                row = conn.execute("SELECT coalesce(max(version), 0) FROM pmsctl_schema").fetchone()
                current = int(row[0]) if row else 0
        except psycopg.Error as exc:
            raise StoreError(f"{self.name}: {self.clean(exc)}") from None
        finally:
            conn.close()
        return current, SCHEMA_VERSION

    def queue_store(self, *, max_batch: int = 1000) -> PgQueueStore:
        """The writeback queue (open it with `.open()`)."""
        return PgQueueStore(self, max_batch=max_batch)

    def cursor_store(self) -> PgCursorStore:
        """The poller cursors (connected now)."""
        return PgCursorStore(self)

    def shared_settings(self, owner: str) -> PgSharedSettings:
        """The practices' published snapshots, as replica `owner` (not started yet)."""
        return PgSharedSettings(self, owner)

    def __repr__(self) -> str:
        return f"PostgresBackend({self.name!r})"


#: Whether this session holds a practice's claim (pg_locks keeps a bigint advisory key as
#: classid, the high 32 bits, and objid, the low 32, with objsubid 1).
HOLDS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0))"
)


class PgQueueStore(GroupCommitStore):
    """The writeback queue in PostgreSQL; several processes may share it (see `claim`)."""

    errors = (psycopg.Error,)

    def __init__(self, backend: PostgresBackend, *, max_batch: int = 1000) -> None:
        super().__init__(backend.name, max_batch=max_batch)
        self.backend = backend
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._lock_mutex = threading.Lock()

    def open(self) -> None:
        if self._thread is None:
            self.backend.migrate()
        super().open()

    def describe(self, exc: BaseException) -> str:
        return self.backend.clean(exc)

    def connect_writer(self) -> PgConn:
        return PgConn(self.backend.connect())

    def connect_reader(self) -> PgConn:
        conn = self.backend.connect()
        conn.execute("SET default_transaction_read_only = on")
        return PgConn(conn)

    def _commit(self, conn: Any, batch: list[Any]) -> None:
        if conn.raw.closed or conn.raw.broken:
            # The server went away (restart, failover): this batch gets a new connection.
            try:
                fresh = self.connect_writer()
            except StoreError as exc:
                log.error("writeback queue %s: %s", self.path, exc)
            else:
                conn.raw = fresh.raw
        super()._commit(conn, batch)

    def read(self, op: Any) -> Any:
        try:
            return super().read(op)
        except psycopg.OperationalError as exc:
            bad = getattr(self._local, "conn", None)
            self._local.conn = None  # reconnect on the next read
            if bad is not None:
                with self._readers_lock:
                    self._readers.remove(bad)
                bad.close()
            raise StoreError(f"{self.path}: read failed: {self.backend.clean(exc)}") from None

    def _locked(self, sql: str, practice_id: str, *, reconnect: bool = True) -> bool:
        with self._lock_mutex:
            try:
                if self._lock_conn is None or self._lock_conn.closed or self._lock_conn.broken:
                    if not reconnect:
                        return False
                    self._lock_conn = self.backend.connect()
                row = self._lock_conn.execute(
                    sql.encode(), (CLAIM_PREFIX + practice_id,)
                ).fetchone()
            except (psycopg.Error, StoreError) as exc:
                log.warning("writeback queue %s: practice claim failed: %s", self.path, exc)
                return False
        return bool(row and row[0])

    async def claim(self, practice_id: str) -> bool:
        """Take the practice's advisory lock if no other session holds it."""
        return await asyncio.to_thread(
            self._locked, "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", practice_id
        )

    async def holds(self, practice_id: str) -> bool:
        """Whether this session holds the practice's advisory lock, asked of the server: a
        claim connection that broke (and was replaced since) holds nothing any more."""
        with self._lock_mutex:
            conn = self._lock_conn
            if conn is None or conn.closed or conn.broken:
                return False
        return await asyncio.to_thread(self._locked, HOLDS_SQL, practice_id, reconnect=False)

    async def release(self, practice_id: str) -> None:
        await asyncio.to_thread(
            self._locked, "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", practice_id
        )

    def close(self) -> None:
        super().close()
        with self._lock_mutex:
            if self._lock_conn is not None:
                # Unlocked before it returns (closing alone drops the claims too, but only once
                # the server notices: that is what covers a process that dies).
                with contextlib.suppress(psycopg.Error):
                    self._lock_conn.execute("SELECT pg_advisory_unlock_all()")
                self._lock_conn.close()
                self._lock_conn = None


class PgCursorStore:
    """Poller cursors in PostgreSQL (a `reconciler.engine.cursors.CursorStore`); like the SQLite
    store it keeps what it read or wrote in memory, since one process polls a practice."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self.path = backend.name
        backend.migrate()
        self._db = backend.connect()
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], str] = {}

    def _execute(self, sql: str, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        try:
            if self._db.closed or self._db.broken:
                self._db = self.backend.connect()
            return self._db.execute(sql.encode(), params)
        except psycopg.Error as exc:
            raise StoreError(f"{self.path}: {self.backend.clean(exc)}") from None

    def get(self, key: str, kind: str) -> str | None:
        cached = self._cache.get((key, kind))
        if cached is not None:
            return cached
        with self._lock:
            row = self._execute(
                "SELECT cursor FROM cursors WHERE practice_key = %s AND kind = %s", (key, kind)
            ).fetchone()
            if row is None:
                return None
            cursor = self._cache[(key, kind)] = str(row[0])
        return cursor

    def put(self, key: str, kind: str, cursor: str) -> None:
        with self._lock:
            self._execute(
                "INSERT INTO cursors (practice_key, kind, cursor, updated_at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (practice_key, kind) DO UPDATE"
                " SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                (key, kind, cursor, time.time()),
            )
            self._cache[(key, kind)] = cursor  # only once the database has it

    def put_many(self, cursors: Sequence[tuple[str, str, str]]) -> None:
        """Save (key, kind, cursor) triples in one transaction: all of them or, on an error,
        none (the cache then keeps the cursors from before)."""
        now = time.time()
        with self._lock:
            try:
                if self._db.closed or self._db.broken:
                    self._db = self.backend.connect()
                with self._db.transaction(), self._db.cursor() as cur:
                    cur.executemany(
                        b"INSERT INTO cursors (practice_key, kind, cursor, updated_at)"
                        b" VALUES (%s, %s, %s, %s) ON CONFLICT (practice_key, kind) DO UPDATE"
                        b" SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                        [(key, kind, cursor, now) for key, kind, cursor in cursors],
                    )
            except psycopg.Error as exc:
                raise StoreError(f"{self.path}: {self.backend.clean(exc)}") from None
            for key, kind, cursor in cursors:
                self._cache[(key, kind)] = cursor

    def forget(self, key: str) -> None:
        with self._lock:
            self._execute("DELETE FROM cursors WHERE practice_key = %s", (key,))
            for k in [k for k in self._cache if k[0] == key]:
                del self._cache[k]

    def evict(self, key: str) -> None:
        """Drop `key`'s cursors from memory only: another replica polls it now (`--share`), and
        if it comes back here its cursors are read from the database again."""
        with self._lock:
            for k in [k for k in self._cache if k[0] == key]:
                del self._cache[k]

    def all(self) -> dict[tuple[str, str], str]:
        """Every stored cursor (for tests and diagnostics)."""
        with self._lock:
            rows = self._execute("SELECT practice_key, kind, cursor FROM cursors", ()).fetchall()
        return {(str(k), str(kind)): str(c) for k, kind, c in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"PgCursorStore({self.path!r})"


class PgSharedSettings:
    """`practice_settings` for one replica (a `reconciler.writeback.target.SharedSettings`).

    Reads come from memory: the whole table is loaded at `start()` and each row again when its
    NOTIFY arrives (a few milliseconds after the writer's commit), on a listener thread with a
    connection of its own. When that connection breaks, the thread connects again and reloads
    the table, since notifications sent meanwhile are lost.

    The listener's connection is also the replica's sign of life: its `application_name` is
    `REPLICA_PREFIX` + the owner's name, and every `LIVE_SECONDS` the listener reads which of
    those sessions exist (`alive`). A row whose owner has no session is nobody's: a replica that
    died, or a practice deleted while no replica ran.
    """

    #: The listener sessions' application_name prefix (PostgreSQL keeps 63 bytes of it).
    REPLICA_PREFIX = "pmsctl-replica:"
    #: How often the listener reads which replicas have a session.
    LIVE_SECONDS = 2.0

    #: How long the listener waits for a notification before it looks at `stop()`.
    POLL_SECONDS = 0.5
    #: After a failed connection, wait this long before the next try.
    RETRY_SECONDS = 1.0

    def __init__(self, backend: PostgresBackend, owner: str) -> None:
        self.backend = backend
        self.owner = owner
        self._rows: dict[str, tuple[str, str]] = {}
        self._write_conn: psycopg.Connection[Any] | None = None
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loaded = threading.Event()
        self._live: set[str] = set()
        self._session = (self.REPLICA_PREFIX + owner).encode()[:63].decode(errors="ignore")

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._write_lock:
            try:
                conn = self._write_conn
                if conn is None or conn.closed or conn.broken:
                    conn = self._write_conn = self.backend.connect()
                conn.execute(sql.encode(), params)
            except (psycopg.Error, StoreError) as exc:
                # The next publish tries again (the publisher keeps what it could not write).
                raise StoreError(f"{self.backend.name}: {self.backend.clean(exc)}") from None

    def publish(self, practice_id: str, snapshot_json: str) -> None:
        self._write(
            "INSERT INTO practice_settings (practice_id, snapshot, owner, updated_at)"
            " VALUES (%s, %s::jsonb, %s, %s) ON CONFLICT (practice_id) DO UPDATE"
            " SET snapshot = excluded.snapshot, owner = excluded.owner,"
            " version = practice_settings.version + 1, updated_at = excluded.updated_at"
            " WHERE practice_settings.snapshot IS DISTINCT FROM excluded.snapshot"
            " OR practice_settings.owner IS DISTINCT FROM excluded.owner",
            (practice_id, snapshot_json, self.owner, time.time()),
        )
        self._rows[practice_id] = (self.owner, snapshot_json)

    def withdraw(self, practice_id: str) -> None:
        self._write(
            "DELETE FROM practice_settings WHERE practice_id = %s AND owner = %s",
            (practice_id, self.owner),
        )
        row = self._rows.get(practice_id)
        if row is not None and row[0] == self.owner:
            del self._rows[practice_id]

    def lookup(self, practice_id: str) -> tuple[str, str] | None:
        return self._rows.get(practice_id)

    def alive(self, owner: str) -> bool:
        """Whether replica `owner` has a session on the store (as of the last look)."""
        name = (self.REPLICA_PREFIX + owner).encode()[:63].decode(errors="ignore")
        return owner == self.owner or name in self._live

    def _look_alive(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(
            b"SELECT DISTINCT application_name FROM pg_stat_activity"
            b" WHERE application_name LIKE 'pmsctl-replica:%'"
        ).fetchall()
        self._live = {str(r[0]) for r in rows}

    def start(self, on_change: Callable[[str], None], on_writeback: Callable[[str], None]) -> None:
        """Load the table, then listen on a thread of its own (see the class doc)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._loaded.clear()
        self._thread = threading.Thread(
            target=self._listen, args=(on_change, on_writeback),
            name="pmsctl-settings-listener", daemon=True,
        )  # fmt: skip
        self._thread.start()
        self._loaded.wait(15.0)

    def _load(self, conn: psycopg.Connection[Any]) -> None:
        rows = conn.execute(b"SELECT practice_id, owner, snapshot::text FROM practice_settings")
        self._rows = {str(pid): (str(owner), str(text)) for pid, owner, text in rows.fetchall()}

    def _reload(self, conn: psycopg.Connection[Any], practice_id: str) -> None:
        row = conn.execute(
            b"SELECT owner, snapshot::text FROM practice_settings WHERE practice_id = %s",
            (practice_id,),
        ).fetchone()
        if row is None:
            self._rows.pop(practice_id, None)
        else:
            self._rows[practice_id] = (str(row[0]), str(row[1]))

    def _listen(
        self, on_change: Callable[[str], None], on_writeback: Callable[[str], None]
    ) -> None:
        while not self._stopping.is_set():
            try:
                conn = self.backend.connect(self._session)
            except StoreError as exc:
                log.warning("practice settings listener: %s", exc)
                self._loaded.set()  # start() goes on; lookups answer from what was loaded
                self._stopping.wait(self.RETRY_SECONDS)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {SETTINGS_CHANNEL}".encode())
                    conn.execute(f"LISTEN {WRITEBACK_CHANNEL}".encode())
                    self._load(conn)  # after LISTEN: a change from now on is not missed
                    self._look_alive(conn)
                    looked = time.monotonic()
                    self._loaded.set()
                    while not self._stopping.is_set():
                        if time.monotonic() - looked >= self.LIVE_SECONDS:
                            self._look_alive(conn)
                            looked = time.monotonic()
                        # Read out first (the connection runs no query while it waits for
                        # notifications), one at a time: it returns as soon as one arrives.
                        notes = list(conn.notifies(timeout=self.POLL_SECONDS, stop_after=1))
                        for note in notes:
                            if note.channel == WRITEBACK_CHANNEL:
                                on_writeback(note.payload)
                            else:
                                self._reload(conn, note.payload)
                                on_change(note.payload)
            except psycopg.Error as exc:
                if not self._stopping.is_set():
                    log.warning("practice settings listener: %s", self.backend.clean(exc))
                    self._stopping.wait(self.RETRY_SECONDS)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        with self._write_lock:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None
