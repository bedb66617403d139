"""Lease-based leader election (`reconciler.kube.leader`) and `pmsctl operator --leader-elect`.

Real: the kube-apiserver from the testenv and its `coordination.k8s.io/v1` Leases (the
resourceVersion conflicts that keep two candidates from both winning are the API server's own),
the kubernetes Python client, the `pmsctl operator` processes, their signals and exit codes, the
simulator. Faked: nothing. A hung holder is a candidate whose renewal task is cancelled; an
unreachable API server is a real loopback socket that accepts connections and never answers.
The timing decisions are pure functions, tested with plain tables. Faked: time, in the tests
marked `looptime`: the candidates measure expiry and wait on the event loop's clock (their default
`LoopClock`), which the `looptime` plugin fast-forwards whenever nothing else can run; the API
calls are real and take real time (looptime waits for the client's worker threads). Durations are
read on the loop's clock there. Short durations (lease 2 s, renew deadline 1.5 s, retry 0.3 s)
keep every test under about 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import elapse, stop_processes, wait_until

from pms_simulator import Simulator
from reconciler.kube.leader import (
    DEFAULT_LEASE_NAME,
    LeaderElectionError,
    LeaderElector,
    LeaseConfig,
    LeaseRecord,
    Observation,
    RenewalThread,
    Verdict,
    acquire_verdict,
    default_identity,
    default_namespace,
    hard_stop_after,
    lease_expired,
    lease_name_for,
    next_spec,
    observe,
    released_spec,
    renewal_overdue,
)

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.3}
NOW = datetime(2026, 11, 26, 20, 45, 0, 123456, tzinfo=UTC)


def _record(
    holder: str = "a", rv: str = "7", duration: int = 15, transitions: int = 3
) -> LeaseRecord:
    return LeaseRecord(holder, duration, transitions, "2026-11-26T20:00:00.000000Z", None, rv)


# ---------------------------------------------------------------------------------------------
# Pure decisions


@pytest.mark.parametrize(
    ("seen_at", "duration", "now", "expired"),
    [
        (100.0, 15, 100.0, False),
        (100.0, 15, 114.9, False),
        (100.0, 15, 115.0, True),
        (100.0, 1, 101.5, True),
    ],
)
def test_a_lease_expires_its_duration_after_this_candidate_first_saw_it(
    seen_at: float, duration: int, now: float, expired: bool
) -> None:
    assert lease_expired(seen_at, duration, now) is expired


@pytest.mark.parametrize(
    ("last", "deadline", "now", "overdue"),
    [(50.0, 10.0, 59.9, False), (50.0, 10.0, 60.0, True), (50.0, 1.5, 50.2, False)],
)
def test_a_holder_gives_up_when_it_has_not_renewed_for_the_renew_deadline(
    last: float, deadline: float, now: float, overdue: bool
) -> None:
    assert renewal_overdue(last, deadline, now) is overdue


@pytest.mark.parametrize(
    ("holder", "duration", "seen_at", "now", "verdict"),
    [
        ("", 15, 100.0, 100.0, Verdict.TAKE),  # released: take it at once
        ("me", 15, 100.0, 100.0, Verdict.TAKE),  # ours already
        ("other", 15, 100.0, 110.0, Verdict.WAIT),  # held and running
        ("other", 15, 100.0, 115.0, Verdict.TAKE),  # not renewed for its duration
        ("other", 0, 100.0, 100.5, Verdict.WAIT),  # a 0 s record still counts as 1 s
        ("other", 0, 100.0, 101.0, Verdict.TAKE),
    ],
)
def test_a_candidate_takes_a_free_own_or_expired_lease_and_waits_otherwise(
    holder: str, duration: int, seen_at: float, now: float, verdict: Verdict
) -> None:
    record = _record(holder=holder, duration=duration)
    assert (
        acquire_verdict(record, "me", Observation(record.resource_version, seen_at), now) is verdict
    )


def test_the_expiry_clock_restarts_whenever_the_lease_record_changes() -> None:
    first = observe(None, _record(rv="7"), 10.0)
    assert first == Observation("7", 10.0)
    assert observe(first, _record(rv="7"), 30.0) is first  # unchanged: keep the first sighting
    assert observe(first, _record(rv="8"), 30.0) == Observation("8", 30.0)  # renewed


def test_a_new_lease_starts_with_no_transitions() -> None:
    spec = next_spec(None, "me", 15, NOW)
    assert spec == {
        "holderIdentity": "me",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-11-26T20:45:00.123456Z",
        "renewTime": "2026-11-26T20:45:00.123456Z",
        "leaseTransitions": 0,
    }


def test_a_renewal_keeps_acquire_time_and_transitions_and_a_takeover_counts_one_more() -> None:
    renewed = next_spec(_record(holder="me", transitions=3), "me", 15, NOW)
    assert renewed["leaseTransitions"] == 3
    assert renewed["acquireTime"] == "2026-11-26T20:00:00.000000Z"
    assert renewed["renewTime"] == "2026-11-26T20:45:00.123456Z"
    taken = next_spec(_record(holder="other", transitions=3), "me", 15, NOW)
    assert taken["leaseTransitions"] == 4 and taken["holderIdentity"] == "me"
    assert taken["acquireTime"] == "2026-11-26T20:45:00.123456Z"
    from_released = next_spec(_record(holder="", transitions=4), "me", 15, NOW)
    assert from_released["leaseTransitions"] == 5


def test_a_released_lease_has_no_holder_and_a_one_second_duration() -> None:
    spec = released_spec(_record(holder="me", transitions=4), NOW)
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Pmsctl_Operator"}, "lease name 'Pmsctl_Operator' is not a DNS subdomain"),
        ({"namespace": ""}, "lease namespace '' is not a DNS subdomain"),
        ({"identity": ""}, "lease identity '' must be 1..253 characters"),
        (
            {"lease_duration": 0.5, "renew_deadline": 0.4, "retry_period": 0.1},
            "lease_duration 0.5 s must be at least 1 s",
        ),
        ({"renew_deadline": 15.0}, "renew_deadline 15 s must be shorter than lease_duration 15 s"),
        ({"retry_period": 9.0}, "retry_period 9 s must be positive and less than renew_deadline"),
        ({"retry_period": 0.0}, "retry_period 0 s must be positive"),
    ],
)
def test_a_bad_lease_config_is_refused_with_the_field_and_the_rule(
    changes: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {"name": "pmsctl-operator", "namespace": "ops", "identity": "pod-1_ab"}
    with pytest.raises(LeaderElectionError, match="^" + message.replace("(", r"\(")):
        LeaseConfig(**{**base, **changes})


def test_lease_config_has_client_gos_defaults_and_writes_whole_seconds() -> None:
    cfg = LeaseConfig("pmsctl-operator", "ops", "pod-1_ab")
    assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
    assert cfg.duration_seconds == 15
    assert (
        LeaseConfig(
            "x", "ops", "i", lease_duration=2.5, renew_deadline=2, retry_period=1
        ).duration_seconds
        == 3
    )
    assert hard_stop_after(cfg) == 2.5  # half of the 5 s between giving up and expiry


def test_the_default_lease_name_is_per_shard() -> None:
    assert lease_name_for(None) == lease_name_for("") == DEFAULT_LEASE_NAME == "pmsctl-operator"
    sharded = lease_name_for("shard=a")
    assert sharded.startswith("pmsctl-operator-") and len(sharded) == len("pmsctl-operator-") + 8
    LeaseConfig(sharded, "ops", "pod_1")  # a valid Lease name


def test_the_shard_lease_name_is_stable_and_ignores_term_order() -> None:
    assert lease_name_for("shard=a,tier=x") == lease_name_for(" tier=x , shard=a")
    assert lease_name_for("shard=a") != lease_name_for("shard=b")
    assert lease_name_for("shard=a") == lease_name_for("shard=a")  # no process-random hashing


@pytest.mark.parametrize(
    ("sa_file", "env", "namespace"),
    [
        ("pmsctl-system\n", {"PMSCTL_POD_NAMESPACE": "other"}, "pmsctl-system"),
        (None, {"PMSCTL_POD_NAMESPACE": "ops"}, "ops"),
        ("", {}, "default"),
        (None, {"PMSCTL_POD_NAMESPACE": "  "}, "default"),
    ],
)
def test_the_lease_namespace_defaults_to_the_pods_own(
    sa_file: str | None, env: dict[str, str], namespace: str
) -> None:
    assert default_namespace(sa_file, env) == namespace


def test_the_identity_names_the_pod_and_a_random_suffix() -> None:
    assert (
        default_identity("pmsctl-operator-7d9f-x2", "host", "ab12")
        == "pmsctl-operator-7d9f-x2_ab12"
    )
    assert default_identity(None, "laptop", "ab12") == "laptop_ab12"


# ---------------------------------------------------------------------------------------------
# Against the API server

needs_kube = pytest.mark.kube


def _lease(cluster: testenv.Cluster, namespace: str, name: str = "lock") -> dict[str, Any]:
    out = cluster.kubectl("get", "lease", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def _elector(
    cluster: testenv.Cluster, namespace: str, identity: str, **timing: float
) -> LeaderElector:
    cfg = LeaseConfig("lock", namespace, identity, **{**FAST, **timing})
    return LeaderElector(cluster.api_client, cfg)


async def _stop(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@needs_kube
async def test_a_candidate_creates_a_missing_lease_and_holds_it(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    a = _elector(kube, kube_namespace, "cand-a")
    record = await asyncio.wait_for(a.acquire(), 10)
    assert a.is_leader and record.holder == "cand-a"
    spec = _lease(kube, kube_namespace)["spec"]
    assert spec["holderIdentity"] == "cand-a"
    assert spec["leaseDurationSeconds"] == 2 and spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    assert await a.release()
    assert _lease(kube, kube_namespace)["spec"].get("holderIdentity", "") == ""
    assert not await a.release()  # not held any more: nothing to do


@needs_kube
@pytest.mark.looptime(end=600)
async def test_a_standby_waits_while_the_holder_renews_and_takes_over_at_once_on_release(
    kube: testenv.Cluster, kube_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.kube.leader")
    loop = asyncio.get_running_loop()
    a, b = _elector(kube, kube_namespace, "cand-a"), _elector(kube, kube_namespace, "cand-b")
    await asyncio.wait_for(a.acquire(), 10)
    lost: list[str] = []
    renewing = asyncio.create_task(a.run_renewals(lost.append))
    waiting = asyncio.create_task(b.acquire())
    try:
        first_renewal = _lease(kube, kube_namespace)["spec"]["renewTime"]
        await elapse(3.0)  # one and a half lease durations
        assert not waiting.done(), "the standby took a lease that was being renewed"
        spec = _lease(kube, kube_namespace)["spec"]
        assert spec["holderIdentity"] == "cand-a" and spec["renewTime"] > first_renewal
        assert lost == [] and a.is_leader
        assert f"waiting for lease {kube_namespace}/lock held by cand-a" in caplog.text

        await _stop(renewing)
        released_at = loop.time()
        assert await a.release()
        record = await asyncio.wait_for(waiting, 5)
        took = loop.time() - released_at
        assert record.holder == "cand-b" and b.is_leader
        assert took < 1.0, f"the standby took {took:.2f} s to take a released lease"
        spec = _lease(kube, kube_namespace)["spec"]
        assert spec["holderIdentity"] == "cand-b" and spec["leaseTransitions"] == 1
        assert spec["leaseDurationSeconds"] == 2
    finally:
        await _stop(renewing)
        await _stop(waiting)


@needs_kube
@pytest.mark.looptime(end=600)
async def test_a_hung_holder_is_replaced_after_its_lease_expires_and_transitions_count_it(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    loop = asyncio.get_running_loop()
    a, b = _elector(kube, kube_namespace, "cand-a"), _elector(kube, kube_namespace, "cand-b")
    await asyncio.wait_for(a.acquire(), 10)
    renewing = asyncio.create_task(a.run_renewals(lambda _: None))
    waiting = asyncio.create_task(b.acquire())
    try:
        await elapse(1.0)
        await _stop(renewing)  # the holder hangs: no more renewals, and no release
        hung_at = loop.time()
        record = await asyncio.wait_for(waiting, 8)
        took = loop.time() - hung_at
        # b saw the last renewal at most one retry before a hung; it waits the full 2 s from then.
        assert 2.0 - FAST["retry_period"] - 0.05 <= took <= 2.0 + 3 * FAST["retry_period"] + 1.0, (
            took
        )
        assert record.holder == "cand-b" and record.transitions == 1
        assert _lease(kube, kube_namespace)["spec"]["leaseTransitions"] == 1
        assert not a.is_leader  # its own clock says it is past the renew deadline
    finally:
        await _stop(renewing)
        await _stop(waiting)


@needs_kube
@pytest.mark.looptime(end=600)
async def test_a_holder_whose_lease_was_taken_by_someone_else_reports_the_loss(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    from kubernetes import client

    loop = asyncio.get_running_loop()
    a = _elector(kube, kube_namespace, "cand-a")
    await asyncio.wait_for(a.acquire(), 10)
    lost: list[str] = []
    renewing = asyncio.create_task(a.run_renewals(lost.append))
    try:
        await elapse(0.5)
        leases = client.CoordinationV1Api(kube.api_client)
        # A merge patch: applied to whatever version is current, so it cannot lose a race with
        # a renewal (a read-then-replace could).
        leases.patch_namespaced_lease("lock", kube_namespace, {"spec": {"holderIdentity": "thief"}})
        stolen_at = loop.time()
        await asyncio.wait_for(renewing, 5)  # returns once it has reported the loss
        assert loop.time() - stolen_at < 2 * FAST["retry_period"] + 1.0
        assert lost == ["it is now held by thief"]
        assert not a.is_leader and a.record is None
        assert not await a.release()  # it never overwrites the new holder
        assert _lease(kube, kube_namespace)["spec"]["holderIdentity"] == "thief"
    finally:
        await _stop(renewing)


@needs_kube
async def test_renewals_on_their_own_thread_keep_the_lease_while_the_event_loop_is_blocked(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    """The operator renews on a RenewalThread: a main event loop that is busy for longer than
    the lease (here: blocked outright) does not cost the holder its lease."""
    a = _elector(kube, kube_namespace, "cand-a")
    await asyncio.wait_for(a.acquire(), 10)
    lost: list[str] = []
    renewals = RenewalThread(a, lost.append)
    renewals.start()
    try:
        # Blocking the loop is the fault under test (a fake clock cannot block it): 1.5 leases.
        time.sleep(3.0)
        assert lost == [] and renewals.alive and a.is_leader
        renewed = _lease(kube, kube_namespace)["spec"]["renewTime"]
        age = datetime.now(UTC) - datetime.fromisoformat(renewed.replace("Z", "+00:00"))
        assert age.total_seconds() < 1.0, f"last renewal {age} ago"
    finally:
        renewals.stop()
    assert not renewals.alive and lost == []
    assert await a.release()


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers (a partitioned API
    server, for real: the client's TLS handshake just hangs)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@needs_kube
async def test_a_holder_that_cannot_reach_the_api_server_gives_up_within_the_renew_deadline(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    api = kube.new_api_client()
    a = LeaderElector(api, LeaseConfig("lock", kube_namespace, "cand-a", **FAST))
    try:
        await asyncio.wait_for(a.acquire(), 10)
        lost: list[str] = []
        renewing = asyncio.create_task(a.run_renewals(lost.append))
        with _silent_server() as port:
            # From now on every request of this client goes to a server that never answers.
            api.configuration.host = f"https://127.0.0.1:{port}"
            cut_at = time.monotonic()
            await asyncio.wait_for(renewing, 6)
            took = time.monotonic() - cut_at
        assert lost == ["could not renew it for 1.5 s"]
        # The last good renewal was < 0.3 s before the cut; the loss is reported at the deadline
        # (checked every retry period), well before the 2 s lease could expire for a standby.
        assert took <= FAST["renew_deadline"] + FAST["retry_period"] + 0.3, took
        assert not a.is_leader
    finally:
        api.close()


@needs_kube
@pytest.mark.looptime(end=600)
async def test_of_three_candidates_racing_for_a_missing_lease_exactly_one_wins(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    candidates = [_elector(kube, kube_namespace, f"cand-{n}") for n in range(3)]
    tasks = [asyncio.create_task(c.acquire()) for c in candidates]
    try:
        await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        await elapse(1.0)  # give a wrong second winner time to show up
        winners = [c for c, t in zip(candidates, tasks, strict=True) if t.done()]
        assert len(winners) == 1, [w.identity for w in winners]
        assert _lease(kube, kube_namespace)["spec"]["holderIdentity"] == winners[0].identity
    finally:
        for t in tasks:
            await _stop(t)


@needs_kube
async def test_a_lease_in_a_missing_namespace_is_refused_with_the_fix(
    kube: testenv.Cluster,
) -> None:
    a = LeaderElector(
        kube.api_client, LeaseConfig("lock", "no-such-namespace-x1", "cand-a", **FAST)
    )
    with pytest.raises(LeaderElectionError, match="namespace no-such-namespace-x1 not found"):
        await asyncio.wait_for(a.acquire(), 10)


@needs_kube
async def test_the_deploy_rbac_lets_the_operator_hold_its_lease_and_only_in_its_namespace(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    """deploy/base/cluster/serviceaccount.yaml and rbac.yaml applied for real (into the test's own
    namespace, cluster-scoped names made unique), then a LeaderElector authenticated as that
    ServiceAccount with a real token: it can take and release its Lease; in another namespace
    it gets a 403 and an error naming the missing permission."""
    from kubernetes import client

    suffix = kube_namespace[-6:]
    docs = []
    for path in ("serviceaccount.yaml", "rbac.yaml"):
        text = (
            (testenv.REPO / "deploy/base/cluster" / path)
            .read_text()
            .replace("pmsctl-system", kube_namespace)
        )
        for doc in yaml.safe_load_all(text):
            doc["metadata"].setdefault("namespace", kube_namespace)
            if doc["kind"].startswith("Cluster"):
                doc["metadata"]["name"] += f"-{suffix}"
                doc["metadata"].pop("namespace")
                if doc["kind"] == "ClusterRoleBinding":
                    doc["roleRef"]["name"] += f"-{suffix}"
            docs.append(doc)
    manifest = yaml.safe_dump_all(docs)
    kube.kubectl("apply", "-f", "-", input=manifest)
    cfg = client.Configuration()
    cfg.host = kube.server
    cfg.ssl_ca_cert = kube.api_client.configuration.ssl_ca_cert
    token = kube.kubectl("create", "token", "pmsctl-operator", "-n", kube_namespace).stdout.strip()
    cfg.api_key = {"authorization": f"Bearer {token}"}
    api = client.ApiClient(cfg)
    try:
        own = LeaderElector(api, LeaseConfig("pmsctl-operator", kube_namespace, "sa-pod", **FAST))
        await asyncio.wait_for(own.acquire(), 10)
        assert await own.release()
        other = LeaderElector(api, LeaseConfig("pmsctl-operator", "default", "sa-pod", **FAST))
        with pytest.raises(LeaderElectionError) as err:
            await asyncio.wait_for(other.acquire(), 10)
        assert "cannot read lease default/pmsctl-operator: HTTP 403" in str(err.value)
        assert "get, create and update on coordination.k8s.io leases" in str(err.value)
        assert token not in str(err.value)
    finally:
        api.close()
        kube.kubectl("delete", "--wait=false", "--ignore-not-found", "-f", "-", input=manifest)


# ---------------------------------------------------------------------------------------------
# Two `pmsctl operator --leader-elect` processes


def _wait(check: Any, timeout: float, what: str) -> Any:
    return wait_until(check, timeout, what, step=0.1)


@needs_kube
def test_a_second_operator_process_stands_by_until_the_first_is_stopped_then_takes_over(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> None:
    """Two `python -m reconciler --leader-elect` processes for one shard, started together.
    Only the one holding the Lease opens its SQLite files and writes events; the other logs
    that it is waiting. SIGTERM on the holder: it exits 0 and releases the Lease, and the
    standby takes over within a second or so and starts working. Then someone else takes the
    Lease from the new holder: it stops and exits 1."""
    doc = yaml.safe_load((testenv.REPO / "practices" / "dentrix-lakeside.yaml").read_text())
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    creds = sim.add_practice(doc["spec"]["practiceId"], "Dentrix")
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(who: str) -> subprocess.Popen[str]:
        folder = tmp_path / who
        folder.mkdir()
        procs[who] = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler",
                "--namespace", kube_namespace,
                "--sink", f"file:{folder / 'events.jsonl'}",
                "--state-db", str(folder / "state.db"),
                "--writeback-port", "0", "--metrics-port", "0",
                "--probe-port", str(testenv.free_port()),
                "--first-poll-jitter", "0",
                "--leader-elect",
                "--leader-election-id", "shard-lock",
                "--leader-election-namespace", kube_namespace,
                "--leader-elect-lease-duration", "2",
                "--leader-elect-renew-deadline", "1.5",
                "--leader-elect-retry-period", "0.3",
            ],
            env=kube.environ({"PYTHONPATH": str(testenv.REPO), "POD_NAME": f"op-{who}"}),
            stdout=(folder / "operator.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            cwd=folder,
        )  # fmt: skip
        return procs[who]

    def holder() -> str:
        out = kube.kubectl(
            "get", "lease", "shard-lock", "-n", kube_namespace, "-o", "json", check=False
        )
        if out.returncode != 0:
            return ""
        return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "")

    def log_of(who: str) -> str:
        return (tmp_path / who / "operator.log").read_text()

    with sim.serve_in_thread():
        testenv.apply_practice(kube, doc, kube_namespace, sim.base_url("Dentrix"), creds)
        try:
            start("a")
            start("b")
            first = _wait(holder, 20, "a holder of the lease")
            leader, standby = ("a", "b") if first.startswith("op-a_") else ("b", "a")
            assert first.startswith(f"op-{leader}_")
            events = {who: tmp_path / who / "events.jsonl" for who in ("a", "b")}
            _wait(
                lambda: events[leader].exists() and events[leader].stat().st_size > 0,
                20,
                "the leader's events",
            )
            _wait(lambda: "waiting for lease" in log_of(standby), 10, "the standby's waiting line")
            assert f"waiting for lease {kube_namespace}/shard-lock held by op-{leader}_" in log_of(
                standby
            )

            # The holder keeps renewing for longer than the lease lasts; the standby waits.
            def renewed_at() -> datetime:
                spec = _lease(kube, kube_namespace, "shard-lock")["spec"]
                return datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))

            spec = _lease(kube, kube_namespace, "shard-lock")["spec"]
            since, lasts = renewed_at(), float(spec["leaseDurationSeconds"])
            _wait(
                lambda: (renewed_at() - since).total_seconds() > lasts,
                3 * lasts + 10,
                "renewals spanning more than one lease duration",
            )
            assert holder() == first
            assert procs[standby].poll() is None
            # The standby has opened nothing and written nothing.
            assert not (tmp_path / standby / "state.db").exists()
            assert not events[standby].exists()

            procs[leader].send_signal(signal.SIGTERM)
            assert procs[leader].wait(20) == 0, log_of(leader)[-3000:]
            stopped_at = time.monotonic()
            _wait(lambda: holder().startswith(f"op-{standby}_"), 10, "the takeover")
            took = time.monotonic() - stopped_at
            assert took < 3.0, f"takeover took {took:.1f} s after the holder released the lease"
            assert "released lease" in log_of(leader)
            _wait(
                lambda: events[standby].exists() and events[standby].stat().st_size > 0,
                20,
                "the new leader's events",
            )
            assert (tmp_path / standby / "state.db").exists()
            out = kube.kubectl(
                "get", "lease", "shard-lock", "-n", kube_namespace, "-o", "json"
            ).stdout
            assert json.loads(out)["spec"]["leaseTransitions"] == 1

            # Someone else takes the lease: the new holder stops and exits 1.
            kube.kubectl(
                "patch", "lease", "shard-lock", "-n", kube_namespace,
                "--type", "merge", "-p", '{"spec": {"holderIdentity": "intruder"}}',
            )  # fmt: skip
            assert procs[standby].wait(15) == 1, log_of(standby)[-3000:]
            text = log_of(standby)
            assert f"lost the leadership of lease {kube_namespace}/shard-lock" in text, text[-3000:]
            assert "it is now held by intruder" in text
            assert holder() == "intruder"  # a holder that lost the lease never releases it
        finally:
            stop_processes(*procs.values())
    sim.close()


@needs_kube
def test_a_standby_operator_answers_its_liveness_probe_and_exits_0_on_sigterm(
    kube: testenv.Cluster, kube_namespace: str, tmp_path: Path
) -> None:
    """A standby (the Lease held by someone that keeps it) serves /healthz so the liveness probe
    does not restart it, never opens its state file, and a SIGTERM ends it cleanly (exit 0)."""
    import urllib.request

    from kubernetes import client

    micro = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(kube.api_client).create_namespaced_lease(
        kube_namespace,
        {
            "metadata": {"name": "held"},
            "spec": {
                "holderIdentity": "elsewhere",
                "leaseDurationSeconds": 3600,
                "renewTime": micro,
            },
        },
    )
    probe = testenv.free_port()
    log = tmp_path / "operator.log"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "reconciler", "--namespace", kube_namespace,
            "--sink", "file:events.jsonl", "--state-db", "state.db",
            "--writeback-port", "0", "--metrics-port", "0", "--probe-port", str(probe),
        ],
        env=kube.environ({
            "PYTHONPATH": str(testenv.REPO),
            "PMSCTL_LEADER_ELECT": "true",
            "PMSCTL_LEADER_ELECTION_ID": "held",
            "PMSCTL_POD_NAMESPACE": kube_namespace,
        }),
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:

        def healthz() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{probe}/healthz", timeout=2) as r:
                    return dict(json.loads(r.read()))
            except OSError:
                return None

        body = _wait(healthz, 20, "the standby's /healthz")
        assert body["standby"]["lease"] == f"{kube_namespace}/held"
        # The probe answers from the start; the line comes once the first read of the Lease is
        # back, which may be a moment later.
        waiting = f"waiting for lease {kube_namespace}/held held by elsewhere"
        _wait(lambda: waiting in log.read_text(), 10, "the standby's waiting line")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "it was never held" in log.read_text()
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "events.jsonl").exists()
    held = client.CoordinationV1Api(kube.api_client).read_namespaced_lease("held", kube_namespace)
    assert held.spec.holder_identity == "elsewhere"  # a standby never writes the lease


def test_a_bad_leader_election_flag_is_refused_before_connecting(tmp_path: Path) -> None:
    import os

    result = subprocess.run(
        [
            sys.executable, "-m", "reconciler", "--sink", "file:x", "--writeback-port", "0",
            "--leader-elect", "--leader-election-namespace", "ops",
            "--leader-elect-lease-duration", "5", "--leader-elect-renew-deadline", "8",
        ],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(testenv.REPO), KUBECONFIG=str(tmp_path / "none")),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        "pmsctl operator: --leader-elect: renew_deadline 8 s must be shorter than "
        "lease_duration 5 s" in result.stderr
    )
