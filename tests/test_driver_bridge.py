"""The bridge driver (Eaglesoft and Dentrix flavours) against the PMS simulator over loopback HTTP.

Real: the simulator's bridge agent API (aiohttp, in-memory SQLite) on a free loopback port, the
driver on a client from `pms_drivers.transport.new_client`. The simulated clock is moved by the
test (`sim.advance`); nothing is faked.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from pms_drivers.base import Credentials, DocumentUpload, NoteWrite, PmsDriver
from pms_drivers.bridge import DentrixDriver, EaglesoftDriver
from pms_drivers.errors import PermanentPmsError
from pms_drivers.registry import create_driver
from pms_drivers.transport import new_client
from pms_simulator import Simulator


def as_credentials(creds: Any) -> Credentials:
    return creds if isinstance(creds, Credentials) else Credentials(dict(creds))


@dataclass
class Env:
    sim: Simulator
    driver: PmsDriver
    pid: str
    pms: str
    client: httpx.AsyncClient
    credentials: Credentials


@pytest.fixture(params=["Dentrix", "Eaglesoft"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    pms: str = request.param
    pid = f"{pms.lower()}-practice"
    sim = Simulator(db=":memory:", autotick=False)
    async with sim.serve(host="127.0.0.1", port=0):
        creds = as_credentials(sim.add_practice(pid, pms))
        base = sim.base_url(pms)
        async with new_client(base, timeout=5, rate_per_second=0, burst=1) as client:
            yield Env(sim, create_driver(pms, client, base, creds), pid, pms, client, creds)


SEEDED_PROVIDERS = {
    "Dentrix": ({"DDS1", "DDS2", "HYG1", "HYG2", "DOC9"}, {"DOC9"}),
    "Eaglesoft": ({"DCM", "GGY", "HYG", "AB1", "XRT"}, {"XRT"}),
}


async def test_server_info_names_the_pms_and_its_version(env: Env) -> None:
    info = await env.driver.server_info()
    assert info.pms == env.pms
    assert info.version and "agent" in info.version
    assert info.server_time.startswith("20")


async def test_providers_keep_each_pms_id_shape(env: Env) -> None:
    providers = {p.id: p for p in await env.driver.list_providers()}
    ids, inactive = SEEDED_PROVIDERS[env.pms]
    assert set(providers) == ids
    assert {i for i, p in providers.items() if not p.active} == inactive
    if env.pms == "Dentrix":
        assert all(re.fullmatch(r"[A-Z0-9]{4}", i) for i in providers)


async def test_note_types_keep_targets_or_type_pairs(env: Env) -> None:
    types = {t.name: t for t in await env.driver.list_note_types()}
    if env.pms == "Dentrix":
        assert types["Patient Note"].target == "PatientNotes"
        assert types["Text Message"].target == "OfficeJournal"
        assert types["Fax"].hidden
    else:
        assert types["Text Message"].id == "CM:1"
        assert types["Patient Note"].id == "PN:1"
        assert types["Old Notes"].hidden
        assert all(t.target is None for t in types.values())


async def test_document_types_list_hidden_ones_too(env: Env) -> None:
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    hidden = "Archive" if env.pms == "Dentrix" else "Retired"
    assert cats[hidden].hidden
    assert not cats["Insurance Verification"].hidden and not cats["Statements"].hidden


async def test_patients_page_with_has_more_past_the_page_limit(env: Env) -> None:
    page = await env.driver.patients_since(None)
    ids = [p.id for p in page.records]
    assert len(ids) > 200 and len(ids) == len(set(ids))
    # With a small page limit the driver follows hasMore/nextCursor across many pages.
    factory = DentrixDriver if env.pms == "Dentrix" else EaglesoftDriver
    small = factory(env.client, env.sim.base_url(env.pms), env.credentials, page_limit=50)
    before = len(env.sim.requests(env.pid))
    again = await small.patients_since(None)
    assert [p.id for p in again.records] == ids
    reads = [r for r in env.sim.requests(env.pid)[before:] if r.path.endswith("/patients")]
    # hasMore may or may not be true on an exactly full last page.
    assert -(-len(ids) // 50) <= len(reads) <= len(ids) // 50 + 1
    assert reads[0].query.get("since") is None
    assert all(r.query.get("since") for r in reads[1:])


async def test_photos_come_as_references_only_when_asked(env: Env) -> None:
    plain = await env.driver.patients_since(None)
    assert all(p.photo_ref is None for p in plain.records)
    with_photos = await env.driver.patients_since(None, photos=True)
    refs = [p.photo_ref for p in with_photos.records if p.photo_ref]
    assert refs and all(r.startswith("bridge://photos/") for r in refs)


async def test_changes_are_all_seen_once_across_small_reads_and_an_absence(env: Env) -> None:
    sim, driver = env.sim, env.driver
    appts = await driver.appointments_since(None)
    status = await driver.appointment_status_since(None)
    patients = await driver.patients_since(None)
    base = {k: _last_seq(env, k) for k in ("appointments", "appointmentStatus", "patients")}
    seen: dict[str, list[Any]] = {"appointments": [], "appointmentStatus": [], "patients": []}
    for minutes in [15] * 12 + [6 * 60]:  # small steps, then the reader is away for hours
        sim.advance(minutes=minutes)
        appts = await driver.appointments_since(appts.cursor)
        status = await driver.appointment_status_since(status.cursor)
        patients = await driver.patients_since(patients.cursor)
        seen["appointments"] += [(a.id, a.changed_at) for a in appts.records]
        seen["appointmentStatus"] += [(s.appointment_id, s.status) for s in status.records]
        seen["patients"] += [(p.id, p.changed_at) for p in patients.records]
    changes = {k: [c for c in sim.changes(env.pid, k) if c["seq"] > base[k]] for k in seen}
    assert changes["appointmentStatus"], "the simulated day made no patient-flow changes"
    assert Counter(seen["appointmentStatus"]) == Counter(
        (str(c["appointment_id"]), c["status"]) for c in changes["appointmentStatus"]
    )
    for kind in ("appointments", "patients"):
        assert len(seen[kind]) == len(set(seen[kind])), f"{kind}: a change was emitted twice"
        assert {i for i, _ in seen[kind]} == {str(c["id"]) for c in changes[kind]}
    assert (await driver.appointment_status_since(status.cursor)).records == []


def _last_seq(env: Env, kind: str) -> int:
    return max((c["seq"] for c in env.sim.changes(env.pid, kind)), default=0)


async def _note(
    env: Env, writeback_id: str, kind: str = "outgoingSms", text: str = "Hi"
) -> NoteWrite:
    types = {t.name: t for t in await env.driver.list_note_types()}
    patient = (await env.driver.patients_since(None)).records[0]
    provider = "DDS1" if env.pms == "Dentrix" else "DCM"
    name = "Patient Note" if kind == "patientNote" else "Text Message"
    return NoteWrite(
        writeback_id=writeback_id,
        kind=kind,
        patient_id=patient.id,
        note_type_id=types[name].id,
        provider_id=provider,
        occurred_at="2026-11-26T10:30:00",
        text=text,
    )


async def test_a_note_write_replayed_with_its_idempotency_key_is_not_written_twice(
    env: Env,
) -> None:
    note = await _note(env, "wb-1")
    first = await env.driver.write_note(note)
    again = await env.driver.write_note(note)
    assert first.created and not again.created and first.id == again.id
    written = [n for n in env.sim.notes(env.pid) if n["writeback_id"] == "wb-1"]
    assert len(written) == 1
    assert written[0]["provider_id"] == note.provider_id
    assert written[0]["kind"] == "outgoingSms"


async def test_dentrix_patient_notes_and_office_journal_notes_keep_their_target(env: Env) -> None:
    await env.driver.write_note(await _note(env, "wb-pn", kind="patientNote"))
    await env.driver.write_note(await _note(env, "wb-oj", kind="outgoingSms"))
    targets = {n["writeback_id"]: n["target"] for n in env.sim.notes(env.pid)}
    if env.pms == "Dentrix":
        assert targets == {"wb-pn": "PatientNotes", "wb-oj": "OfficeJournal"}
    else:
        assert set(targets) == {"wb-pn", "wb-oj"}


async def test_reusing_a_writeback_id_for_a_different_note_is_a_permanent_error(env: Env) -> None:
    await env.driver.write_note(await _note(env, "wb-2", text="first"))
    with pytest.raises(PermanentPmsError) as caught:
        await env.driver.write_note(await _note(env, "wb-2", text="second"))
    assert caught.value.status == 409


async def test_provider_ids_of_the_wrong_shape_are_refused_before_sending(env: Env) -> None:
    note = await _note(env, "wb-3")
    bad = "DR" if env.pms == "Dentrix" else "NOT A CODE"
    before = len(env.sim.requests(env.pid))
    with pytest.raises(PermanentPmsError, match="provider id"):
        await env.driver.write_note(NoteWrite(**{**note.__dict__, "provider_id": bad}))
    assert len(env.sim.requests(env.pid)) == before


async def test_document_upload_is_idempotent_and_carries_the_provider(env: Env) -> None:
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    patient = (await env.driver.patients_since(None)).records[1]
    provider = "HYG1" if env.pms == "Dentrix" else "HYG"
    doc = DocumentUpload(
        writeback_id="doc-9",
        kind="accountStatement",
        patient_id=patient.id,
        category_id=cats["Statements"].id,
        provider_id=provider,
        occurred_at="2026-11-26T11:00:00",
        filename="statement.pdf",
        content=b"%PDF-1.7 statement",
    )
    first = await env.driver.upload_document(doc)
    again = await env.driver.upload_document(doc)
    assert first.created and not again.created and first.id == again.id
    written = [d for d in env.sim.documents(env.pid) if d["writeback_id"] == "doc-9"]
    assert len(written) == 1
    assert written[0]["provider_id"] == provider
    assert written[0]["category_id"] == cats["Statements"].id
    assert written[0]["filename"] == "statement.pdf"


def test_eaglesoft_note_type_ids_must_be_type_pairs() -> None:
    driver = EaglesoftDriver.__new__(EaglesoftDriver)
    with pytest.raises(PermanentPmsError, match="type, typeId"):
        driver._check_note_type("221", "write note")
    driver._check_note_type("CM:1", "write note")


def test_dentrix_provider_ids_follow_the_four_character_rule() -> None:
    driver = DentrixDriver.__new__(DentrixDriver)
    for good in ("DDS1", "HYG1", "DOC_10"):
        driver._check_provider(good, "write note")
    for bad in ("DR", "DDS 1", "ABCDEFGHIJK"):
        with pytest.raises(PermanentPmsError):
            driver._check_provider(bad, "write note")


async def test_an_agent_fronting_another_pms_is_refused_with_the_fix(env: Env) -> None:
    other = EaglesoftDriver if env.pms == "Dentrix" else DentrixDriver
    driver = other(env.client, env.sim.base_url(env.pms), env.credentials)
    with pytest.raises(PermanentPmsError, match=f"fronts {env.pms}, but spec.pms.type is"):
        await driver.server_info()
