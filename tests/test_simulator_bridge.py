"""The PMS simulator's bridge agent API, in its Dentrix and Eaglesoft flavours.

Real: the aiohttp server on loopback, httpx over real HTTP, SQLite in memory. Nothing is faked.
The contract these tests hold the simulator to is docs/bridge-agent.openapi.yaml; the last test
validates live responses against that document's schemas with jsonschema.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from pms_simulator import Simulator

DX, ES = "dentrix-dallas", "eaglesoft-el-paso"
OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "bridge-agent.openapi.yaml"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(rate_limit_per_second=1000, burst=1000)
    async with simulator.serve():
        yield simulator
    simulator.close()


def client_for(sim: Simulator, pid: str, pms: str) -> httpx.AsyncClient:
    token = sim.add_practice(pid, pms)["token"]
    return httpx.AsyncClient(
        base_url=sim.base_url(pms), headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


@pytest.fixture
async def dx(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(sim, DX, "Dentrix") as client:
        yield client


@pytest.fixture
async def es(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(sim, ES, "Eaglesoft") as client:
        yield client


def note_body(**overrides: str) -> dict[str, str]:
    body = {
        "patientId": "7",
        "noteTypeId": "201",
        "providerId": "DDS1",
        "occurredAt": "2026-11-26T09:10:00",
        "text": "Sent reminder",
        "kind": "outgoingSms",
    }
    body.update(overrides)
    return body


async def test_a_wrong_token_gets_401_as_a_json_error(sim: Simulator) -> None:
    sim.add_practice(DX, "Dentrix")
    async with httpx.AsyncClient(base_url=sim.base_url("Dentrix")) as client:
        bad = await client.get("/info", headers={"Authorization": "Bearer not-a-token"})
        missing = await client.get("/info")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    assert "not-a-token" not in bad.text
    assert missing.status_code == 401


async def test_an_open_dental_key_is_not_a_bridge_token(sim: Simulator) -> None:
    od = sim.add_practice("od", "OpenDental")
    async with httpx.AsyncClient(base_url=sim.base_url("Dentrix")) as client:
        resp = await client.get("/info", headers={"Authorization": f"Bearer {od['customerKey']}"})
    assert resp.status_code == 401


async def test_each_flavour_reports_its_pms_providers_and_type_shapes(
    dx: httpx.AsyncClient, es: httpx.AsyncClient
) -> None:
    assert (await dx.get("/info")).json()["pms"] == "Dentrix"
    assert (await es.get("/info")).json()["serverTime"] == "2026-11-26T07:00:00"
    dx_providers = {p["id"]: p["active"] for p in (await dx.get("/providers")).json()["items"]}
    assert dx_providers == {"DDS1": True, "DDS2": True, "HYG1": True, "HYG2": True, "DOC9": False}
    assert all(len(pid) == 4 for pid in dx_providers)
    es_providers = {p["id"]: p["active"] for p in (await es.get("/providers")).json()["items"]}
    assert es_providers["DCM"] is True and es_providers["XRT"] is False
    dx_types = {t["name"]: t for t in (await dx.get("/note-types")).json()["items"]}
    assert dx_types["Text Message"]["target"] == "OfficeJournal"
    assert (
        dx_types["Patient Note"]["target"] == "PatientNotes" and dx_types["Fax"]["hidden"] is True
    )
    es_types = {t["name"]: t for t in (await es.get("/note-types")).json()["items"]}
    sms = es_types["Text Message"]
    assert sms["id"] == f"{sms['type']}:{sms['typeId']}" and es_types["Old Notes"]["hidden"] is True
    es_docs = {d["name"]: d["hidden"] for d in (await es.get("/document-types")).json()["items"]}
    assert es_docs == {"Insurance Verification": False, "Statements": False, "Insurance": False,
                       "Photos": False, "Correspondence": False, "Retired": True}  # fmt: skip


async def test_cursor_pages_follow_has_more_and_cover_every_patient_once(
    dx: httpx.AsyncClient,
) -> None:
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": "64", **({"since": cursor} if cursor else {})}
        page = (await dx.get("/patients", params=params)).json()
        ids += [p["id"] for p in page["items"]]
        cursor = page["nextCursor"]
        if not page["hasMore"]:
            break
    assert len(ids) == 300 and len(set(ids)) == 300
    again = (await dx.get("/patients", params={"since": cursor})).json()
    assert again == {"items": [], "nextCursor": cursor, "hasMore": False}


async def test_a_cursor_reader_sees_every_status_change_exactly_once(
    sim: Simulator, dx: httpx.AsyncClient
) -> None:
    seen: list[str] = []
    cursor = None
    for minutes in (30, 90, 5, 120, 200):
        sim.advance(minutes=minutes)
        while True:
            params = {"limit": "7", **({"since": cursor} if cursor else {})}
            page = (await dx.get("/appointment-status-changes", params=params)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["nextCursor"]
            if not page["hasMore"]:
                break
    truth = [c["id"] for c in sim.changes(DX, "appointmentStatus")]
    assert truth and seen == truth


async def test_changed_appointments_move_past_the_cursor(
    sim: Simulator, dx: httpx.AsyncClient
) -> None:
    first = (await dx.get("/appointments", params={"limit": "500"})).json()
    assert not first["hasMore"] and len(first["items"]) >= 36
    sim.advance(minutes=180)
    changed = (
        await dx.get("/appointments", params={"since": first["nextCursor"], "limit": "500"})
    ).json()
    truth = {c["id"] for c in sim.changes(DX, "appointments") if c["source"] != "seed"}
    assert {a["id"] for a in changed["items"]} == truth
    assert any(a["confirmed"] for a in changed["items"])
    assert {a["status"] for a in changed["items"]} <= {"Scheduled", "Complete", "Broken"}


async def test_photos_are_referenced_only_when_asked(dx: httpx.AsyncClient) -> None:
    plain = (await dx.get("/patients", params={"limit": "500"})).json()["items"]
    photos = (await dx.get("/patients", params={"limit": "500", "includePhotos": "true"})).json()[
        "items"
    ]
    assert all(p["photoRef"] is None for p in plain)
    refs = [p["photoRef"] for p in photos if p["photoRef"]]
    assert 40 < len(refs) < 150 and all(r.startswith("bridge://photos/") for r in refs)


async def test_bad_cursor_limit_and_flags_get_400(dx: httpx.AsyncClient) -> None:
    for params in (
        {"since": "garbage"},
        {"limit": "0"},
        {"limit": "501"},
        {"includePhotos": "maybe"},
    ):
        resp = await dx.get("/patients", params=params)
        assert resp.status_code == 400, params
    assert (await dx.get("/patients", params={"since": "x"})).json()["error"][
        "code"
    ] == "invalid_cursor"


async def test_a_replayed_note_returns_the_original_id_and_a_changed_body_conflicts(
    sim: Simulator, dx: httpx.AsyncClient
) -> None:
    headers = {"Idempotency-Key": "wb-42"}
    first = await dx.post("/notes", json=note_body(), headers=headers)
    again = await dx.post("/notes", json=note_body(), headers=headers)
    changed = await dx.post("/notes", json=note_body(text="Different"), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    assert changed.status_code == 409 and changed.json()["error"]["code"] == "idempotency_conflict"
    [note] = sim.notes(DX)
    assert (note["writeback_id"], note["kind"], note["target"], note["provider_id"]) == (
        "wb-42", "outgoingSms", "OfficeJournal", "DDS1",
    )  # fmt: skip


async def test_writes_without_a_key_or_with_unknown_ids_are_rejected(
    sim: Simulator, es: httpx.AsyncClient
) -> None:
    body = note_body(noteTypeId="CM:1", providerId="DCM")
    no_key = await es.post("/notes", json=body)
    assert no_key.status_code == 400 and no_key.json()["error"]["code"] == "missing_idempotency_key"
    for field, value in (("patientId", "999999"), ("noteTypeId", "CM:99"), ("providerId", "ZZZ")):
        resp = await es.post(
            "/notes", json={**body, field: value}, headers={"Idempotency-Key": field}
        )
        assert resp.status_code == 404 and field in resp.json()["error"]["message"]
    bad_kind = await es.post(
        "/notes", json={**body, "kind": "fax"}, headers={"Idempotency-Key": "k"}
    )
    assert bad_kind.status_code == 400
    assert sim.notes(ES) == []


async def test_a_document_upload_is_idempotent_too(sim: Simulator, es: httpx.AsyncClient) -> None:
    body = {
        "patientId": "3", "documentTypeId": "12", "providerId": "GGY",
        "occurredAt": "2026-11-26T10:00:00", "filename": "statement.pdf",
        "contentType": "application/pdf", "contentBase64": base64.b64encode(b"%PDF-1.4 hi").decode(),
    }  # fmt: skip
    headers = {"Idempotency-Key": "doc-1"}
    first = await es.post("/documents", json=body, headers=headers)
    replay = await es.post("/documents", json=body, headers=headers)
    assert (first.status_code, replay.status_code) == (201, 200)
    assert first.json()["id"] == replay.json()["id"]
    [doc] = sim.documents(ES)
    assert (doc["category_name"], doc["size"], doc["writeback_id"]) == ("Statements", 11, "doc-1")


async def test_live_responses_match_the_openapi_document(
    sim: Simulator, dx: httpx.AsyncClient, es: httpx.AsyncClient
) -> None:
    spec = yaml.safe_load(OPENAPI.read_text())
    assert spec["openapi"].startswith("3.1")
    sim.advance(minutes=120)

    def check(schema_name: str, instance: object) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    for client in (dx, es):
        check("Info", (await client.get("/info")).json())
        check("ProviderList", (await client.get("/providers")).json())
        check("NoteTypeList", (await client.get("/note-types")).json())
        check("DocumentTypeList", (await client.get("/document-types")).json())
        check("AppointmentPage", (await client.get("/appointments")).json())
        check(
            "AppointmentStatusChangePage", (await client.get("/appointment-status-changes")).json()
        )
        check(
            "PatientPage", (await client.get("/patients", params={"includePhotos": "true"})).json()
        )
        check("Error", (await client.get("/patients", params={"since": "x"})).json())
    created = await dx.post("/notes", json=note_body(), headers={"Idempotency-Key": "schema"})
    check("WriteResult", created.json())
    paths = spec["paths"]
    assert set(paths) == {"/info", "/providers", "/note-types", "/document-types", "/appointments",
                          "/appointment-status-changes", "/patients", "/notes", "/documents"}  # fmt: skip
