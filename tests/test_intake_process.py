"""The intake process: the writeback API in a process of its own, run by `WritebackService`.

Real: the intake child process (`python -m reconciler.writeback.intake`) on a loopback port, the
SQLite queue file both processes open, the drainer in this process delivering to the PMS
simulator through the real drivers, the control socket between the two processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import aiohttp
from test_writeback_e2e import (
    TOKEN,
    assert_exactly_once_in_order,
    drained,
    note_body,
    post,
    practice_spec,
    running,
)
from timing import eventually

from reconciler.writeback import store as ops
from reconciler.writeback.service import WritebackService


def samples(service: WritebackService, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The service's metric samples called `name`, by their labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in service.metrics.registry.collect():
        for s in metric.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_writebacks_taken_by_the_intake_process_are_delivered_once_in_order_and_counted(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, [("acme", "OpenDental")], intake_process=True) as (
        sim,
        _,
        service,
        url,
    ):
        assert service.intake is not None and service.intake.process is not None
        assert service.intake.process.pid != os.getpid()
        posted = []
        async with aiohttp.ClientSession() as http:
            for i in range(30):
                patient = str(2 + i % 3)
                status, body = await post(
                    http, url, "acme", note_body(f"n{i}", "outgoingSms", patient)
                )
                assert status == 202 and body["status"] == "pending"
                posted.append((body["id"], patient))
            status, call = await post(http, url, "acme", note_body("x", "outgoingCall", "2"))
            assert status == 202
            status, unknown = await post(http, url, "nobody", note_body("u", "outgoingSms", "2"))
            assert status == 404 and unknown["error"]["code"] == "practice_unknown"
            posted.append((call["id"], "2"))

            # The API port's /metrics is the service's one registry, the intake's counts in it.
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
            line = 'pmsctl_writebacks_total{kind="note",outcome="accepted",type="outgoingSms"} 30.0'
            assert line in text
        final = await drained(service.counts, "acme")
        assert final["sent"] == 31
        assert_exactly_once_in_order(sim.notes("acme"), posted)
        accepted = samples(service, "pmsctl_writebacks_total")
        assert accepted[(("kind", "note"), ("outcome", "accepted"), ("type", "outgoingSms"))] == 30
        assert samples(service, "pmsctl_writeback_ack_seconds_count")[()] == 31


async def test_an_intake_process_that_dies_is_started_again_on_the_same_port(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, [("acme", "OpenDental")], intake_process=True) as (
        _,
        _,
        service,
        url,
    ):
        intake = service.intake
        assert intake is not None and intake.process is not None
        async with aiohttp.ClientSession() as http:
            status, first = await post(http, url, "acme", note_body("a", "outgoingSms", "2"))
            assert status == 202
            os.kill(intake.process.pid, signal.SIGKILL)
            await eventually(lambda: intake.starts == 2, 30, "the intake process to restart")
            # Connections made while it restarts wait in the listening socket's backlog.
            status, second = await post(http, url, "acme", note_body("b", "outgoingSms", "2"))
            assert status == 202
            status, replay = await post(http, url, "acme", note_body("a", "outgoingSms", "2"))
            assert status == 200 and replay["id"] == first["id"]
        final = await drained(service.counts, "acme")
        assert final == {"sent": 2, "skipped": 0, "pending": 0, "failed": 0}
        assert second["id"] != first["id"]


async def test_a_setting_withdrawn_after_intake_skips_the_writeback_at_delivery(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, [("acme", "OpenDental")], intake_process=True) as (
        sim,
        directory,
        service,
        url,
    ):
        # No driver yet: the drainer waits, as for a practice whose PMS is not reached yet.
        directory.targets["acme"] = dataclasses.replace(directory.targets["acme"], driver=None)
        async with aiohttp.ClientSession() as http:
            status, body = await post(http, url, "acme", note_body("a", "outgoingSms", "2"))
        assert status == 202 and body["status"] == "pending"
        await directory.apply(practice_spec("acme", "OpenDental", sim.url, allow=[]))
        final = await drained(service.counts, "acme")
        assert final["skipped"] == 1 and final["sent"] == 0
        assert sim.notes("acme") == []
        record = service.store.read(lambda c: ops.get(c, body["id"]))
        assert record is not None and record.reason == "NotAllowed"


async def test_a_changed_setting_reaches_the_intake_process_for_the_next_requests(
    tmp_path: Path,
) -> None:
    async with (
        running(tmp_path, [("acme", "OpenDental")], intake_process=True) as (
            sim,
            directory,
            _,
            url,
        ),
        aiohttp.ClientSession() as http,
    ):
        status, first = await post(http, url, "acme", note_body("a", "outgoingSms", "2"))
        assert (status, first["status"]) == (202, "pending")
        await directory.apply(practice_spec("acme", "OpenDental", sim.url, allow=[]))
        n = 0

        async def refused() -> bool:
            nonlocal n
            n += 1
            _, body = await post(http, url, "acme", note_body(f"b{n}", "outgoingSms", "2"))
            return body["status"] == "skipped" and body["reason"] == "NotAllowed"

        await eventually(refused, 10, "the withdrawn setting to reach the intake process")


async def test_the_intake_process_applies_the_services_in_flight_limit(tmp_path: Path) -> None:
    # A limit of 0: every writeback is over it, so the answer shows the child was given it.
    options = {"intake_process": True, "max_in_flight": 0}
    async with (
        running(tmp_path, [("acme", "OpenDental")], **options) as (_, _, service, url),
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{url}/v1/practices/acme/writebacks",
            json=note_body("a", "outgoingSms", "2"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["code"] == "overloaded"
        assert service.counts("acme") == {"sent": 0, "skipped": 0, "pending": 0, "failed": 0}
