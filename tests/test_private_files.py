"""Files that hold patient data or credentials are the owner's alone: 0600 files in 0700
folders, whatever the umask (`reconciler.private`).

Real: `pmsctl up --once` as a subprocess with umask 002 (its simulator, SQLite files, event
file, log, catalogs and writeback queue), the runtime the operator builds (in-process, under
umask 002), and the helpers on real files in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pms_drivers.base import Credentials
from pms_simulator.state import State
from reconciler import private
from reconciler.engine.cursors import SqliteCursorStore
from reconciler.engine.sink import JsonlSink
from reconciler.runtime import Runtime, RuntimeOptions

REPO = Path(__file__).resolve().parent.parent
TOKEN = "private-files-test-token-0123456789"


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Umask 002 (group-writable, world-readable by default) for this test only."""
    before = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of `root` and everything under it, by path relative to `root`."""
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    loose = {
        name: f"{mode:04o}"
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not loose, f"not 0600 files in 0700 folders under {root}: {loose}"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_up_once(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMSCTL_")}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "up", "--once", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        umask=0o002,
    )


def test_pmsctl_up_once_under_umask_002_leaves_only_private_files(tmp_path: Path) -> None:
    folder = tmp_path / "practices"
    folder.mkdir()
    shutil.copy(REPO / "practices" / "opendental-bright-smiles.yaml", folder)
    result = run_up_once(
        tmp_path, "practices", "--tick-seconds", "1", "--writeback-port", str(free_port())
    )
    assert result.returncode in (0, 1), result.stderr  # 1: not Ready in time; files still made
    found = assert_private(tmp_path / ".pmsctl")
    # Every kind of file the brief names is there (and so was checked above).
    for name in ("state.db", "events.jsonl", "simulator.db", "pmsctl.log", "writebacks.db",
                 "writeback-token"):  # fmt: skip
        assert name in found, sorted(found)
    assert any(name.startswith("catalogs/") for name in found), sorted(found)
    assert "warning" not in result.stderr


def test_an_existing_loose_state_folder_is_kept_and_warned_about(tmp_path: Path) -> None:
    folder = tmp_path / "practices"
    folder.mkdir()
    shutil.copy(REPO / "practices" / "opendental-bright-smiles.yaml", folder)
    state = tmp_path / ".pmsctl"
    state.mkdir()
    state.chmod(0o755)
    result = run_up_once(tmp_path, "practices", "--tick-seconds", "1", "--no-writeback")
    assert result.returncode in (0, 1), result.stderr
    assert "warning: .pmsctl is mode 0755" in result.stderr
    assert "chmod 700 .pmsctl" in result.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o755  # left alone: it may be shared
    for path in state.rglob("*"):  # its files are still private
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_the_operators_runtime_files_are_private_under_umask_002(
    tmp_path: Path, loose_umask: None
) -> None:
    class NoSecrets:
        async def get(self, key: str, secret_name: str) -> Credentials:
            raise AssertionError("no practice is applied")

    root = tmp_path / "var"
    opts = RuntimeOptions(
        sink_url=f"file:{root / 'events' / 'events.jsonl'}",
        state_db=root / "state" / "state.db",
        listen_host="127.0.0.1",
        writeback_port=0,
        writeback_token=TOKEN,
        writeback_db=root / "queue" / "writebacks.db",
    )
    async with Runtime(opts, secrets=NoSecrets()):
        found = assert_private(root)
    assert {"events/events.jsonl", "state/state.db", "queue/writebacks.db"} <= set(found)


async def test_the_writers_make_private_files_under_umask_002(
    tmp_path: Path, loose_umask: None
) -> None:
    store = SqliteCursorStore(tmp_path / "a" / "state.db")
    store.put("ns/p", "appointments", "c1")
    sink = JsonlSink(tmp_path / "b" / "events.jsonl", fsync=False)
    state = State(str(tmp_path / "c" / "simulator.db"))
    try:
        found = assert_private(tmp_path)
        assert "a/state.db-wal" in found  # the WAL companion follows the database's mode
    finally:
        store.close()
        await sink.close()
        state.close()


def test_an_existing_loose_file_loses_group_and_other_access(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("{}\n")
    path.chmod(0o664)
    with private.open_private(path, "a", encoding="utf-8") as f:
        f.write("{}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "{}\n{}\n"  # appended, not truncated
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    private.private_file(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert private.loose_dir(tmp_path) == bool(tmp_path.stat().st_mode & 0o077)
