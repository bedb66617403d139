"""Two replicas on one PostgreSQL store, each holding other practices: every replica accepts
writebacks for every practice, and the practice's holder delivers them, once.

Real: a PostgreSQL server (`tests/pg.py`), two writeback services each with its intake process (a
child process of its own answering the HTTP API on loopback), each over a directory holding one
practice with its driver, and the PMS simulator behind the drivers. The drainers sweep only
every minute here, so a delivery within the test's timeout comes from the store's notification
of a new writeback, not from the sweep.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import psycopg
from test_writeback_e2e import FAST, TOKEN, Directory, note_body, post, practice_spec
from timing import eventually

from pms_simulator.server import Simulator
from reconciler.stores.postgres import PostgresBackend
from reconciler.writeback.service import WritebackService
from reconciler.writeback.target import snapshot_json

#: Delivery must not wait for a sweep (see the module doc).
POLICY = dataclasses.replace(FAST, sweep_interval=60.0)


@asynccontextmanager
async def replica(
    tmp_path: Path, url: str, name: str, directory: Directory
) -> AsyncIterator[tuple[WritebackService, str]]:
    backend = PostgresBackend(url)
    service = WritebackService(
        directory,
        tmp_path / f"{name}.db",
        TOKEN,
        policy=POLICY,
        store=backend.queue_store(),
        intake_process=True,
        shared=backend.shared_settings(name),
        practice_ids=lambda: list(directory.targets),
    )
    api = await service.start("127.0.0.1", 0)
    assert api is not None
    try:
        yield service, api
    finally:
        await service.stop(grace=1.0)


async def test_a_writeback_posted_to_either_replica_is_delivered_once_by_the_holder(
    tmp_path: Path, pg_url: str
) -> None:
    sim = Simulator(rate_limit_per_second=200, burst=200)
    sim.add_practice("acme", "OpenDental")
    sim.add_practice("beta", "Eaglesoft")
    async with sim.serve() as sim_url:
        holds_acme, holds_beta = Directory(sim_url), Directory(sim_url)
        await holds_acme.apply(practice_spec("acme", "OpenDental", sim_url))
        await holds_beta.apply(practice_spec("beta", "Eaglesoft", sim_url))
        async with (
            replica(tmp_path, pg_url, "replica-a", holds_acme) as (a, api_a),
            replica(tmp_path, pg_url, "replica-b", holds_beta) as (b, api_b),
            aiohttp.ClientSession() as http,
        ):
            # Each replica published the practice it holds.
            def published() -> bool:
                return (
                    b.shared is not None
                    and a.shared is not None
                    and b.shared.lookup("acme") is not None
                    and a.shared.lookup("beta") is not None
                )

            await eventually(published, 10, "both practices published")

            # acme is held by A: a writeback posted to B is acknowledged and A delivers it.
            status, answer = await post(http, api_b, "acme", note_body("c1", "outgoingSms", "2"))
            assert status == 202, answer
            assert answer["status"] == "pending"
            await eventually(lambda: len(sim.notes("acme")) == 1, 10, "acme's note written")
            # ... and the other way round.
            status, answer = await post(http, api_a, "beta", note_body("c2", "outgoingSms", "3"))
            assert status == 202, answer
            await eventually(lambda: len(sim.notes("beta")) == 1, 10, "beta's note written")

            # A practice neither replica holds is 404 on both.
            for api in (api_a, api_b):
                status, answer = await post(
                    http, api, "nobody", note_body("c3", "outgoingSms", "2")
                )
                assert status == 404, answer

            # A setting changed on the holder reaches the other replica's intake.
            narrower = practice_spec("acme", "OpenDental", sim_url, allow=["incomingSms"])
            await holds_acme.apply(narrower)
            answers: list[dict[str, object]] = []

            async def skipped_on_b() -> bool:
                status, answer = await post(
                    http, api_b, "acme", note_body(f"c4-{len(answers)}", "outgoingSms", "2")
                )
                assert status == 202, answer
                answers.append(answer)
                return bool(answer["status"] == "skipped")

            await eventually(skipped_on_b, 10, "B to skip what acme no longer allows")

            # Each acknowledged writeback went out exactly once, by the holder.
            await eventually(lambda: a.counts("acme")["pending"] == 0, 10, "acme drained")
            assert len(sim.notes("acme")) == 1
            assert len(sim.notes("beta")) == 1
            with psycopg.connect(pg_url, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT practice_id, status, attempts FROM writebacks"
                    " WHERE status = 'sent' ORDER BY seq"
                ).fetchall()
            assert [(r[0], r[2]) for r in rows] == [("acme", 1), ("beta", 1)]
        await holds_acme.close()
        await holds_beta.close()
    sim.close()


async def _replica_process(pg_url: str, sim_url: str, name: str, pid: str, pms: str) -> None:
    """A replica holding `pid`, in a process of its own (`python THIS_FILE ...`): prints its
    API's URL, then reads commands from stdin ("narrow": allow only incomingSms) until it
    closes."""
    holds = Directory(sim_url)
    await holds.apply(practice_spec(pid, pms, sim_url))
    async with replica(Path(os.environ["REPLICA_DIR"]), pg_url, name, holds) as (_, api):
        print(api, flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "narrow":
                await holds.apply(practice_spec(pid, pms, sim_url, allow=["incomingSms"]))
                print("narrowed", flush=True)
    await holds.close()


async def test_two_replica_processes_each_take_writebacks_for_the_other_s_practice(
    tmp_path: Path, pg_url: str
) -> None:
    """As above, with the holder in a process of its own (its engine's directory, drainer,
    listener and intake process all outside this one)."""
    sim = Simulator(rate_limit_per_second=200, burst=200)
    sim.add_practice("acme", "OpenDental")
    async with sim.serve() as sim_url:
        here = Path(__file__).resolve().parent
        env = dict(os.environ, REPLICA_DIR=str(tmp_path),
                   PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, pg_url, sim_url, "replica-a", "acme", "OpenDental",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        holds_none = Directory(sim_url)
        try:
            api_a = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
            assert api_a.startswith("http://"), api_a
            async with (
                replica(tmp_path, pg_url, "replica-b", holds_none) as (b, api_b),
                aiohttp.ClientSession() as http,
            ):
                await eventually(
                    lambda: b.shared is not None and b.shared.lookup("acme"), 10, "published"
                )
                status, answer = await post(
                    http, api_b, "acme", note_body("p1", "outgoingSms", "2")
                )
                assert status == 202 and answer["status"] == "pending", answer
                await eventually(lambda: len(sim.notes("acme")) == 1, 10, "acme's note written")
                assert [n["writeback_id"] for n in sim.notes("acme")] == [answer["id"]]
                for api in (api_a, api_b):
                    status, answer = await post(
                        http, api, "nobody", note_body("p2", "outgoingSms", "2")
                    )
                    assert status == 404, answer
                proc.stdin.write(b"narrow\n")
                await proc.stdin.drain()
                assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"narrowed"
                tries: list[str] = []

                async def skipped_on_b() -> bool:
                    tries.append(f"p3-{len(tries)}")
                    status, answer = await post(
                        http, api_b, "acme", note_body(tries[-1], "outgoingSms", "2")
                    )
                    assert status == 202, answer
                    return bool(answer["status"] == "skipped")

                await eventually(skipped_on_b, 10, "B to skip what acme no longer allows")
        finally:
            proc.stdin.close()
            try:
                assert await asyncio.wait_for(proc.wait(), 30) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await holds_none.close()
        assert len(sim.notes("acme")) == 1  # the skipped ones were never written
    sim.close()


async def test_ack_to_delivery_across_replicas_is_a_notification_not_a_sweep(
    tmp_path: Path, pg_url: str
) -> None:
    """The figure docs/writeback.md gives: seconds from the acknowledgment on one replica to the
    write by the other, with the sweep a minute away."""
    sim = Simulator(rate_limit_per_second=500, burst=500)
    sim.add_practice("acme", "OpenDental")
    async with sim.serve() as sim_url:
        holds_acme, holds_none = Directory(sim_url), Directory(sim_url)
        await holds_acme.apply(practice_spec("acme", "OpenDental", sim_url))
        async with (
            replica(tmp_path, pg_url, "replica-a", holds_acme),
            replica(tmp_path, pg_url, "replica-b", holds_none) as (b, api_b),
            aiohttp.ClientSession() as http,
        ):
            await eventually(
                lambda: b.shared is not None and b.shared.lookup("acme"), 10, "acme published"
            )
            delays: list[float] = []
            for i in range(20):
                acked = time.monotonic()
                status, answer = await post(
                    http, api_b, "acme", note_body(f"d{i}", "outgoingSms", "2")
                )
                assert status == 202, answer
                written = functools.partial(lambda n: len(sim.notes("acme")) == n, i + 1)
                await eventually(written, 10, f"note {i}", step=0.002)
                delays.append(time.monotonic() - acked)
            delays.sort()
            print(f"ack->delivery across replicas: p50 {delays[10] * 1000:.1f} ms, "
                  f"max {delays[-1] * 1000:.1f} ms")  # fmt: skip
            assert delays[-1] < POLICY.sweep_interval / 10
        await holds_acme.close()
        await holds_none.close()
    sim.close()


async def test_a_replica_leaves_the_writebacks_of_a_practice_held_elsewhere_alone(
    tmp_path: Path, pg_url: str
) -> None:
    """B holds nothing and would fail a practice unknown to it at once (no grace); acme's
    holder A cannot deliver for a while (its driver not built yet). B's drainer turns come
    and go without claiming or failing acme's writeback; A writes it once its driver is back."""
    sim = Simulator(rate_limit_per_second=200, burst=200)
    sim.add_practice("acme", "OpenDental")
    async with sim.serve() as sim_url:
        holds_acme, holds_none = Directory(sim_url), Directory(sim_url)
        ready = await holds_acme.apply(practice_spec("acme", "OpenDental", sim_url))
        holds_acme.targets["acme"] = dataclasses.replace(ready, driver=None)
        async with replica(tmp_path, pg_url, "replica-a", holds_acme) as (a, _):
            b = WritebackService(
                holds_none,
                tmp_path / "b.db",
                TOKEN,
                policy=dataclasses.replace(FAST, unknown_practice_grace=0.0),
                store=PostgresBackend(pg_url).queue_store(),
                intake_process=True,
                shared=PostgresBackend(pg_url).shared_settings("replica-b"),
            )
            api_b = await b.start("127.0.0.1", 0)
            assert api_b is not None
            try:
                turns: collections.Counter[str] = collections.Counter()
                elsewhere = b.drainer._elsewhere
                assert elsewhere is not None

                def counted(pid: str) -> bool:
                    turns[pid] += 1
                    return elsewhere(pid)

                b.drainer._elsewhere = counted
                await eventually(
                    lambda: b.shared is not None and b.shared.lookup("acme"), 10, "published"
                )
                async with aiohttp.ClientSession() as http:
                    status, answer = await post(
                        http, api_b, "acme", note_body("c1", "outgoingSms", "2")
                    )
                assert status == 202, answer
                await eventually(lambda: turns["acme"] >= 5, 10, "B's drainer to look at acme")
                assert b.counts("acme") == {"sent": 0, "skipped": 0, "pending": 1, "failed": 0}
                holds_acme.targets["acme"] = ready  # A's driver is built
                await eventually(lambda: len(sim.notes("acme")) == 1, 10, "acme's note written")
                await eventually(lambda: a.counts("acme")["sent"] == 1, 10, "recorded as sent")
                assert b.counts("acme")["failed"] == 0
            finally:
                await b.stop(grace=1.0)
        await holds_acme.close()
        await holds_none.close()
    sim.close()


async def test_the_writebacks_of_a_practice_whose_holder_is_gone_fail_as_unknown(
    tmp_path: Path, pg_url: str
) -> None:
    """A row left by a replica that is gone (no session on the store): its practice is nobody's,
    so its writebacks fail as an unknown practice's do (here at once: no grace), instead of
    waiting forever for a holder."""
    sim = Simulator(rate_limit_per_second=200, burst=200)
    sim.add_practice("acme", "OpenDental")
    async with sim.serve() as sim_url:
        resolved, holds_none = Directory(sim_url), Directory(sim_url)
        target = await resolved.apply(practice_spec("acme", "OpenDental", sim_url))
        backend = PostgresBackend(pg_url)
        backend.migrate()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO practice_settings (practice_id, snapshot, owner, updated_at)"
                " VALUES ('acme', %s::jsonb, 'replica-gone', 0)",
                (snapshot_json(dataclasses.replace(target, driver=None)),),
            )
        b = WritebackService(
            holds_none,
            tmp_path / "b.db",
            TOKEN,
            policy=dataclasses.replace(FAST, unknown_practice_grace=0.0),
            store=backend.queue_store(),
            intake_process=True,
            shared=backend.shared_settings("replica-b"),
        )
        api_b = await b.start("127.0.0.1", 0)
        assert api_b is not None
        try:
            assert b.shared is not None and not b.shared.alive("replica-gone")
            async with aiohttp.ClientSession() as http:
                status, answer = await post(
                    http, api_b, "acme", note_body("c1", "outgoingSms", "2")
                )
            assert status == 202, answer  # decided from the row, as the holder left it
            final = await eventually(
                lambda: (c := b.counts("acme"))["failed"] == 1 and c, 10, "failed as unknown"
            )
            assert final == {"sent": 0, "skipped": 0, "pending": 0, "failed": 1}
            assert sim.notes("acme") == []
        finally:
            await b.stop(grace=1.0)
        await resolved.close()
        await holds_none.close()
    sim.close()


if __name__ == "__main__":
    asyncio.run(_replica_process(*sys.argv[1:6]))
