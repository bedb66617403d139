"""The Open Dental driver against the PMS simulator over real HTTP on loopback.

Real: the simulator (`pms_simulator.Simulator`, aiohttp, in-memory SQLite) on a free loopback
port, the driver on a client from `pms_drivers.transport.new_client`. The simulated clock is moved
by the test (`sim.advance`) so the day's changes happen when the test says; nothing is faked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from pms_drivers.base import NOTE_KINDS, Credentials, DocumentUpload, NoteWrite
from pms_drivers.opendental import COMMLOG_MODES, OpenDentalDriver, find_marker
from pms_drivers.registry import create_driver
from pms_drivers.transport import new_client
from pms_simulator import Simulator

PID = "od-practice"


@dataclass
class Env:
    sim: Simulator
    driver: OpenDentalDriver
    credentials: Credentials


def as_credentials(creds: Any) -> Credentials:
    return creds if isinstance(creds, Credentials) else Credentials(dict(creds))


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(db=":memory:", autotick=False)
    async with sim.serve(host="127.0.0.1", port=0):
        creds = as_credentials(sim.add_practice(PID, "OpenDental"))
        base = sim.base_url("OpenDental")
        async with new_client(base, timeout=5, rate_per_second=0, burst=1) as client:
            driver = create_driver("OpenDental", client, base, creds)
            assert isinstance(driver, OpenDentalDriver)
            yield Env(sim, driver, creds)


async def test_server_info_reports_the_office_clock(env: Env) -> None:
    info = await env.driver.server_info()
    assert info.pms == "OpenDental"
    assert info.server_time.startswith("20") and "T" in info.server_time


async def test_providers_are_keyed_by_provnum_with_hidden_and_deleted_inactive(env: Env) -> None:
    providers = {p.id: p for p in await env.driver.list_providers()}
    assert set(providers) == {"1", "2", "3", "4", "5", "7", "12"}
    assert {pid for pid, p in providers.items() if not p.active} == {"4", "5"}
    assert providers["1"].name == "Maria Alvarez, DDS"
    assert providers["2"].name == "Sam Lee, RDH"


async def test_note_types_are_commlog_type_definitions_with_hidden_flags(env: Env) -> None:
    types = {t.name: t for t in await env.driver.list_note_types()}
    assert len(types) == 13
    assert types["Legacy Fax"].hidden
    assert not types["Text Message"].hidden
    assert all(t.id.isdigit() for t in types.values())


async def test_document_categories_carry_their_itemvalue_flags(env: Env) -> None:
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    assert cats["Statements"].flags == "S"
    assert cats["Patient Pictures"].flags == "P"
    assert cats["Old Scans"].hidden
    assert not cats["Insurance Verification"].hidden


async def test_reading_all_patients_pages_past_the_100_row_cap(env: Env) -> None:
    page = await env.driver.patients_since(None)
    ids = [p.id for p in page.records]
    assert len(ids) > 200 and len(ids) == len(set(ids))
    offsets = [r for r in env.sim.requests(PID) if r.path.endswith("/patients/Simple")]
    # First call without Limit/Offset, then Offset=100, 200, ... until a short page.
    assert "Offset" not in offsets[0].query
    assert [r.query.get("Offset") for r in offsets[1:]] == [
        str(100 * i) for i in range(1, len(offsets))
    ]
    assert len(offsets) == len(ids) // 100 + 1
    assert all(p.first_name and p.last_name for p in page.records)


async def test_a_day_of_changes_is_seen_once_each_across_many_small_reads(env: Env) -> None:
    sim, driver = env.sim, env.driver
    appts = await driver.appointments_since(None)
    status = await driver.appointment_status_since(None)
    patients = await driver.patients_since(None)
    base_seq = {k: _last_seq(sim, k) for k in ("appointments", "appointmentStatus", "patients")}
    seen_appts: list[tuple[str, str]] = []
    seen_status: list[tuple[str, str]] = []
    seen_patients: list[tuple[str, str]] = []
    for _ in range(24):
        sim.advance(minutes=20)
        appts = await driver.appointments_since(appts.cursor)
        status = await driver.appointment_status_since(status.cursor)
        patients = await driver.patients_since(patients.cursor)
        seen_appts += [(a.id, a.changed_at) for a in appts.records]
        seen_status += [(s.appointment_id, s.status) for s in status.records]
        seen_patients += [(p.id, p.changed_at) for p in patients.records]
    _assert_all_seen_once(sim, base_seq, seen_appts, seen_status, seen_patients)


async def test_changes_made_while_the_reader_was_away_are_all_seen_none_twice(env: Env) -> None:
    sim, driver = env.sim, env.driver
    appts = await driver.appointments_since(None)
    status = await driver.appointment_status_since(None)
    patients = await driver.patients_since(None)
    base_seq = {k: _last_seq(sim, k) for k in ("appointments", "appointmentStatus", "patients")}
    sim.advance(minutes=8 * 60)  # the reader is away for a working day
    # A restart: only the stored cursor strings survive.
    cursors = (appts.cursor, status.cursor, patients.cursor)
    appts = await driver.appointments_since(cursors[0])
    status = await driver.appointment_status_since(cursors[1])
    patients = await driver.patients_since(cursors[2])
    seen_appts = [(a.id, a.changed_at) for a in appts.records]
    seen_status = [(s.appointment_id, s.status) for s in status.records]
    seen_patients = [(p.id, p.changed_at) for p in patients.records]
    # And an immediate re-read (inside the overlap) brings nothing again.
    assert (await driver.appointments_since(appts.cursor)).records == []
    assert (await driver.appointment_status_since(status.cursor)).records == []
    assert (await driver.patients_since(patients.cursor)).records == []
    _assert_all_seen_once(sim, base_seq, seen_appts, seen_status, seen_patients)


def _last_seq(sim: Simulator, kind: str) -> int:
    return max((c["seq"] for c in sim.changes(PID, kind)), default=0)


def _assert_all_seen_once(
    sim: Simulator,
    base_seq: dict[str, int],
    seen_appts: list[tuple[str, str]],
    seen_status: list[tuple[str, str]],
    seen_patients: list[tuple[str, str]],
) -> None:
    def after(kind: str) -> list[dict[str, Any]]:
        return [c for c in sim.changes(PID, kind) if c["seq"] > base_seq[kind]]

    status_changes = [(str(c["appointment_id"]), c["status"]) for c in after("appointmentStatus")]
    assert status_changes, "the simulated day made no patient-flow changes"
    assert Counter(seen_status) == Counter(status_changes)
    # Record reads see each changed row (a row changed twice between reads shows once, at its
    # latest stamp); no (row, stamp) is emitted twice.
    for kind, seen in (("appointments", seen_appts), ("patients", seen_patients)):
        assert len(seen) == len(set(seen)), f"{kind}: a change was emitted twice"
        assert {rid for rid, _ in seen} == {str(c["id"]) for c in after(kind)}, kind


@pytest.mark.parametrize("kind", NOTE_KINDS)
async def test_write_note_maps_the_kind_and_records_provider_and_writeback_id(
    env: Env, kind: str
) -> None:
    note_type = next(t for t in await env.driver.list_note_types() if t.name == "Text Message")
    patient = (await env.driver.patients_since(None)).records[0]
    note = NoteWrite(
        writeback_id=f"wb-{kind}",
        kind=kind,
        patient_id=patient.id,
        note_type_id=note_type.id,
        provider_id="7",
        occurred_at="2026-11-26T10:30:00",
        text=f"A {kind} note.",
    )
    first = await env.driver.write_note(note)
    again = await env.driver.write_note(note)
    assert first.created and not again.created and again.id == first.id
    written = [n for n in env.sim.notes(PID) if f"writeback=wb-{kind}]" in n["text"]]
    assert len(written) == 1
    mode, direction = COMMLOG_MODES[kind]
    assert (written[0]["mode"], written[0]["direction"]) == (mode, direction)
    assert find_marker(written[0]["text"]) == ("7", f"wb-{kind}")
    assert written[0]["text"].startswith(f"A {kind} note.\n")
    assert written[0]["patient_id"] == patient.id
    assert written[0]["occurred_at"] in ("2026-11-26 10:30:00", "2026-11-26T10:30:00")


async def test_upload_document_sets_provnum_and_is_idempotent_by_description_marker(
    env: Env,
) -> None:
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    patient = (await env.driver.patients_since(None)).records[3]
    doc = DocumentUpload(
        writeback_id="doc-1",
        kind="insuranceVerification",
        patient_id=patient.id,
        category_id=cats["Insurance Verification"].id,
        provider_id="3",
        occurred_at="2026-11-26T11:00:00",
        filename="verification.pdf",
        content=b"%PDF-1.4 test",
    )
    first = await env.driver.upload_document(doc)
    again = await env.driver.upload_document(doc)
    assert first.created and not again.created and again.id == first.id
    written = [
        d
        for d in env.sim.documents(PID)
        if d["writeback_id"] == "doc-1" or "writeback=doc-1]" in (d["description"] or "")
    ]
    assert len(written) == 1
    assert written[0]["provider_id"] == "3"
    assert written[0]["category_id"] == cats["Insurance Verification"].id
    assert find_marker(written[0]["description"]) == ("3", "doc-1")
    assert written[0]["size"] == len(b"%PDF-1.4 test")


async def test_patients_with_photos_point_at_the_pictures_category(env: Env) -> None:
    page = await env.driver.patients_since(None, photos=True)
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    ref = page.records[0].photo_ref
    assert (
        ref == f"/documents?PatNum={page.records[0].id}&DocCategory={cats['Patient Pictures'].id}"
    )


async def test_a_foreign_cursor_is_a_permanent_error_naming_the_fix(env: Env) -> None:
    from pms_drivers.errors import PermanentPmsError

    with pytest.raises(PermanentPmsError, match="clear the stored cursor"):
        await env.driver.appointments_since("12345")


async def test_the_pictures_category_is_looked_up_once_not_on_every_poll(env: Env) -> None:
    page = await env.driver.patients_since(None, photos=True)
    for _ in range(3):
        env.sim.advance(minutes=60)
        page = await env.driver.patients_since(page.cursor, photos=True)
    lookups = [
        r
        for r in env.sim.requests(PID)
        if r.path.endswith("/definitions") and r.query.get("Category") == "18"
    ]
    assert len(lookups) == 1


async def test_an_image_without_an_extension_is_uploaded_as_a_photo_with_one(env: Env) -> None:
    cats = {c.name: c for c in await env.driver.list_document_categories()}
    patient = (await env.driver.patients_since(None)).records[5]
    doc = DocumentUpload(
        writeback_id="doc-photo",
        kind="insuranceVerification",
        patient_id=patient.id,
        category_id=cats["Insurance Cards"].id,
        provider_id="1",
        occurred_at="2026-11-26T11:00:00",
        filename="card-front",
        content=b"\x89PNG\r\n\x1a\n",
        content_type="image/png",
    )
    assert (await env.driver.upload_document(doc)).created
    written = [
        d for d in env.sim.documents(PID) if "writeback=doc-photo]" in (d["description"] or "")
    ]
    assert len(written) == 1
    assert written[0]["filename"].endswith(".png")
    assert written[0]["description"].startswith(
        "card-front [pmsctl provider=1 writeback=doc-photo]"
    )


async def test_changed_appointments_carry_the_confirmation_name_and_flow_times(env: Env) -> None:
    page = await env.driver.appointments_since(None)
    status = await env.driver.appointment_status_since(None)
    env.sim.advance(minutes=6 * 60)
    page = await env.driver.appointments_since(page.cursor)
    status = await env.driver.appointment_status_since(status.cursor)
    confirmed = {c.appointment_id for c in status.records if c.status == "confirmed"}
    assert confirmed
    by_id = {a.id: a for a in page.records}
    assert all(by_id[i].confirmed == "Appointment Confirmed" for i in confirmed)
    arrived = [c for c in status.records if c.status == "arrived"]
    assert arrived and all(c.at.startswith("2026-11-26T") for c in arrived)
    assert all(by_id[c.appointment_id].provider_id for c in arrived)
