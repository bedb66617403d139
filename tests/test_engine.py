"""The engine against the real PMS simulator on a loopback port, with real SQLite and a JSONL sink.

Real: the simulator's HTTP server and data (Open Dental and Dentrix flavours), the drivers and their
rate-limited httpx clients, the scheduler, the SQLite cursor store, the JSONL event file.
The secret source is a dict (`DictSecrets`), a complete implementation of the `SecretSource`
protocol, not a fake of Kubernetes (the operator tests use real Secrets).

Faked: time. The tests run on the `looptime` plugin's event loop (`pytestmark` below): whenever
nothing can run, the loop jumps to its next timer, so a 30 s drift period or a 6 s status budget
takes no real time and timing assertions are exact (`elapse` lets loop time pass). I/O with the
simulator takes no loop time. One test runs on real time: the drivers' token bucket honours the
PMS's Retry-After on the real monotonic clock, which looptime does not move. Intervals are 1 s
(below the schema's 5 s minimum, which applies to resources, not to the engine). The simulator
stamps requests with the wall clock, so request timing is read on the loop's clock (`arrivals`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from timing import elapse, eventually

from pms_drivers.base import Credentials
from pms_simulator import Simulator
from reconciler.api.spec import PracticeSpec, WritebackType
from reconciler.engine.clock import FakeClock
from reconciler.engine.core import ConditionType, PracticeStatus, Reason, Transition, events_for
from reconciler.engine.cursors import SqliteCursorStore
from reconciler.engine.engine import Engine, EngineSettings, SecretNotFoundError
from reconciler.engine.gc import GcPolicy
from reconciler.engine.sink import JsonlSink

pytestmark = pytest.mark.looptime(end=3600)

FAST = EngineSettings(
    first_poll_jitter=0.0,
    jitter=0.0,
    drift_interval=60.0,
    status_interval=0.5,
    # The drivers' token bucket refills on the real clock; on looptime's loop a drained bucket
    # would fast-forward loop time while it waits, so these tests never drain it.
    rate_per_second=1000.0,
    burst=1000,
    max_backoff=2.0,
)


class DictSecrets:
    """SecretSource over a dict of secret name -> values."""

    def __init__(self, secrets: dict[str, dict[str, str]] | None = None) -> None:
        self.secrets = secrets or {}

    async def get(self, key: str, secret_name: str) -> Credentials:
        ns = key.split("/", 1)[0]
        if secret_name not in self.secrets:
            raise SecretNotFoundError(f"Secret {ns}/{secret_name} not found")
        return Credentials(self.secrets[secret_name])


class Statuses:
    """A status listener that keeps every call, for assertions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, PracticeStatus, tuple[Transition, ...]]] = []

    async def __call__(
        self, key: str, status: PracticeStatus, transitions: Sequence[Transition]
    ) -> None:
        self.calls.append((key, status, tuple(transitions)))

    def transitions(self, ctype: str) -> list[Transition]:
        return [t for _, _, ts in self.calls for t in ts if t.type == ctype]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(rate_limit_per_second=1000, burst=1000)
    s.add_practice("acme", "OpenDental")
    s.add_practice("bright", "Dentrix")
    async with s.serve():
        yield s
    s.close()


def spec_for(sim: Simulator, pid: str = "acme", **over: Any) -> PracticeSpec:
    pms = "OpenDental" if pid == "acme" else "Dentrix"
    body: dict[str, Any] = {
        "practiceId": pid,
        "pms": {
            "type": pms,
            "url": sim.base_url(pms),
            "credentialsSecretRef": {"name": f"{pid}-pms"},
        },
        "providerId": "1" if pms == "OpenDental" else "DDS1",
        "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
        "documents": {"accountStatement": {"writeTo": "Statements"}},
        "sync": {
            "appointmentStatus": {"enabled": True, "interval": "1s"},
            "appointments": {"enabled": True, "interval": "1s"},
            "patients": {"enabled": True, "interval": "1s"},
        },
    }
    body.update(over)
    return PracticeSpec.from_spec(body)


def make_engine(
    sim: Simulator,
    tmp_path: Path,
    listener: Statuses | None = None,
    settings: EngineSettings = FAST,
    **kw: Any,
) -> Engine:
    secrets = DictSecrets({f"{pid}-pms": sim.credentials(pid) for pid, _ in sim.practices()})
    return Engine(
        sink=JsonlSink(tmp_path / "events.jsonl", fsync=False),
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=kw.pop("secrets", secrets),
        settings=settings,
        on_status=listener,
        **kw,
    )


def events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def missing(sim: Simulator, tmp_path: Path, pid: str = "acme") -> dict[str, set[str]]:
    """Record ids the simulator changed that no event carries yet, per kind (appointments, patients)."""
    seen: dict[str, set[str]] = {"appointments": set(), "patients": set()}
    for e in events(tmp_path):
        if e["practiceid"] != pid:
            continue
        kind = {
            "dev.dental.pmsctl.appointment.changed": "appointments",
            "dev.dental.pmsctl.patient.changed": "patients",
        }.get(e["type"])
        if kind:
            seen[kind].add(f"{e['subject']}@{e['data']['changedAt']}")
    out: dict[str, set[str]] = {}
    for kind in seen:
        latest: dict[str, str] = {}
        for c in sim.changes(pid, kind):
            latest[str(c["id"])] = str(c["changed_at"])
        out[kind] = {f"{i}@{t}" for i, t in latest.items()} - seen[kind]
    return out


def cond(engine: Engine, key: str, ctype: str) -> tuple[str, str, str]:
    status = engine.status(key)
    assert status is not None
    c = status.condition(ctype)
    assert c is not None
    return c.status, c.reason, c.message


async def test_practices_become_ready_and_pollers_emit_every_change(
    sim: Simulator, tmp_path: Path
) -> None:
    listener = Statuses()
    engine = make_engine(sim, tmp_path, listener)
    await engine.start()
    try:
        od = await engine.apply("clinics/acme", spec_for(sim), generation=3)
        dx = await engine.apply("clinics/bright", spec_for(sim, "bright"))
        assert od.ready and dx.ready, (od.to_dict(), dx.to_dict())
        s = od.to_dict()
        assert s["observedGeneration"] == 3
        assert s["provider"]["id"] == "1" and s["provider"]["active"] is True
        assert (
            s["noteTypes"]["outgoingSms"]["name"] == "Text Message"
            and s["noteTypes"]["outgoingSms"]["id"]
        )
        assert s["documentTypes"]["accountStatement"]["writeTo"]["name"] == "Statements"
        target = engine.target("acme")
        assert target is not None and target.key == "clinics/acme" and target.provider_id == "1"
        assert (
            target.note_type_ids[WritebackType.OUTGOING_SMS] == s["noteTypes"]["outgoingSms"]["id"]
        )
        assert target.driver is not None
        assert engine.target("nobody") is None
        assert listener.calls and listener.calls[0][0] == "clinics/acme"
        sim.advance(90)
        await eventually(
            lambda: not any(missing(sim, tmp_path).values()), what="every acme change emitted"
        )
        await eventually(
            lambda: not any(missing(sim, tmp_path, "bright").values()),
            what="every bright change emitted",
        )
        await eventually(
            lambda: (
                engine.status("clinics/acme").to_dict()["pollers"]["patients"]["eventsEmitted"]
                >= 300
            )
        )  # type: ignore[union-attr]
    finally:
        await engine.stop()
    ids = [e["id"] for e in events(tmp_path)]
    assert len(ids) == len(set(ids)), "a page was emitted twice"


@pytest.mark.looptime(False)  # the drivers pause for the PMS's Retry-After on the real clock
async def test_outage_flips_pms_reachable_and_every_change_made_during_it_is_emitted(
    sim: Simulator, tmp_path: Path
) -> None:
    listener = Statuses()
    engine = make_engine(sim, tmp_path, listener)
    await engine.start()
    try:
        assert (await engine.apply("clinics/acme", spec_for(sim))).ready
        await eventually(lambda: not any(missing(sim, tmp_path).values()), what="initial catch-up")
        sim.set_faults("acme", outage=True)
        await eventually(
            lambda: cond(engine, "clinics/acme", ConditionType.PMS_REACHABLE)[0] == "False",
            what="PMSReachable False",
        )
        _status, reason, message = cond(engine, "clinics/acme", ConditionType.PMS_REACHABLE)
        assert reason == Reason.UNREACHABLE and "503" in message
        assert not engine.status("clinics/acme").ready  # type: ignore[union-attr]
        sim.advance(120)  # the office keeps working during the outage
        assert any(missing(sim, tmp_path).values())
        failed = engine.scheduler.stats.failures
        await eventually(
            lambda: engine.scheduler.stats.failures >= failed + 2, what="polls failing meanwhile"
        )
        sim.set_faults("acme")
        await eventually(
            lambda: engine.status("clinics/acme").ready, timeout=12, what="Ready again"
        )  # type: ignore[union-attr]
        await eventually(
            lambda: not any(missing(sim, tmp_path).values()),
            timeout=12,
            what="outage changes emitted",
        )
    finally:
        await engine.stop()
    flips = [
        (t.old_status, t.new_status) for t in listener.transitions(ConditionType.PMS_REACHABLE)
    ]
    assert ("True", "False") in flips and ("False", "True") in flips


async def test_restart_resumes_from_saved_cursors_without_losing_or_replaying(
    sim: Simulator, tmp_path: Path
) -> None:
    engine = make_engine(sim, tmp_path)
    await engine.start()
    assert (await engine.apply("clinics/acme", spec_for(sim))).ready
    await eventually(lambda: not any(missing(sim, tmp_path).values()), what="first run catch-up")
    await engine.stop()
    saved = SqliteCursorStore(tmp_path / "state.db")
    cursors = saved.all()
    saved.close()
    before = len(events(tmp_path))
    sim.advance(60)  # changes while no engine runs
    engine = make_engine(sim, tmp_path)
    await engine.start()
    try:
        await engine.apply("clinics/acme", spec_for(sim))
        await eventually(
            lambda: not any(missing(sim, tmp_path).values()), what="catch-up after restart"
        )
    finally:
        await engine.stop()
    after = events(tmp_path)[before:]
    assert set(cursors) == {
        ("clinics/acme", k) for k in ("appointmentStatus", "appointments", "patients")
    }
    assert 0 < len(after) < 200, (
        f"the restarted engine re-read from the beginning: {before} events before the restart, "
        f"{len(after)} after; cursors saved: {sorted(cursors)}"
    )
    patients_again = [e for e in after if e["type"].endswith("patient.changed")]
    assert len(patients_again) < 100


DRIFT_30 = EngineSettings(**{**FAST.__dict__, "drift_interval": 30.0, "first_poll_jitter": 1.0})


async def test_renamed_note_type_flips_the_condition_one_drift_interval_after_the_reconcile(
    sim: Simulator, tmp_path: Path
) -> None:
    """The first drift check is one whole period after the reconcile (not jittered like a new
    poller's first poll, which could come at once), and every period after that."""
    listener = Statuses()
    engine = make_engine(sim, tmp_path, listener, settings=DRIFT_30)
    await engine.start()
    try:
        assert (await engine.apply("clinics/acme", spec_for(sim))).ready
        sim.rename_note_type("acme", "Text Message", "Texting")
        await elapse(29.9)
        assert cond(engine, "clinics/acme", ConditionType.NOTE_TYPES_RESOLVED)[0] == "True"
        await elapse(0.2)
        assert cond(engine, "clinics/acme", ConditionType.NOTE_TYPES_RESOLVED)[0] == "False"
        _, reason, message = cond(engine, "clinics/acme", ConditionType.NOTE_TYPES_RESOLVED)
        assert reason == Reason.NOTE_TYPE_NOT_FOUND
        assert (
            "outgoingSms: commlog type 'Text Message' not found in Open Dental; available:"
            in message
        )
        assert "Texting" in message
        assert any(
            t.new_status == "False" for t in listener.transitions(ConditionType.NOTE_TYPES_RESOLVED)
        )
        # Both flips become Warning Events.
        _, _, transitions = next(c for c in listener.calls if c[2] and not c[1].ready)
        warned = {t.type for t in events_for(transitions) if t.warning}
        assert {ConditionType.NOTE_TYPES_RESOLVED, ConditionType.READY} <= warned
        assert engine.target("acme").note_type_ids == {}  # type: ignore[union-attr]
        sim.inactivate_provider("acme", "1")
        await elapse(29.7)  # the next check is at 60 s
        assert cond(engine, "clinics/acme", ConditionType.PROVIDER_VERIFIED)[0] == "True"
        await elapse(0.4)
        assert (
            cond(engine, "clinics/acme", ConditionType.PROVIDER_VERIFIED)[1]
            == Reason.PROVIDER_INACTIVE
        )
    finally:
        await engine.stop()


def definitions_read(sim: Simulator) -> int:
    """Open Dental definition reads (note types and document categories: a few per PMS check)."""
    return sum(1 for r in sim.requests("acme") if "/definitions" in r.path)


async def test_every_apply_re_resolves_the_pms_names_and_restarts_the_drift_period(
    sim: Simulator, tmp_path: Path
) -> None:
    """A change the PMS does not see (a label: a new generation with the same spec; the
    reconcile-requested-at annotation: a token) still re-reads the PMS at once, and the next
    drift check is one period after that reconcile, not after the first."""
    engine = make_engine(sim, tmp_path, settings=DRIFT_30)
    await engine.start()
    key, spec = "clinics/acme", spec_for(sim)
    try:
        assert (await engine.apply(key, spec, generation=1)).ready
        check = definitions_read(sim)  # what one PMS check reads
        assert check > 0
        await elapse(20.0)
        assert definitions_read(sim) == check  # no drift check yet
        sim.rename_note_type("acme", "Text Message", "Texting")
        status = await engine.apply(key, spec, generation=2)
        assert definitions_read(sim) == 2 * check
        assert status.condition(ConditionType.NOTE_TYPES_RESOLVED).status == "False"  # type: ignore[union-attr]
        assert status.observed_generation == 2
        sim.rename_note_type("acme", "Texting", "Text Message")
        status = await engine.apply(key, spec, generation=2, reconcile_token="2026-12-02T14:00:00Z")
        assert definitions_read(sim) == 3 * check
        assert status.ready
        sim.rename_note_type("acme", "Text Message", "Texting")
        await elapse(29.8)  # 49.8 s: the check first due at 30 s moved to 50 s
        assert definitions_read(sim) == 3 * check
        assert cond(engine, key, ConditionType.NOTE_TYPES_RESOLVED)[0] == "True"
        await elapse(0.4)
        assert definitions_read(sim) == 4 * check
        assert cond(engine, key, ConditionType.NOTE_TYPES_RESOLVED)[0] == "False"
    finally:
        await engine.stop()


async def arrivals(
    sim: Simulator, pid: str, seconds: float, step: float = 0.1
) -> list[tuple[float, str]]:
    """(loop time, path) of each request `pid` sends in the next `seconds`, to `step` seconds.

    Read between half-steps, so a poll due on a whole second is never read at the same instant.
    """
    loop = asyncio.get_running_loop()
    out: list[tuple[float, str]] = []
    seen = len(sim.requests(pid))
    end = loop.time() + seconds
    await elapse(step / 2)
    while loop.time() < end:
        await elapse(step)
        reqs = sim.requests(pid)
        out += [(loop.time(), r.path) for r in reqs[seen:]]
        seen = len(reqs)
    return out


async def test_interval_change_disable_and_suspend_change_what_the_pms_sees(
    sim: Simulator, tmp_path: Path
) -> None:
    engine = make_engine(sim, tmp_path)
    await engine.start()
    try:
        await engine.apply("clinics/acme", spec_for(sim))
        await elapse(2.5)
        sync_fast = {
            "patients": {"enabled": True, "interval": "1s"},
            "appointments": {"enabled": True, "interval": "3s"},
        }
        await engine.apply("clinics/acme", spec_for(sim, sync=sync_fast))
        sim.clear_requests("acme")
        seen = await arrivals(sim, "acme", 3.2)
        patients = [t for t, path in seen if "/patients" in path]
        appointments = [t for t, path in seen if "/appointments" in path]
        assert 3 <= len(patients) <= 4, patients  # every 1 s
        assert 1 <= len(appointments) <= 3, (
            appointments
        )  # every 3 s now; appointmentStatus disabled too
        gaps = [b - a for a, b in itertools.pairwise(patients)]
        assert min(gaps) >= 0.95  # one poller, not two
        assert set(engine.scheduler.kinds("clinics/acme")) == {"patients", "appointments", "drift"}
        await engine.apply("clinics/acme", spec_for(sim, sync=sync_fast, suspend=True))
        sim.clear_requests("acme")
        await elapse(2.0)
        assert sim.requests("acme") == []
        assert engine.scheduler.kinds("clinics/acme") == {}
        assert cond(engine, "clinics/acme", ConditionType.SUSPENDED)[0] == "True"
        await engine.apply("clinics/acme", spec_for(sim, sync=sync_fast))
        await eventually(
            lambda: any("/patients" in r.path for r in sim.requests("acme")),
            timeout=3,
            what="resumed polling",
        )
        await engine.remove("clinics/acme")
        sim.clear_requests("acme")
        await elapse(1.5)
        assert sim.requests("acme") == []
        assert engine.keys() == [] and len(engine.scheduler) == 0
    finally:
        await engine.stop()


async def test_missing_secret_and_wrong_provider_say_how_to_fix_and_fixing_makes_ready(
    sim: Simulator, tmp_path: Path
) -> None:
    secrets = DictSecrets()
    engine = make_engine(sim, tmp_path, secrets=secrets)
    await engine.start()
    try:
        st = await engine.apply("clinics/acme", spec_for(sim, providerId="4"))
        assert not st.ready
        assert cond(engine, "clinics/acme", ConditionType.PMS_REACHABLE)[:2] == (
            "False",
            Reason.SECRET_NOT_FOUND,
        )
        assert cond(engine, "clinics/acme", ConditionType.READY)[1] == Reason.SECRET_NOT_FOUND
        assert isinstance(engine.last_error("clinics/acme"), SecretNotFoundError)
        assert engine.scheduler.kinds("clinics/acme") == {"drift": FAST.drift_interval}
        secrets.secrets["acme-pms"] = {"developerKey": "x", "customerKey": "wrong"}
        await engine.refresh("clinics/acme")
        status, reason, message = cond(engine, "clinics/acme", ConditionType.PMS_REACHABLE)
        assert (status, reason) == ("False", Reason.CREDENTIALS_REJECTED)
        assert "wrong" not in message and "fix the credentials" in message
        secrets.secrets["acme-pms"] = sim.credentials("acme")
        await engine.refresh("clinics/acme")
        status, reason, message = cond(engine, "clinics/acme", ConditionType.PROVIDER_VERIFIED)
        assert (status, reason) == ("False", Reason.PROVIDER_INACTIVE)
        assert "active provider: 1 (" in message
        st = await engine.apply("clinics/acme", spec_for(sim), generation=2)
        assert st.ready and st.observed_generation == 2
        assert engine.last_error("clinics/acme") is None
    finally:
        await engine.stop()


async def test_connection_override_points_a_practice_at_the_simulator(
    sim: Simulator, tmp_path: Path
) -> None:
    def override(spec: PracticeSpec) -> tuple[str, Credentials] | None:
        return sim.base_url(spec.pms.type), Credentials(sim.credentials(spec.practice_id))

    engine = make_engine(sim, tmp_path, secrets=DictSecrets(), connection_override=override)
    await engine.start()
    try:
        spec = spec_for(
            sim,
            pms={
                "type": "OpenDental",
                "url": "https://api.opendental.com/api/v1",
                "credentialsSecretRef": {"name": "nope"},
            },
        )
        assert (await engine.apply("local/acme", spec)).ready
    finally:
        await engine.stop()


async def test_patient_profile_photos_add_the_photo_reference_to_patient_events(
    sim: Simulator, tmp_path: Path
) -> None:
    engine = make_engine(sim, tmp_path)
    await engine.start()
    only_patients = {"patients": {"enabled": True, "interval": "1s"}}
    try:
        await engine.apply(
            "c/bright", spec_for(sim, "bright", sync=only_patients, patientProfilePhotos=True)
        )
        await engine.apply("c/acme", spec_for(sim, sync=only_patients))
        await eventually(
            lambda: {e["practiceid"] for e in events(tmp_path)} == {"bright", "acme"},
            what="patient events",
        )
    finally:
        await engine.stop()
    by_practice: dict[str, list[dict[str, Any]]] = {"bright": [], "acme": []}
    for e in events(tmp_path):
        by_practice[e["practiceid"]].append(e["data"])
    assert all("photoRef" in d for d in by_practice["bright"])
    assert any(d["photoRef"] for d in by_practice["bright"])
    assert not any("photoRef" in d for d in by_practice["acme"])


async def test_pointing_a_practice_at_another_pms_starts_its_cursors_over(
    sim: Simulator, tmp_path: Path
) -> None:
    engine = make_engine(sim, tmp_path)
    await engine.start()
    only_patients = {"patients": {"enabled": True, "interval": "1s"}}
    try:
        await engine.apply("c/x", spec_for(sim, sync=only_patients))
        await eventually(
            lambda: SqliteCursorStore(tmp_path / "state.db").get("c/x", "patients"), what="a cursor"
        )
        od_cursor = SqliteCursorStore(tmp_path / "state.db").get("c/x", "patients")
        moved = spec_for(sim, "bright", sync=only_patients)
        st = await engine.apply("c/x", moved)
        assert st.ready, st.to_dict()
        await eventually(
            lambda: (
                SqliteCursorStore(tmp_path / "state.db").get("c/x", "patients")
                not in (None, od_cursor)
            ),
            what="a Dentrix cursor",
        )
        assert engine.target("bright") is not None and engine.target("acme") is None
    finally:
        await engine.stop()
    assert (
        sum(1 for e in events(tmp_path) if e["practiceid"] == "bright") >= 300
    )  # read from the start


async def test_counter_updates_are_throttled_and_transitions_are_not(
    sim: Simulator, tmp_path: Path
) -> None:
    listener = Statuses()
    settings = EngineSettings(**{**FAST.__dict__, "status_interval": 3.0})
    engine = make_engine(sim, tmp_path, listener, settings=settings)
    await engine.start()
    try:
        await engine.apply("c/acme", spec_for(sim))  # three pollers, each every 1 s
        start = len(listener.calls)
        await elapse(4.5)
        quiet = [c for c in listener.calls[start:] if not c[2]]
        assert 1 <= len(quiet) <= 2, len(quiet)  # ~13 polls, at most one write per 3 s
        assert quiet[-1][1].to_dict()["pollers"]["patients"]["eventsEmitted"] >= 300
        loop = asyncio.get_running_loop()
        sim.set_faults("acme", outage=True)
        t0 = loop.time()
        await eventually(
            lambda: listener.transitions(ConditionType.PMS_REACHABLE)[-1].new_status == "False",
            timeout=5,
        )
        assert (
            loop.time() - t0 < 1.9
        )  # written at the next failed poll, not at the next counter flush
    finally:
        await engine.stop()


async def test_counter_updates_share_one_process_wide_budget_oldest_first(
    sim: Simulator, tmp_path: Path
) -> None:
    """12 practices whose counters change every second, a 0.5 s status interval and a cap of
    4 counter-only writes a second: uncapped that is ~24 writes a second; capped it stays near
    4 a second, and oldest-first still reaches every practice."""
    keys = [f"c/d{n}" for n in range(12)]
    for key in keys:
        sim.add_practice(key.split("/")[1], "Dentrix")
    listener = Statuses()
    settings = EngineSettings(**{**FAST.__dict__, "status_interval": 0.5, "status_qps": 4.0})
    engine = make_engine(sim, tmp_path, listener, settings=settings)
    await engine.start()
    try:
        for key in keys:
            await engine.apply(key, spec_for(sim, key.split("/")[1]))
        start = len(listener.calls)
        await elapse(6)
        quiet = [c for c in listener.calls[start:] if not c[2]]
        assert len(quiet) <= 4 * 6 + 4, len(quiet)
        assert {key for key, _, _ in quiet} == set(keys)
    finally:
        await engine.stop()


class SlowFsyncSink(JsonlSink):
    """A real JsonlSink whose publish, after writing and flushing the lines, awaits `delay`
    seconds before returning: the injected part, standing in for a slow fsync (or a slow HTTP
    sink's answer). `writing` is set when the first publish has written its lines."""

    def __init__(self, path: Path, delay: float) -> None:
        super().__init__(path, fsync=False)
        self.delay = delay
        self.writing = asyncio.Event()

    async def publish(self, events: Sequence[dict[str, Any]]) -> None:  # type: ignore[override]
        await super().publish(events)  # type: ignore[arg-type]
        if events:
            self.writing.set()
            await elapse(self.delay)


async def test_a_stop_during_publish_saves_the_cursor_so_no_event_is_emitted_twice(
    sim: Simulator, tmp_path: Path
) -> None:
    """The sink's slow return after writing is injected (SlowFsyncSink); the engine, simulator,
    file and SQLite store are real. The stop lands while the first page is being published."""
    sink = SlowFsyncSink(tmp_path / "events.jsonl", delay=1.0)
    engine = Engine(
        sink=sink,
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=DictSecrets({"acme-pms": sim.credentials("acme")}),
        settings=FAST,
    )
    await engine.start()
    await engine.apply("clinics/acme", spec_for(sim))
    await asyncio.wait_for(sink.writing.wait(), 10)
    await engine.stop()  # cancels the polls in flight, one of them inside publish
    first = [e["id"] for e in events(tmp_path)]
    assert first, "the first run published nothing"

    engine = make_engine(sim, tmp_path)
    await engine.start()
    try:
        await engine.apply("clinics/acme", spec_for(sim))
        key = "clinics/acme"
        await eventually(
            lambda: all(
                (s := engine.scheduler.state(key, k)) is not None and s.last_success
                for k in ("appointmentStatus", "appointments", "patients")
            ),
            what="every poller's first poll after the restart",
        )
    finally:
        await engine.stop()
    ids = [e["id"] for e in events(tmp_path)]
    twice = {i for i in ids if ids.count(i) > 1}
    assert not twice, f"{len(twice)} event ids emitted twice (first run: {len(first)} events)"


def test_the_gc_policy_freezes_on_growth_refreshes_hourly_and_lets_go_when_small() -> None:
    """The real collector: `gc.get_freeze_count()` shows what the policy froze."""
    import gc

    thresholds = gc.get_threshold()
    policy = GcPolicy(min_practices=10, growth=2.0, refresh=100.0, young=thresholds[0] + 1000)
    try:
        policy.check(5, now=0.0)
        assert gc.get_freeze_count() == 0  # too few practices to bother
        assert gc.get_threshold() == thresholds
        policy.check(10, now=1.0)
        assert policy.frozen_practices == 10 and gc.get_freeze_count() > 0
        assert gc.get_threshold() == (thresholds[0] + 1000, *thresholds[1:])
        tracked = [[i] for i in range(1000)]  # created after the first freeze
        policy.check(15, now=2.0)  # grew, but not twofold: nothing new frozen
        assert policy.frozen_practices == 10
        policy.check(20, now=3.0)
        assert policy.frozen_practices == 20
        frozen = gc.get_freeze_count()
        assert frozen >= len(tracked)
        policy.check(20, now=200.0)  # the refresh: unfreeze, collect, freeze again
        assert policy.frozen_practices == 20 and gc.get_freeze_count() > 0
        policy.check(3, now=201.0)
        assert policy.frozen_practices == 0 and gc.get_freeze_count() == 0
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class SlowDiskSink:
    """A JSONL sink whose disk takes its time for one practice's events: their publishes wait
    until `release` is set (an fsync that takes seconds during an initial sync)."""

    def __init__(self, path: Path, slow_practice: str) -> None:
        self.inner = JsonlSink(path, fsync=False)
        self.slow_practice = slow_practice
        self.release = asyncio.Event()
        self.waiting = 0

    async def publish(self, events: Sequence[Any]) -> None:
        if any(e["practiceid"] == self.slow_practice for e in events):
            self.waiting += 1
            await self.release.wait()
        await self.inner.publish(events)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_drift_check_keeps_the_practice_client_while_the_secret_is_the_same(
    sim: Simulator, tmp_path: Path
) -> None:
    """Every drift check reads the Secret again (a new `Credentials` with the same values): the
    practice keeps its client, its connection pool and its open connections. A changed Secret
    still gets a new client."""
    secrets = DictSecrets({"acme-pms": sim.credentials("acme")})
    engine = make_engine(sim, tmp_path, settings=DRIFT_30, secrets=secrets)
    await engine.start()
    key = "clinics/acme"
    only_patients = {"patients": {"enabled": True, "interval": "3600s"}}
    try:
        assert (await engine.apply(key, spec_for(sim, sync=only_patients))).ready
        client = engine._practices[key].client
        check = definitions_read(sim)
        await elapse(60.5)  # two drift checks
        assert definitions_read(sim) == 3 * check
        assert engine._practices[key].client is client
        secrets.secrets["acme-pms"] = {**sim.credentials("acme"), "note": "rotated"}
        await engine.refresh(key)
        assert engine._practices[key].client is not client
    finally:
        await engine.stop()


async def test_polls_waiting_on_a_slow_sink_do_not_hold_the_poll_workers(
    sim: Simulator, tmp_path: Path
) -> None:
    """Two workers; acme's two pollers both wait on the sink with their first page. bright's
    poller still runs every second: the workers went back once acme's polls had read."""
    secrets = DictSecrets({f"{pid}-pms": sim.credentials(pid) for pid, _ in sim.practices()})
    sink = SlowDiskSink(tmp_path / "events.jsonl", "acme")
    settings = EngineSettings(**{**FAST.__dict__, "poll_workers": 2})
    engine = Engine(
        sink=sink,
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=secrets,
        settings=settings,
    )
    await engine.start()
    one = {"appointmentStatus": {"enabled": True, "interval": "1s"}}
    two = {k: {"enabled": True, "interval": "1s"} for k in ("patients", "appointments")}
    try:
        assert (await engine.apply("clinics/bright", spec_for(sim, "bright", sync=one))).ready
        await elapse(2.5)  # bright's first page is in; its later polls find nothing new
        assert (await engine.apply("clinics/acme", spec_for(sim, sync=two))).ready
        await eventually(lambda: sink.waiting == 2, what="acme's two polls waiting on the sink")
        before = engine.scheduler.stats.runs_by_kind["appointmentStatus"]
        await elapse(5.0)
        assert engine.scheduler.stats.runs_by_kind["appointmentStatus"] - before >= 4
        assert sink.waiting == 2  # acme's pollers did not run again meanwhile
        sink.release.set()
        await elapse(1.5)
        assert "acme" in {e["practiceid"] for e in events(tmp_path)}  # the held pages landed
    finally:
        sink.release.set()
        await engine.stop()


async def test_initial_syncs_take_turns_without_holding_a_poll_worker(
    sim: Simulator, tmp_path: Path
) -> None:
    """`initial_syncs=1`: of acme's two first reads (whole histories) one runs at a time, the
    other waits its turn; meanwhile bright's polls (one worker) go on."""
    secrets = DictSecrets({f"{pid}-pms": sim.credentials(pid) for pid, _ in sim.practices()})
    sink = SlowDiskSink(tmp_path / "events.jsonl", "acme")
    settings = EngineSettings(**{**FAST.__dict__, "poll_workers": 1, "initial_syncs": 1})
    engine = Engine(
        sink=sink,
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=secrets,
        settings=settings,
    )
    await engine.start()
    one = {"appointmentStatus": {"enabled": True, "interval": "1s"}}
    two = {k: {"enabled": True, "interval": "1s"} for k in ("patients", "appointments")}
    try:
        assert (await engine.apply("clinics/bright", spec_for(sim, "bright", sync=one))).ready
        await elapse(2.5)
        assert (await engine.apply("clinics/acme", spec_for(sim, sync=two))).ready
        await eventually(lambda: sink.waiting == 1, what="acme's first history on the sink")
        before = engine.scheduler.stats.runs_by_kind["appointmentStatus"]
        await elapse(5.0)
        assert engine.scheduler.stats.runs_by_kind["appointmentStatus"] - before >= 4
        assert sink.waiting == 1  # the other history waited for its turn
        sink.release.set()
        await elapse(2.0)
        kinds = {e["type"] for e in events(tmp_path) if e["practiceid"] == "acme"}
        assert kinds == {
            "dev.dental.pmsctl.patient.changed",
            "dev.dental.pmsctl.appointment.changed",
        }
    finally:
        sink.release.set()
        await engine.stop()


async def test_a_drift_check_that_finds_the_pms_unchanged_writes_its_checked_at_with_the_counters(
    sim: Simulator, tmp_path: Path
) -> None:
    """An unchanged PMS re-read by the drift check is not a reconcile's status write at once
    (333 a second at 10,000 practices, past the status budget): the check's new checkedAt goes
    out with the next counter-only write. A change the check finds is still written at once (the
    renamed-note-type test above)."""
    listener = Statuses()
    clock = FakeClock(wall=datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC))
    settings = EngineSettings(**{**DRIFT_30.__dict__, "status_interval": 100.0})
    engine = make_engine(sim, tmp_path, listener, settings=settings, clock=clock)
    await engine.start()
    only_patients = {"patients": {"enabled": True, "interval": "3600s"}}
    key = "clinics/acme"
    try:
        assert (await engine.apply(key, spec_for(sim, sync=only_patients))).ready
        check = definitions_read(sim)
        written = len(listener.calls)
        assert listener.calls[-1][1].to_dict()["pms"]["checkedAt"] == "2031-05-06T07:08:09Z"
        await clock.advance(30.5)  # past the drift check: the PMS was read again...
        await eventually(lambda: definitions_read(sim) == 2 * check, what="the drift check")
        await elapse(1.0)
        assert len(listener.calls) == written  # ...and nothing was written for it
        await clock.advance(70.0)  # checks at 60 s and 90 s, then the counter flush at 100 s
        await eventually(lambda: len(listener.calls) > written, what="the counter write")
        assert definitions_read(sim) == 4 * check
        assert len(listener.calls) == written + 1
        key_, status, transitions = listener.calls[-1]
        assert (key_, transitions) == (key, ())
        assert status.ready
        assert status.to_dict()["pms"]["checkedAt"] == "2031-05-06T07:09:39Z"  # the 90 s check
    finally:
        await engine.stop()


async def test_an_injected_clock_dates_the_status_and_drives_the_drift_check(
    sim: Simulator, tmp_path: Path
) -> None:
    """`Engine(clock=FakeClock(...))`: the status carries the clock's wall time, and the drift
    check waits for the clock, not for the event loop."""
    clock = FakeClock(wall=datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC))
    engine = make_engine(sim, tmp_path, settings=DRIFT_30, clock=clock)
    await engine.start()
    only_patients = {"patients": {"enabled": True, "interval": "3600s"}}
    try:
        status = await engine.apply("clinics/acme", spec_for(sim, sync=only_patients))
        assert status.ready
        assert {c.last_transition_time for c in status.conditions} == {"2031-05-06T07:08:09Z"}
        assert status.to_dict()["pms"]["checkedAt"] == "2031-05-06T07:08:09Z"
        check = definitions_read(sim)
        await elapse(120.0)  # the loop's time moves, the engine's clock does not
        assert definitions_read(sim) == check
        await clock.advance(30.0)  # one drift period on the engine's clock
        await eventually(lambda: definitions_read(sim) == 2 * check, what="the drift check")
    finally:
        await engine.stop()
