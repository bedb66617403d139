"""Writebacks accepted while the practice's PMS is down wait for it; none is dropped.

Real: the engine (drivers, rate-limited httpx clients, scheduler, SQLite cursors), the PMS
simulator's HTTP server, the writeback service (aiohttp on loopback, the SQLite queue, the
drainer). The engine is the `PracticeDirectory`, as in the operator and `pmsctl up`. The only
stand-in is the Secret source (`DictSecrets`, a complete `SecretSource`), so a test can refuse and
then fix the credentials the way staff edit a Secret.

The scenario is a restart during an outage: the engine has never read the practice's providers
and note types when the requests arrive, so it cannot say whether they are allowed yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_engine import FAST as ENGINE_FAST
from test_engine import DictSecrets, make_engine, spec_for
from test_writeback_e2e import FAST, TOKEN, doc_body, drained, note_body, post

from pms_drivers.retry import RetryPolicy
from pms_simulator import Simulator
from reconciler.engine.engine import Engine
from reconciler.writeback.service import WritebackService

KEY = "clinics/acme"
#: Reconcile retries short enough that an outage is declared in well under a second.
SETTINGS = dataclasses.replace(
    ENGINE_FAST, retry_policy=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05)
)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(rate_limit_per_second=1000, burst=1000)
    s.add_practice("acme", "OpenDental")
    async with s.serve():
        yield s
    s.close()


@asynccontextmanager
async def service_over(
    engine: Engine, tmp_path: Path
) -> AsyncIterator[tuple[WritebackService, str]]:
    service = WritebackService(engine, tmp_path / "wb.db", TOKEN, policy=FAST)
    url = await service.start("127.0.0.1", 0)
    assert url is not None
    try:
        yield service, url
    finally:
        await service.stop(grace=1.0)


def acme_spec(sim: Simulator, **over: Any) -> Any:
    return spec_for(
        sim,
        writeback={
            "outgoingSms": {"allow": True, "noteType": "Text Message"},
            "incomingSms": {"allow": False, "noteType": "Text Message"},
        },
        **over,
    )


async def get(http: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with http.get(f"{url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        return await r.json()


@pytest.mark.parametrize("outage", ["unreachable", "credentials refused"])
async def test_writebacks_accepted_during_an_outage_after_a_restart_are_written_when_it_ends(
    sim: Simulator, tmp_path: Path, outage: str
) -> None:
    secrets = DictSecrets({"acme-pms": sim.credentials("acme")})
    if outage == "unreachable":
        sim.set_faults("acme", outage=True)
    else:
        secrets.secrets["acme-pms"] = {**sim.credentials("acme"), "customerKey": "revoked"}
    engine = make_engine(sim, tmp_path, settings=SETTINGS, secrets=secrets)
    await engine.start()
    try:
        status = await engine.apply(KEY, acme_spec(sim))
        assert not status.ready
        async with (
            service_over(engine, tmp_path) as (service, url),
            aiohttp.ClientSession() as http,
        ):
            answers = [
                await post(http, url, "acme", note_body("n1", "outgoingSms", "2")),
                await post(http, url, "acme", doc_body("d1", "accountStatement", "2")),
                await post(http, url, "acme", note_body("n2", "outgoingSms", "3")),
                # What the spec alone says no to is still skipped at once.
                await post(http, url, "acme", note_body("n3", "incomingSms", "2")),
            ]
            assert [(s, a["status"]) for s, a in answers] == [
                    (202, "pending"), (202, "pending"), (202, "pending"), (202, "skipped"),
                ]  # fmt: skip
            assert answers[3][1]["reason"] == "NotAllowed"
            first = await get(http, url, f"/v1/writebacks/{answers[0][1]['id']}")
            assert first["status"] == "pending" and first["noteTypeId"] is None
            assert "waiting for the PMS" in first["message"]
            assert service.counts("acme")["pending"] == 3 and not sim.notes("acme")

            # The PMS comes back (the outage ends, staff fix the Secret).
            sim.set_faults("acme")
            secrets.secrets["acme-pms"] = sim.credentials("acme")
            await engine.refresh(KEY)
            assert engine.status(KEY).ready  # type: ignore[union-attr]
            final = await drained(service.counts, "acme")
            assert final == {"sent": 3, "skipped": 1, "pending": 0, "failed": 0}
            sent = await get(http, url, f"/v1/writebacks/{answers[0][1]['id']}")
            assert sent["noteTypeId"] and sent["providerId"] == "1" and sent["message"] is None
        notes = sim.notes("acme")
        assert [n["writeback_id"] for n in notes] == [answers[0][1]["id"], answers[2][1]["id"]]
        assert {n["note_type_name"] for n in notes} == {"Text Message"}
        assert [d["writeback_id"] for d in sim.documents("acme")] == [answers[1][1]["id"]]
    finally:
        await engine.stop()


async def test_a_waiting_writeback_is_skipped_once_the_pms_says_no_and_can_then_be_retried(
    sim: Simulator, tmp_path: Path
) -> None:
    """The PMS's answer, once it comes, decides: provider 4 is inactive in the simulator. After
    the spec names an active provider, a retry by id decides it again and writes it."""
    secrets = DictSecrets({"acme-pms": {**sim.credentials("acme"), "customerKey": "revoked"}})
    engine = make_engine(sim, tmp_path, settings=SETTINGS, secrets=secrets)
    await engine.start()
    try:
        await engine.apply(KEY, acme_spec(sim, providerId="4"))
        async with (
            service_over(engine, tmp_path) as (service, url),
            aiohttp.ClientSession() as http,
        ):
            status, answer = await post(http, url, "acme", note_body("w1", "outgoingSms", "2"))
            assert (status, answer["status"]) == (202, "pending")
            secrets.secrets["acme-pms"] = sim.credentials("acme")
            await engine.refresh(KEY)
            final = await drained(service.counts, "acme")
            assert final == {"sent": 0, "skipped": 1, "pending": 0, "failed": 0}
            record = await get(http, url, f"/v1/writebacks/{answer['id']}")
            assert record["reason"] == "ProviderNotVerified" and "'4'" in record["message"]

            await engine.apply(KEY, acme_spec(sim), generation=2)
            h = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(f"{url}/v1/writebacks/{answer['id']}/retry", headers=h) as r:
                assert r.status == 200 and (await r.json())["status"] == "pending"
            assert (await drained(service.counts, "acme"))["sent"] == 1
        assert [n["writeback_id"] for n in sim.notes("acme")] == [answer["id"]]
    finally:
        await engine.stop()
