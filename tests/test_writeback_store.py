"""The SQLite queue file's own behaviour; what every backend must do is in test_store_contract.py.

Real: SQLite files in a temporary directory. Nothing faked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.writeback import store as ops
from reconciler.writeback.errors import StoreError


def test_a_queue_file_that_cannot_be_created_is_named_in_the_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"file/q\.db: cannot open the writeback queue"):
        ops.connect(blocker / "q.db")


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_the_queue_files_are_private_to_their_owner_whatever_the_umask(
    tmp_path: Path,
) -> None:
    import os

    from reconciler.writeback.model import Status, parse_request
    from reconciler.writeback.store import Store

    old = os.umask(0o002)  # a typical shared-group umask: files 0664, folders 0775
    try:
        folder = tmp_path / "state" / ".pmsctl"
        store = Store(folder / "writebacks.db")
        store.open()
        try:
            body = {"callerId": "m1", "type": "outgoingSms", "patientId": "7",
                    "occurredAt": "2026-11-26T09:15:00Z", "text": "hi"}  # fmt: skip
            await store.run(ops.Insert(parse_request("p1", body), Status.PENDING, ops.now()))
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
