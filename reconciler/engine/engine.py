"""The engine both adapters share: the operator (`reconciler.kube.handlers`) and `pmsctl up`.

The engine holds every practice it was given: its spec, its PMS client and driver (one
`httpx.AsyncClient` per practice whose transport carries the practice's token bucket, shared by
reconcile, pollers and writebacks), what the PMS last reported, and its status. It owns one
`Scheduler` for all pollers plus one drift re-check per practice, the event sink and the cursor
store (it closes them in `stop()`).

    engine = Engine(sink=JsonlSink("events.jsonl"), store=SqliteCursorStore("state.db"),
                    secrets=my_secret_source, on_status=patch_status)
    await engine.start()
    status = await engine.apply("clinics/acme", PracticeSpec.from_resource(body), generation=3)
    ...
    await engine.remove("clinics/acme")
    await engine.stop()

A reconcile (`apply`, a drift re-check `drift_interval` after the last reconcile, a Secret change
via `refresh`):
read the credentials (`SecretSource`, or `connection_override`), (re)build the client when the
URL or credentials changed, ask the PMS for its version, providers, note types and document
categories, let `reconciler.engine.core.decide` compute pollers and status, then start, reschedule or
stop pollers to match. PMS errors never escape `apply`: they become conditions (`last_error(key)`
keeps the exception for adapters that want to retry, e.g. as `kopf.TemporaryError`).

Pollers read changes since their cursor, publish them to the sink as CloudEvents and save the
cursor only after the sink accepted them; a stop waits (up to `commit_grace`) for a poll that is
publishing to save its cursor too, so a clean stop never sends a page twice. A poll that fails
with a PMS error flips PMSReachable; the first success after that triggers a reconcile so every
condition recovers.

`on_catalog(key, catalog)` gets the practice's catalog (its PMS's providers, note types and
document categories, `reconciler.engine.catalog`) after a reconcile or drift check that read the
PMS, when it changed or its last write is `catalog_refresh` old; `on_catalog(key, None)` when the
practice is removed.

`on_status(key, status, transitions)` is called promptly when a condition changes (and after every
`apply`), and at most every `status_interval` seconds for poller counters alone.

Once it holds hundreds of practices the engine tunes Python's garbage collector for a process
full of long-lived state (`reconciler.engine.gc.GcPolicy`, on by default;
`EngineSettings(gc_tuning=False)` turns it off): without that, full collections walking every
practice's objects stalled the event loop.

The engine keeps the I/O and the bookkeeping; what to do is decided by the pure functions of
`reconciler.engine.decisions` (error classes, the poll state machine, which pollers run, the
drift check, duplicate owners, the status budget). Every timing decision reads the injected
`clock` (`reconciler.engine.clock`, the event loop's by default), so tests run the engine on a
fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pms_drivers.base import (
    Credentials,
    DocumentCategory,
    NoteType,
    PmsDriver,
    Provider,
)
from pms_drivers.errors import PmsError
from pms_drivers.registry import create_driver
from pms_drivers.retry import RetryPolicy, with_retry
from pms_drivers.transport import new_client
from reconciler.api.spec import PracticeSpec, SyncKind
from reconciler.engine import metrics
from reconciler.engine.catalog import (
    REFRESH_SECONDS,
    CatalogListener,
    Published,
    catalog_from,
    publish_due,
)
from reconciler.engine.clock import Clock, LoopClock
from reconciler.engine.core import (
    PMS_LABEL,
    Condition,
    Decision,
    Observed,
    PollerState,
    PracticeStatus,
    ReachError,
    ReachFailure,
    Transition,
    decide,
)
from reconciler.engine.cursors import CursorCommits, CursorStore
from reconciler.engine.decisions import (
    DRIFT,
    FLUSH_SLICE,
    Claimant,
    PollAction,
    Unwritten,
    WritePlan,
    after_poll,
    classify,
    drops_client,
    plan_counter_writes,
    plan_pollers,
    roles,
)
from reconciler.engine.errors import EngineError, SecretNotFoundError
from reconciler.engine.gc import GcPolicy
from reconciler.engine.scheduler import Scheduler
from reconciler.engine.sink import (
    CloudEvent,
    EventSink,
    appointment_event,
    appointment_status_event,
    patient_event,
)
from reconciler.writeback.target import WritebackTarget

log = logging.getLogger(__name__)

#: The driver operation each sync kind polls (the `operation` label of the PMS call metrics).
_POLL_OPERATION = {
    SyncKind.APPOINTMENT_STATUS: "appointment_status_since",
    SyncKind.APPOINTMENTS: "appointments_since",
    SyncKind.PATIENTS: "patients_since",
}


__all__ = [
    "DRIFT",
    "FLUSH_SLICE",
    "Engine",
    "EngineError",
    "EngineSettings",
    "GcPolicy",
    "SecretNotFoundError",
    "SecretSource",
]


class SecretSource(Protocol):
    """Where credentials come from: Kubernetes Secrets (operator) or local files (`pmsctl up`)."""

    async def get(self, key: str, secret_name: str) -> Credentials:
        """The credentials in `secret_name` for practice `key` ("namespace/name");
        raises SecretNotFoundError when there is no such Secret."""
        ...


#: Called with (key, status, transitions); transitions are empty for counter-only updates.
StatusListener = Callable[[str, PracticeStatus, Sequence[Transition]], Awaitable[None]]
ConnectionOverride = Callable[[PracticeSpec], "tuple[str, Credentials] | None"]
#: practice id -> {sent, skipped, pending, failed} (e.g. `WritebackService.counts`); thread-safe.
WritebackCounts = Callable[[str], Mapping[str, int]]


@dataclass(frozen=True)
class EngineSettings:
    """Engine-wide knobs; every default is what the operator runs with."""

    #: Seconds from a practice's last reconcile to its next PMS re-check (renamed note types,
    #: inactive providers); every reconcile (a spec change, a Secret change) restarts it.
    drift_interval: float = 30.0
    #: Seconds between status updates that only carry poller counters.
    status_interval: float = 10.0
    #: Process-wide cap on those counter-only status writes per second (0: no cap), oldest first.
    #: Every poll changes a counter, so without it N practices cost N / status_interval writes a
    #: second (700/s at 7,000 practices): the API server's load, and each write's CPU here.
    #: Condition transitions are not counted against it: they are written at once.
    status_qps: float = 20.0
    #: How long `stop()` may spend writing the last counters (oldest first) before it goes on.
    final_flush_seconds: float = 5.0
    #: Per-practice request budget shared by reconcile, pollers and writebacks.
    rate_per_second: float = 5.0
    burst: int = 10
    #: Retries of reconcile calls (pollers do not retry: their next period is the retry).
    retry_policy: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5.0)
    )
    #: Polls reading from their PMS at once, across all practices. A poll waits on its PMS for
    #: tens of ms, so this caps the polls a second: at 7,000 practices 64 left polls queued for
    #: a worker (lag p50 452 ms, p99 6.5 s in bench_scale); 256 did not (p50 1.3 ms, p99 243 ms).
    #: A poll gives its worker back once it has read (publishing waits on the disk, not the PMS).
    poll_workers: int = 256
    #: Initial syncs (a poller without a cursor: the practice's whole history) reading and
    #: publishing at once; they wait for their turn without a poll worker.
    initial_syncs: int = 64
    #: First poll of a new poller waits U(0, first_poll_jitter * interval) seconds (max_jitter cap).
    first_poll_jitter: float = 1.0
    jitter: float = 0.1
    max_jitter: float = 30.0
    max_backoff: float = 300.0
    #: Poll failures in a row before PollersRunning turns False.
    failure_threshold: int = 3
    #: Seconds a stop waits for a poll that is publishing its events to also save its cursor.
    commit_grace: float = 5.0
    #: Keep the long-lived practice state out of the garbage collector's full passes (`GcPolicy`).
    gc_tuning: bool = True
    #: Seconds after which an unchanged catalog is handed to `on_catalog` again (its readAt).
    catalog_refresh: float = REFRESH_SECONDS


@dataclass
class _Practice:
    key: str
    spec: PracticeSpec
    generation: int = 1
    #: metadata.creationTimestamp (RFC 3339, sorts as text): of two resources with the same
    #: practiceId, the older one manages the practice.
    created: str = ""
    #: Key of the resource that manages this practiceId instead of this one (see `apply`).
    duplicate_of: str | None = None
    #: Clock time of the last status handed to the listener (the flush writes oldest first).
    published_at: float = 0.0
    token: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    publish_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connection: tuple[str, Credentials] | None = None
    #: (PMS type, timeout) the current client and driver were built for.
    client_shape: tuple[str, int] | None = None
    #: (PMS type, URL) the cursors and catalogs belong to.
    pms_identity: tuple[str, str] | None = None
    client: Any = None  # httpx.AsyncClient, kept opaque: httpx stays in drivers and the sink
    driver: PmsDriver | None = None
    providers: Sequence[Provider] | None = None
    note_types: Sequence[NoteType] | None = None
    document_categories: Sequence[DocumentCategory] | None = None
    pms_version: str | None = None
    checked_at: datetime | None = None
    reach_error: ReachError | None = None
    reconcile_error: str | None = None
    last_error: BaseException | None = None
    previous_conditions: Sequence[Condition] = ()
    writebacks: dict[str, int] = field(default_factory=dict)
    decision: Decision | None = None
    #: The last catalog handed to `on_catalog` (`reconciler.engine.catalog`).
    catalog_published: Published | None = None
    dirty: bool = False
    recovering: bool = False
    removed: bool = False


class Engine:
    """Reconciles practices against their PMS and runs their pollers (see the module docstring)."""

    def __init__(
        self,
        *,
        sink: EventSink,
        store: CursorStore,
        secrets: SecretSource,
        settings: EngineSettings | None = None,
        on_status: StatusListener | None = None,
        connection_override: ConnectionOverride | None = None,
        clock: Clock | None = None,
        on_catalog: CatalogListener | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self._on_catalog = on_catalog
        self._clock: Clock = clock or LoopClock()
        self._sink = sink
        self._store = store
        self._cursors = CursorCommits(store)
        self._initial_syncs = asyncio.Semaphore(max(1, self.settings.initial_syncs))
        self._secrets = secrets
        self._on_status = on_status
        self._override = connection_override
        self._practices: dict[str, _Practice] = {}
        #: practiceId -> the key that manages it (the oldest resource claiming it).
        self._by_practice_id: dict[str, str] = {}
        #: practiceId -> every key whose spec names it (normally one).
        self._claims: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._writeback_counts: WritebackCounts | None = None
        self._gc = GcPolicy() if self.settings.gc_tuning else None
        s = self.settings
        self.scheduler = Scheduler(
            workers=s.poll_workers,
            jitter=s.jitter,
            first_jitter=s.first_poll_jitter,
            max_jitter=s.max_jitter,
            max_backoff=s.max_backoff,
            on_result=self._on_poll_result,
            on_lag=lambda kind, lag: metrics.poll_lag(kind).observe(lag),
            clock=self._clock,
        )

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the scheduler and the throttled status writer."""
        await self.scheduler.start()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="pmsctl-status")

    async def stop(self) -> None:
        """Stop every poller, write the last statuses, close clients, the sink and the store."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        # The last counters go out while the pollers still exist (after, they would read as
        # stopped, which is not what the practice's spec asks for): oldest first, a few at a
        # time, for at most final_flush_seconds (thousands of practices would outlast the pod's
        # termination grace period; what is not written then is only counters).
        dirty = self._unwritten(self._counter_plan(qps=0.0))
        if dirty:
            limit = asyncio.Semaphore(16)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(self._write_counters(p, limit) for p in dirty), return_exceptions=True
                    ),
                    self.settings.final_flush_seconds,
                )
        await self.scheduler.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for p in list(self._practices.values()):
            await self._close_client(p)
        await self._sink.close()
        self._store.close()
        if self._gc is not None:
            self._gc.release()
        metrics.PRACTICES.set(0)
        metrics.PRACTICE_READY.clear()
        for kind in SyncKind:
            metrics.POLLERS_RUNNING.labels(str(kind)).set(0)

    # ----- the API the adapters call ---------------------------------------------------------

    async def apply(
        self,
        key: str,
        spec: PracticeSpec,
        *,
        generation: int = 1,
        reconcile_token: str | None = None,
        previous_status: Mapping[str, Any] | None = None,
        created: str | None = None,
    ) -> PracticeStatus:
        """Reconcile `key` now against `spec`; returns the new status (never raises PmsError).

        `previous_status` (the resource's current `status`, optional) keeps lastTransitionTime
        across operator restarts. `created` (metadata.creationTimestamp) decides which of two
        resources naming the same practiceId manages it: the older one (then the smaller key);
        the other is reported as a duplicate (Ready=False, DuplicatePracticeId) and does nothing
        until the older one is deleted or renamed, when it takes over by itself.
        """
        p = self._practices.get(key)
        if p is None:
            p = _Practice(key=key, spec=spec)
            if previous_status:
                p.previous_conditions = tuple(
                    Condition.from_dict(c) for c in previous_status.get("conditions") or ()
                )
                p.token = previous_status.get("lastHandledReconcileAt")
            self._practices[key] = p
            metrics.PRACTICES.set(len(self._practices))
        async with p.lock:
            p.removed = False
            old_id = p.spec.practice_id
            p.spec = spec
            p.generation = generation
            if created is not None:
                p.created = created
            if reconcile_token is not None:
                p.token = reconcile_token
            if old_id != spec.practice_id:
                self._release(old_id, key)
            self._claim(spec.practice_id, key)
            await self._reconcile(p)
            assert p.decision is not None
            return p.decision.status

    async def refresh(self, key: str) -> PracticeStatus | None:
        """Reconcile `key` again with its current spec (after its Secret changed, say)."""
        p = self._practices.get(key)
        if p is None:
            return None
        async with p.lock:
            if p.removed:
                return None
            await self._reconcile(p)
            return p.decision.status if p.decision else None

    async def remove(self, key: str) -> None:
        """Forget `key`: stop its pollers and drift check, close its client (cursors are kept)."""
        p = self._practices.get(key)
        if p is None:
            return
        async with p.lock:
            p.removed = True
            await self.scheduler.stop_practice(key)
            await self._close_client(p)
            self._practices.pop(key, None)
            self._release(p.spec.practice_id, key)
            metrics.record_ready(key, None)
        if self._on_catalog is not None and p.catalog_published is not None:
            try:
                await self._on_catalog(key, None)
            except Exception:
                log.exception("%s: the catalog listener failed", key)
        metrics.PRACTICES.set(len(self._practices))
        self._count_pollers()

    def status(self, key: str) -> PracticeStatus | None:
        """The latest status of `key` (None when unknown)."""
        p = self._practices.get(key)
        return p.decision.status if p is not None and p.decision is not None else None

    def keys(self) -> list[str]:
        """Every practice key the engine holds, sorted."""
        return sorted(self._practices)

    def spec(self, key: str) -> PracticeSpec | None:
        p = self._practices.get(key)
        return p.spec if p is not None else None

    def last_error(self, key: str) -> BaseException | None:
        """The error that made the last reconcile of `key` fail (None when it succeeded)."""
        p = self._practices.get(key)
        return p.last_error if p is not None else None

    def keys_using_secret(self, namespace: str, secret_name: str) -> list[str]:
        """Practices in `namespace` whose spec references `secret_name`."""
        return sorted(
            k
            for k, p in self._practices.items()
            if k.split("/", 1)[0] == namespace and p.spec.pms.credentials_secret == secret_name
        )

    def record_writebacks(self, practice_id: str, counts: Mapping[str, int]) -> None:
        """Let the writeback path report its counters (sent, skipped, pending, failed)."""
        key = self._by_practice_id.get(practice_id)
        p = self._practices.get(key) if key else None
        if p is not None and dict(counts) != p.writebacks:
            p.writebacks = dict(counts)
            p.dirty = True

    def watch_writebacks(self, counts: WritebackCounts | None) -> None:
        """Read every practice's writeback counters through `counts(practice_id)` once per
        `status_interval` (on a worker thread, all practices in one go) and `record_writebacks`
        them: status carries them, throttled like the poller counters. None stops it."""
        self._writeback_counts = counts

    def target(self, practice_id: str) -> WritebackTarget | None:
        """What the writeback path needs for `practice_id` right now (PracticeDirectory)."""
        key = self._by_practice_id.get(practice_id)
        p = self._practices.get(key) if key else None
        if p is None or p.decision is None:
            return None
        d = p.decision
        return WritebackTarget(
            key=p.key,
            spec=p.spec,
            provider_id=d.provider_id,
            checked=d.status.checked_at is not None,
            note_type_ids=dict(d.note_type_ids),
            document_category_ids=dict(d.document_category_ids),
            driver=p.driver,
        )

    # ----- one resource per practiceId ------------------------------------------------------

    def _claim(self, practice_id: str, key: str) -> None:
        self._claims.setdefault(practice_id, set()).add(key)
        self._elect(practice_id, key)

    def _release(self, practice_id: str, key: str) -> None:
        claims = self._claims.get(practice_id)
        if claims is not None:
            claims.discard(key)
            if not claims:
                del self._claims[practice_id]
        self._elect(practice_id, key)

    def _elect(self, practice_id: str, caller: str) -> None:
        """Make the oldest claimant of `practice_id` its manager and mark the others duplicates;
        a practice other than `caller` whose role changed is reconciled in the background (the
        caller reconciles itself)."""
        claimants = [
            self._practices[k] for k in self._claims.get(practice_id, ()) if k in self._practices
        ]
        elected = roles([Claimant(c.key, c.created) for c in claimants])
        if not elected:
            self._by_practice_id.pop(practice_id, None)
            return
        for c in claimants:
            role = elected[c.key]
            if role is None:
                self._by_practice_id[practice_id] = c.key
            if role != c.duplicate_of:
                c.duplicate_of = role
                if c.key != caller:
                    self._spawn(self.refresh(c.key))

    # ----- reconcile -------------------------------------------------------------------------

    async def _connection(self, p: _Practice) -> tuple[str, Credentials]:
        if self._override is not None:
            conn = self._override(p.spec)
            if conn is not None:
                return conn
        creds = await self._secrets.get(p.key, p.spec.pms.credentials_secret)
        return p.spec.pms.url, creds

    async def _reconcile(self, p: _Practice) -> None:
        """One reconcile of `p` (caller holds p.lock)."""
        p.last_error = None
        if p.duplicate_of is None:
            await self._observe(p)
        else:
            # Another resource manages this practice: contact nothing, hold no client.
            await self._close_client(p)
            p.pms_identity = None
            self._forget_catalogs(p)
            p.reach_error = p.reconcile_error = None
        await self._settle(p)

    async def _drift(self, p: _Practice) -> None:
        """The drift re-check (caller holds p.lock): read the PMS again, and when it answered
        what the last reconcile saw, stop there. At 10,000 practices and a 30 s period this runs
        333 times a second; deciding, re-planning pollers and writing the status at once for an
        unchanged PMS made it cost more than the polls. The new `checkedAt` goes out with the
        next counter write (under `status_qps`); anything that changed takes the whole reconcile."""
        before = self._seen(p)
        if before is None:
            await self._reconcile(p)
            return
        await self._observe(p)
        if p.last_error is None and self._seen(p) == before:
            metrics.RECONCILES.labels("ok").inc()
            p.dirty = True
            if self._catalog_due(p):
                await self._publish_catalog(p)
            return
        await self._settle(p)

    def _seen(self, p: _Practice) -> tuple[Any, ...] | None:
        """What a reconcile's outcome depends on besides the spec (which only `apply` changes):
        the connection and the PMS's answers; None when `p` is not in the plain healthy state
        (a failure, a duplicate, no client), which always takes the whole reconcile."""
        if (
            p.duplicate_of is not None
            or p.driver is None
            or p.last_error is not None
            or p.reach_error is not None
            or p.reconcile_error is not None
            or p.decision is None
        ):
            return None
        return (
            p.connection,
            p.client_shape,
            p.pms_identity,
            p.pms_version,
            p.providers,
            p.note_types,
            p.document_categories,
        )

    def _catalog_due(self, p: _Practice) -> bool:
        """Whether an unchanged catalog is due for its periodic refresh (or was never written)."""
        last = p.catalog_published
        return self._on_catalog is not None and (
            last is None or self._clock.now() - last.at >= self.settings.catalog_refresh
        )

    async def _settle(self, p: _Practice) -> None:
        """The rest of a reconcile, after the PMS was read: decide, apply pollers, publish."""
        failed = p.last_error is not None or p.duplicate_of is not None
        metrics.RECONCILES.labels("error" if failed else "ok").inc()
        decision = self._decide(p)
        await self._apply_pollers(p, decision)
        await self._publish(p, self._decide(p), force=True)
        await self._publish_catalog(p)

    async def _publish_catalog(self, p: _Practice) -> None:
        """Hand `p`'s catalog to `on_catalog` when it changed or is due for a refresh."""
        if self._on_catalog is None or p.last_error is not None:
            return
        observed = Observed(
            now=self._clock.utcnow(),
            pms_version=p.pms_version,
            checked_at=p.checked_at,
            providers=p.providers,
            note_types=p.note_types,
            document_categories=p.document_categories,
        )
        catalog = catalog_from(p.key, p.spec, observed)
        if catalog is None:
            return
        due = publish_due(
            p.catalog_published, catalog, self._clock.now(), self.settings.catalog_refresh
        )
        if due is None:
            return
        try:
            await self._on_catalog(p.key, catalog)
        except Exception:  # a catalog is for review tools: it never stops a reconcile
            log.exception("%s: the catalog listener failed", p.key)
            return
        p.catalog_published = due

    def _forget_catalogs(self, p: _Practice) -> None:
        p.providers = p.note_types = p.document_categories = None
        p.pms_version, p.checked_at = None, None

    async def _observe(self, p: _Practice) -> None:
        """Connect to the practice's PMS and read its version and catalogs; a failure is
        recorded on `p` (last_error, reach_error, reconcile_error), never raised."""
        spec = p.spec
        try:
            conn = await self._connection(p)
            shape = (str(spec.pms.type), spec.pms.timeout_seconds)
            identity = (str(spec.pms.type), conn[0])
            if p.pms_identity is not None and identity != p.pms_identity:
                # Another PMS: its cursors and catalogs mean nothing here; start over.
                log.info("%s: PMS changed to %s at %s; cursors reset", p.key, *identity)
                self._store.forget(p.key)
                self._forget_catalogs(p)
            p.pms_identity = identity
            if conn != p.connection or p.driver is None or p.client_shape != shape:
                await self._close_client(p)
                url, creds = conn
                client = new_client(
                    url,
                    timeout=float(spec.pms.timeout_seconds),
                    rate_per_second=self.settings.rate_per_second,
                    burst=self.settings.burst,
                )
                try:
                    p.driver = create_driver(spec.pms.type, client, url, creds)
                except BaseException:
                    await client.aclose()
                    raise
                p.client, p.connection, p.client_shape = client, conn, shape
            if not spec.suspend:
                await self._check_pms(p)
            p.reach_error = None
            p.reconcile_error = None
        except (PmsError, SecretNotFoundError) as exc:
            p.last_error = exc
            p.reach_error = classify(exc)
            p.reconcile_error = p.reach_error.message
            if drops_client(exc):
                await self._close_client(p)
        except ValueError as exc:  # e.g. an unknown PMS type: the spec needs a fix
            p.last_error = exc
            p.reach_error = ReachError(ReachFailure.PMS_ERROR, str(exc))
            p.reconcile_error = str(exc)

    async def _check_pms(self, p: _Practice) -> None:
        driver = p.driver
        assert driver is not None
        pms = PMS_LABEL[p.spec.pms.type]

        async def call(operation: str, fn: Callable[[], Awaitable[Any]]) -> Any:
            try:
                result = await with_retry(fn, policy=self.settings.retry_policy)
            except PmsError as exc:
                metrics.pms_calls(pms, operation, type(exc).__name__).inc()
                raise
            metrics.pms_calls(pms, operation, "ok").inc()
            return result

        info = await call("server_info", driver.server_info)
        providers = await call("list_providers", driver.list_providers)
        note_types = await call("list_note_types", driver.list_note_types)
        categories = await call("list_document_categories", driver.list_document_categories)
        p.pms_version = info.version
        p.providers = tuple(providers)
        p.note_types = tuple(note_types)
        p.document_categories = tuple(categories)
        p.checked_at = self._clock.utcnow()

    def _decide(self, p: _Practice) -> Decision:
        conditions = p.decision.status.conditions if p.decision else p.previous_conditions
        pollers: dict[SyncKind, PollerState] = {}
        for kind in SyncKind:
            state = self.scheduler.state(p.key, str(kind))
            if state is not None:
                pollers[kind] = state
        return decide(
            p.spec,
            Observed(
                now=self._clock.utcnow(),
                generation=p.generation,
                reach_error=p.reach_error,
                reconcile_error=p.reconcile_error,
                pms_version=p.pms_version,
                checked_at=p.checked_at,
                providers=p.providers,
                note_types=p.note_types,
                document_categories=p.document_categories,
                pollers=pollers,
                previous_conditions=conditions,
                reconcile_token=p.token,
                writebacks=p.writebacks,
                failure_threshold=self.settings.failure_threshold,
                duplicate_of=p.duplicate_of,
            ),
        )

    async def _apply_pollers(self, p: _Practice, decision: Decision) -> None:
        key = p.key
        running = self.scheduler.kinds(key)
        plan = plan_pollers(
            running,
            {str(k): v for k, v in decision.pollers.items()},
            connected=p.driver is not None,
            suspended=p.spec.suspend,
            duplicate=p.duplicate_of is not None,  # a duplicate is re-checked by _elect
            drift_interval=self.settings.drift_interval,
        )
        for kind in plan.stop:
            await self.scheduler.stop(key, kind)
        for kind, interval in plan.run.items():
            self.scheduler.ensure(key, kind, interval, self._poll_fn(p, SyncKind(kind)))
        if plan.drift_in is None:
            await self.scheduler.stop(key, DRIFT)
        else:
            # This reconcile just read the PMS: the next check is one whole period from now.
            interval = self.settings.drift_interval
            fn = self._drift_fn(p)
            self.scheduler.ensure(key, DRIFT, interval, fn, first_delay=plan.drift_in, jitter=0.0)
            if DRIFT in running:
                self.scheduler.postpone(key, DRIFT, plan.drift_in)
        self._count_pollers()

    def _count_pollers(self) -> None:
        counts = self.scheduler.count_by_kind()
        for kind in SyncKind:
            metrics.POLLERS_RUNNING.labels(str(kind)).set(counts.get(str(kind), 0))

    def _drift_fn(self, p: _Practice) -> Callable[[], Awaitable[int]]:
        async def drift() -> int:
            async with p.lock:
                if not p.removed:
                    await self._drift(p)
            return 0

        return drift

    async def _close_client(self, p: _Practice) -> None:
        client, p.client, p.driver, p.connection = p.client, None, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    # ----- pollers ---------------------------------------------------------------------------

    def _poll_fn(self, p: _Practice, kind: SyncKind) -> Callable[[], Awaitable[int]]:
        async def poll() -> int:
            return await self._poll(p, kind)

        return poll

    async def _poll(self, p: _Practice, kind: SyncKind) -> int:
        cursor = self._store.get(p.key, str(kind))
        if cursor is not None:
            return await self._read(p, kind, cursor)
        # An initial sync reads and writes the practice's whole history: a few at a time, and
        # waiting for its turn without a poll worker, so a fleet's first start neither holds
        # every history in memory at once nor makes the other practices' polls late.
        self.scheduler.release_worker(p.key, str(kind))
        async with self._initial_syncs:
            return await self._read(p, kind, cursor)

    async def _read(self, p: _Practice, kind: SyncKind, cursor: str | None) -> int:
        driver = p.driver
        if driver is None:
            raise EngineError(f"{p.key}: no PMS client (the last reconcile failed)")
        spec = p.spec
        pms = PMS_LABEL[spec.pms.type]
        started = self._clock.now()
        events: list[CloudEvent]
        op = _POLL_OPERATION[kind]
        try:
            if kind == SyncKind.APPOINTMENT_STATUS:
                sp = await driver.appointment_status_since(cursor)
                events = [appointment_status_event(spec.practice_id, pms, r) for r in sp.records]
                next_cursor = sp.cursor
            elif kind == SyncKind.APPOINTMENTS:
                ap = await driver.appointments_since(cursor)
                events = [appointment_event(spec.practice_id, pms, r) for r in ap.records]
                next_cursor = ap.cursor
            else:
                photos = spec.patient_profile_photos
                pp = await driver.patients_since(cursor, photos=photos)
                events = [
                    patient_event(spec.practice_id, pms, r, photos=photos) for r in pp.records
                ]
                next_cursor = pp.cursor
        except PmsError as exc:
            metrics.pms_calls(pms, op, type(exc).__name__).inc()
            raise
        metrics.pms_calls(pms, op, "ok").inc()
        # The read above may be cancelled freely (nothing happened yet); from here on, publishing
        # and saving the cursor are one unit: a stop that lands in between would leave the events
        # in the sink without their cursor, and the next run would send the page again.
        if events or (next_cursor and next_cursor != cursor):
            # The rest waits on the disk (the sink's fsync, the cursor write), not on the PMS: a
            # poll worker held through an fsync that takes seconds (an initial sync writing
            # hundreds of thousands of events) made every due poll late. What waits for the disk
            # is at most one page per poller, and whole histories only `initial_syncs` at once.
            self.scheduler.release_worker(p.key, str(kind))
            await self._uncancelled(self._commit(p, kind, events, cursor, next_cursor))
        metrics.poll_duration(kind).observe(self._clock.now() - started)
        return len(events)

    async def _commit(
        self,
        p: _Practice,
        kind: SyncKind,
        events: Sequence[CloudEvent],
        cursor: str | None,
        next_cursor: str | None,
    ) -> None:
        if events:
            await self._sink.publish(events)
            metrics.events_emitted(kind).inc(len(events))
        # Only now, with the events accepted, does the cursor move (grouped with the other
        # polls' cursors saved meanwhile, off the event loop; stored before this returns).
        if next_cursor and next_cursor != cursor:
            await self._cursors.save(p.key, str(kind), next_cursor)

    async def _uncancelled(self, coro: Awaitable[None]) -> None:
        """Run `coro` to its end even when the caller is cancelled meanwhile (for at most
        `commit_grace` seconds after the cancel; then it is cancelled too), then re-raise the
        cancellation. `Scheduler.stop()` awaits the cancelled poll, so `Engine.stop()` closes the
        sink and the store only after this finished."""
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                if not task.done():
                    await asyncio.wait({task}, timeout=self.settings.commit_grace)
            finally:
                if not task.done():  # grace over, or cancelled again while waiting
                    task.cancel()
            raise

    def _on_poll_result(
        self, key: str, kind: str, state: PollerState, error: BaseException | None
    ) -> None:
        p = self._practices.get(key)
        if p is None:
            return
        verdict = after_poll(
            kind=kind,
            removed=p.removed,
            failed=error is not None,
            pms_error=classify(error) if isinstance(error, PmsError) else None,
            consecutive_failures=state.consecutive_failures,
            failure_threshold=self.settings.failure_threshold,
            reach_error=p.reach_error,
            recovering=p.recovering,
        )
        p.reach_error = verdict.reach_error
        if verdict.action is PollAction.PUBLISH:
            self._spawn(self._recompute(p))
        elif verdict.action is PollAction.RECOVER:
            p.recovering = True
            self._spawn(self._recover(p))
        elif verdict.action is PollAction.MARK_DIRTY:
            p.dirty = True

    async def _recompute(self, p: _Practice) -> None:
        if not p.removed:
            await self._publish(p, self._decide(p))

    async def _recover(self, p: _Practice) -> None:
        try:
            async with p.lock:
                if not p.removed:
                    await self._reconcile(p)
        finally:
            p.recovering = False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ----- status ----------------------------------------------------------------------------

    async def _publish(self, p: _Practice, decision: Decision, *, force: bool = False) -> None:
        p.decision = decision
        metrics.record_ready(p.key, decision.status)
        if not (force or decision.transitions):
            p.dirty = True
            return
        p.dirty = False
        for t in decision.transitions:
            log.info(
                "%s: %s %s -> %s (%s): %s",
                p.key,
                t.type,
                t.old_status,
                t.new_status,
                t.reason,
                t.message,
                extra={"event": "condition.changed", "practice": p.key, "condition": t.type,
                       "before": t.old_status, "after": t.new_status, "reason": t.reason},
            )  # fmt: skip
        if self._on_status is None:
            return
        p.published_at = self._clock.now()
        async with p.publish_lock:
            # Always hand over the newest status: an older one may have waited on the lock.
            latest = p.decision.status if p.decision else decision.status
            try:
                await self._on_status(p.key, latest, decision.transitions)
            except Exception:
                log.exception("%s: the status listener failed", p.key)
                p.dirty = True

    async def _write_counters(self, p: _Practice, limit: asyncio.Semaphore) -> None:
        """Recompute and hand over `p`'s status if it is still unwritten (`limit` at a time)."""
        async with limit:
            if p.dirty and not p.removed:
                await self._publish(p, self._decide(p), force=True)

    def _counter_plan(self, qps: float) -> WritePlan:
        """The practices with an unwritten status, ordered and batched by the status budget."""
        return plan_counter_writes(
            (
                Unwritten(p.key, p.published_at)
                for p in self._practices.values()
                if p.dirty and not p.removed
            ),
            qps=qps,
        )

    def _unwritten(self, keys: Sequence[str] | WritePlan) -> list[_Practice]:
        if isinstance(keys, WritePlan):
            keys = keys.keys
        return [p for k in keys if (p := self._practices.get(k)) is not None]

    async def _read_writebacks(self, counts: WritebackCounts) -> None:
        ids = list(self._by_practice_id)

        def read() -> dict[str, Mapping[str, int]]:
            return {pid: counts(pid) for pid in ids}

        for pid, c in (await asyncio.to_thread(read)).items():
            self.record_writebacks(pid, c)

    async def _flush_loop(self) -> None:
        # A few status writes at a time: at thousands of practices one at a time would take
        # longer than the interval, all at once would flood the API server.
        limit = asyncio.Semaphore(16)
        clock = self._clock
        while True:
            await clock.sleep(self.settings.status_interval)
            if self._writeback_counts is not None:
                try:
                    await self._read_writebacks(self._writeback_counts)
                except Exception:  # a failed read must not stop status writes
                    log.exception("reading the writeback counters failed")
            # In batches, yielding between them: recomputing thousands of statuses in one
            # event-loop pass would stall every poll due meanwhile (seen as p99 lag in bench_scale).
            # With a listener and a status_qps cap, a batch is one second's worth of writes.
            qps = self.settings.status_qps if self._on_status is not None else 0.0
            plan = self._counter_plan(qps)
            for batch in plan.batches:
                began = clock.now()
                await asyncio.gather(
                    *(self._write_counters(p, limit) for p in self._unwritten(batch))
                )
                if plan.spacing > 0:
                    await clock.sleep(max(0.0, plan.spacing - (clock.now() - began)))
                else:
                    await asyncio.sleep(0)  # let the polls due meanwhile run
            if self._gc is not None:
                self._gc.check(len(self._practices), clock.now())
