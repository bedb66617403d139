"""The writeback path end to end: HTTP in, SQLite queue, drivers, the PMS simulator out.

Real: the writeback service (aiohttp on loopback, the SQLite file, the drainer), the PMS drivers
on real `httpx` clients with the practice's token bucket, and the PMS simulator's HTTP server,
which records every note and document written. The engine is not involved: `Directory` below
implements `PracticeDirectory` the way the engine does (a real `PracticeSpec`, a real driver, and
the provider / note types / categories resolved by asking the simulator through that driver).
The only thing simulated is the PMS itself, which is what the simulator is for.

Run as a script (`python tests/test_writeback_e2e.py serve ...`) this module is the child
process of the kill test: a writeback service that the test kills with SIGKILL mid-drain.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from timing import eventually

from pms_drivers.base import Credentials, PmsDriver
from pms_drivers.registry import create_driver
from pms_drivers.retry import RetryPolicy
from pms_drivers.transport import new_client
from pms_simulator.server import Simulator, simulator_credentials
from reconciler.api.spec import DocumentType, PracticeSpec, WritebackType
from reconciler.writeback import store as ops
from reconciler.writeback.delivery import DeliveryPolicy
from reconciler.writeback.model import Status, parse_request
from reconciler.writeback.service import WritebackService
from reconciler.writeback.target import WritebackTarget

TOKEN = "test-token-0123456789abcdef"
FAST = DeliveryPolicy(
    max_concurrent_practices=16,
    quantum=4,
    retry=RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.2),
    max_attempts=200,
    defer_base=0.1,
    defer_max=0.5,
    not_ready_delay=0.1,
    sweep_interval=0.2,
)
#: Seeded note type names, the same for every PMS type (see the shared catalog).
NOTE_TYPE_NAMES = {
    WritebackType.OUTGOING_SMS: "Text Message",
    WritebackType.INCOMING_SMS: "Text Message",
    WritebackType.OUTGOING_EMAIL: "Email",
    WritebackType.INCOMING_CALL: "Phone Call",
    WritebackType.OUTGOING_CALL: "Phone Call",
    WritebackType.MISSED_CALL: "Missed Call",
    WritebackType.PATIENT_NOTE: "Patient Note",
    WritebackType.TASK_NOTE: "Task",
    WritebackType.INSURANCE_VERIFICATION: "Insurance Verification",
}
PROVIDER = {"OpenDental": "1", "Dentrix": "DDS1", "Eaglesoft": "DCM"}
STATEMENTS = {"OpenDental": "Statements", "Dentrix": "Statements", "Eaglesoft": "Statements"}
#: Open Dental commlog Mode_ / SentOrReceived per writeback type (docs/vendor-facts.md).
OD_MODE = {
    "outgoingSms": ("Text", "Sent"),
    "incomingSms": ("Text", "Received"),
    "outgoingEmail": ("Email", "Sent"),
    "outgoingCall": ("Phone", "Sent"),
    "incomingCall": ("Phone", "Received"),
    "missedCall": ("Phone", "Received"),
    "patientNote": ("None", "Neither"),
    "taskNote": ("None", "Neither"),
    "insuranceVerification": ("None", "Neither"),
}


def practice_spec(
    pid: str, pms: str, url: str, allow: Iterable[str] | None = None, **extra: Any
) -> PracticeSpec:
    """A spec allowing `allow` (all nine when None), with both document types mapped."""
    allowed = set(allow) if allow is not None else {t.value for t in WritebackType}
    return PracticeSpec.from_spec(
        {
            "practiceId": pid,
            "pms": {"type": pms, "url": url, "credentialsSecretRef": {"name": f"{pid}-creds"}},
            "providerId": PROVIDER[pms],
            "writeback": {
                t.value: {"allow": t.value in allowed, "noteType": name}
                for t, name in NOTE_TYPE_NAMES.items()
            },
            "documents": {
                "insuranceVerification": {"writeTo": "Insurance Verification"},
                "accountStatement": {"writeTo": STATEMENTS[pms]},
            },
            **extra,
        }
    )


class Directory:
    """`PracticeDirectory` as the engine implements it: spec + driver + what the PMS resolved."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.targets: dict[str, WritebackTarget] = {}
        self.clients: list[httpx.AsyncClient] = []
        self.drivers: dict[str, PmsDriver] = {}
        self.asked: collections.Counter[str] = collections.Counter()  # lookups per practice

    def target(self, practice_id: str) -> WritebackTarget | None:
        self.asked[practice_id] += 1
        return self.targets.get(practice_id)

    def driver_for(self, spec: PracticeSpec) -> PmsDriver:
        pid = spec.practice_id
        if pid not in self.drivers:
            pms = spec.pms.type.value
            base = (
                f"{self.server_url}/api/v1"
                if pms == "OpenDental"
                else f"{self.server_url}/bridge/v1"
            )
            client = new_client(base, timeout=10.0, rate_per_second=40.0, burst=20)
            self.clients.append(client)
            creds = Credentials(simulator_credentials(pid, pms))
            self.drivers[pid] = create_driver(pms, client, base, creds)
        return self.drivers[pid]

    async def apply(self, spec: PracticeSpec) -> WritebackTarget:
        """Resolve `spec` in its PMS (provider, note types, categories), like a reconcile does."""
        driver = self.driver_for(spec)
        providers = await driver.list_providers()
        active = {p.id for p in providers if p.active}
        names = {n.name: n.id for n in await driver.list_note_types() if not n.hidden}
        cats = {c.name: c.id for c in await driver.list_document_categories() if not c.hidden}
        target = WritebackTarget(
            key=f"default/{spec.practice_id}",
            spec=spec,
            provider_id=spec.provider_id if spec.provider_id in active else None,
            checked=True,  # the catalogs above were read from the PMS
            note_type_ids={k: names[n] for k, n in spec.allowed_note_types().items() if n in names},
            document_category_ids={
                k: cats[m.write_to]
                for k, m in spec.documents.items()
                if m.write_to and m.write_to in cats
            },
            driver=driver,
        )
        self.targets[spec.practice_id] = target
        return target

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()


@asynccontextmanager
async def running(
    tmp_path: Path, practices: list[tuple[str, str]], **kw: Any
) -> AsyncIterator[tuple[Simulator, Directory, WritebackService, str]]:
    """A simulator with `practices` (id, pms), a directory over them, and a service on loopback."""
    sim = Simulator(rate_limit_per_second=200, burst=200)
    for pid, pms in practices:
        sim.add_practice(pid, pms)
    async with sim.serve() as sim_url:
        directory = Directory(sim_url)
        for pid, pms in practices:
            await directory.apply(practice_spec(pid, pms, sim_url))
        kw.setdefault("policy", FAST)
        service = WritebackService(directory, tmp_path / "wb.db", TOKEN, **kw)
        url = await service.start("127.0.0.1", 0)
        assert url is not None
        try:
            yield sim, directory, service, url
        finally:
            await service.stop(grace=1.0)
            await directory.close()
    sim.close()


def note_body(caller: str, kind: str, patient: str, text: str | None = None) -> dict[str, Any]:
    return {
        "callerId": caller,
        "type": kind,
        "patientId": patient,
        "occurredAt": "2026-11-26T09:15:00-05:00",
        "text": text or f"{kind} for {patient} ({caller})",
    }


def doc_body(
    caller: str, kind: str, patient: str, content: bytes = b"%PDF-1.4 test"
) -> dict[str, Any]:
    return {
        "callerId": caller,
        "document": kind,
        "patientId": patient,
        "occurredAt": "2026-11-26T10:00:00Z",
        "filename": f"{kind}.pdf",
        "contentType": "application/pdf",
        "contentBase64": base64.b64encode(content).decode(),
    }


async def post(
    http: aiohttp.ClientSession, url: str, pid: str, body: Any, token: str = TOKEN
) -> tuple[int, Any]:
    async with http.post(
        f"{url}/v1/practices/{pid}/writebacks",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        return resp.status, await resp.json()


async def drained(counts: Any, pid: str, timeout: float = 15.0) -> dict[str, int]:
    """Wait until nothing is pending for `pid`; returns the final counts."""
    last: dict[str, int] = {}

    def settled() -> dict[str, int] | None:
        last.update(counts(pid))
        return dict(last) if last["pending"] == 0 else None

    result: dict[str, int] = await eventually(
        settled, timeout, f"{pid} to have no pending writebacks (last counts: {last})"
    )
    return result


def db_counts(path: Path, pid: str) -> dict[str, int]:
    conn = ops.connect(path)
    try:
        return ops.counts(conn, pid)
    finally:
        conn.close()


# --- every type lands as the spec says --------------------------------------------------------


async def _every_type_lands(tmp_path: Path, pms: str) -> None:
    pid = f"{pms.lower()}-1"
    async with running(tmp_path, [(pid, pms)]) as (sim, directory, service, url):
        half = {"outgoingSms", "incomingCall", "missedCall", "taskNote", "insuranceVerification"}
        await directory.apply(practice_spec(pid, pms, sim.url, allow=half))
        answers = {}
        async with aiohttp.ClientSession() as http:
            for n, kind in enumerate(WritebackType):
                answers[kind.value] = await post(
                    http, url, pid, note_body(f"c-{n}", kind.value, "5")
                )
        for kind, (status, body) in answers.items():
            assert status == 202, body
            if kind in half:
                assert body["status"] == "pending" and "reason" not in body
            else:
                assert body["status"] == "skipped" and body["reason"] == "NotAllowed"
                assert f"spec.writeback.{kind}.allow" in body["message"]
        final = await drained(service.counts, pid)
        assert final == {"sent": len(half), "skipped": 9 - len(half), "pending": 0, "failed": 0}

        notes = {n["writeback_id"]: n for n in sim.notes(pid)}
        assert len(notes) == len(sim.notes(pid)) == len(half)  # none doubled
        for kind, (_, body) in answers.items():
            if kind not in half:
                assert body["id"] not in notes
                continue
            note = notes[body["id"]]
            assert note["note_type_name"] == NOTE_TYPE_NAMES[WritebackType(kind)], kind
            assert note["provider_id"] == PROVIDER[pms]
            assert note["patient_id"] == "5"
            assert f"{kind} for 5" in note["text"]
            if pms == "OpenDental":
                assert (note["mode"], note["direction"]) == OD_MODE[kind], kind
            else:
                assert note["kind"] == kind


async def test_every_writeback_type_lands_or_not_as_allowed_in_open_dental(tmp_path: Path) -> None:
    await _every_type_lands(tmp_path, "OpenDental")


async def test_every_writeback_type_lands_or_not_as_allowed_through_the_dentrix_bridge(
    tmp_path: Path,
) -> None:
    await _every_type_lands(tmp_path, "Dentrix")


async def test_documents_land_in_the_mapped_category_for_open_dental_and_eaglesoft(
    tmp_path: Path,
) -> None:
    practices = [("od-docs", "OpenDental"), ("es-docs", "Eaglesoft")]
    async with running(tmp_path, practices) as (sim, _, service, url):
        async with aiohttp.ClientSession() as http:
            ids = {}
            for pid, _ in practices:
                for kind in DocumentType:
                    status, body = await post(
                        http, url, pid, doc_body(f"d-{kind}", kind.value, "9")
                    )
                    assert (status, body["status"]) == (202, "pending"), body
                    ids[(pid, kind.value)] = body["id"]
        for pid, pms in practices:
            assert (await drained(service.counts, pid))["sent"] == 2
            docs = {d["writeback_id"]: d for d in sim.documents(pid)}
            assert len(docs) == 2
            iv = docs[ids[(pid, "insuranceVerification")]]
            st = docs[ids[(pid, "accountStatement")]]
            assert iv["category_name"] == "Insurance Verification"
            assert st["category_name"] == STATEMENTS[pms]
            assert iv["provider_id"] == PROVIDER[pms] and iv["patient_id"] == "9"


async def test_a_changed_setting_takes_effect_for_the_next_request(tmp_path: Path) -> None:
    pid = "od-change"
    async with running(tmp_path, [(pid, "OpenDental")]) as (sim, directory, service, url):
        async with aiohttp.ClientSession() as http:
            await directory.apply(practice_spec(pid, "OpenDental", sim.url, allow=[]))
            _, first = await post(http, url, pid, note_body("a", "outgoingSms", "3"))
            assert (first["status"], first["reason"]) == ("skipped", "NotAllowed")

            await directory.apply(practice_spec(pid, "OpenDental", sim.url, allow=["outgoingSms"]))
            _, second = await post(http, url, pid, note_body("b", "outgoingSms", "3"))
            assert second["status"] == "pending"

            await directory.apply(
                practice_spec(pid, "OpenDental", sim.url, allow=["outgoingSms"], suspend=True)
            )
            _, third = await post(http, url, pid, note_body("c", "outgoingSms", "3"))
            assert (third["status"], third["reason"]) == ("skipped", "Suspended")

            # Resumed, and the note type renamed in the spec to one the PMS does not have.
            changed = practice_spec(pid, "OpenDental", sim.url, allow=["outgoingSms"])
            spec = PracticeSpec.from_spec(
                {
                    "practiceId": pid,
                    "pms": {"type": "OpenDental", "url": sim.url,
                            "credentialsSecretRef": {"name": "x"}},
                    "providerId": "1",
                    "writeback": {"outgoingSms": {"allow": True, "noteType": "No Such Type"}},
                }
            )  # fmt: skip
            assert changed.writeback[WritebackType.OUTGOING_SMS].note_type == "Text Message"
            await directory.apply(spec)
            _, fourth = await post(http, url, pid, note_body("d", "outgoingSms", "3"))
            assert (fourth["status"], fourth["reason"]) == ("skipped", "NoteTypeUnresolved")

        await drained(service.counts, pid)
        assert [n["writeback_id"] for n in sim.notes(pid)] == [second["id"]]


async def test_a_replayed_caller_id_is_answered_with_the_record_and_never_writes_twice(
    tmp_path: Path,
) -> None:
    pid = "od-replay"
    async with running(tmp_path, [(pid, "OpenDental")]) as (sim, _, service, url):
        async with aiohttp.ClientSession() as http:
            body = note_body("same-id", "outgoingSms", "4")
            s1, a1 = await post(http, url, pid, body)
            await drained(service.counts, pid)
            s2, a2 = await post(http, url, pid, body)
            s3, a3 = await post(http, url, pid, {**body, "text": "something else"})
        assert (s1, s2, s3) == (202, 200, 409)
        assert a2["id"] == a1["id"] and a2["status"] == "sent" and a2["pmsId"]
        assert a3["error"]["field"] == "callerId"
        assert len(sim.notes(pid)) == 1


# --- faults: nothing lost, nothing doubled, order per patient kept ----------------------------


def assert_exactly_once_in_order(
    notes: list[dict[str, Any]], posted: list[tuple[str, str]]
) -> None:
    """`posted` is (writeback id, patient) in posting order; notes are in PMS creation order."""
    written = [n["writeback_id"] for n in notes]
    assert len(written) == len(set(written)), "a writeback was written twice"
    assert set(written) == {w for w, _ in posted}, "a writeback was lost"
    for patient in {p for _, p in posted}:
        want = [w for w, p in posted if p == patient]
        got = [n["writeback_id"] for n in notes if n["patient_id"] == patient]
        assert got == want, f"patient {patient}: notes out of order"


async def test_a_burst_is_delivered_on_the_api_threads_notes_alone_in_order(
    tmp_path: Path,
) -> None:
    """With the sweep out of the way (an hour apart), only the API thread's notes (coalesced
    into one wake-up of the drainer per pass of the API loop) can start delivery: a burst of
    concurrent requests to three practices is delivered, once each and in the queue's order per
    patient."""
    practices = [("od-burst", "OpenDental"), ("es-burst", "Eaglesoft"), ("dx-burst", "Dentrix")]
    policy = dataclasses.replace(FAST, sweep_interval=3600.0)
    async with running(tmp_path, practices, policy=policy) as (sim, _, service, url):
        async with aiohttp.ClientSession() as http:
            sent = [(pid, n) for n in range(20) for pid, _ in practices]
            answers = await asyncio.gather(
                *(post(http, url, pid, note_body(f"b-{n}", "outgoingSms", str(2 + n % 3)))
                  for pid, n in sent)
            )  # fmt: skip
        assert all(status == 202 for status, _ in answers), answers
        assert service.api._heartbeat is not None  # the API loop's lag is being sampled
        for pid, _ in practices:
            assert await drained(service.counts, pid) == {
                "sent": 20, "skipped": 0, "pending": 0, "failed": 0,
            }  # fmt: skip
            # Concurrent requests: their order is the order the queue stored them in.
            stored = service.store.read(lambda c, pid=pid: ops.list_records(c, practice_id=pid))
            posted = [(r.id, r.request.patient_id) for r in stored]
            assert {w for w, _ in posted} == {
                a["id"] for (p, _), (_, a) in zip(sent, answers, strict=True) if p == pid
            }
            assert_exactly_once_in_order(sim.notes(pid), posted)


async def test_failing_writes_and_an_outage_lose_nothing_double_nothing_and_keep_order(
    tmp_path: Path,
) -> None:
    practices = [("od-flaky", "OpenDental"), ("dx-flaky", "Dentrix")]
    async with running(tmp_path, practices) as (sim, _, service, url):
        sim.set_faults("od-flaky", write_error_rate=0.4, status=500)
        sim.set_faults("dx-flaky", outage=True, outage_seconds=1.5, retry_after=1)
        posted: dict[str, list[tuple[str, str]]] = {pid: [] for pid, _ in practices}
        async with aiohttp.ClientSession() as http:
            for n in range(24):
                for pid, _ in practices:
                    patient = str(2 + n % 3)
                    status, body = await post(
                        http, url, pid, note_body(f"f{n}", "outgoingSms", patient)
                    )
                    assert (status, body["status"]) == (202, "pending")
                    posted[pid].append((body["id"], patient))
        for pid, _ in practices:
            assert await drained(service.counts, pid, timeout=20) == {
                "sent": 24, "skipped": 0, "pending": 0, "failed": 0,
            }  # fmt: skip
            assert_exactly_once_in_order(sim.notes(pid), posted[pid])
        # The faults were real: the simulator refused writes and the drainer retried them.
        statuses = {r.status for pid, _ in practices for r in sim.requests(pid)}
        assert statuses & {500, 502, 503}


async def test_permanent_errors_fail_at_once_with_the_reason_and_can_be_retried(
    tmp_path: Path,
) -> None:
    pid = "dx-perm"
    async with running(tmp_path, [(pid, "Dentrix")]) as (sim, _, service, url):
        async with aiohttp.ClientSession() as http:
            _, bad = await post(http, url, pid, note_body("p1", "outgoingSms", "999999"))
            _, good = await post(http, url, pid, note_body("p2", "outgoingSms", "2"))
            final = await drained(service.counts, pid)
            assert final == {"sent": 1, "skipped": 0, "pending": 0, "failed": 1}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{url}/v1/writebacks?status=failed&practiceId={pid}",
                                headers=headers) as resp:  # fmt: skip
                failed = (await resp.json())["items"]
            assert [f["id"] for f in failed] == [bad["id"]]
            assert failed[0]["reason"] == "PmsRejected" and failed[0]["attempts"] == 1
            assert "999999" in failed[0]["message"]
            async with http.post(f"{url}/v1/writebacks/{bad['id']}/retry", headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "pending"
            await drained(service.counts, pid)
            async with http.get(f"{url}/v1/writebacks/{bad['id']}", headers=headers) as resp:
                again = await resp.json()
            assert again["status"] == "failed" and again["attempts"] == 1
            async with http.post(
                f"{url}/v1/writebacks/{good['id']}/retry", headers=headers
            ) as resp:
                assert resp.status == 409
        assert [n["writeback_id"] for n in sim.notes(pid)] == [good["id"]]


async def test_writebacks_wait_for_a_practice_the_engine_has_not_loaded_yet(tmp_path: Path) -> None:
    """After a restart the engine may load practices after the drainer starts: their pending
    writebacks wait; a practice that stays unknown past the grace period fails them."""
    pid = "od-late"
    sim = Simulator()
    sim.add_practice(pid, "OpenDental")
    db = tmp_path / "wb.db"
    async with sim.serve() as sim_url:
        directory = Directory(sim_url)
        target = await directory.apply(practice_spec(pid, "OpenDental", sim_url))
        directory.targets.clear()  # the engine has not loaded it yet
        conn = ops.connect(db)
        ids = []
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for practice, caller in ((pid, "a"), (pid, "b"), ("ghost", "c")):
                req = parse_request(practice, note_body(caller, "outgoingSms", "2"))
                ops.insert(conn, req, status=Status.PENDING, now=ops.now(),
                           target_type_id=target.note_type_ids[WritebackType.OUTGOING_SMS],
                           provider_id="1")  # fmt: skip
                ids.append(req.id)
        conn.close()
        policy = dataclasses.replace(FAST, unknown_practice_grace=2.0)
        service = WritebackService(directory, db, TOKEN, policy=policy)
        await service.start(None)
        try:
            # The drainer looked for the practice, parked its queue, and looked again: still
            # waiting (well inside the 2 s grace), nothing written.
            await eventually(lambda: directory.asked[pid] >= 3, 5, "three lookups of the practice")
            assert service.counts(pid)["pending"] == 2 and not sim.notes(pid)
            directory.targets[pid] = target  # loaded now
            assert (await drained(service.counts, pid))["sent"] == 2
            assert [n["writeback_id"] for n in sim.notes(pid)] == ids[:2]
            ghost = await drained(service.counts, "ghost", timeout=10)
            assert ghost["failed"] == 1
            record = service.store.read(lambda c: ops.get(c, ids[2]))
            assert record is not None and record.reason == "PracticeUnknown"
        finally:
            await service.stop()
            await directory.close()
    sim.close()


# --- bad requests change nothing -------------------------------------------------------------


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


async def test_bad_requests_get_clear_4xx_answers_and_change_nothing(tmp_path: Path) -> None:
    pid = "od-bad"
    async with running(tmp_path, [(pid, "OpenDental")]) as (sim, _, service, url):
        async with aiohttp.ClientSession() as http:
            _, ok = await post(http, url, pid, note_body("ok", "outgoingSms", "2"))
            await drained(service.counts, pid)
            before = dump(tmp_path / "wb.db")
            good = note_body("x", "outgoingSms", "2")
            cases: list[tuple[str, Any, dict[str, str], int, str | None]] = [
                ("unknown type", {**good, "type": "fax"}, {}, 422, "type"),
                ("missing patient", {k: v for k, v in good.items() if k != "patientId"}, {}, 422, "patientId"),
                ("wrong token", good, {"Authorization": "Bearer wrong-token-0000000000"}, 401, None),
                ("no token", good, {"Authorization": ""}, 401, None),
                ("bad time", {**good, "occurredAt": "yesterday"}, {}, 422, "occurredAt"),
            ]  # fmt: skip
            for case, body, headers, status, field in cases:
                h = {"Authorization": f"Bearer {TOKEN}", **headers}
                async with http.post(
                    f"{url}/v1/practices/{pid}/writebacks", json=body, headers=h
                ) as r:
                    answer = await r.json()
                    assert r.status == status, (case, answer)
                    assert answer["error"]["message"], case
                    assert answer["error"].get("field") == field, (case, answer)
                    if status == 401:
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
            h = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(
                f"{url}/v1/practices/nobody/writebacks", json=good, headers=h
            ) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "practice_unknown"
            async with http.post(f"{url}/v1/practices/{pid}/writebacks", data=b"{not json",
                                 headers={**h, "Content-Type": "application/json"}) as r:  # fmt: skip
                assert r.status == 400 and "not JSON" in (await r.json())["error"]["message"]
            async with http.post(f"{url}/v1/practices/{pid}/writebacks", data=json.dumps(good),
                                 headers={**h, "Content-Type": "text/plain"}) as r:  # fmt: skip
                assert r.status == 415
            big = doc_body("big", "accountStatement", "2", content=os.urandom(8 * 1024 * 1024))
            async with http.post(f"{url}/v1/practices/{pid}/writebacks", json=big, headers=h) as r:
                answer = await r.json()
                assert r.status == 413 and "10485760 byte limit" in answer["error"]["message"]
            async with http.get(f"{url}/v1/writebacks/wb-nope", headers=h) as r:
                assert r.status == 404
            async with http.get(f"{url}/v1/writebacks?status=lost", headers=h) as r:
                assert r.status == 400 and (await r.json())["error"]["field"] == "status"
            async with http.get(f"{url}/v1/writebacks/{ok['id']}") as r:
                assert r.status == 401  # reads need the token too
            async with http.get(f"{url}/metrics") as r:
                text = await r.text()
                assert (
                    'pmsctl_writebacks_total{kind="note",outcome="accepted",type="outgoingSms"} 1.0'
                    in text
                )
        assert dump(tmp_path / "wb.db") == before
        assert len(sim.notes(pid)) == 1


# --- the service killed mid-drain ------------------------------------------------------------


def child_cmd(
    sim_url: str, db: Path, port_file: Path, practices: list[tuple[str, str]]
) -> list[str]:
    return [
        sys.executable,
        __file__,
        "serve",
        sim_url,
        str(db),
        str(port_file),
        json.dumps(practices),
    ]


async def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    def written() -> str:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited early ({proc.returncode})")
        return path.read_text().strip() if path.exists() else ""

    text: str = await eventually(written, timeout, "the service to start")
    return text


N_KILL = 20


async def post_then_kill_mid_drain(
    url: str, proc: subprocess.Popen[bytes], sim: Simulator, practices: list[list[str]]
) -> dict[str, list[tuple[str, str]]]:
    """Post N_KILL notes to each practice through the service at `url`, then SIGKILL its
    process `proc` once some, not all, of them are in the PMS; the (writeback id, patient) of
    each note posted, by practice."""
    posted: dict[str, list[tuple[str, str]]] = {pid: [] for pid, _ in practices}
    async with aiohttp.ClientSession() as http:
        for n in range(N_KILL):
            for pid, _ in practices:
                patient = str(2 + n % 4)
                status, body = await post(
                    http, url, pid, note_body(f"k{n}", "outgoingSms", patient)
                )
                assert status == 202
                posted[pid].append((body["id"], patient))
    await eventually(
        lambda: sum(len(sim.notes(pid)) for pid, _ in practices) >= 6,
        15,
        "some notes delivered before the kill",
        step=0.02,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    landed = sum(len(sim.notes(pid)) for pid, _ in practices)
    assert landed < 2 * N_KILL, "the drain finished before the kill; slow the simulator down"
    return posted


async def test_a_service_killed_mid_drain_resumes_on_restart_without_loss_or_doubles(
    tmp_path: Path,
) -> None:
    practices = [("od-kill", "OpenDental"), ("es-kill", "Eaglesoft")]
    sim = Simulator(rate_limit_per_second=500, burst=500)
    for pid, pms in practices:
        sim.add_practice(pid, pms)
        sim.set_faults(pid, latency_ms=25)  # slow writes, so the kill lands mid-drain
    db = tmp_path / "wb.db"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with sim.serve() as sim_url:
            port_file = tmp_path / "port1"
            proc = subprocess.Popen(child_cmd(sim_url, db, port_file, practices))
            procs.append(proc)
            url = await wait_for_file(port_file, proc)
            # Kill it hard once some, not all, notes are in the PMS.
            posted = await post_then_kill_mid_drain(url, proc, sim, practices)
            left = {pid: db_counts(db, pid)["pending"] for pid, _ in practices}
            assert sum(left.values()) > 0

            port_file2 = tmp_path / "port2"
            proc2 = subprocess.Popen(child_cmd(sim_url, db, port_file2, practices))
            procs.append(proc2)
            await wait_for_file(port_file2, proc2)
            await eventually(
                lambda: not any(db_counts(db, pid)["pending"] for pid, _ in practices),
                20,
                "the restarted service to finish",
                step=0.1,
            )
            for pid, _ in practices:
                assert db_counts(db, pid) == {
                    "sent": N_KILL,
                    "skipped": 0,
                    "pending": 0,
                    "failed": 0,
                }
                assert_exactly_once_in_order(sim.notes(pid), posted[pid])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        sim.close()


async def _serve_child(sim_url: str, db: str, port_file: str, practices: list[list[str]]) -> None:
    directory = Directory(sim_url)
    for pid, pms in practices:
        await directory.apply(practice_spec(pid, pms, sim_url))
    service = WritebackService(directory, db, TOKEN, policy=FAST)
    url = await service.start("127.0.0.1", 0)
    Path(port_file).write_text(f"{url}\n")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await service.stop(grace=1.0)
    await directory.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _, _, sim_url_, db_, port_file_, practices_ = sys.argv
        asyncio.run(_serve_child(sim_url_, db_, port_file_, json.loads(practices_)))
