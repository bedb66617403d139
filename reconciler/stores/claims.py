"""Replicas that share the fleet (`pmsctl operator --share`): who is a member, and which buckets
of practices (`reconciler.engine.ring`) each one may poll, in the PostgreSQL store.

Both are PostgreSQL session-level advisory locks held on one connection per replica:

- membership: a replica joins by taking the lock (member space, id) for a random id; the members
  are the ids whose lock is granted, read from `pg_locks`. A replica that dies (SIGKILL, a node
  lost) loses its connection and with it its lock: the others see it gone at their next look,
  without waiting out a lease. No table and no migration: a member is its lock. The two
  spaces (first keys) are hashed from the group name (`lock_space`).
- claims: a replica polls (and delivers writebacks for) the practices of a bucket only while it
  holds the lock (bucket space, bucket). The ring says which buckets a replica should try; the
  lock makes it safe while the replicas' views of the membership disagree: a bucket's lock is
  granted to one session at a time, and the old owner releases it only after it stopped polling.

Lock table: a replica holds 1 + (its share of `ring.BUCKETS`) locks, the whole fleet
`ring.BUCKETS` + replicas, whatever the number of practices. PostgreSQL's shared lock table has
room for max_locks_per_transaction x (max_connections + max_prepared_transactions) locks (64 x
100 by default), so the defaults suffice (docs/operator.md, "Sharing the fleet").

`OwnedQueueStore` is the writeback queue of a sharing replica: its delivery claim of a practice
fails unless this replica holds the practice's bucket, so only the owner's drainer delivers.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

from reconciler.engine import ring
from reconciler.stores.postgres import PgQueueStore, PostgresBackend
from reconciler.writeback.errors import StoreError

log = logging.getLogger(__name__)

#: The group of replicas sharing one fleet when no other is named.
DEFAULT_GROUP = "pmsctl"


def lock_space(group: str, what: str) -> int:
    """The first key (a positive 32-bit int) of the two-key advisory locks of `group`'s members
    (`what` "member") or buckets ("bucket"): fleets watching different practices (another
    label selector, other namespaces) in one database are different groups and do not mix."""
    digest = hashlib.blake2b(f"pmsctl-share\0{group}\0{what}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


#: Both ends of the claims' connection give up on a peer that stopped answering after about
#: DEAD_AFTER seconds (TCP keepalives: idle 5 s, then 3 probes 2 s apart; unacknowledged data:
#: 10 s). The server then ends the session and frees its claims: a replica whose node is lost
#: without closing its connections (power, network) is replaced after that, not after the
#: operating system's default of two hours.
KEEPALIVE = {"idle": 5, "interval": 2, "count": 3, "user_timeout_ms": 10_000}
DEAD_AFTER = KEEPALIVE["idle"] + KEEPALIVE["interval"] * KEEPALIVE["count"]

_MEMBERS_SQL = (
    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 2 AND classid = %s::bigint::oid"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class FleetClaims:
    """This replica's membership and bucket claims on one dedicated connection (thread-safe;
    every method does blocking I/O: call them from a worker thread). StoreError (password
    masked) when the database cannot be reached; after that the claims are gone (`held` is
    empty) and `join()` starts over as a new member."""

    def __init__(self, backend: PostgresBackend, group: str = DEFAULT_GROUP) -> None:
        self.backend = backend
        self.group = group
        self._member_space = lock_space(group, "member")
        self._bucket_space = lock_space(group, "bucket")
        self._conn: psycopg.Connection[Any] | None = None
        self._mutex = threading.Lock()
        self._held: frozenset[int] = frozenset()
        #: This replica's member name while it is a member (None before `join()`).
        self.name: str | None = None

    @property
    def held(self) -> frozenset[int]:
        """The buckets whose claim this replica holds now."""
        return self._held

    def owns(self, practice_id: str) -> bool:
        """True while this replica holds the claim of `practice_id`'s bucket."""
        return ring.bucket(practice_id) in self._held

    def join(self) -> str:
        """Become a member (a no-op while one); this replica's member name."""
        with self._mutex:
            if self.name is not None and self._usable():
                return self.name
            self._drop()
            self._conn = self._connect()
            while True:
                member_id = 1 + secrets.randbelow(2**31 - 1)
                row = self._run(
                    "SELECT pg_try_advisory_lock(%s::int4, %s::int4)",
                    (self._member_space, member_id),
                ).fetchone()
                if row and row[0]:
                    self.name = str(member_id)
                    return self.name

    def members(self) -> list[str]:
        """The names of every member now (this replica included once it joined), sorted."""
        with self._mutex:
            rows = self._run(_MEMBERS_SQL, (self._member_space,)).fetchall()
        return sorted(str(r[0]) for r in rows)

    def claim(self, buckets: Iterable[int]) -> frozenset[int]:
        """Try to take the claims of `buckets` (those held already stay); the ones taken now."""
        with self._mutex:
            wanted = sorted(set(buckets) - self._held)
            if not wanted:
                return frozenset()
            rows = self._run(
                "SELECT b FROM unnest(%s::int4[]) AS b WHERE pg_try_advisory_lock(%s::int4, b)",
                (wanted, self._bucket_space),
            ).fetchall()
            taken = frozenset(int(r[0]) for r in rows)
            self._held = self._held | taken
        return taken

    def release(self, buckets: Iterable[int]) -> None:
        """Give up the claims of `buckets` (only after this replica stopped polling them)."""
        with self._mutex:
            gone = sorted(set(buckets) & self._held)
            if not gone:
                return
            # Out of `held` first: were the unlock to fail, the connection is dropped, and the
            # claims with it.
            self._held = self._held - set(gone)
            self._run(
                "SELECT pg_advisory_unlock(%s::int4, b) FROM unnest(%s::int4[]) AS b",
                (self._bucket_space, gone),
            )

    def close(self) -> None:
        """Leave: release every claim and the membership now (the others take over at their
        next look rather than when the server notices a closed connection)."""
        with self._mutex:
            if self._conn is not None and self._usable():
                try:
                    self._conn.execute(b"SELECT pg_advisory_unlock_all()")
                except psycopg.Error as exc:
                    log.warning("share claims: unlock at exit failed: %s", self.backend.clean(exc))
            self._drop()

    # -- internals (the caller holds _mutex) ----------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        k = KEEPALIVE
        conn = self.backend.connect(
            keepalives=1,
            keepalives_idle=k["idle"],
            keepalives_interval=k["interval"],
            keepalives_count=k["count"],
            tcp_user_timeout=k["user_timeout_ms"],
        )
        try:  # the server's side of the same (ignored on a unix socket)
            conn.execute(
                f"SET tcp_keepalives_idle = {k['idle']}; "
                f"SET tcp_keepalives_interval = {k['interval']}; "
                f"SET tcp_keepalives_count = {k['count']}; "
                f"SET tcp_user_timeout = {k['user_timeout_ms']}".encode()
            )
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"{self.backend.name}: {self.backend.clean(exc)}") from None
        return conn

    def _usable(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def _drop(self) -> None:
        """Forget the connection and everything held on it (closing it releases the locks)."""
        conn, self._conn = self._conn, None
        self._held = frozenset()
        self.name = None
        if conn is not None:
            conn.close()

    def _run(self, sql: str, params: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        if self._conn is None or not self._usable():
            self._drop()
            raise StoreError(f"{self.backend.name}: the share claims' connection is gone")
        try:
            return self._conn.execute(sql.encode(), params)
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"{self.backend.name}: {self.backend.clean(exc)}") from None


class OwnedQueueStore(PgQueueStore):
    """The shared writeback queue as a sharing replica uses it: a practice's delivery claim is
    tried only while `owns(practice_id)` (this replica holds its bucket), so a replica never
    delivers, parks or fails another replica's practices."""

    def __init__(
        self, backend: PostgresBackend, owns: Callable[[str], bool], *, max_batch: int = 1000
    ) -> None:
        super().__init__(backend, max_batch=max_batch)
        self._owns = owns

    async def claim(self, practice_id: str) -> bool:
        if not self._owns(practice_id):
            return False
        return await super().claim(practice_id)

    async def holds(self, practice_id: str) -> bool:
        return self._owns(practice_id) and await super().holds(practice_id)
