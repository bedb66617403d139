"""The PMS simulator's Open Dental API, clock, faults, drift and test API.

Real: the aiohttp server on a loopback port, httpx over real HTTP, SQLite in memory, the token
bucket and the added latency. Nothing is faked; the simulated clock is the simulator's own (it
moves only when a test calls `advance()` or autotick runs).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from timing import Monotonic, elapse

from pms_simulator import DriftError, Simulator, UnknownPracticeError

PID = "bright-smiles-austin"


@pytest.fixture
def fault_clock() -> Monotonic:
    """The clock of the simulator's rate limits and outage windows."""
    return Monotonic()


@pytest.fixture
async def sim(fault_clock: Monotonic) -> AsyncIterator[Simulator]:
    simulator = Simulator(rate_limit_per_second=1000, burst=1000, monotonic=fault_clock)
    async with simulator.serve():
        yield simulator
    simulator.close()


@pytest.fixture
async def od(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    creds = sim.add_practice(PID, "OpenDental")
    auth = f"ODFHIR {creds['developerKey']}/{creds['customerKey']}"
    async with httpx.AsyncClient(
        base_url=sim.base_url("OpenDental"), headers={"Authorization": auth}, timeout=10
    ) as client:
        yield client


async def read_all(client: httpx.AsyncClient, path: str, **params: str) -> list[dict]:
    """Page the Open Dental way: no Limit first, then Offset=100, 200... until a short page."""
    rows: list[dict] = []
    while True:
        query = dict(params, **({"Offset": str(len(rows))} if rows else {}))
        resp = await client.get(path, params=query)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        rows += page
        if len(page) < 100:
            return rows


async def test_unknown_customer_key_is_answered_401_in_plain_text(sim: Simulator) -> None:
    sim.add_practice(PID, "OpenDental")
    async with httpx.AsyncClient(base_url=sim.base_url("OpenDental")) as client:
        bad = await client.get(
            "/providers", headers={"Authorization": "ODFHIR sim-developer-key/nope"}
        )
        missing = await client.get("/providers")
    assert bad.status_code == 401 and bad.headers["content-type"].startswith("text/plain")
    assert "nope" not in bad.text
    assert missing.status_code == 401 and "ODFHIR" in missing.text


async def test_providers_and_definitions_match_the_seed_catalog(od: httpx.AsyncClient) -> None:
    providers = {p["ProvNum"]: p for p in (await od.get("/providers")).json()}
    assert sorted(providers) == [1, 2, 3, 4, 5, 7, 12]
    assert providers[1]["Abbr"] == "DOC1" and providers[1]["IsHidden"] == "false"
    assert providers[4]["IsHidden"] == "true" and providers[5]["ProvStatus"] == "Deleted"
    notes = (await od.get("/definitions", params={"Category": 27, "includeHidden": "true"})).json()
    assert {n["ItemName"] for n in notes} >= {"Text Message", "Missed Call", "Legacy Fax"}
    assert next(n for n in notes if n["ItemName"] == "Legacy Fax")["isHidden"] == "true"
    shown = (await od.get("/definitions", params={"Category": 27})).json()
    assert "Legacy Fax" not in {n["ItemName"] for n in shown}
    cats = (await od.get("/definitions", params={"Category": 18, "includeHidden": "true"})).json()
    by_name = {c["ItemName"]: c for c in cats}
    assert (
        by_name["Statements"]["ItemValue"] == "S"
        and by_name["Patient Pictures"]["ItemValue"] == "P"
    )
    assert by_name["Old Scans"]["isHidden"] == "true"


async def test_limit_above_100_is_capped_and_offsets_page_through_every_patient(
    od: httpx.AsyncClient,
) -> None:
    capped = await od.get("/patients/Simple", params={"Limit": 500})
    assert len(capped.json()) == 100
    rows = await read_all(od, "/patients/Simple")
    assert len(rows) == 300 and len({r["PatNum"] for r in rows}) == 300


async def test_every_item_carries_server_date_time_from_the_simulated_clock(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    sim.advance(minutes=95)
    rows = (await od.get("/appointments")).json()
    assert rows and {r["serverDateTime"] for r in rows} == {"2026-11-26 08:35:00"}


async def test_date_t_stamp_returns_rows_changed_at_or_after_the_stamp(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    first = await read_all(od, "/appointments")
    cursor = first[0]["serverDateTime"]
    sim.advance(minutes=120)
    changed = await read_all(od, "/appointments", DateTStamp=cursor)
    assert changed and all(r["DateTStamp"] >= cursor for r in changed)
    truth = {c["id"] for c in sim.changes(PID, "appointments") if c["stamp"] >= cursor}
    assert {str(r["AptNum"]) for r in changed} == truth


async def test_an_overlapping_reader_deduplicating_by_key_neither_loses_nor_doubles_changes(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    seen: dict[int, str] = {}
    emitted: list[tuple[int, str]] = []
    cursor = None
    for minutes in (7, 13, 1, 45, 60, 3, 120, 240):
        rows = await read_all(od, "/appointments", **({"DateTStamp": cursor} if cursor else {}))
        for r in rows:
            if seen.get(r["AptNum"]) != r["DateTStamp"]:
                seen[r["AptNum"]] = r["DateTStamp"]
                emitted.append((r["AptNum"], r["DateTStamp"]))
        if rows:
            cursor = rows[0]["serverDateTime"]
        sim.advance(minutes=minutes)
    rows = await read_all(od, "/appointments", DateTStamp=cursor)
    for r in rows:
        if seen.get(r["AptNum"]) != r["DateTStamp"]:
            seen[r["AptNum"]] = r["DateTStamp"]
            emitted.append((r["AptNum"], r["DateTStamp"]))
    assert len(emitted) == len(set(emitted)), "a change was emitted twice"
    latest: dict[str, str] = {}
    for change in sim.changes(PID, "appointments"):
        latest[change["id"]] = change["stamp"]
    assert latest, "the clock moved 8 hours and nothing changed"
    assert {str(k): v for k, v in seen.items() if str(k) in latest} == latest


async def test_bad_requests_get_400_and_unknown_records_404_in_plain_text(
    od: httpx.AsyncClient,
) -> None:
    bad_stamp = await od.get("/appointments", params={"DateTStamp": "yesterday"})
    assert bad_stamp.status_code == 400 and "DateTStamp" in bad_stamp.text
    assert bad_stamp.headers["content-type"].startswith("text/plain")
    bad_limit = await od.get("/patients/Simple", params={"Limit": "ten"})
    assert bad_limit.status_code == 400 and "Limit" in bad_limit.text
    missing = await od.get("/patients/99999")
    assert missing.status_code == 404 and "Patient not found" in missing.text
    post = await od.post("/commlogs", json={"PatNum": 99999, "Note": "x"})
    assert post.status_code == 404
    bad_type = await od.post("/commlogs", json={"PatNum": 1, "Note": "x", "CommType": 9})
    assert bad_type.status_code == 400 and "CommType" in bad_type.text
    bad_mode = await od.post("/commlogs", json={"PatNum": 1, "Note": "x", "Mode_": "Pigeon"})
    assert bad_mode.status_code == 400 and "Mode_" in bad_mode.text
    no_path = await od.get("/nothing-here")
    assert no_path.status_code == 404


async def test_a_commlog_with_a_marker_is_found_by_pat_num_and_normalized(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    note = "Texted about Tuesday.\n[pmsctl provider=7 writeback=wb-123]"
    created = await od.post(
        "/commlogs",
        json={
            "PatNum": 12,
            "Note": note,
            "CommType": "226",
            "Mode_": "Text",
            "SentOrReceived": "Sent",
        },
    )
    assert created.status_code == 201
    body = created.json()
    assert (
        body["CommlogNum"] >= 1 and body["commType"] == "Text Message" and body["CommType"] == "226"
    )
    found = (await od.get("/commlogs", params={"PatNum": 12})).json()
    assert [c["Note"] for c in found] == [note]
    [stored] = sim.notes(PID)
    assert stored["writeback_id"] == "wb-123" and stored["provider_id"] == "7"
    assert (stored["mode"], stored["direction"], stored["note_type_name"]) == (
        "Text",
        "Sent",
        "Text Message",
    )


async def test_document_upload_keeps_category_provider_and_marker(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    resp = await od.post(
        "/documents/Upload",
        json={"PatNum": 5, "rawBase64": "JVBERi0xLjQK", "extension": ".pdf", "DocCategory": 84,
              "ProvNum": 1, "Description": "Statement [pmsctl provider=1 writeback=wb-9]"},
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    listed = (await od.get("/documents", params={"PatNum": 5})).json()
    assert doc["DocNum"] in {d["DocNum"] for d in listed}
    [stored] = sim.documents(PID)
    assert (stored["category_name"], stored["provider_id"], stored["writeback_id"], stored["size"]) == (
        "Statements", "1", "wb-9", 9,
    )  # fmt: skip
    bad = await od.post(
        "/documents/Upload",
        json={"PatNum": 5, "rawBase64": "%%%", "extension": "pdf", "DocCategory": 84},
    )
    assert bad.status_code == 400


async def test_some_patients_have_a_photo_in_the_patient_pictures_category(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    photos = [
        d
        for d in sim.documents(PID, include_seeded=True)
        if d["category_name"] == "Patient Pictures"
    ]
    assert 40 < len(photos) < 150
    listed = (await od.get("/documents", params={"PatNum": photos[0]["patient_id"]})).json()
    assert listed[0]["DocCategory"] == 85 and listed[0]["ImgType"] == "Photo"


async def test_over_the_rate_limit_requests_get_429_with_retry_after(
    sim: Simulator, od: httpx.AsyncClient, fault_clock: Monotonic
) -> None:
    sim.set_faults(PID, rate_limit_per_second=2, burst=3)
    codes = [(await od.get("/providers")).status_code for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    limited = await od.get("/providers")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert (await od.get("/providers")).status_code == 429  # no time passed on the fault clock
    fault_clock.jump(0.6)
    assert (await od.get("/providers")).status_code == 200


async def test_an_outage_answers_503_with_retry_after_until_it_ends(
    sim: Simulator, od: httpx.AsyncClient, fault_clock: Monotonic
) -> None:
    sim.set_faults(PID, outage=True, outage_seconds=0.5)
    down = await od.get("/providers")
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert (await od.get("/providers")).status_code == 503  # the window is not over yet
    fault_clock.jump(0.6)
    assert (await od.get("/providers")).status_code == 200
    sim.set_faults(PID, outage=True)
    assert (await od.get("/providers")).status_code == 503
    sim.set_faults(PID)
    assert (await od.get("/providers")).status_code == 200


async def test_error_rates_fail_requests_with_the_configured_status(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    sim.set_faults(PID, error_rate=1.0, status=500)
    assert (await od.get("/providers")).status_code == 500
    sim.set_faults(PID, write_error_rate=1.0, status=502)
    assert (await od.get("/providers")).status_code == 200
    post = await od.post("/commlogs", json={"PatNum": 1, "Note": "x"})
    assert post.status_code == 502 and sim.notes(PID) == []
    sim.set_faults(PID, error_rate=0.5)
    codes = [(await od.get("/providers")).status_code for _ in range(40)]
    assert 5 < codes.count(503) < 35


async def test_added_latency_delays_the_answer(sim: Simulator, od: httpx.AsyncClient) -> None:
    sim.set_faults(PID, latency_ms=300)
    started = time.monotonic()
    assert (await od.get("/providers")).status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_drift_renames_hides_deletes_and_inactivates_keeping_ids(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    sim.rename_note_type(PID, "Text Message", "SMS")
    sim.hide_note_type(PID, "Email")
    sim.rename_document_category(PID, "Statements", "Account Statements")
    sim.delete_document_category(PID, "Insurance Verification")
    sim.inactivate_provider(PID, "7")
    notes = {
        n["DefNum"]: n
        for n in (
            await od.get("/definitions", params={"Category": 27, "includeHidden": "true"})
        ).json()
    }
    assert notes[226]["ItemName"] == "SMS" and notes[227]["isHidden"] == "true"
    cats = {
        c["DefNum"]: c["ItemName"]
        for c in (await od.get("/definitions", params={"Category": 18})).json()
    }
    assert cats[84] == "Account Statements" and 83 not in cats
    doc7 = next(p for p in (await od.get("/providers")).json() if p["ProvNum"] == 7)
    assert doc7["IsHidden"] == "true"
    with pytest.raises(DriftError, match="no note type named 'Fax Machine'"):
        sim.hide_note_type(PID, "Fax Machine")
    with pytest.raises(UnknownPracticeError):
        sim.set_faults("nobody", outage=True)


async def test_the_request_log_records_method_path_query_and_status(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    await od.get("/appointments", params={"DateTStamp": "2026-11-26 07:00:00"})
    await od.get("/patients/424242")
    log = sim.requests(PID)
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", "/api/v1/appointments", 200),
        ("GET", "/api/v1/patients/424242", 404),
    ]
    assert log[0].query == {"DateTStamp": "2026-11-26 07:00:00"} and log[0].at <= time.time()


def test_the_same_practice_id_seeds_the_same_data_and_another_id_different_data() -> None:
    a, b = Simulator(), Simulator()
    for s in (a, b):
        s.add_practice("p1", "OpenDental")
        s.add_practice("p2", "OpenDental")
    q = "SELECT id, fname, lname, stamp, photo_doc FROM patients WHERE p=? ORDER BY id"
    qa = "SELECT id, pat, start, prov, confirmed FROM appointments WHERE p=? ORDER BY id"
    a.seed()
    b.seed(["p1"])
    assert [tuple(r) for r in a.state.query(q, ("p1",))] == [
        tuple(r) for r in b.state.query(q, ("p1",))
    ]
    assert [tuple(r) for r in a.state.query(qa, ("p1",))] == [
        tuple(r) for r in b.state.query(qa, ("p1",))
    ]
    assert [tuple(r) for r in a.state.query(q, ("p1",))] != [
        tuple(r) for r in a.state.query(q, ("p2",))
    ]
    assert a.add_practice("p1", "OpenDental") == b.add_practice("p1", "OpenDental")


def test_a_practice_first_used_late_catches_up_to_the_same_state() -> None:
    early, late = Simulator(), Simulator()
    early.add_practice("p", "OpenDental")
    early.seed()
    late.add_practice("p", "OpenDental")
    early.advance(minutes=300)
    late.advance(minutes=300)  # not seeded yet: seeded on first use, then caught up
    late.seed()
    q = "SELECT * FROM appointments WHERE p='p' ORDER BY id"
    assert [tuple(r)[:-1] for r in early.state.query(q)] == [
        tuple(r)[:-1] for r in late.state.query(q)
    ]


def test_the_clock_moves_patients_through_the_day_and_new_patients_appear() -> None:
    sim = Simulator()
    sim.add_practice(PID, "OpenDental")
    sim.seed()
    sim.advance(minutes=11 * 60)  # 07:00 -> 18:00, the next day is booked at 18:00
    flow = sim.changes(PID, "appointmentStatus")
    assert {c["status"] for c in flow} == {"confirmed", "arrived", "seated", "dismissed"}
    assert all(c["stamp"] <= "2026-11-26 18:00:00" for c in flow)
    patients = sim.changes(PID, "patients")
    assert any(c.get("new") for c in patients) and any(not c.get("new") for c in patients)
    assert sum(c["source"] == "seed" for c in patients) == 300, (
        "the seed is a reader's first change"
    )
    appointments = sim.changes(PID, "appointments")
    assert any(c["stamp"] == "2026-11-26 18:00:00" for c in appointments), "tomorrow was not booked"
    seqs = [c["seq"] for c in flow]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.looptime(end=60)
async def test_autotick_moves_the_clock_while_serving() -> None:
    """On looptime's fast-forwarded loop: the ticks are loop timers, the advances real threads."""
    sim = Simulator(autotick=True, tick_seconds=0.05, tick_minutes=10)
    sim.add_practice(PID, "OpenDental")
    async with sim.serve():
        await elapse(0.5)
        assert sim.now.hour >= 8
    moved = sim.now
    await elapse(0.2)
    assert sim.now == moved, "the ticker kept running after serve() exited"


def test_serve_in_thread_serves_synchronous_callers_and_stops() -> None:
    sim = Simulator()
    with sim.serve_in_thread() as url:
        creds = sim.add_practice(PID, "OpenDental")
        resp = httpx.get(
            f"{url}/api/v1/providers",
            headers={"Authorization": f"ODFHIR {creds['developerKey']}/{creds['customerKey']}"},
        )
        assert resp.status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/v1/providers", timeout=2)


async def test_the_admin_endpoints_drive_a_simulator_over_http(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=f"{sim.url}/_admin", timeout=10) as admin:
        added = (
            await admin.post("/practices", json={"practiceId": "es-1", "pms": "Eaglesoft"})
        ).json()
        assert added["baseUrl"] == sim.base_url("Eaglesoft") and "token" in added["credentials"]
        assert (await admin.post("/advance", json={"minutes": 60})).json()[
            "now"
        ] == "2026-11-26T08:00:00"
        faults = await admin.put("/practices/es-1/faults", json={"outage": True, "retryAfter": 7})
        assert faults.status_code == 200
        token = added["credentials"]["token"]
        async with httpx.AsyncClient(
            base_url=added["baseUrl"], headers={"Authorization": f"Bearer {token}"}
        ) as bridge:
            down = await bridge.get("/providers")
            assert down.status_code == 503 and down.headers["Retry-After"] == "7"
            await admin.put("/practices/es-1/faults", json={})
            drift = await admin.post(
                "/practices/es-1/drift", json={"op": "inactivateProvider", "providerId": "DCM"}
            )
            assert drift.status_code == 200
            providers = (await bridge.get("/providers")).json()["items"]
            assert next(p for p in providers if p["id"] == "DCM")["active"] is False
        log = (await admin.get("/practices/es-1/requests")).json()
        assert [r["status"] for r in log] == [503, 200]
        changes = (
            await admin.get("/practices/es-1/changes", params={"kind": "appointmentStatus"})
        ).json()
        assert changes == sim.changes("es-1", "appointmentStatus")
        unknown = await admin.post(
            "/practices/nobody/drift", json={"op": "hideNoteType", "name": "Task"}
        )
        assert unknown.status_code == 404 and "nobody" in unknown.json()["error"]["message"]
        bad = await admin.put("/practices/es-1/faults", json={"errorRate": 2})
        assert bad.status_code == 400 and "error_rate" in bad.json()["error"]["message"]


def test_a_file_database_keeps_practices_clock_and_writes_across_restarts(tmp_path) -> None:
    db = str(tmp_path / "sim.sqlite")
    first = Simulator(db)
    creds = first.add_practice(PID, "OpenDental")
    first.seed()
    first.advance(minutes=200)
    before = first.changes(PID, "appointmentStatus")
    first.close()
    second = Simulator(db)
    assert second.practices() == [(PID, "OpenDental")] and second.credentials(PID) == creds
    assert second.now == first.now and second.changes(PID, "appointmentStatus") == before
    second.advance(minutes=60)
    assert len(second.changes(PID, "appointmentStatus")) > len(before)
    second.close()


def test_adding_a_thousand_practices_seeds_none_until_each_is_used() -> None:
    sim = Simulator()
    for i in range(1000):
        sim.add_practice(f"p{i}", ("OpenDental", "Dentrix", "Eaglesoft")[i % 3])
    assert not any(p.seeded for p in sim.state.practices())
    sim.advance(minutes=60)  # unseeded practices have no planned activity yet
    sim.seed(["p7"])
    assert [p.id for p in sim.state.practices() if p.seeded] == ["p7"]
    assert sim.changes("p7", "appointmentStatus"), "p7 did not catch up to the clock"


async def test_a_revoked_key_gets_401_until_it_is_restored(
    sim: Simulator, od: httpx.AsyncClient
) -> None:
    sim.set_faults(PID, revoked=True)
    revoked = await od.get("/providers")
    assert revoked.status_code == 401 and revoked.headers["content-type"].startswith("text/plain")
    sim.set_faults(PID)
    assert (await od.get("/providers")).status_code == 200
