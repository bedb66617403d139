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
