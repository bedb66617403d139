"""PostgreSQL restarted while writebacks arrive: callers get 503 + Retry-After (never a 500, never
an acknowledgment without a commit), and every acknowledged writeback is stored and written once.

Real: a PostgreSQL server of this test's own (`tests/pg.py`, so restarting it disturbs no other
test), stopped with `pg_ctl stop -m fast` mid-load and started again on the same data directory
and port; the writeback service (aiohttp on loopback, the PostgreSQL queue, the drainer); the
PMS simulator behind the drivers; callers posting over HTTP that retry a 503 with the same
callerId, as the API asks them to.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pg
import psycopg
import pytest
from test_writeback_e2e import TOKEN, assert_exactly_once_in_order, drained, note_body, running
from timing import eventually

from reconciler.stores.postgres import PostgresBackend

CALLERS = 160
WORKERS = 8
PATIENTS = ("2", "3", "4", "5")


class Restartable:
    """A `pg.Server` this test may stop and start again (same data directory, same port)."""

    def __init__(self, server: pg.Server) -> None:
        self.server = server
        self.data = server.socket_dir / "data"
        self.prefix = pg._run_as()
        self.pg_ctl = str(pg.bindir() / "pg_ctl")
        # The postmaster's own command line, as `pg_ctl restart` reuses it.
        self.argv = shlex.split((self.data / "postmaster.opts").read_text())
        self.process: subprocess.Popen[bytes] | None = server.process

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w"],
            check=True,
            capture_output=True,
        )
        if self.process is not None:
            self.process.wait(30)
            self.process = None

    def start(self) -> None:
        with open(self.server.log, "ab") as out:
            self.process = subprocess.Popen(
                [*self.prefix, *self.argv], stdout=out, stderr=subprocess.STDOUT
            )
        self.server.process = self.process
        pg._wait_ready(self.server, 60)


@contextlib.contextmanager
def own_server() -> Iterator[Restartable]:
    base = Path(tempfile.mkdtemp(prefix="pmsctl-pg-restart-"))
    try:
        with pg.start_server(base) as server:
            restartable = Restartable(server)
            try:
                yield restartable
            finally:
                if restartable.process is not None and restartable.process.poll() is None:
                    restartable.stop()  # a server this test started again is its to stop
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("intake_process", [True, False], ids=["intake-process", "in-process"])
async def test_a_postgresql_restart_mid_load_answers_503_with_retry_after_and_loses_no_ack(
    tmp_path: Path, intake_process: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with own_server() as server:
        url = server.server.database("intake_restart")
        store = PostgresBackend(url).queue_store()
        options: dict[str, Any] = {"store": store, "intake_process": intake_process}
        async with running(tmp_path, [("acme", "OpenDental")], **options) as (
            sim,
            _,
            service,
            api,
        ):
            todo: asyncio.Queue[int] = asyncio.Queue()
            for i in range(CALLERS):
                todo.put_nowait(i)
            acked: dict[int, str] = {}  # caller number -> writeback id, once a 2xx said so
            unavailable: list[dict[str, Any]] = []  # the 503 answers' bodies
            headers = {"Authorization": f"Bearer {TOKEN}"}

            async def worker(http: aiohttp.ClientSession) -> None:
                while not todo.empty():
                    i = todo.get_nowait()
                    body = note_body(f"c{i}", "outgoingSms", PATIENTS[i % len(PATIENTS)])
                    while True:
                        async with http.post(
                            f"{api}/v1/practices/acme/writebacks", json=body, headers=headers
                        ) as resp:
                            answer = await resp.json()
                            if resp.status in (200, 202):
                                acked[i] = answer["id"]
                                break
                            assert resp.status == 503, (resp.status, answer)
                            assert int(resp.headers["Retry-After"]) >= 1
                            unavailable.append(answer)
                        # A client's pause before sending the same request again (Retry-After
                        # is whole seconds; a shorter pause keeps the test short).
                        await asyncio.sleep(0.05)

            async with aiohttp.ClientSession() as http:
                workers = [asyncio.create_task(worker(http)) for _ in range(WORKERS)]
                await eventually(lambda: len(acked) >= CALLERS // 4, 30, "a quarter acked")
                await asyncio.to_thread(server.stop)

                def refused() -> list[dict[str, Any]]:
                    for w in workers:  # a worker that failed an assertion says why, now
                        if w.done():
                            w.result()
                    return unavailable

                await eventually(refused, 30, "a 503 while the server is down")
                # A read while the server is down is a 503 + Retry-After too, not a 500.
                some_id = next(iter(acked.values()))
                async with http.get(f"{api}/v1/writebacks/{some_id}", headers=headers) as resp:
                    assert resp.status == 503
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert (await resp.json())["error"]["code"] == "queue_unavailable"
                assert len(acked) < CALLERS, "the load ended before the server went down"
                await asyncio.to_thread(server.start)
                await asyncio.wait_for(asyncio.gather(*workers), 120)

            assert {a["error"]["code"] for a in unavailable} == {"queue_unavailable"}
            # The intake's own log lines (the child's too: forwarded) say why, password masked.
            refused = [r for r in caplog.records if r.name == "reconciler.writeback.api"]
            assert refused and all(pg.PASSWORD not in r.getMessage() for r in refused)
            assert len(acked) == CALLERS
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute("SELECT caller_id, id FROM writebacks ORDER BY seq").fetchall()
            stored = {str(caller): str(wid) for caller, wid in rows}
            assert len(rows) == CALLERS  # one row per callerId, whatever was retried
            for i, wid in acked.items():
                assert stored.get(f"c{i}") == wid, f"acked c{i} ({wid}) is not stored"
            final = await drained(service.counts, "acme", timeout=60)
            assert final["sent"] == CALLERS
            # Each patient's notes are written in the order the queue holds them (seq order).
            patient_of = {acked[i]: PATIENTS[i % len(PATIENTS)] for i in range(CALLERS)}
            posted = [(str(wid), patient_of[str(wid)]) for _, wid in rows]
            assert_exactly_once_in_order(sim.notes("acme"), posted)
