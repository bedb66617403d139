"""The drainer: delivers stored writebacks to each practice's PMS, in order, fairly, with retries.

Scheduling (in memory; the queue itself is durable, so nothing here needs to survive):

- Per practice, strict FIFO by arrival (`seq`): a practice's next record is not attempted before
  the one ahead of it is sent or has failed, so the order per patient is kept.
- Practices take turns round-robin: a turn delivers at most `quantum` records, then the practice
  goes to the back of the ready line. At most `max_concurrent_practices` turns run at once.
- A temporary error (5xx, timeout, 429, and also a refused credential, which staff may fix) is
  retried within the turn with `pms_drivers.retry.with_retry`; if it still fails, the record goes
  back to `pending` with a `next_attempt_at` and the practice is parked until then, freeing its
  slot for other practices. Every HTTP try counts in the record's durable `attempts`; at
  `max_attempts` the record is `failed` (RetriesExhausted) and the next one goes.
- A permanent error (400/404) fails the record at once, with the PMS's reason.
- While the practice is suspended or its driver is not ready, the practice is parked (records
  wait; they are not skipped: the caller was told they would be written).
- A record accepted while the practice's PMS had not answered yet is stored undecided (no note
  type id). Its turn decides it with `decide()` once the engine has checked the practice: write,
  or skip when the PMS or the spec now says no; until then the practice is parked. A practice the
  directory does not know is parked too (after a restart the engine may not have loaded it
  yet); after `unknown_practice_grace` its writebacks fail with `PracticeUnknown`.
- On a queue several replicas share (PostgreSQL), a turn first claims its practice
  (`QueueStore.claim`): a practice another replica is delivering is parked here and retried
  later, so each practice has one deliverer at a time.
- A practice another replica holds (a shared store's `practice_settings` names its holder) is
  left alone: no claim, no delivery, and its records never fail here as unknown.
- A sweep every `sweep_interval` seconds picks up practices with open records that nobody
  announced: records left `pending`/`sending` by a previous process (a restart resumes them;
  the drivers' writes are idempotent by writeback id, so re-sending an interrupted write cannot
  make a second note) and records put back by `pmsctl writebacks retry` on the file.

The rate budget is not enforced here: every driver call goes through the practice's own HTTP
client, whose transport holds the practice's token bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pms_drivers.base import DocumentUpload, NoteWrite, WriteResult
from pms_drivers.errors import PermanentPmsError, PmsAuthError, PmsError, TemporaryPmsError
from pms_drivers.retry import RetryPolicy, with_retry
from reconciler.writeback import store as ops
from reconciler.writeback.decide import Skip, Wait, decide
from reconciler.writeback.metrics import WritebackMetrics
from reconciler.writeback.model import FailReason, Kind, WritebackRecord
from reconciler.writeback.pacing import AckPacer
from reconciler.writeback.store import QueueStore
from reconciler.writeback.target import PracticeDirectory, WritebackTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    """How the drainer paces itself; the defaults suit a production operator."""

    max_concurrent_practices: int = 64
    quantum: int = 8  # records per turn before the next practice gets a go
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(3, 0.5, 10.0))
    max_attempts: int = 12  # HTTP tries per record, across turns and restarts, before `failed`
    defer_base: float = 5.0  # after a turn's retries ran out: wait this, doubling per turn ...
    defer_max: float = 300.0  # ... up to this
    not_ready_delay: float = 2.0  # practice suspended or driver not built yet: look again after
    sweep_interval: float = 2.0
    unknown_practice_grace: float = 600.0  # a practice unknown this long: its writebacks fail
    # Acknowledging comes first: while requests are arriving, PMS writes start at an adaptive
    # rate that keeps the API loop's worst lag per 0.1 s under `api_lag_target` (see AckPacer).
    api_lag_target: float = 0.005
    busy_write_rate: float = 200.0  # writes/s when a burst of requests begins
    busy_write_rate_min: float = 5.0

    def __post_init__(self) -> None:
        if self.max_concurrent_practices < 1 or self.quantum < 1 or self.max_attempts < 1:
            raise ValueError(
                "DeliveryPolicy: max_concurrent_practices, quantum and max_attempts must be >= 1"
            )

    def defer_delay(self, attempts: int) -> float:
        """Seconds to park a practice after its head record's turn ran out of retries."""
        rounds = max(1, attempts // max(1, self.retry.max_attempts))
        ceiling = min(self.defer_max, self.defer_base * 2.0 ** (rounds - 1))
        return float(ceiling * (0.5 + random.random() / 2))


Turn = tuple[Literal["idle", "more", "parked"], float]


class Drainer:
    """Runs delivery turns for every practice with open records; `start()`, `notify()`, `stop()`."""

    def __init__(
        self,
        store: QueueStore,
        directory: PracticeDirectory,
        *,
        policy: DeliveryPolicy | None = None,
        metrics: WritebackMetrics | None = None,
        clock: Callable[[], float] = ops.now,
        elsewhere: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        #: Whether another replica holds a practice (a shared store): its records are that
        #: replica's to deliver, so this drainer leaves them alone (and never fails them as
        #: unknown).
        self._elsewhere = elsewhere
        self.directory = directory
        self.policy = policy or DeliveryPolicy()
        self.metrics = metrics or WritebackMetrics.create()
        self._clock = clock
        self._ready: deque[str] = deque()
        self._state: dict[str, Literal["queued", "running", "parked"]] = {}
        self._dirty: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._turns: dict[str, asyncio.Task[Turn]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._missing_since: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The API reports acknowledgments and its loop's lag here (from its own thread).
        self.pacer = AckPacer(
            target=self.policy.api_lag_target,
            start_rate=self.policy.busy_write_rate,
            min_rate=min(self.policy.busy_write_rate_min, self.policy.busy_write_rate),
        )
        self._pace_line = asyncio.Lock()  # writes waiting for the pacer queue here, in order
        self._inbox: list[tuple[str, bool]] = []  # notify_threadsafe() from other threads
        self._inbox_lock = threading.Lock()
        self._inbox_waking = False

    # --- lifecycle ---

    async def start(self) -> None:
        """Start dispatching, and sweep the file once for work a previous process left."""
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        await self.sweep()
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="writeback-dispatch"),
            asyncio.create_task(self._sweeper(), name="writeback-sweep"),
        ]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop starting turns; give running ones `grace` seconds, then cancel them.

        A cancelled write is left `sending` in the file and re-sent by the next process.
        """
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        running = list(self._turns.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            for turn in late:
                turn.cancel()
            for turn in late:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await turn
        self._turns.clear()
        self._ready.clear()
        self._state.clear()
        self._dirty.clear()

    # --- scheduling ---

    def notify_threadsafe(self, practice_id: str, *, now: bool = False) -> None:
        """`notify()` from any thread (the API may run on its own event loop)."""
        loop = self._loop
        if loop is None:
            return  # not started: the first sweep will find the record
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self.notify(practice_id, now=now)
            return
        # One wake-up of the drainer's loop for all the notes that arrive before it runs, not
        # one each: every wake-up is a syscall and a GIL hand-over on the API's path. It is
        # sent once the caller's loop has run what is ready (all the requests one commit answered).
        with self._inbox_lock:
            self._inbox.append((practice_id, now))
            if self._inbox_waking:
                return
            self._inbox_waking = True
        if running is None:
            self._wake_drainer(loop)
        else:
            running.call_soon(self._wake_drainer, loop)

    def _wake_drainer(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._read_inbox)
        except RuntimeError:  # that loop is closed: stopping; the next start sweeps the file
            with self._inbox_lock:
                self._inbox_waking = False

    def _read_inbox(self) -> None:
        with self._inbox_lock:
            notes, self._inbox, self._inbox_waking = self._inbox, [], False
        for practice_id, now in notes:
            self.notify(practice_id, now=now)

    async def sweep_threadsafe(self) -> None:
        """`sweep()` from any event loop."""
        loop = self._loop
        if loop is None:
            return
        if asyncio.get_running_loop() is loop:
            await self.sweep()
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.sweep(), loop))

    def notify(self, practice_id: str, *, now: bool = False) -> None:
        """Practice `practice_id` may have new work; `now=True` also wakes it from a pause."""
        if self._stopping:
            return
        state = self._state.get(practice_id)
        if state == "running":
            self._dirty.add(practice_id)
        elif state == "parked" and now:
            self._timers.pop(practice_id).cancel()
            self._queue(practice_id)
        elif state is None:
            self._queue(practice_id)

    def _queue(self, practice_id: str) -> None:
        self._state[practice_id] = "queued"
        self._ready.append(practice_id)
        self._wake.set()

    def _unpark(self, practice_id: str) -> None:
        self._timers.pop(practice_id, None)
        if self._state.get(practice_id) == "parked":
            self._queue(practice_id)

    async def _dispatch(self) -> None:
        limit = self.policy.max_concurrent_practices
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._ready and len(self._turns) < limit:
                pid = self._ready.popleft()
                self._state[pid] = "running"
                self._dirty.discard(pid)
                task = asyncio.create_task(self._turn(pid), name=f"writeback-turn-{pid}")
                self._turns[pid] = task
                task.add_done_callback(functools.partial(self._turn_done, pid))

    def _turn_done(self, pid: str, task: asyncio.Task[Turn]) -> None:
        self._turns.pop(pid, None)
        if self._stopping:
            return
        if task.cancelled():
            outcome: Turn = ("parked", self.policy.not_ready_delay)
        elif task.exception() is not None:
            log.error("writeback turn for practice %s crashed", pid, exc_info=task.exception())
            outcome = ("parked", self.policy.not_ready_delay)
        else:
            outcome = task.result()
        kind, delay = outcome
        if kind == "more" or (kind == "idle" and pid in self._dirty):
            self._state.pop(pid, None)
            self._queue(pid)
        elif kind == "parked":
            self._state[pid] = "parked"
            self._timers[pid] = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._unpark, pid
            )
        else:
            self._state.pop(pid, None)
        self._dirty.discard(pid)
        self._wake.set()  # a slot is free

    async def sweep(self) -> None:
        """Announce every practice with open records (and refresh the queue-depth gauge)."""

        def op(conn: ops.Conn) -> tuple[list[str], int]:
            return ops.practices_with_open(conn), ops.open_count(conn)

        practices, depth = await asyncio.to_thread(self.store.read, op)
        self.metrics.queue_depth.set(depth)
        for pid in practices:
            self.notify(pid)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.policy.sweep_interval)
            try:
                await self.sweep()
            except Exception:  # the file may be busy; the next sweep tries again
                log.exception("writeback sweep failed")

    # --- one practice's turn ---

    async def _turn(self, pid: str) -> Turn:
        # State changes of this turn's deliveries are queued without waiting for their commit
        # (a re-sent write is harmless: writes are idempotent), and all are committed before
        # the turn ends, so the practice's next turn reads them.
        # On a shared queue (PostgreSQL) another replica may be delivering this practice: the
        # claim keeps one deliverer per practice, so its records go out once and in order. It
        # is released only after this turn's changes are committed, so the next owner reads
        # them; a replica that dies loses its claim with its connection.
        if self._elsewhere is not None and self._elsewhere(pid):
            return ("idle", 0.0)
        if not await self.store.claim(pid):
            return ("parked", self.policy.not_ready_delay)
        outstanding: list[asyncio.Future[Any]] = []
        try:
            return await self._turn_body(pid, outstanding)
        finally:
            for result in await asyncio.gather(*outstanding, return_exceptions=True):
                if isinstance(result, BaseException):
                    log.error("writeback queue update failed: %s", result)
            await self.store.release(pid)

    async def _turn_body(self, pid: str, outstanding: list[asyncio.Future[Any]]) -> Turn:
        quantum = self.policy.quantum
        head = await asyncio.to_thread(self.store.read, lambda c: ops.open_head(c, pid, quantum))
        for record in head:
            wait = record.next_attempt_at - self._clock()
            if wait > 0:
                return ("parked", wait)
            target = self.directory.target(pid)
            if target is None:
                # Right after a restart the engine may not know every practice yet: wait, and
                # only give up on a practice that stays unknown for `unknown_practice_grace`.
                first = self._missing_since.setdefault(pid, self._clock())
                if self._clock() - first < self.policy.unknown_practice_grace:
                    return ("parked", self.policy.not_ready_delay)
                await self._fail(record, None, FailReason.PRACTICE_GONE,
                                 f"no practice has practiceId {pid!r} (for "
                                 f"{self.policy.unknown_practice_grace:g}s)")  # fmt: skip
                continue
            self._missing_since.pop(pid, None)
            if target.spec.suspend or target.driver is None:
                return ("parked", self.policy.not_ready_delay)
            if record.target_type_id is None:  # accepted before the PMS answered: decide now
                decided = await self._decide_late(record, target)
                if decided is None:
                    return ("parked", self.policy.not_ready_delay)
                if decided is False:
                    continue
                record = decided
            else:  # decided at intake, maybe on a snapshot a later setting overtook
                checked = await self._decide_again(record, target)
                if checked is False:
                    continue
                record = checked
            if not await self.store.holds(pid):
                # The claim went with its connection (or the bucket moved): another replica may
                # hold the practice now, and two writers could both miss a note already there.
                log.warning("writeback delivery for %s: the practice's claim is gone; stopping "
                            "this turn", pid)  # fmt: skip
                return ("parked", self.policy.not_ready_delay)
            parked = await self._deliver(record, target, outstanding)
            if parked is not None:
                return ("parked", parked)
        return ("more", 0.0) if len(head) == quantum else ("idle", 0.0)

    async def _decide_late(
        self, record: WritebackRecord, target: WritebackTarget
    ) -> WritebackRecord | Literal[False] | None:
        """Decide a record stored undecided: the decided record, False if it is now skipped (the
        PMS or the spec said no), or None while the PMS still has not answered."""
        decision = decide(record.request, target)
        if isinstance(decision, Wait):
            return None
        if isinstance(decision, Skip):
            await self._skip(record, target, decision)
            return False
        return await self._resolve(record, decision.type_id, decision.provider_id)

    async def _decide_again(
        self, record: WritebackRecord, target: WritebackTarget
    ) -> WritebackRecord | Literal[False]:
        """Decide a record decided at intake again, by the practice's settings now: intake may
        run in another process on a snapshot up to a moment old, and a setting withdrawn since
        skips the record rather than writing it. While the PMS is not checked (a restart), the
        intake's decision stands."""
        decision = decide(record.request, target)
        if isinstance(decision, Wait):
            return record
        if isinstance(decision, Skip):
            await self._skip(record, target, decision)
            return False
        if (decision.type_id, decision.provider_id) == (record.target_type_id, record.provider_id):
            return record
        return await self._resolve(record, decision.type_id, decision.provider_id)

    async def _skip(self, record: WritebackRecord, target: WritebackTarget, skip: Skip) -> None:
        wid, t = record.id, self._clock()
        reason, message = skip.reason.value, skip.message
        await self.store.run(lambda c: ops.mark_skipped(c, wid, reason, message, now=t))
        log.info("writeback %s for %s skipped (%s): %s", wid, target.key, reason, message)
        self.metrics.writebacks.labels(
            record.request.kind.value, record.request.type, "skipped"
        ).inc()
        self.metrics.queue_depth.dec()

    async def _resolve(
        self, record: WritebackRecord, type_id: str, provider: str
    ) -> WritebackRecord:
        wid, t = record.id, self._clock()
        await self.store.run(lambda c: ops.resolve(c, wid, type_id, provider, now=t))
        return replace(record, target_type_id=type_id, provider_id=provider, message=None)

    async def _deliver(
        self,
        record: WritebackRecord,
        target: WritebackTarget,
        outstanding: list[asyncio.Future[Any]],
    ) -> float | None:
        """Deliver one record; returns seconds to park the practice, or None to go on.

        Only this drainer changes open records (the CLI and the API retry failed ones), so the
        attempt count read with the record is current.
        """
        policy = self.policy
        wid = record.id
        attempt = record.attempts + 1
        sending = ops.ChangeKind.SENDING
        outstanding.append(self.store.submit(ops.Change(sending, wid, self._clock())))
        pms = target.spec.pms.type.value
        tries = attempt

        async def on_retry(n: int, exc: TemporaryPmsError, wait: float) -> None:
            nonlocal tries
            self.metrics.attempts.labels(pms, "temporary").inc()
            tries += 1
            outstanding.append(self.store.submit(ops.Change(sending, wid, self._clock())))

        remaining = max(1, policy.max_attempts - attempt + 1)
        retry = replace(policy.retry, max_attempts=min(policy.retry.max_attempts, remaining))
        try:
            result = await with_retry(lambda: self._paced_write(record, target), policy=retry,
                                      on_retry=on_retry)  # fmt: skip
        except PermanentPmsError as exc:
            self.metrics.attempts.labels(pms, "permanent").inc()
            await self._fail(record, pms, FailReason.REJECTED, str(exc))
            return None
        except (TemporaryPmsError, PmsAuthError, PmsError) as exc:
            self.metrics.attempts.labels(pms, "temporary").inc()
            reason = (
                FailReason.AUTH if isinstance(exc, PmsAuthError) else FailReason.RETRIES_EXHAUSTED
            )
            if tries >= policy.max_attempts:
                await self._fail(record, pms, reason, f"after {tries} attempts: {exc}")
                return None
            delay = policy.defer_delay(tries)
            if isinstance(exc, TemporaryPmsError) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            until = self._clock() + delay
            why = str(exc)
            defer = ops.Change(ops.ChangeKind.DEFER, wid, self._clock(), message=why, until=until)
            outstanding.append(self.store.submit(defer))
            log.info("writeback %s to %s deferred %.1fs: %s", wid, target.key, delay, exc)
            return delay
        self.metrics.attempts.labels(pms, "ok").inc()
        sent_at = self._clock()
        pms_id = result.id
        sent = ops.Change(ops.ChangeKind.SENT, wid, sent_at, pms_id=pms_id)
        outstanding.append(self.store.submit(sent))
        self.metrics.writebacks.labels(record.request.kind.value, record.request.type, "sent").inc()
        self.metrics.delivery_seconds.labels(pms).observe(max(0.0, sent_at - record.created_at))
        self.metrics.queue_depth.dec()
        return None

    async def _paced_write(self, record: WritebackRecord, target: WritebackTarget) -> WriteResult:
        """`_write`, started when the pacer allows: acknowledging comes first (the 202 is owed
        now; delivery is asynchronous anyway)."""
        if self._pace_line.locked() or self.pacer.delay() > 0:
            # Only the first in line asks the pacer again: hundreds of turns polling it would
            # themselves take the CPU the pacing is meant to leave to the API.
            async with self._pace_line:
                while (wait := self.pacer.delay()) > 0:
                    await asyncio.sleep(wait)
        return await self._write(record, target)

    async def _write(self, record: WritebackRecord, target: WritebackTarget) -> WriteResult:
        driver = target.driver
        assert driver is not None
        req = record.request
        # The decision at intake fixed the note type / category and the provider the caller was
        # told about; delivery writes exactly that.
        type_id = record.target_type_id or ""
        provider = record.provider_id or ""
        if req.kind is Kind.NOTE:
            return await driver.write_note(
                NoteWrite(
                    writeback_id=record.id,
                    kind=req.type,
                    patient_id=req.patient_id,
                    note_type_id=type_id,
                    provider_id=provider,
                    occurred_at=req.occurred_at,
                    text=req.text,
                )
            )
        return await driver.upload_document(
            DocumentUpload(
                writeback_id=record.id,
                kind=req.type,
                patient_id=req.patient_id,
                category_id=type_id,
                provider_id=provider,
                occurred_at=req.occurred_at,
                filename=req.filename or "document",
                content=req.content or b"",
                content_type=req.content_type or "application/octet-stream",
            )
        )

    async def _fail(
        self, record: WritebackRecord, pms: str | None, reason: FailReason, message: str
    ) -> None:
        wid = record.id
        failed = ops.ChangeKind.FAILED
        await self.store.run(
            ops.Change(failed, wid, self._clock(), reason=reason.value, message=message)
        )
        log.warning("writeback %s for practice %s failed (%s): %s", wid, record.practice_id,
                    reason.value, message)  # fmt: skip
        self.metrics.writebacks.labels(
            record.request.kind.value, record.request.type, "failed"
        ).inc()
        self.metrics.queue_depth.dec()
