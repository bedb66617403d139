"""Files that hold patient data or credentials: created 0600, in folders created 0700.

Every writer of such a file goes through here, whatever the process's umask: the writeback
queue, the pollers' cursor store, the JSONL event sink, the simulator's database, the
`pmsctl up` log and catalogs, and the state folder. Standard library only, and outside the
import-linter layers, so every layer (and the simulator) may use it.

- `private_dir(path)`: create a missing folder (and missing parents) 0700. An existing folder
  is left as it is (a mounted volume, a folder shared with other files); `loose_dir` says
  whether it lets group or others in, for the caller to warn.
- `private_file(path)`: create a missing file 0600 without opening an existing one, and take
  group and other access away from it (and its SQLite `-wal`/`-shm` companions).
- `open_private(path, mode)`: open for writing/appending, creating the file 0600.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Any

#: Only the owner may read or write these files, or list these folders.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: SQLite's companions of a database file in WAL mode.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create `path` (and missing parents) 0700 whatever the umask; an existing one is kept."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent and parent != path:
        private_dir(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask


def loose_dir(path: str | os.PathLike[str]) -> bool:
    """True when the folder at `path` lets group or others read, write or enter it."""
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False


def private_file(path: str | os.PathLike[str]) -> None:
    """Create `path` 0600 if missing (SQLite gives its -wal and -shm files the database file's
    mode), and take group and other access away from it and its SQLite companions.

    Never opens an existing file: closing any descriptor of a file drops every POSIX lock this
    process holds on it, including those of the SQLite connections already open on it (which
    then corrupt it). Only a file that does not exist yet, so nobody has open, is opened.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away, never added
            os.close(fd)
    for name in (path, *(path + suffix for suffix in SQLITE_COMPANIONS)):
        try:
            mode = os.stat(name).st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(name, mode & 0o700)


def open_private(path: str | os.PathLike[str], mode: str = "a", **kw: Any) -> IO[Any]:
    """`open(path, mode)` for writing, the file created 0600 (an existing one loses group and
    other access)."""
    flags = os.O_WRONLY | os.O_CREAT
    if "a" in mode:
        flags |= os.O_APPEND
    elif "w" in mode:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, os.fstat(fd).st_mode & 0o700)
        return os.fdopen(fd, mode, **kw)
    except BaseException:
        os.close(fd)
        raise
