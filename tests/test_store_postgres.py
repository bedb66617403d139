"""The PostgreSQL store's own behaviour: versioned migrations under a lock, the store URL and its
password kept out of every message, the backend registry, and active/active delivery.

Real: a PostgreSQL server (`pg_server`, tests/pg.py) reached over TCP with a password; for the
delivery tests also the writeback services, the real drivers and the PMS simulator over HTTP on
loopback (the helpers of test_writeback_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pg
import psycopg
import pytest
from test_writeback_e2e import (
    FAST,
    N_KILL,
    TOKEN,
    Directory,
    assert_exactly_once_in_order,
    drained,
    note_body,
    post,
    post_then_kill_mid_drain,
    practice_spec,
    wait_for_file,
)
from timing import eventually

from pms_drivers.base import NoteWrite
from pms_simulator.server import Simulator
from reconciler.api.spec import WritebackType
from reconciler.stores import backend_from_url, scrub
from reconciler.stores.postgres import (
    CLAIM_PREFIX,
    MIGRATIONS,
    SCHEMA_VERSION,
    PgConn,
    PostgresBackend,
)
from reconciler.writeback import store as ops
from reconciler.writeback.errors import StoreError
from reconciler.writeback.model import Status, parse_request
from reconciler.writeback.service import WritebackService


def test_migrations_apply_once_even_when_replicas_start_together(pg_url: str) -> None:
    backends = [PostgresBackend(pg_url) for _ in range(4)]
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def start(b: PostgresBackend) -> None:
        try:
            results.append(b.migrate())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, description FROM pmsctl_schema").fetchall()
    assert rows == [(v, d) for v, d, _ in MIGRATIONS]


def test_a_store_from_a_newer_pmsctl_is_refused(pg_url: str) -> None:
    PostgresBackend(pg_url).migrate()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pmsctl_schema (version, description) VALUES (%s, 'future')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer pmsctl"):
        PostgresBackend(pg_url).migrate()


def test_the_password_comes_from_a_file_and_never_shows_in_messages(
    pg_server: pg.Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare = pg_server.url_for("postgres", password=False)
    secret = tmp_path / "password"
    secret.write_text(pg.PASSWORD + "\n")
    backend = PostgresBackend(bare, password_file=secret)
    backend.connect().close()  # the file's password gets in

    wrong = pg_server.url_for("postgres").replace(pg.PASSWORD, "not-the-password-123")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as raised:
        PostgresBackend(wrong).migrate()
    message = str(raised.value)
    assert "password authentication failed" in message
    assert "not-the-password-123" not in message and ":***@" in message
    with pytest.raises(StoreError) as raised:
        PostgresBackend(bare, password_file=tmp_path / "missing").connect()
    assert "cannot read the store password" in str(raised.value)
    assert pg.PASSWORD not in caplog.text and "not-the-password-123" not in caplog.text


def test_scrub_masks_the_password_wherever_the_url_holds_it() -> None:
    assert scrub("postgresql://u:p%40ss@db:5432/x?sslmode=require") == (
        "postgresql://u:***@db:5432/x?sslmode=require"
    )
    assert scrub("postgresql://db/x?user=u&password=hunter22") == (
        "postgresql://db/x?user=u&password=***"
    )
    assert scrub("postgresql://u@db/x") == "postgresql://u@db/x"


def test_the_registry_picks_the_backend_by_scheme_and_names_the_known_ones() -> None:
    assert isinstance(backend_from_url("postgres://u:pw@h/x"), PostgresBackend)
    with pytest.raises(StoreError) as raised:
        backend_from_url("mysql://u:hunter22@h/x")
    assert "postgresql://" in str(raised.value) and "hunter22" not in str(raised.value)


async def test_a_queue_survives_the_server_dropping_the_writer_connection(pg_url: str) -> None:
    """A failover or restart cuts the writer's connection: the next commit reconnects."""
    from test_store_contract import request

    from reconciler.writeback.model import Status

    store = PostgresBackend(pg_url).queue_store()
    store.open()
    try:
        await store.run(ops.Insert(request("a"), Status.PENDING, 1.0))
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreError):  # the batch on the cut connection fails, as one
            await store.run(ops.Insert(request("b"), Status.PENDING, 1.0))
        await store.run(ops.Insert(request("b"), Status.PENDING, 1.0))
        rows = store.read(lambda c: ops.list_records(c))
        assert [r.request.caller_id for r in rows] == ["a", "b"]
    finally:
        store.close()


# --- active/active: every replica takes writebacks, one at a time delivers a practice ---------


def ok_writes(service: WritebackService) -> float:
    """How many PMS writes this replica made that succeeded (its own metrics)."""
    total = 0.0
    for metric in service.metrics.attempts.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("result") == "ok":
                total += sample.value
    return total


async def test_two_replicas_on_one_database_deliver_each_writeback_once_in_order(
    pg_url: str,
) -> None:
    """Two writeback services (two replicas) share one PostgreSQL queue; requests go to either.
    Each practice is delivered by one replica at a time (the claim): every writeback lands in
    the PMS exactly once, in order per patient, and the two replicas' successful writes add up
    to the number of writebacks (no replica re-sent what the other delivered)."""
    practices = [("od-aa", "OpenDental"), ("es-aa", "Eaglesoft"), ("dx-aa", "Dentrix")]
    sim = Simulator(rate_limit_per_second=500, burst=500)
    for pid, pms in practices:
        sim.add_practice(pid, pms)
        sim.set_faults(pid, latency_ms=5)  # writes overlap: a second deliverer would race
    services: list[WritebackService] = []
    directories: list[Directory] = []
    try:
        async with sim.serve() as sim_url:
            urls = []
            for _ in range(2):
                directory = Directory(sim_url)
                for pid, pms in practices:
                    await directory.apply(practice_spec(pid, pms, sim_url))
                store = PostgresBackend(pg_url).queue_store()
                service = WritebackService(directory, "unused", TOKEN, policy=FAST, store=store)
                directories.append(directory)
                services.append(service)
                url = await service.start("127.0.0.1", 0)
                assert url is not None
                urls.append(url)
            n = 15
            sent = [(pid, k) for k in range(n) for pid, _ in practices]
            async with aiohttp.ClientSession() as http:
                answers = await asyncio.gather(
                    *(post(http, urls[k % 2], pid, note_body(f"aa-{k}", "outgoingSms", str(2 + k % 3)))
                      for pid, k in sent)
                )  # fmt: skip
            assert all(status == 202 for status, _ in answers), answers
            for pid, _ in practices:
                assert await drained(services[0].counts, pid, timeout=30) == {
                    "sent": n, "skipped": 0, "pending": 0, "failed": 0,
                }  # fmt: skip
                stored = services[1].store.read(
                    lambda c, pid=pid: ops.list_records(c, practice_id=pid)
                )
                assert_exactly_once_in_order(
                    sim.notes(pid), [(r.id, r.request.patient_id) for r in stored]
                )
            assert ok_writes(services[0]) + ok_writes(services[1]) == n * len(practices)
    finally:
        for service in services:
            await service.stop(grace=1.0)
        for directory in directories:
            await directory.close()
        sim.close()


# --- pmsctl store -----------------------------------------------------------------------------


def pmsctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_pmsctl_store_migrate_applies_the_schema_once_and_prints_no_password(
    pg_server: pg.Server, tmp_path: Path
) -> None:
    url = pg_server.database("cli_migrate")
    first = pmsctl("store", "migrate", "--store", url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"schema version 0 -> {SCHEMA_VERSION}")
    # The password from a file named in the environment, the URL from $PMSCTL_STORE.
    secret = tmp_path / "pw"
    secret.write_text(pg.PASSWORD)
    bare = pg_server.url_for("cli_migrate", password=False)
    env = {"PMSCTL_STORE": bare, "PMSCTL_STORE_PASSWORD_FILE": str(secret)}
    again = pmsctl("store", "migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{bare}: schema version {SCHEMA_VERSION}, up to date"
    version = pmsctl("store", "version", env=env)
    assert version.stdout.strip() == (
        f"{bare}: schema version {SCHEMA_VERSION} (this pmsctl: {SCHEMA_VERSION})"
    )
    bad = pmsctl("store", "migrate", "--store", url.replace(pg.PASSWORD, "wrong-pw-77"))
    assert bad.returncode == 2
    assert "password authentication failed" in bad.stderr
    for out in (first, again, version, bad):
        assert pg.PASSWORD not in out.stdout + out.stderr
        assert "wrong-pw-77" not in out.stdout + out.stderr
    missing = pmsctl("store", "migrate", env={"PMSCTL_STORE": ""})
    assert missing.returncode == 2 and "--store URL" in missing.stderr


def test_pmsctl_operator_refuses_an_unknown_store_before_connecting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--sink", "file:x", "--writeback-port", "0",
         "--store", "mysql://u:hunter22@db/x"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--store mysql://u:***@db/x: unknown store; use postgresql://" in result.stderr
    assert "hunter22" not in result.stderr


# --- exactly once into the PMS across a crash -------------------------------------------------


@pytest.mark.parametrize("pms", ["OpenDental", "Dentrix"])
async def test_a_replica_that_dies_after_the_pms_write_and_before_recording_it_causes_no_double(
    pg_url: str, pms: str
) -> None:
    """Replica A claims a practice, marks a writeback `sending`, writes the note to the PMS, and
    dies before it records `sent`. Replica B cannot take the practice while A's claim holds;
    once A's session is gone it delivers the record again, and the PMS write is recognised
    (Open Dental: the marker in the commlog, read back before writing; the bridge agent: the
    Idempotency-Key): one note in the PMS, and the record carries its id."""
    pid = f"crash-{pms.lower()}"
    sim = Simulator(rate_limit_per_second=500, burst=500)
    sim.add_practice(pid, pms)
    backend = PostgresBackend(pg_url)
    backend.migrate()
    service: WritebackService | None = None
    try:
        async with sim.serve() as sim_url:
            directory = Directory(sim_url)
            target = await directory.apply(practice_spec(pid, pms, sim_url))
            assert target.driver is not None and target.provider_id is not None
            type_id = target.note_type_ids[WritebackType.OUTGOING_SMS]
            # Replica A, step by step, on its own session.
            a = psycopg.connect(pg_url, autocommit=True)
            a.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (CLAIM_PREFIX + pid,))
            req = parse_request(pid, note_body("crash-1", "outgoingSms", "2"))
            ops.insert(PgConn(a), req, status=Status.PENDING, now=ops.now(),
                       target_type_id=type_id, provider_id=target.provider_id)  # fmt: skip
            assert ops.mark_sending(PgConn(a), req.id, now=ops.now()) == 1
            written = await target.driver.write_note(
                NoteWrite(
                    writeback_id=req.id,
                    kind=req.type,
                    patient_id=req.patient_id,
                    note_type_id=type_id,
                    provider_id=target.provider_id,
                    occurred_at=req.occurred_at,
                    text=req.text,
                )
            )
            assert [n["writeback_id"] for n in sim.notes(pid)] == [req.id]

            # Replica B starts while A still holds the practice.
            service = WritebackService(
                directory, "unused", TOKEN, policy=FAST, store=backend.queue_store()
            )
            await service.start(host=None)
            assert not await service.store.claim(pid)
            # A dies: its session ends without a word (as the server sees a killed process).
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (a.info.backend_pid,))
            assert await drained(service.counts, pid, timeout=20) == {
                "sent": 1, "skipped": 0, "pending": 0, "failed": 0,
            }  # fmt: skip
            record = service.store.read(lambda c: ops.get(c, req.id))
            assert record is not None and record.pms_id == written.id
            assert record.attempts == 2  # A's attempt and B's
            assert [n["writeback_id"] for n in sim.notes(pid)] == [req.id]  # no second note
            a.close()
            await directory.close()
    finally:
        if service is not None:
            await service.stop(grace=1.0)
        sim.close()


# --- the runtime on a store URL ---------------------------------------------------------------


async def test_the_runtime_keeps_cursors_and_the_queue_in_the_store_url_and_logs_no_password(
    pg_server: pg.Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from test_runtime import NoSecrets, options
    from test_store_contract import request

    from reconciler.runtime import Runtime
    from reconciler.stores.postgres import PgCursorStore, PgQueueStore

    url = pg_server.database("runtime_store")
    opts = options(tmp_path, store_url=url)
    caplog.set_level(logging.DEBUG)
    async with Runtime(opts, secrets=NoSecrets()) as runtime:
        assert isinstance(runtime.store, PgCursorStore)
        assert runtime.writebacks is not None
        assert isinstance(runtime.writebacks.store, PgQueueStore)
        runtime.store.put("ns/a", "patients", "c1")
        await runtime.writebacks.store.run(ops.Insert(request("r1"), Status.PENDING, 1.0))
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "writebacks.db").exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT cursor FROM cursors").fetchall() == [("c1",)]
        assert conn.execute("SELECT caller_id FROM writebacks").fetchall() == [("r1",)]
    assert "queue postgresql://pmsctl:***@" in caplog.text
    assert pg.PASSWORD not in caplog.text and pg.PASSWORD not in repr(opts)


# --- a replica killed mid-drain ---------------------------------------------------------------


async def test_a_replica_killed_mid_drain_leaves_its_practices_to_the_other_without_loss_or_doubles(
    pg_url: str, tmp_path: Path
) -> None:
    """Replica A (a child process) takes the requests and starts delivering; replica B (this
    process) shares the queue. A is killed with SIGKILL mid-drain, holding claims: the server
    drops them with A's connections, B delivers the rest; every note is in the PMS once, in
    order per patient."""
    practices = [("od-kill-pg", "OpenDental"), ("es-kill-pg", "Eaglesoft")]
    sim = Simulator(rate_limit_per_second=500, burst=500)
    for pid, pms in practices:
        sim.add_practice(pid, pms)
        sim.set_faults(pid, latency_ms=25)  # slow writes, so the kill lands mid-drain
    proc: subprocess.Popen[bytes] | None = None
    service: WritebackService | None = None
    directory: Directory | None = None
    try:
        async with sim.serve() as sim_url:
            port_file = tmp_path / "port"
            proc = subprocess.Popen(
                [sys.executable, __file__, "serve", sim_url, pg_url, str(port_file),
                 json.dumps(practices)]
            )  # fmt: skip
            url = await wait_for_file(port_file, proc)
            posted = await post_then_kill_mid_drain(url, proc, sim, practices)

            directory = Directory(sim_url)
            for pid, pms in practices:
                await directory.apply(practice_spec(pid, pms, sim_url))
            service = WritebackService(
                directory, "unused", TOKEN, policy=FAST, store=PostgresBackend(pg_url).queue_store()
            )
            await service.start(host=None)
            for pid, _ in practices:
                assert await drained(service.counts, pid, timeout=30) == {
                    "sent": N_KILL, "skipped": 0, "pending": 0, "failed": 0,
                }  # fmt: skip
                assert_exactly_once_in_order(sim.notes(pid), posted[pid])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if service is not None:
            await service.stop(grace=1.0)
        if directory is not None:
            await directory.close()
        sim.close()


async def _serve_child(sim_url: str, url: str, port_file: str, practices: list[list[str]]) -> None:
    directory = Directory(sim_url)
    for pid, pms in practices:
        await directory.apply(practice_spec(pid, pms, sim_url))
    store = PostgresBackend(url).queue_store()
    service = WritebackService(directory, "unused", TOKEN, policy=FAST, store=store)
    address = await service.start("127.0.0.1", 0)
    Path(port_file).write_text(f"{address}\n")
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _, _, sim_url_, url_, port_file_, practices_ = sys.argv
        asyncio.run(_serve_child(sim_url_, url_, port_file_, json.loads(practices_)))


async def test_a_replica_whose_claim_connection_dies_stops_writing_until_it_claims_again(
    pg_url: str,
) -> None:
    """The claim's connection dies under a running replica (the server terminates its backend,
    as a network cut or a failover does) and another replica takes the practice at once. The
    first replica checks its claim before every PMS write (`holds`), so it stops: while the
    other holds the practice it writes nothing more, however often its drainer tries. Once the
    other lets go, it claims again and delivers the rest: every writeback once, in order.
    Real PostgreSQL, real simulator; the claim attempts are counted by wrapping the store's own
    `claim` (instrumentation only, the claims are real)."""
    pid = "od-fence"
    sim = Simulator(rate_limit_per_second=500, burst=500)
    sim.add_practice(pid, "OpenDental")
    sim.set_faults(pid, latency_ms=100)  # one write at a time, slowly
    directory: Directory | None = None
    service: WritebackService | None = None
    other = PostgresBackend(pg_url).queue_store()
    try:
        async with sim.serve() as sim_url:
            directory = Directory(sim_url)
            await directory.apply(practice_spec(pid, "OpenDental", sim_url))
            store = PostgresBackend(pg_url).queue_store()
            claims: list[bool] = []
            real_claim = store.claim

            async def counted_claim(practice_id: str) -> bool:
                claims.append(await real_claim(practice_id))
                return claims[-1]

            store.claim = counted_claim  # type: ignore[method-assign]
            service = WritebackService(directory, "unused", TOKEN, policy=FAST, store=store)
            url = await service.start("127.0.0.1", 0)
            assert url is not None
            n = 12
            async with aiohttp.ClientSession() as http:
                for k in range(n):
                    status, _ = await post(
                        http, url, pid, note_body(f"fence-{k}", "outgoingSms", "2")
                    )
                    assert status == 202
            await eventually(lambda: len(sim.notes(pid)) >= 2, what="the first notes")
            other.open()
            lock_conn = store._lock_conn
            assert lock_conn is not None
            with store.backend.connect() as admin:
                # Mid-write (each takes 100 ms): the other replica claims before this one's
                # drainer can reconnect and claim again.
                admin.execute("SELECT pg_terminate_backend(%s)", (lock_conn.info.backend_pid,))
            assert await other.claim(pid)
            written = len(sim.notes(pid))
            assert written < n, "every note was written before the claim was lost"
            tries = len(claims)
            await eventually(lambda: len(claims) >= tries + 3, what="three more claim attempts")
            assert not any(claims[tries:]), "claimed while the other replica held the practice"
            # At most the write in flight when the claim died lands; none after it.
            assert len(sim.notes(pid)) <= written + 1
            await other.release(pid)
            assert await drained(service.counts, pid, timeout=30) == {
                "sent": n, "skipped": 0, "pending": 0, "failed": 0,
            }  # fmt: skip
            stored = store.read(lambda c: ops.list_records(c, practice_id=pid))
            assert_exactly_once_in_order(
                sim.notes(pid), [(r.id, r.request.patient_id) for r in stored]
            )
    finally:
        if service is not None:
            await service.stop(grace=1.0)
        if directory is not None:
            await directory.close()
        other.close()
        sim.close()
