"""A real PostgreSQL server for the tests, started the way `tests/testenv.py` starts the API server.

`start_server(base)` runs Debian's `initdb` and `postgres` (found in /usr/lib/postgresql/*/bin,
or $PMSCTL_PG_BINDIR) on a data directory under `base`, listening on a free loopback port with
its unix socket in the same directory, and stops it (and removes nothing else) on exit, also
when the test session fails. PostgreSQL refuses to run as root: as root the server runs as the
`postgres` user the Debian package creates (else `nobody`), through `runuser`.

Clients reach it over TCP with a password (scram-sha-256), as in production; `Server.url` holds
it. `Server.database(name)` creates an empty database and returns its URL; each test gets its own.
Missing binaries fail the tests with the command that installs them (`make postgres`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from timing import wait_until

ENV_BINDIR = "PMSCTL_PG_BINDIR"
SUPERUSER = "pmsctl"
PASSWORD = "s3cret-test-pw-9f2c"


class PostgresMissing(RuntimeError):
    """No initdb/postgres binaries on this machine."""


def bindir() -> Path:
    """The directory holding initdb and postgres."""
    explicit = os.environ.get(ENV_BINDIR)
    candidates = [explicit] if explicit else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "postgres").exists():
            return Path(c)
    raise PostgresMissing(
        "no PostgreSQL server binaries (initdb, postgres): run `make postgres` (Debian's "
        f"`postgresql` package), or set ${ENV_BINDIR} to the directory holding them"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """The command prefix that drops root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    raise PostgresMissing(
        "running as root, and no `postgres` or `nobody` user to run PostgreSQL as"
    )


@dataclass
class Server:
    """A running server: `url` reaches its `postgres` database as the superuser."""

    host: str
    port: int
    socket_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str, *, password: bool = True) -> str:
        auth = f"{SUPERUSER}:{PASSWORD}" if password else SUPERUSER
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new empty database `name` (dropped first if there); its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url_for(name)


@contextlib.contextmanager
def start_server(base: Path, *, fsync: bool = False, timeout: float = 60.0) -> Iterator[Server]:
    """initdb + postgres under `base`; yields the `Server`, stopped on exit.

    `fsync=False` for the tests (durability across a machine crash is not what they test);
    the benchmark keeps PostgreSQL's default (on)."""
    bins = bindir()
    prefix = _run_as()
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    log = base / "postgres.log"
    if prefix:
        user = prefix[2]
        pw = pwd.getpwnam(user)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        base.chmod(0o700)
    pwfile = base / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    init = subprocess.run(
        [*prefix, str(bins / "initdb"), "-D", str(data), "--auth-local=trust",
         "--auth-host=scram-sha-256", "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
         "--no-sync", "--no-instructions"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr or init.stdout}")
    port = _free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(base),
        "fsync": "on" if fsync else "off",
        "synchronous_commit": "on",
        "max_connections": "200",
        "shared_buffers": "64MB",
    }
    args = [*prefix, str(bins / "postgres"), "-D", str(data), "-p", str(port)]
    for k, v in settings.items():
        args += ["-c", f"{k}={v}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = Server("127.0.0.1", port, base, proc, log)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        if proc.poll() is None:
            # Fast shutdown (clients a failed test left connected are cut off).
            subprocess.run(
                [*prefix, str(bins / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                capture_output=True,
            )
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(server: Server, timeout: float) -> None:
    import psycopg

    errors: list[Exception] = []

    def ready() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"postgres exited ({server.process.returncode}): {server.log.read_text()[-2000:]}"
            )
        try:
            psycopg.connect(server.url, connect_timeout=2).close()
        except psycopg.OperationalError as exc:
            errors.append(exc)
            return False
        return True

    try:
        wait_until(ready, timeout, "postgres to accept connections", step=0.1)
    except AssertionError:
        raise RuntimeError(
            f"postgres not ready after {timeout}s: {errors[-1] if errors else None}"
        ) from None
