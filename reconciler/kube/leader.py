"""Lease-based leader election: only the holder of a `coordination.k8s.io/v1` Lease works.

The cursor store and the writeback queue have a single writer, so two copies of the operator
for one shard (a rollout gone wrong, `kubectl scale --replicas=2`, a stuck node whose pod still
runs while its replacement starts) must never work at once. Like client-go's `leaderelection`:

- `acquire()` blocks until this candidate holds the Lease: it creates the Lease when missing,
  takes it when it is free (released: no holder) or expired, and otherwise waits, logging
  "waiting for lease NS/NAME held by ID". Every write is conditional on the resourceVersion the
  candidate read, so of two candidates that see an expired lease only one write succeeds.
- `run_renewals(on_lost)` renews every `retry_period`. When it has not renewed successfully for
  `renew_deadline`, or the Lease names another holder, it calls `on_lost(reason)` and returns:
  the caller stops working at once (the operator exits non-zero and Kubernetes restarts it as a
  standby). `renew_deadline < lease_duration` leaves the holder that margin to stop before any
  other candidate may take the Lease.
- `RenewalThread(elector, on_lost)` runs `run_renewals` on a thread with its own event loop,
  which is how the operator uses it: a main event loop kept busy (imports, a burst of work)
  cannot make the holder miss renewals, and the loss is still noticed when that loop is stuck.
- `release()` (on a clean stop) empties `holderIdentity` and sets `leaseDurationSeconds: 1`,
  so a standby takes over at once instead of waiting out the lease (client-go's ReleaseOnCancel).

Expiry is judged the client-go way, on the candidate's own monotonic clock: a lease has expired
when its record (its resourceVersion) has not changed for `leaseDurationSeconds` since this
candidate first saw it. `renewTime` is written (for people and kubectl) but never compared with
the local wall clock, so nodes whose clocks disagree cannot both decide they hold the Lease. A
fresh candidate facing a lease left behind by a killed holder therefore waits one lease
duration; a released lease is taken at once.

The timing decisions (`lease_expired`, `renewal_overdue`, `acquire_verdict`, `next_spec`,
`released_spec`, `hard_stop_after`) are pure functions over plain values. The I/O is the
official `kubernetes` client (synchronous, so every call runs in a worker thread, bounded by a
request timeout). The elector has its own two threads rather than asyncio's default pool: the
engine's status patches and Secret reads share that pool, and a renewal queued behind a burst
of them could miss its deadline. No Kopf here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import re
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

from prometheus_client import Gauge

from reconciler.engine.clock import Clock, LoopClock

log = logging.getLogger(__name__)

#: 1 while this process holds the Lease (label: namespace/name), 0 once it lost or released it.
#: Only a leader serves /metrics, so "no series at 1" is what the no-leader alert looks for.
LEADER = Gauge("pmsctl_leader", "1 while this process holds its leader-election Lease.", ["lease"])

#: The Lease name when none is given and no selector shards the operator.
DEFAULT_LEASE_NAME = "pmsctl-operator"
#: Where a pod finds its own namespace.
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: Waits between acquire attempts are retry_period x U(1, 1 + JITTER), so standbys do not poll
#: in lockstep.
JITTER = 0.2

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RBAC_HINT = "the operator's Role needs get, create and update on coordination.k8s.io leases"


class LeaderElectionError(Exception):
    """Leader election cannot work as configured: a bad LeaseConfig, or the API server refuses
    the Lease for good (RBAC, missing namespace). The message names the field or the fix."""


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class LeaseConfig:
    """Which Lease, who is asking, and client-go's three timings (seconds, same defaults and
    meaning): a holder is presumed gone `lease_duration` after its last renewal; it gives up
    when it could not renew for `renew_deadline`; every attempt is `retry_period` apart."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        for field_name, value in (("name", self.name), ("namespace", self.namespace)):
            if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
                raise LeaderElectionError(
                    f"lease {field_name} {value!r} is not a DNS subdomain "
                    "(lowercase letters, digits, '-' and '.', at most 253 characters)"
                )
        if not self.identity or len(self.identity) > 253:
            raise LeaderElectionError(f"lease identity {self.identity!r} must be 1..253 characters")
        if self.lease_duration < 1:
            raise LeaderElectionError(
                f"lease_duration {self.lease_duration:g} s must be at least 1 s"
            )
        if not self.renew_deadline < self.lease_duration:
            raise LeaderElectionError(
                f"renew_deadline {self.renew_deadline:g} s must be shorter than lease_duration "
                f"{self.lease_duration:g} s (the holder must stop before its lease can expire)"
            )
        if not 0 < self.retry_period * (1 + JITTER) < self.renew_deadline:
            raise LeaderElectionError(
                f"retry_period {self.retry_period:g} s must be positive and less than "
                f"renew_deadline {self.renew_deadline:g} s / {1 + JITTER:g}"
            )

    @property
    def duration_seconds(self) -> int:
        """`leaseDurationSeconds` as written (the API takes whole seconds; rounded up)."""
        return max(1, int(-(-self.lease_duration // 1)))


class LeaseSpecDict(TypedDict, total=False):
    """`spec` of a coordination.k8s.io/v1 Lease as JSON (times are RFC 3339 MicroTime)."""

    holderIdentity: str
    leaseDurationSeconds: int
    acquireTime: str
    renewTime: str
    leaseTransitions: int


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease as read from the API server: its spec and the resourceVersion it was read at."""

    holder: str
    duration_s: int
    transitions: int
    acquire_time: str | None
    renew_time: str | None
    resource_version: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        """From the Lease's JSON (a dict as the API server sends it)."""
        spec = obj.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            resource_version=str((obj.get("metadata") or {}).get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class Observation:
    """When (monotonic seconds) this candidate first saw the Lease at `resource_version`."""

    resource_version: str
    seen_at: float


class Verdict(StrEnum):
    """What a candidate does with a Lease it has just read."""

    TAKE = "take"  # free, expired, or already ours: write it with our identity
    WAIT = "wait"  # someone else holds it and their lease runs: try again later


# ---------------------------------------------------------------------------------------------
# Pure decisions


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading `record` at `now`: unchanged while the record is."""
    if previous is not None and previous.resource_version == record.resource_version:
        return previous
    return Observation(record.resource_version, now)


def lease_expired(seen_at: float, duration_s: float, now: float) -> bool:
    """True when a lease first seen (unchanged since) at `seen_at` has run `duration_s`."""
    return now - seen_at >= duration_s


def acquire_verdict(
    record: LeaseRecord, identity: str, observation: Observation, now: float
) -> Verdict:
    """Take the Lease when it has no holder, is ours, or has not been renewed for its duration
    (as seen on our clock); otherwise wait."""
    if not record.holder or record.holder == identity:
        return Verdict.TAKE
    # A record claiming 0 s is treated as 1 s: even a broken record is not taken in a blink.
    if lease_expired(observation.seen_at, max(1, record.duration_s), now):
        return Verdict.TAKE
    return Verdict.WAIT


def renewal_overdue(last_renewed: float, renew_deadline: float, now: float) -> bool:
    """True when the holder has not renewed for `renew_deadline` and must give up. `last_renewed`
    is when the last successful renewal was *sent*, so a standby (which measures from when it
    saw the change, later) cannot time the lease out before this fires."""
    return now - last_renewed >= renew_deadline


def hard_stop_after(config: LeaseConfig) -> float:
    """Seconds a holder that lost its lease may spend stopping gracefully before it must be
    gone: half the margin between giving up and the earliest takeover."""
    return (config.lease_duration - config.renew_deadline) / 2


def micro_time(t: datetime) -> str:
    """RFC 3339 with microseconds, as the API's MicroTime wants it."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_spec(
    record: LeaseRecord | None, identity: str, duration_s: int, now: datetime
) -> LeaseSpecDict:
    """The spec that makes `identity` the holder, renewed at `now`. A new holder gets a fresh
    acquireTime and one more leaseTransitions; a renewal keeps both."""
    stamp = micro_time(now)
    if record is None:
        transitions, acquired = 0, stamp
    elif record.holder == identity:
        transitions, acquired = record.transitions, record.acquire_time or stamp
    else:
        transitions, acquired = record.transitions + 1, stamp
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": duration_s,
        "acquireTime": acquired,
        "renewTime": stamp,
        "leaseTransitions": transitions,
    }


def released_spec(record: LeaseRecord, now: datetime) -> LeaseSpecDict:
    """The spec a holder writes on a clean stop: no holder, 1 s duration, transitions kept."""
    stamp = micro_time(now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions,
    }


def default_identity(pod_name: str | None, hostname: str, suffix: str) -> str:
    """`<pod name or hostname>_<suffix>`: the pod name says which pod holds the Lease, the
    random suffix keeps a restarted process from mistaking its predecessor's lease for its own."""
    return f"{pod_name or hostname}_{suffix}"


def lease_name_for(selector: str | None, base: str = DEFAULT_LEASE_NAME) -> str:
    """The default Lease name: `base`, plus a short stable hash of the label selector when one
    shards the operator, so each shard has its own lease. The selector's terms are sorted
    first: `shard=a,tier=x` and `tier=x, shard=a` are the same shard."""
    terms = sorted(t.strip() for t in (selector or "").split(",") if t.strip())
    if not terms:
        return base
    digest = hashlib.sha256(",".join(terms).encode()).hexdigest()[:8]
    return f"{base}-{digest}"


def default_namespace(serviceaccount_namespace: str | None, env: Mapping[str, str]) -> str:
    """The pod's namespace (the service account's namespace file's text), else
    $PMSCTL_POD_NAMESPACE, else `default`."""
    return (
        (serviceaccount_namespace or "").strip()
        or env.get("PMSCTL_POD_NAMESPACE", "").strip()
        or "default"
    )


def local_identity() -> str:
    """This process's identity: $POD_NAME (or the hostname) and a random suffix."""
    return default_identity(os.environ.get("POD_NAME"), socket.gethostname(), secrets.token_hex(4))


def local_namespace() -> str:
    """This pod's namespace (see `default_namespace`)."""
    try:
        text: str | None = SERVICEACCOUNT_NAMESPACE.read_text()
    except OSError:
        text = None
    return default_namespace(text, os.environ)


# ---------------------------------------------------------------------------------------------
# The elector (I/O)


class _Transient(Exception):
    """An API call failed in a way worth retrying (5xx, 429, timeout, unreachable)."""


class _Taken(Exception):
    """The Lease now names another holder."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class LeaderElector:
    """One candidate for one Lease (see the module docstring). `api` is a
    `kubernetes.client.ApiClient`; `clock` the `reconciler.engine.clock.Clock` its expiry,
    deadlines and waits are measured on (default: the running event loop's, monotonic)."""

    def __init__(self, api: Any, config: LeaseConfig, *, clock: Clock | None = None) -> None:
        from kubernetes import client

        self.config = config
        self._api = api
        self._leases = client.CoordinationV1Api(api)
        self._clock: Clock = clock or LoopClock()
        self._record: LeaseRecord | None = None  # the Lease as we last wrote it, while we hold it
        self._renewed_at = 0.0
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lease")

    @property
    def identity(self) -> str:
        return self.config.identity

    @property
    def where(self) -> str:
        """`namespace/name` of the Lease, for messages."""
        return f"{self.config.namespace}/{self.config.name}"

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the Lease and its last renewal is within the deadline."""
        return self._record is not None and not renewal_overdue(
            self._renewed_at, self.config.renew_deadline, self._clock.now()
        )

    @property
    def record(self) -> LeaseRecord | None:
        """The Lease as this candidate last wrote it (None unless it holds it)."""
        return self._record

    async def acquire(self) -> LeaseRecord:
        """Block until this candidate holds the Lease; return it as written. Raises
        LeaderElectionError when the API server refuses for good (RBAC, no such namespace)."""
        cfg = self.config
        observation: Observation | None = None
        announced: str | None = None
        while True:
            try:
                record = await self._read()
                sent = self._clock.now()
                if record is None:
                    won = await self._create(
                        next_spec(None, cfg.identity, cfg.duration_seconds, _now())
                    )
                    if won is not None:
                        return self._won(won, sent, "created the lease")
                    continue  # another candidate created it first: read theirs
                observation = observe(observation, record, sent)
                if acquire_verdict(record, cfg.identity, observation, sent) is Verdict.TAKE:
                    spec = next_spec(record, cfg.identity, cfg.duration_seconds, _now())
                    won = await self._replace(record.resource_version, spec)
                    if won is not None:
                        return self._won(won, sent, _takeover(record.holder, cfg.identity))
                    continue  # someone wrote it since we read it: read again
                if record.holder != announced:
                    announced = record.holder
                    log.info(
                        "waiting for lease %s held by %s (taken over if not renewed for %d s)",
                        self.where, record.holder, max(1, record.duration_s),
                    )  # fmt: skip
            except _Transient as exc:
                log.warning("lease %s: %s; retrying in %g s", self.where, exc, cfg.retry_period)
            await self._clock.sleep(cfg.retry_period * (1 + JITTER * random.random()))

    async def run_renewals(self, on_lost: Callable[[str], object]) -> None:
        """Renew the held Lease every `retry_period` (counted from the acquisition or the last
        attempt, so the first renewal is due at once if this starts late) until cancelled.
        When the Lease names another holder, or no renewal succeeded for `renew_deadline`,
        call `on_lost(reason)` once and return. Cancel the task to stop renewing (then
        `release()`)."""
        cfg = self.config
        if self._record is None:
            raise LeaderElectionError(f"lease {self.where}: run_renewals() before acquire()")
        attempted = self._renewed_at
        while True:
            # Due retry_period after the last attempt: at once when renewals start late.
            await self._clock.sleep(max(0.0, attempted + cfg.retry_period - self._clock.now()))
            now = attempted = self._clock.now()
            if renewal_overdue(self._renewed_at, cfg.renew_deadline, now):
                self._lost(on_lost, f"could not renew it for {cfg.renew_deadline:g} s")
                return
            remaining = self._renewed_at + cfg.renew_deadline - now
            try:
                self._record = await asyncio.wait_for(self._renew_once(), timeout=remaining)
                self._renewed_at = now
                took = self._clock.now() - now
                if took > cfg.renew_deadline / 2:
                    log.warning("lease %s: a renewal took %.1f s", self.where, took)
            except _Taken as exc:
                self._lost(on_lost, f"it is now held by {exc.holder or 'nobody'}")
                return
            except (_Transient, TimeoutError) as exc:
                log.warning("lease %s: renewal failed: %s", self.where, exc or "timed out")
            except LeaderElectionError as exc:
                self._lost(on_lost, str(exc))
                return

    async def release(self) -> bool:
        """Give the Lease up (no holder, 1 s duration) so a standby takes it at once. True when
        released; False when this candidate did not hold it or the write failed (the lease
        then simply expires). Bounded by `renew_deadline`."""
        record, self._record = self._record, None
        if record is None:
            return False
        LEADER.labels(self.where).set(0)
        try:
            await asyncio.wait_for(self._release(record), timeout=self.config.renew_deadline)
        except (_Transient, _Taken, LeaderElectionError, TimeoutError) as exc:
            log.warning("lease %s: not released (%s); it expires on its own", self.where, exc)
            return False
        log.info("released lease %s", self.where)
        return True

    def close(self) -> None:
        """Let go of the elector's threads (a call still running finishes on its own)."""
        self._threads.shutdown(wait=False)

    # -- steps -----------------------------------------------------------------------------

    def _won(self, record: LeaseRecord, sent: float, how: str) -> LeaseRecord:
        self._record, self._renewed_at = record, sent
        LEADER.labels(self.where).set(1)
        log.info(
            "acquired lease %s as %s: %s (leaseTransitions %d)",
            self.where, self.identity, how, record.transitions,
        )  # fmt: skip
        return record

    def _lost(self, on_lost: Callable[[str], object], reason: str) -> None:
        self._record = None
        LEADER.labels(self.where).set(0)
        log.error("lost lease %s held as %s: %s", self.where, self.identity, reason)
        on_lost(reason)

    async def _renew_once(self) -> LeaseRecord:
        assert self._record is not None
        record = self._record
        for _ in range(2):
            spec = next_spec(record, self.identity, self.config.duration_seconds, _now())
            written = await self._replace(record.resource_version, spec)
            if written is not None:
                return written
            current = await self._read()  # conflict: who wrote it?
            if current is None or current.holder != self.identity:
                raise _Taken(current.holder if current else "nobody (the Lease was deleted)")
            record = current  # still ours (someone touched labels, say): write on top
        raise _Transient("conflicting writes to a lease we hold")

    async def _release(self, record: LeaseRecord) -> None:
        for _ in range(2):
            if await self._replace(record.resource_version, released_spec(record, _now())):
                return
            current = await self._read()
            if current is None or current.holder != self.identity:
                raise _Taken(current.holder if current else "deleted")
            record = current
        raise _Transient("conflicting writes while releasing")

    # -- API calls -------------------------------------------------------------------------

    async def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, not_found: str | None = None
    ) -> Any:
        """Run a client call in a thread and translate its errors: 409 (conflict, exists) comes
        back as None, and so does 404 unless `not_found` says why that is fatal."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        call = functools.partial(fn, *args, _request_timeout=self.config.renew_deadline)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except ApiException as exc:
            if exc.status == 404 and not_found:
                raise LeaderElectionError(
                    f"cannot {what} lease {self.where}: {not_found}"
                ) from None
            if exc.status in (404, 409):
                return None
            if exc.status in (401, 403):
                raise LeaderElectionError(
                    f"cannot {what} lease {self.where}: HTTP {exc.status} {exc.reason} "
                    f"({_RBAC_HINT} in namespace {self.config.namespace})"
                ) from None
            if exc.status == 422:
                raise LeaderElectionError(
                    f"cannot {what} lease {self.where}: HTTP 422 {_reason(exc)}"
                ) from None
            raise _Transient(f"cannot {what} it: HTTP {exc.status} {exc.reason}") from None
        except (HTTPError, OSError) as exc:
            raise _Transient(f"cannot {what} it: {type(exc).__name__}: {exc}") from None

    def _to_record(self, lease: Any) -> LeaseRecord:
        return LeaseRecord.from_object(self._api.sanitize_for_serialization(lease))

    async def _read(self) -> LeaseRecord | None:
        cfg = self.config
        lease = await self._call(
            "read", self._leases.read_namespaced_lease, cfg.name, cfg.namespace
        )
        return None if lease is None else self._to_record(lease)

    async def _create(self, spec: LeaseSpecDict) -> LeaseRecord | None:
        """The created Lease, or None when one exists already (409)."""
        cfg = self.config
        lease = await self._call(
            "create",
            self._leases.create_namespaced_lease,
            cfg.namespace, _body(cfg, spec, None),
            not_found=f"namespace {cfg.namespace} not found "
            "(create it, or pass --leader-election-namespace)",
        )  # fmt: skip
        return None if lease is None else self._to_record(lease)

    async def _replace(self, resource_version: str, spec: LeaseSpecDict) -> LeaseRecord | None:
        """The Lease as written, or None when it changed since `resource_version` (409) or is
        gone (404)."""
        cfg = self.config
        lease = await self._call(
            "update",
            self._leases.replace_namespaced_lease,
            cfg.name, cfg.namespace, _body(cfg, spec, resource_version),
        )  # fmt: skip
        return None if lease is None else self._to_record(lease)


def _takeover(previous: str, identity: str) -> str:
    if not previous:
        return "took the released lease"
    if previous == identity:
        return "renewed its own lease"
    return f"took over the expired lease of {previous}"


def _reason(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _now() -> datetime:
    return datetime.now(UTC)


def _body(cfg: LeaseConfig, spec: LeaseSpecDict, resource_version: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": cfg.name, "namespace": cfg.namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": dict(spec),
    }


class RenewalThread:
    """`elector.run_renewals(on_lost)` on a daemon thread with an event loop of its own.
    `on_lost(reason)` is called on that thread: hand it to the main loop with
    `loop.call_soon_threadsafe`. `stop()` cancels the renewals and waits for the thread."""

    def __init__(self, elector: LeaderElector, on_lost: Callable[[str], object]) -> None:
        self._loop = asyncio.new_event_loop()
        self._task = self._loop.create_task(elector.run_renewals(on_lost), name="lease renewals")
        self._thread = threading.Thread(target=self._run, name="lease-renewals", daemon=True)

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing (the Lease is kept until it is released or expires)."""
        if self._thread.is_alive():
            # RuntimeError: the loop closed meanwhile, the renewals had ended.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout)
        elif not self._loop.is_closed():  # never started
            self._task.cancel()
            self._loop.run_until_complete(asyncio.gather(self._task, return_exceptions=True))
            self._loop.close()

    @property
    def alive(self) -> bool:
        """True while renewals run (False after the loss was reported or stop())."""
        return self._thread.is_alive()
