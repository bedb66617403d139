"""Event sinks and the cursor store, with real files, real SQLite and a real HTTP receiver.

`HttpSink` posts to an aiohttp app on a loopback port that records every batch and can answer
503 or 400 on demand; `JsonlSink` writes to a temporary file; the store is a SQLite file that is
closed and reopened to show cursors survive a restart. Nothing is faked.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from pms_drivers.base import Appointment, AppointmentStatusChange, Patient
from reconciler.engine.cursors import CursorCommits, SqliteCursorStore
from reconciler.engine.sink import (
    BATCH_CONTENT_TYPE,
    TYPE_APPOINTMENT,
    TYPE_APPOINTMENT_STATUS,
    TYPE_PATIENT,
    HttpSink,
    JsonlSink,
    SinkError,
    appointment_event,
    appointment_status_event,
    patient_event,
    sink_from_url,
)

PATIENT = Patient("42", "Ana", "Diaz", "2026-11-26T09:00:00", photo_ref="doc:77")


def test_same_change_gets_the_same_id_and_a_new_change_a_new_one() -> None:
    a = patient_event("acme", "Open Dental", PATIENT, photos=False)
    b = patient_event("acme", "Open Dental", PATIENT, photos=True)
    assert a["id"] == b["id"]
    later = Patient("42", "Ana", "Diaz", "2026-11-26T09:05:00")
    assert patient_event("acme", "Open Dental", later, photos=False)["id"] != a["id"]
    assert patient_event("other", "Open Dental", PATIENT, photos=False)["id"] != a["id"]
    s1 = appointment_status_event(
        "acme", "Dentrix", AppointmentStatusChange("9", "42", "arrived", "2026-11-26T09:01:00")
    )
    s2 = appointment_status_event(
        "acme", "Dentrix", AppointmentStatusChange("9", "42", "seated", "2026-11-26T09:01:00")
    )
    assert s1["id"] != s2["id"]


def test_two_states_of_one_row_in_the_same_second_get_two_ids_and_a_replay_the_same_one() -> None:
    """The PMS's change stamp has one-second resolution: the row's version tells two states of one
    row within that second apart, so a consumer that de-duplicates on the id keeps both."""
    stamp = "2026-11-26T09:00:00"
    first = Patient("42", "Ana", "Diaz", stamp, version="v1")
    second = Patient("42", "Ana", "Díaz", stamp, version="v2")
    ids = {patient_event("acme", "Open Dental", p, photos=False)["id"] for p in (first, second)}
    assert len(ids) == 2
    replay = Patient("42", "Ana", "Diaz", stamp, version="v1")
    assert patient_event("acme", "Open Dental", replay, photos=False)["id"] in ids
    row = ("7", "42", "2026-11-26T10:00:00")
    a1 = appointment_event(
        "acme", "Open Dental", Appointment(*row, "Scheduled", "1", stamp, version="x")
    )
    a2 = appointment_event(
        "acme", "Open Dental", Appointment(*row, "Complete", "1", stamp, version="y")
    )
    assert a1["id"] != a2["id"] and a1["data"]["version"] == "x"


def test_events_are_cloudevents_and_photos_only_when_asked() -> None:
    e = patient_event("acme", "Open Dental", PATIENT, photos=False)
    assert e["specversion"] == "1.0"
    assert e["type"] == TYPE_PATIENT
    assert e["source"] == "/pmsctl/practices/acme"
    assert e["subject"] == "42"
    assert "photoRef" not in e["data"]
    assert (
        patient_event("acme", "Open Dental", PATIENT, photos=True)["data"]["photoRef"] == "doc:77"
    )
    a = appointment_event(
        "acme",
        "Eaglesoft",
        Appointment("7", "42", "2026-11-26T10:00:00", "Scheduled", "DCM", "2026-11-26T08:00:00"),
    )
    assert a["type"] == TYPE_APPOINTMENT and a["data"]["providerId"] == "DCM"
    s = appointment_status_event(
        "acme", "Eaglesoft", AppointmentStatusChange("7", "42", "confirmed", "2026-11-26T08:30:00")
    )
    assert s["type"] == TYPE_APPOINTMENT_STATUS and s["time"] == "2026-11-26T08:30:00"


async def test_jsonl_sink_appends_one_event_per_line_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "out" / "events.jsonl"
    sink = JsonlSink(path)
    await sink.publish([patient_event("acme", "OD", PATIENT, photos=False)])
    await sink.publish([])
    await sink.close()
    sink = sink_from_url(f"file:{path}")
    assert isinstance(sink, JsonlSink)
    await sink.publish([patient_event("b", "OD", PATIENT, photos=False)] * 2)
    await sink.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [e["practiceid"] for e in lines] == ["acme", "b", "b"]


async def test_concurrent_publishes_share_fsyncs_and_all_lines_land(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    events = [[patient_event(f"p{i}", "OD", PATIENT, photos=False)] for i in range(50)]
    await asyncio.gather(*(sink.publish(e) for e in events))
    # The first publish's fsync runs alone; the 49 that queued behind it share one more.
    assert sink.fsyncs == 2
    await sink.publish(events[0])
    assert sink.fsyncs == 3  # a lone publish still waits for its own fsync
    await sink.close()
    lines = [json.loads(x)["practiceid"] for x in path.read_text().splitlines()]
    assert sorted(lines) == sorted([f"p{i}" for i in range(50)] + ["p0"])


async def test_a_closed_jsonl_sink_raises_a_sink_error(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "events.jsonl")
    await sink.close()
    with pytest.raises(SinkError, match=r"events\.jsonl"):
        await sink.publish([patient_event("acme", "OD", PATIENT, photos=False)])


class Receiver:
    """A CloudEvents batch receiver on loopback that can refuse on demand."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, object]]] = []
        self.content_types: list[str] = []
        self.answers: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        status = self.answers.pop(0) if self.answers else 202
        self.content_types.append(request.content_type)
        if status < 300:
            self.batches.append(await request.json())
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/events", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield rec, f"http://127.0.0.1:{port}/events"
    finally:
        await runner.cleanup()


async def test_http_sink_posts_batches_and_retries_a_503(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.answers = [503]
    sink = HttpSink(url, batch_size=2)
    events = [
        patient_event("acme", "OD", Patient(str(i), "A", "B", "t"), photos=False) for i in range(3)
    ]
    try:
        await sink.publish(events)
    finally:
        await sink.close()
    assert [len(b) for b in rec.batches] == [2, 1]
    assert [e["id"] for b in rec.batches for e in b] == [e["id"] for e in events]
    assert set(rec.content_types) == {BATCH_CONTENT_TYPE}


async def test_http_sink_raises_when_the_receiver_rejects(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.answers = [400]
    sink = HttpSink(url)
    try:
        with pytest.raises(SinkError, match=r"did not accept 1 event\(s\): HTTP 400"):
            await sink.publish([patient_event("acme", "OD", PATIENT, photos=False)])
    finally:
        await sink.close()
    assert rec.batches == []


async def test_http_sink_gives_up_after_its_attempts_naming_the_last_answer(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    rec.answers = [503, 429, 502, 202]
    sink = HttpSink(url, attempts=3)
    try:
        with pytest.raises(SinkError, match=r"did not accept 1 event\(s\): HTTP 502"):
            await sink.publish([patient_event("acme", "OD", PATIENT, photos=False)])
    finally:
        await sink.close()
    assert rec.batches == [] and rec.answers == [202]  # three posts, none accepted


async def test_http_sink_raises_when_nobody_listens() -> None:
    sink = HttpSink("http://127.0.0.1:9/events", attempts=2)
    try:
        with pytest.raises(SinkError, match="ConnectError"):
            await sink.publish([patient_event("acme", "OD", PATIENT, photos=False)])
    finally:
        await sink.close()


def test_cursors_survive_reopening_the_store(tmp_path: Path) -> None:
    db = tmp_path / "state" / "cursors.db"
    store = SqliteCursorStore(db)
    assert store.get("ns/a", "patients") is None
    store.put("ns/a", "patients", "c1")
    store.put("ns/a", "patients", "c2")
    store.put("ns/a", "appointments", "x")
    store.put("ns/b", "patients", "y")
    store.close()
    store = SqliteCursorStore(db)
    assert store.get("ns/a", "patients") == "c2"
    store.forget("ns/a")
    assert store.all() == {("ns/b", "patients"): "y"}
    store.close()


def test_the_store_answers_from_memory_but_saves_every_cursor_at_once(tmp_path: Path) -> None:
    db = tmp_path / "cursors.db"
    writer = SqliteCursorStore(db)
    reader = SqliteCursorStore(db)  # another connection sees only what reached SQLite
    try:
        assert writer.get("ns/a", "patients") is None
        writer.put("ns/a", "patients", "c1")
        assert reader.get("ns/a", "patients") == "c1"
        writer.put("ns/a", "patients", "c2")
        assert writer.get("ns/a", "patients") == "c2"
        assert reader.all()[("ns/a", "patients")] == "c2"
        writer.put("ns/b", "patients", "y")
        writer.forget("ns/a")
        assert writer.get("ns/a", "patients") is None  # forgotten in memory too
        assert writer.get("ns/b", "patients") == "y"
        assert reader.all() == {("ns/b", "patients"): "y"}
    finally:
        writer.close()
        reader.close()


async def test_cursor_saves_made_meanwhile_share_one_transaction_and_are_stored_on_return(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cursors.db"
    writer = SqliteCursorStore(db)
    reader = SqliteCursorStore(db)  # another connection sees only what reached SQLite
    commits = CursorCommits(writer)
    try:

        async def save(i: int) -> None:
            await commits.save(f"ns/p{i}", "patients", f"c{i}")
            assert reader.all()[(f"ns/p{i}", "patients")] == f"c{i}"  # stored before return

        await asyncio.gather(*(save(i) for i in range(50)))
        assert 1 <= commits.commits <= 2  # the first alone, maybe; the other 49 together
        assert len(reader.all()) == 50
        assert writer.get("ns/p7", "patients") == "c7"
    finally:
        writer.close()
        reader.close()


async def test_a_failed_cursor_write_fails_every_save_of_its_group_and_moves_no_cursor(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cursors.db"
    store = SqliteCursorStore(db)
    commits = CursorCommits(store)
    await commits.save("ns/a", "patients", "c1")
    # A read-only database: the real failure a full or unwritable volume gives.
    store._db.execute("PRAGMA query_only = ON")
    try:
        results = await asyncio.gather(
            commits.save("ns/a", "patients", "c2"),
            commits.save("ns/b", "patients", "y"),
            return_exceptions=True,
        )
        assert all(isinstance(r, sqlite3.Error) for r in results), results
        assert store.get("ns/a", "patients") == "c1"  # the cache kept the stored cursor
        assert store.get("ns/b", "patients") is None
        store._db.execute("PRAGMA query_only = OFF")
        await commits.save("ns/b", "patients", "y")  # the next group writes again
        assert store.all() == {("ns/a", "patients"): "c1", ("ns/b", "patients"): "y"}
    finally:
        store.close()


class DictCursorStore:
    """A complete `CursorStore` without `put_many` (a backend that saves one cursor at a time)."""

    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], str] = {}
        self.threads: set[str] = set()

    def get(self, key: str, kind: str) -> str | None:
        return self.saved.get((key, kind))

    def put(self, key: str, kind: str, cursor: str) -> None:
        self.threads.add(threading.current_thread().name)
        self.saved[(key, kind)] = cursor

    def forget(self, key: str) -> None:
        self.saved = {k: v for k, v in self.saved.items() if k[0] != key}

    def close(self) -> None:
        return None


async def test_a_store_without_put_many_gets_its_cursors_one_by_one_off_the_event_loop() -> None:
    store = DictCursorStore()
    commits = CursorCommits(store)
    await asyncio.gather(*(commits.save(f"ns/p{i}", "patients", f"c{i}") for i in range(5)))
    assert store.saved == {(f"ns/p{i}", "patients"): f"c{i}" for i in range(5)}
    assert threading.main_thread().name not in store.threads


def test_a_cursor_read_does_not_wait_for_a_group_commit_in_progress(tmp_path: Path) -> None:
    """`get()` runs on the event loop; a group commit holds the store's write lock on a worker
    thread for as long as the disk takes. A cursor not in memory is read meanwhile."""
    db = tmp_path / "cursors.db"
    other = SqliteCursorStore(db)
    other.put("ns/a", "patients", "c1")  # in the file, not in `store`'s memory
    other.close()
    store = SqliteCursorStore(db)
    answer: list[str | None] = []
    try:
        with store._lock:  # a commit in progress on another thread
            reader = threading.Thread(target=lambda: answer.append(store.get("ns/a", "patients")))
            reader.start()
            reader.join(timeout=5)
            assert not reader.is_alive(), "get() waited for the writer's lock"
        assert answer == ["c1"]
    finally:
        store.close()
