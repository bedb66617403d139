"""Where pmsctl keeps its durable state, chosen by URL: a plug-in registry keyed by URL scheme.

Without a URL the embedded default stays: SQLite files on the local volume (the writeback queue
`reconciler.writeback.store.Store`, the cursors `reconciler.engine.cursors.SqliteCursorStore`).
With `--store postgresql://...` (or $PMSCTL_STORE) both live in one PostgreSQL database that
every replica shares (`reconciler.stores.postgres`). A backend is a module named in `BACKENDS`,
imported only when its scheme is used, so its driver is needed only by those who use it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from reconciler.engine.cursors import CursorStore
from reconciler.writeback.errors import StoreError
from reconciler.writeback.store import QueueStore
from reconciler.writeback.target import SharedSettings

STORE_ENV = "PMSCTL_STORE"
STORE_PASSWORD_FILE_ENV = "PMSCTL_STORE_PASSWORD_FILE"

#: URL scheme -> "module:class" of the backend serving it; the class is called as
#: `cls(url, password_file=...)` and must make a `Backend`.
BACKENDS: dict[str, str] = {
    "postgresql": "reconciler.stores.postgres:PostgresBackend",
    "postgres": "reconciler.stores.postgres:PostgresBackend",
}


class Backend(Protocol):
    """A store backend: one place holding the writeback queue and the poller cursors."""

    #: The store's URL for messages (no password).
    name: str

    def migrate(self) -> tuple[int, int]:
        """Apply the missing schema migrations; (version before, version after)."""
        ...

    def version(self) -> tuple[int, int]:
        """(the store's schema version, the version this pmsctl knows)."""
        ...

    def queue_store(self, *, max_batch: int = 1000) -> QueueStore:
        """The writeback queue (not open yet)."""
        ...

    def cursor_store(self) -> CursorStore:
        """The poller cursors (ready to use)."""
        ...

    def shared_settings(self, owner: str) -> SharedSettings:
        """The practices' snapshots every replica reads, as replica `owner` (not started)."""
        ...


def scheme(url: str) -> str:
    """The URL's scheme, lower-case ('' for a bare path)."""
    return urlsplit(url).scheme.lower()


def backend_from_url(url: str, *, password_file: str | Path | None = None) -> Backend:
    """The backend for `url`; StoreError naming the schemes known (the URL shown without its
    password) for any other."""
    target = BACKENDS.get(scheme(url))
    if target is None:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise StoreError(
            f"{scrub(url)}: unknown store; use {known} (or no --store for the SQLite files)"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(url, password_file=password_file)
    return backend


def scrub(url: str) -> str:
    """`url` without its password (in the authority or as a `password=` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
