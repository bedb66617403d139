"""The operator end to end: Kopf in-process against the real kube-apiserver, the PMS simulator in-process.

Real: the testenv's etcd + kube-apiserver with the generated CRD installed, Kopf's watches and
its Secrets index, status patches and Events through the real API; the simulator's HTTP server;
the drivers, the scheduler, a JSONL event file and the SQLite cursor store.
Nothing is faked. The examples in `practices/` are applied as they are, except that the namespace
is the test's own, `spec.pms.url` points at the simulator's port, and intervals are the schema's
minimum (5 s) so each test sees several polls in a few seconds. The engine runs with a 1 s status
interval and, where drift is tested, a 2 s drift interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest
import testenv
import timing
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pms_simulator import Simulator
from reconciler.engine.engine import EngineSettings
from reconciler.engine.sink import JsonlSink
from reconciler.kube.client import (
    GROUP,
    PLURAL,
    KubeSecrets,
    StatusWriter,
    connection_info,
)
from reconciler.kube.handlers import ANNOTATION_RECONCILE, FINALIZER, build_registry, make_memo
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.writeback.service import WritebackService

#: The practice bodies these tests create and patch are v1alpha1 (the API server converts them
#: for the operator, which reads v1).
VERSION = "v1alpha1"

pytestmark = pytest.mark.kube

TOKEN = "operator-test-token-0123456789"
EXAMPLES = sorted((testenv.REPO / "practices").glob("*.yaml"))
SETTINGS = EngineSettings(
    first_poll_jitter=0.0,
    jitter=0.0,
    status_interval=1.0,
    drift_interval=60.0,
    rate_per_second=50.0,
    burst=50,
    max_backoff=5.0,
)


def load_examples() -> list[dict[str, Any]]:
    docs = []
    for path in EXAMPLES:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


@dataclass
class Env:
    kube: testenv.Cluster
    ns: str
    sim: Simulator
    tmp: Path

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.kube.api_client)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.kube.api_client)

    async def get(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, name
        )  # type: ignore[no-any-return]

    async def create(self, body: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.create_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, body
        )

    async def patch(self, name: str, patch: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, name, patch
        )

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(
            self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL, name
        )

    async def secret(self, name: str, data: dict[str, str]) -> None:
        body = {"metadata": {"name": name}, "stringData": data}
        await asyncio.to_thread(self.core.create_namespaced_secret, self.ns, body)

    def example(self, name: str, **spec_over: Any) -> dict[str, Any]:
        """An example from practices/, pointed at the simulator, 5 s intervals, in our namespace."""
        doc = copy.deepcopy(next(d for d in load_examples() if d["metadata"]["name"] == name))
        doc["metadata"]["namespace"] = self.ns
        spec = doc["spec"]
        spec["pms"]["url"] = self.sim.base_url(spec["pms"]["type"])
        for kind in spec.get("sync", {}).values():
            kind["interval"] = "5s"
        spec.update(spec_over)
        return doc

    async def secrets_for_examples(self) -> None:
        for d in load_examples():
            spec = d["spec"]
            await self.secret(
                spec["pms"]["credentialsSecretRef"]["name"],
                self.sim.credentials(spec["practiceId"]),
            )

    async def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        obj = await self.get(name)
        return next(
            (c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None
        )

    async def wait_condition(
        self, name: str, ctype: str, status: str, timeout: float = 15.0, reason: str | None = None
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            c = await self.condition(name, ctype)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None

        return await eventually(check, timeout, f"{name} {ctype}={status} {reason or ''}")  # type: ignore[no-any-return]

    async def events(self) -> list[Any]:
        result = await asyncio.to_thread(self.core.list_namespaced_event, self.ns)
        return list(result.items)

    async def wait_events(
        self, wanted: set[tuple[str, str]], name: str | None = None, timeout: float = 10
    ) -> set[tuple[str, str]]:
        """Wait until Events with each (reason, type) of `wanted` are listed (for the object
        `name`, when given): the engine posts an Event beside its status write, not before it,
        so a read right after a condition changed may not list it yet."""

        async def listed() -> set[tuple[str, str]] | None:
            seen = {
                (e.reason, e.type)
                for e in await self.events()
                if name is None or e.involved_object.name == name
            }
            return seen if wanted <= seen else None

        return await eventually(listed, timeout, f"Events {sorted(wanted)}")  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`timing.eventually`, asking at most every 0.25 s (most checks are API server reads)."""
    return await timing.eventually(check, timeout, what, step=0.25)


async def polls_again(op: Operator, key: str, kind: str, times: int = 2) -> None:
    """Wait until the scheduler has finished `times` more polls of `key`'s `kind` poller.

    Two successive starts of a poller are at least its interval apart, so two more polls of a
    5 s poller prove that a whole 5 s interval of the engine's own scheduling went by (less the
    run time of the first poll, which may have started just before): a poller that should have
    stopped, and had not, would have been due inside it.
    """
    scheduler = op.engine.scheduler
    first = scheduler.state(key, kind)
    assert first is not None, f"no {kind} poller for {key}"
    seen = [first.last_success]

    def advanced() -> bool:
        state = scheduler.state(key, kind)
        if state is not None and state.last_success != seen[-1]:
            seen.append(state.last_success)
        return len(seen) > times

    await eventually(advanced, 5.0 * times + 10, f"{times} more {kind} polls of {key}")


class Operator:
    """Kopf's `operator()` running in this event loop with a fresh engine; `stop()` ends it.

    The memo carries a `Runtime` as `pmsctl operator` builds it; with `writebacks`, its
    WritebackService is on a free loopback port, started by the startup handler;
    `self.service.url` is its URL.
    """

    def __init__(self, env: Env, settings: EngineSettings, writebacks: bool = False) -> None:
        api = env.kube.api_client
        self.writer = StatusWriter(api)
        self.secrets = KubeSecrets(api)  # served from Kopf's Secrets index, as in the operator
        self.runtime = Runtime(
            RuntimeOptions(
                state_db=env.tmp / "state.db",
                listen_host="127.0.0.1",
                writeback_port=0 if writebacks else None,
                writeback_token=TOKEN if writebacks else None,
                writeback_db=env.tmp / "writebacks.db",
            ),
            secrets=self.secrets,
            settings=settings,
            on_status=self.writer,
            sink=JsonlSink(env.tmp / "events.jsonl", fsync=False),
        )
        self.engine = self.runtime.engine
        self._stop = asyncio.Event()
        memo = make_memo(self.runtime, self.writer, connection_info(api), secrets=self.secrets)
        self.service: WritebackService | None = self.runtime.writebacks
        self.task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(),
                memo=memo,
                standalone=True,
                namespaces=[env.ns],
                stop_flag=self._stop,
            )
        )

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 20)


@pytest.fixture
async def env(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> AsyncIterator[Env]:
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    for d in load_examples():
        sim.add_practice(d["spec"]["practiceId"], d["spec"]["pms"]["type"])
    async with sim.serve():
        yield Env(kube, kube_namespace, sim, tmp_path)
    sim.close()


@contextlib.asynccontextmanager
async def operator(
    env: Env, settings: EngineSettings = SETTINGS, writebacks: bool = False
) -> AsyncIterator[Operator]:
    op = Operator(env, settings, writebacks)
    try:
        yield op
    finally:
        await op.stop()


def read_events(env: Env) -> list[dict[str, Any]]:
    path = env.tmp / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def missing(env: Env, pid: str) -> set[str]:
    """Appointment and patient changes the simulator made that no emitted event carries."""
    seen = {
        f"{e['type']}|{e['subject']}@{e['data']['changedAt']}"
        for e in read_events(env)
        if e["practiceid"] == pid and "changedAt" in e["data"]
    }
    out: set[str] = set()
    for kind, etype in (
        ("appointments", "dev.dental.pmsctl.appointment.changed"),
        ("patients", "dev.dental.pmsctl.patient.changed"),
    ):
        latest = {str(c["id"]): str(c["changed_at"]) for c in env.sim.changes(pid, kind)}
        out |= {f"{etype}|{i}@{t}" for i, t in latest.items()}
    return out - seen


def request_times(env: Env, pid: str, fragment: str) -> list[float]:
    return [r.at for r in env.sim.requests(pid) if fragment in r.path]


async def test_the_examples_become_ready_with_resolved_ids_in_status(env: Env) -> None:
    await env.secrets_for_examples()
    async with operator(env) as op:
        names = [d["metadata"]["name"] for d in load_examples()]
        for name in names:
            await env.create(env.example(name))
        for name in names:
            await env.wait_condition(name, "Ready", "True", timeout=20)
        od = (await env.get("bright-smiles"))["status"]
        assert od["observedGeneration"] == 1
        assert od["provider"] == {"id": "1", "name": od["provider"]["name"], "active": True}
        assert (
            od["noteTypes"]["outgoingSms"]["name"] == "Text Message"
            and od["noteTypes"]["outgoingSms"]["id"].isdigit()
        )
        assert od["documentTypes"]["insuranceVerification"]["readFrom"]["name"] == "Insurance Cards"
        assert set(od["pollers"]) == {"appointmentStatus", "appointments", "patients"}
        es = (await env.get("riverside-smiles"))["status"]
        assert es["noteTypes"]["taskNote"]["id"].count(":") == 1  # Eaglesoft ids are type:typeId
        obj = await env.get("lakeside-dental")
        # Nothing outside the operator needs cleaning up before a practice goes: no finalizer
        # (two object PATCHes per practice saved); deletion is seen on the watch.
        assert not obj["metadata"].get("finalizers")
        # The Secrets existed before the operator started: Kopf's index held them all before
        # the first practice was handled, so no reconcile read one from the API server.
        assert op.secrets.gets == 0
        assert (
            "sync" in obj["spec"] and "suspend" in obj["spec"]
        )  # as written; nothing defaulted in
        reasons = await env.wait_events({("Ready", "Normal")}, "bright-smiles")
        assert ("Ready", "Normal") in reasons
        assert sorted(op.engine.keys()) == sorted(f"{env.ns}/{n}" for n in names)
        await eventually(
            lambda: _async(not missing(env, "bright-smiles")), 15, "bright-smiles changes emitted"
        )


async def _async(value: Any) -> Any:
    return value


async def test_interval_change_shows_the_new_cadence_and_disabling_stops_requests(env: Env) -> None:
    await env.secrets_for_examples()
    async with operator(env) as op:
        await env.create(env.example("lakeside-dental"))  # polls on: the clock for "no request"
        doc = env.example("bright-smiles")
        doc["spec"]["sync"] = {"appointmentStatus": {"enabled": True, "interval": "30s"}}
        await env.create(doc)
        await env.wait_condition("bright-smiles", "Ready", "True")
        await env.patch(
            "bright-smiles",
            {"spec": {"sync": {"appointmentStatus": {"enabled": True, "interval": "5s"}}}},
        )
        await env.wait_condition("bright-smiles", "PollersRunning", "True")
        env.sim.clear_requests("bright-smiles")
        # Two polls within 15 s: at 30 s there would be at most one.
        await eventually(
            lambda: len(request_times(env, "bright-smiles", "/appointments")) >= 2,
            15,
            "two appointmentStatus polls",
        )
        times = request_times(env, "bright-smiles", "/appointments")
        assert 2 <= len(times) <= 3, times  # every 5 s (at 30 s there would be at most one)
        assert min(b - a for a, b in itertools.pairwise(times)) >= 4.9  # one poller
        assert op.engine.scheduler.kinds(f"{env.ns}/bright-smiles") == {
            "appointmentStatus": 5.0,
            "drift": 60.0,
        }
        assert (await env.get("bright-smiles"))["status"]["pollers"]["appointmentStatus"][
            "interval"
        ] == "5s"
        await env.patch(
            "bright-smiles", {"spec": {"sync": {"appointmentStatus": {"enabled": False}}}}
        )
        await eventually(
            lambda: _async(
                "appointmentStatus" not in op.engine.scheduler.kinds(f"{env.ns}/bright-smiles")
            ),
            10,
            "poller stopped",
        )
        env.sim.clear_requests("bright-smiles")
        await polls_again(op, f"{env.ns}/lakeside-dental", "patients")
        assert request_times(env, "bright-smiles", "/appointments") == []


async def test_suspend_then_delete_stop_requests_and_leave_no_poller_or_finalizer(env: Env) -> None:
    await env.secrets_for_examples()
    async with operator(env) as op:
        await env.create(env.example("bright-smiles"))  # polls on: the clock for "no request"
        await env.create(env.example("lakeside-dental"))
        await env.wait_condition("lakeside-dental", "Ready", "True")
        await env.wait_condition("bright-smiles", "Ready", "True")
        await env.patch("lakeside-dental", {"spec": {"suspend": True}})
        c = await env.wait_condition("lakeside-dental", "Suspended", "True")
        assert "set it to false to resume" in c["message"]
        ready = await env.condition("lakeside-dental", "Ready")
        assert ready and (ready["status"], ready["reason"]) == ("False", "Suspended")
        env.sim.clear_requests("lakeside-dental")
        await polls_again(op, f"{env.ns}/bright-smiles", "patients")
        assert env.sim.requests("lakeside-dental") == []
        await env.patch("lakeside-dental", {"spec": {"suspend": False}})
        await env.wait_condition("lakeside-dental", "Ready", "True")
        await env.delete("lakeside-dental")

        async def gone() -> bool:
            try:
                await env.get("lakeside-dental")
            except ApiException as exc:
                return exc.status == 404
            return False

        await eventually(gone, 15, "the object to go (finalizer removed)")
        assert op.engine.keys() == [f"{env.ns}/bright-smiles"]  # no lakeside-dental poller left
        assert len(op.engine.scheduler) == len(op.engine.scheduler.kinds(f"{env.ns}/bright-smiles"))
        env.sim.clear_requests("lakeside-dental")
        await polls_again(op, f"{env.ns}/bright-smiles", "patients")
        assert env.sim.requests("lakeside-dental") == []


async def test_a_practice_marked_for_deletion_stops_at_once_and_the_old_finalizer_is_removed(
    env: Env,
) -> None:
    """Older operators put FINALIZER on every practice: Kopf takes it off. A practice that
    another controller's finalizer keeps after its deletion stops polling as soon as it is
    marked, not when it finally goes."""
    await env.secrets_for_examples()
    doc = env.example("lakeside-dental")
    doc["metadata"]["finalizers"] = [FINALIZER, "example.com/hold"]
    await env.create(doc)
    key = f"{env.ns}/lakeside-dental"
    async with operator(env) as op:
        await env.wait_condition("lakeside-dental", "Ready", "True")

        async def finalizers() -> list[str] | None:
            found = (await env.get("lakeside-dental"))["metadata"].get("finalizers") or []
            return found if FINALIZER not in found else None

        assert await eventually(finalizers, 15, "the old finalizer removed") == ["example.com/hold"]
        assert op.engine.spec(key) is not None
        await env.delete("lakeside-dental")
        await eventually(lambda: _async(op.engine.spec(key) is None), 15, "the practice forgotten")
        assert op.engine.scheduler.kinds(key) == {}
        assert (await env.get("lakeside-dental"))["metadata"]["deletionTimestamp"]
        await env.patch("lakeside-dental", {"metadata": {"finalizers": None}})

        async def gone() -> bool:
            try:
                await env.get("lakeside-dental")
            except ApiException as exc:
                return exc.status == 404
            return False

        await eventually(gone, 15, "the object to go")
        assert op.engine.keys() == []


async def test_wrong_provider_unknown_note_type_and_missing_secret_say_how_to_fix(env: Env) -> None:
    async with operator(env):
        doc = env.example("bright-smiles", providerId="4")
        doc["spec"]["writeback"]["outgoingSms"]["noteType"] = "SMS"
        await env.create(doc)
        c = await env.wait_condition(
            "bright-smiles", "PMSReachable", "False", reason="SecretNotFound"
        )
        assert (
            f"Secret {env.ns}/bright-smiles-pms not found; create it with the keys developerKey and customerKey"
            in c["message"]
        )
        ready = await env.condition("bright-smiles", "Ready")
        assert ready and ready["reason"] == "SecretNotFound"
        # Creating the Secret is enough: the operator watches the Secrets practices reference.
        await env.secret("bright-smiles-pms", env.sim.credentials("bright-smiles"))
        c = await env.wait_condition(
            "bright-smiles", "ProviderVerified", "False", reason="ProviderInactive"
        )
        assert (
            "provider '4' (" in c["message"]
            and "set providerId to an active provider: 1 (" in c["message"]
        )
        c = await env.wait_condition(
            "bright-smiles", "NoteTypesResolved", "False", reason="NoteTypeNotFound"
        )
        assert (
            "outgoingSms: commlog type 'SMS' not found in Open Dental; available: Appt Related, Email, "
            in c["message"]
        )

        await env.wait_events({("ProviderInactive", "Warning"), ("NoteTypeNotFound", "Warning")})
        await env.patch(
            "bright-smiles",
            {
                "spec": {
                    "providerId": "1",
                    "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
                }
            },
        )
        c = await env.wait_condition("bright-smiles", "Ready", "True")
        assert c["observedGeneration"] == (await env.get("bright-smiles"))["metadata"]["generation"]


async def test_outage_flips_pms_reachable_and_every_change_is_emitted_after_recovery(
    env: Env,
) -> None:
    await env.secrets_for_examples()
    async with operator(env):
        await env.create(env.example("riverside-smiles"))
        await env.wait_condition("riverside-smiles", "Ready", "True")
        await eventually(
            lambda: _async(not missing(env, "riverside-smiles")), 12, "initial catch-up"
        )
        env.sim.set_faults("riverside-smiles", outage=True)
        c = await env.wait_condition("riverside-smiles", "PMSReachable", "False", timeout=12)
        assert c["reason"] == "PMSUnreachable" and "503" in c["message"]
        env.sim.advance(120)
        assert missing(env, "riverside-smiles")
        env.sim.set_faults("riverside-smiles")
        await env.wait_condition("riverside-smiles", "Ready", "True", timeout=20)
        await eventually(
            lambda: _async(not missing(env, "riverside-smiles")), 12, "outage changes emitted"
        )


async def test_operator_restart_mid_run_loses_no_change_and_starts_no_duplicate_poller(
    env: Env,
) -> None:
    await env.secrets_for_examples()
    async with operator(env):
        await env.create(env.example("bright-smiles"))
        await env.wait_condition("bright-smiles", "Ready", "True")
        await eventually(lambda: _async(not missing(env, "bright-smiles")), 12, "first catch-up")
    before = len(read_events(env))
    env.sim.advance(60)  # the office works while the operator is down
    env.sim.clear_requests("bright-smiles")
    async with operator(env) as op:
        await eventually(
            lambda: _async(not missing(env, "bright-smiles")), 15, "catch-up after restart"
        )
        assert op.engine.scheduler.kinds(f"{env.ns}/bright-smiles") == {
            "appointmentStatus": 5.0, "appointments": 5.0, "patients": 5.0, "drift": 60.0,
        }  # fmt: skip
        await eventually(
            lambda: len(request_times(env, "bright-smiles", "/patients")) >= 2,
            15,
            "two patients polls",
        )
        patients = request_times(env, "bright-smiles", "/patients")
        assert min(b - a for a, b in itertools.pairwise(patients)) >= 4.9
    replayed = [e for e in read_events(env)[before:] if e["type"].endswith("patient.changed")]
    assert len(replayed) < 100, "the restarted operator re-read every patient"


async def test_renamed_note_type_flips_the_condition_within_the_drift_period(env: Env) -> None:
    await env.secrets_for_examples()
    settings = EngineSettings(**{**SETTINGS.__dict__, "drift_interval": 2.0})
    async with operator(env, settings):
        await env.create(env.example("bright-smiles"))
        await env.wait_condition("bright-smiles", "Ready", "True")
        env.sim.rename_note_type("bright-smiles", "Missed Call", "Missed Call (old)")
        c = await env.wait_condition("bright-smiles", "NoteTypesResolved", "False", timeout=8)
        assert (
            "missedCall: commlog type 'Missed Call' not found in Open Dental; available:"
            in c["message"]
        )
        assert "Missed Call (old)" in c["message"]
        assert ("NoteTypeNotFound", "Warning") in await env.wait_events(
            {("NoteTypeNotFound", "Warning")}
        )


async def test_reconcile_annotation_forces_a_reconcile_and_is_echoed(env: Env) -> None:
    await env.secrets_for_examples()
    async with operator(env):
        await env.create(env.example("lakeside-dental"))
        await env.wait_condition("lakeside-dental", "Ready", "True")
        env.sim.clear_requests("lakeside-dental")
        token = "2026-11-26T10:00:00Z"
        await env.patch(
            "lakeside-dental", {"metadata": {"annotations": {ANNOTATION_RECONCILE: token}}}
        )

        async def echoed() -> bool:
            return bool(
                (await env.get("lakeside-dental"))["status"].get("lastHandledReconcileAt") == token
            )

        await eventually(echoed, 10, "lastHandledReconcileAt")
        assert request_times(env, "lakeside-dental", "/providers")  # the PMS was asked again


async def test_a_writeback_posted_to_the_operator_lands_once_and_its_counts_reach_status(
    env: Env,
) -> None:
    """The writeback API is the one the operator's startup handler starts (through the memo);
    the engine feeds its counts into status.writebacks every status_interval (1 s here)."""
    await env.secrets_for_examples()
    async with operator(env, writebacks=True) as op:
        await env.create(env.example("bright-smiles"))  # taskNote: allow false
        await env.wait_condition("bright-smiles", "Ready", "True", timeout=20)
        assert op.service is not None and op.service.url
        url = f"{op.service.url}/v1/practices/bright-smiles/writebacks"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        sms = {
            "callerId": "sms-op-1",
            "type": "outgoingSms",
            "patientId": "5",
            "occurredAt": "2026-11-26T09:15:00-05:00",
            "text": "Reminder: cleaning tomorrow at 9:00",
        }
        task = dict(sms, callerId="task-op-1", type="taskNote", text="call back")
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(url, json=sms, headers=auth)
            assert r.status_code == 202 and r.json()["status"] == "pending", r.text
            wb_id = r.json()["id"]
            r = await http.post(url, json=task, headers=auth)
            assert r.status_code == 202, r.text
            assert (r.json()["status"], r.json()["reason"]) == ("skipped", "NotAllowed")
            assert (await http.post(url, json=sms)).status_code == 401

            await eventually(
                lambda: _async(env.sim.notes("bright-smiles")), 10, "the note in the PMS"
            )
            r = await http.post(url, json=sms, headers=auth)  # the same callerId again
            assert r.status_code == 200 and r.json()["id"] == wb_id, r.text

        status = await env.get("bright-smiles")
        provider = status["status"]["provider"]["id"]
        note_type = status["status"]["noteTypes"]["outgoingSms"]
        want = {"sent": 1, "skipped": 1, "pending": 0, "failed": 0}

        async def counted() -> bool:
            return (await env.get("bright-smiles")).get("status", {}).get("writebacks") == want

        await eventually(counted, 5, f"status.writebacks == {want}")
        # A later writeback is delivered by a later drain: that drain must not write the first
        # note again (nor the skipped task note).
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(url, json=dict(sms, callerId="sms-op-2"), headers=auth)
            assert r.status_code == 202, r.text
            later_id = r.json()["id"]
        await eventually(
            lambda: len(env.sim.notes("bright-smiles")) >= 2, 10, "the later note in the PMS"
        )
        notes = env.sim.notes("bright-smiles")
        assert sorted(n["writeback_id"] for n in notes) == sorted([wb_id, later_id]), notes
        note = next(n for n in notes if n["writeback_id"] == wb_id)
        assert note["writeback_id"] == wb_id
        assert (note["note_type_name"], note["note_type_id"]) == (
            "Text Message",
            note_type["id"],
        )
        assert note["provider_id"] == provider == "1"
        assert (note["mode"], note["direction"]) == ("Text", "Sent")
        assert note["patient_id"] == "5" and "cleaning tomorrow" in note["text"]
