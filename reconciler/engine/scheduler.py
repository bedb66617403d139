"""One poller scheduler for the whole process, shared by the operator and the local mode.

Exactly one poller exists per (practice key, kind). A single dispatcher task keeps every poller's
next due time in a heap and hands due pollers to a bounded pool of runs (`workers` at a time), so
10,000 practices x 3 kinds cost one heap entry each instead of 30,000 sleeping tasks
(`bench/bench_scale.py --mode tasks` measures the difference).

Timing rules:
- The first run of a new poller is delayed by a random fraction of its interval (`first_jitter`,
  capped at `max_jitter` seconds) so pollers created together do not fire together.
- After a success the next start is `start + interval + U(0, jitter * interval)` (capped at
  `max_jitter`): starts are never closer than the interval, and periods drift apart.
- After a failure the delay is `interval * 2**(failures-1)` capped at `max(interval, max_backoff)`,
  and never less than the error's `retry_after` (when it carries one) nor the interval itself.
- `ensure()` with a new interval reschedules the same poller (no second poller): the next start
  becomes `last start + new interval` (or now, if that is already past).
- A poller never runs twice at once; `stop()` cancels an in-flight run and waits for it.
- A run holds one of the `workers` while it waits on its PMS; `release_worker()` gives it back
  early when the rest of the run waits on something else (the engine: the sink's fsync and the
  cursor write), so a slow disk during an initial sync does not leave due polls waiting for a
  worker. The poller still never runs twice at once.
- `ensure(..., first_delay=, jitter=)` overrides the first delay and the jitter of one poller
  (the engine's drift check runs exactly one period after each reconcile), and `postpone()`
  moves a waiting poller's next run to a given delay from now.

The timing arithmetic is `reconciler.engine.decisions`'; time comes from the injected `Clock`
(`clock.now()` for due times, `clock.utcnow()` for `lastSuccessTime`), so the scheduler runs on
`FakeClock` in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.engine.clock import Clock, LoopClock, Timer
from reconciler.engine.core import PollerState
from reconciler.engine.decisions import (
    backoff_delay,
    first_poll_delay,
    next_start_after_success,
    rescheduled_due,
)

log = logging.getLogger(__name__)

#: Seconds early a poller may start. A timer fires once the clock is within its resolution of
#: the due time, so waiting again for a remainder smaller than that would wake at once, forever
#: (a clock that moves in whole microseconds, like looptime's, showed it).
DUE_SLACK = 1e-6
#: A poll: returns how many events it emitted; raises to report a failure.
PollFn = Callable[[], Awaitable[int]]
#: Called after every run with (key, kind, state, error or None).
ResultListener = Callable[[str, str, PollerState, BaseException | None], None]


@dataclass
class _Poller:
    key: str
    kind: str
    interval: float
    poll_fn: PollFn
    #: This poller's jitter fraction (None: the scheduler's).
    jitter: float | None = None
    version: int = 0
    due: float = 0.0
    last_start: float | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    events_emitted: int = 0
    runs: int = 0
    task: asyncio.Task[None] | None = None
    stopped: bool = False
    #: The run in flight holds one of the scheduler's workers (until it ends or gives it back).
    holds_worker: bool = False

    def state(self) -> PollerState:
        return PollerState(
            interval_seconds=self.interval,
            running=not self.stopped,
            last_success=self.last_success,
            last_error=self.last_error,
            consecutive_failures=self.consecutive_failures,
            events_emitted=self.events_emitted,
        )


@dataclass
class SchedulerStats:
    """Counters for metrics and the benchmark; `lags` holds the recent schedule lags (seconds)."""

    runs: int = 0
    failures: int = 0
    #: Runs per poller kind (the drift check is a kind of its own, not a poll of the PMS's changes).
    runs_by_kind: dict[str, int] = field(default_factory=dict)
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


class Scheduler:
    """Heap-driven scheduler of periodic async polls with a bounded number in flight."""

    def __init__(
        self,
        *,
        workers: int = 64,
        jitter: float = 0.1,
        first_jitter: float = 1.0,
        max_jitter: float = 30.0,
        max_backoff: float = 300.0,
        on_result: ResultListener | None = None,
        on_lag: Callable[[str, float], None] | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._workers = asyncio.Semaphore(workers) if workers > 0 else None
        self._jitter = jitter
        self._first_jitter = first_jitter
        self._max_jitter = max_jitter
        self._max_backoff = max_backoff
        self._on_result = on_result
        self._on_lag = on_lag
        self._rng = rng or random.Random()
        self._clock: Clock = clock or LoopClock()
        self._pollers: dict[tuple[str, str], _Poller] = {}
        # Indexes so per-practice and per-kind questions cost O(1), not O(all pollers).
        self._by_key: dict[str, dict[str, _Poller]] = {}
        self._per_kind: dict[str, int] = {}
        self._in_flight = 0
        self._heap: list[tuple[float, int, str, str, int]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self.stats = SchedulerStats()

    # ----- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatcher (idempotent)."""
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch(), name="pmsctl-scheduler")

    async def close(self) -> None:
        """Stop every poller (cancelling in-flight runs, all at once) and the dispatcher."""
        # Concurrently: a cancelled run may take a moment to finish (the engine lets a poll that
        # is publishing save its cursor), and those moments should not add up.
        await asyncio.gather(*(self.stop(key, kind) for key, kind in list(self._pollers)))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None

    # ----- pollers ---------------------------------------------------------------------------

    def ensure(
        self,
        key: str,
        kind: str,
        interval: float,
        poll_fn: PollFn,
        *,
        first_delay: float | None = None,
        jitter: float | None = None,
    ) -> None:
        """Make sure exactly one poller runs `poll_fn` every `interval` seconds for (key, kind).

        A new poller first runs after `first_delay` seconds (default: jittered, see the module
        docstring); `jitter` replaces the scheduler's jitter fraction for this poller."""
        now = self._clock.now()
        p = self._pollers.get((key, kind))
        if p is None:
            p = _Poller(key=key, kind=kind, interval=interval, poll_fn=poll_fn, jitter=jitter)
            self._pollers[(key, kind)] = p
            self._by_key.setdefault(key, {})[kind] = p
            self._per_kind[kind] = self._per_kind.get(kind, 0) + 1
            if first_delay is None:
                u = self._rng.random()
                first_delay = first_poll_delay(interval, self._first_jitter, self._max_jitter, u)
            self._push(p, now + first_delay)
            return
        p.poll_fn = poll_fn
        p.jitter = jitter
        if p.interval != interval:
            p.interval = interval
            if p.task is None:  # an in-flight run reschedules itself when it finishes
                self._push(p, rescheduled_due(now, p.last_start, interval))

    def postpone(self, key: str, kind: str, delay: float) -> None:
        """Move the next run of the waiting poller (key, kind) to `delay` seconds from now
        (earlier or later). No-op when absent or running: a run reschedules itself."""
        p = self._pollers.get((key, kind))
        if p is not None and p.task is None:
            self._push(p, self._clock.now() + delay)

    async def stop(self, key: str, kind: str) -> None:
        """Stop the poller for (key, kind), cancelling a run in flight; no-op when absent."""
        p = self._pollers.pop((key, kind), None)
        if p is None:
            return
        by_kind = self._by_key.get(key, {})
        by_kind.pop(kind, None)
        if not by_kind:
            self._by_key.pop(key, None)
        self._per_kind[kind] -= 1
        p.stopped = True
        p.version += 1
        if p.task is not None and not p.task.done():
            p.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await p.task

    async def stop_practice(self, key: str) -> None:
        """Stop every poller of one practice."""
        for kind in list(self._by_key.get(key, {})):
            await self.stop(key, kind)

    def kinds(self, key: str) -> dict[str, float]:
        """The kinds that have a poller for `key`, with their intervals."""
        return {kind: p.interval for kind, p in self._by_key.get(key, {}).items()}

    def release_worker(self, key: str, kind: str) -> None:
        """The run of (key, kind) in flight no longer needs its worker: free it for the next due
        poller (no-op when that poller holds none)."""
        p = self._pollers.get((key, kind))
        if p is not None:
            self._give_back(p)

    def _give_back(self, p: _Poller) -> None:
        if p.holds_worker:
            p.holds_worker = False
            if self._workers is not None:
                self._workers.release()

    def state(self, key: str, kind: str) -> PollerState | None:
        p = self._pollers.get((key, kind))
        return p.state() if p is not None else None

    def __len__(self) -> int:
        return len(self._pollers)

    def count_by_kind(self) -> dict[str, int]:
        """How many pollers exist per kind."""
        return {k: n for k, n in self._per_kind.items() if n}

    def in_flight(self) -> int:
        return self._in_flight

    # ----- internals -------------------------------------------------------------------------

    def _push(self, p: _Poller, due: float) -> None:
        p.version += 1
        p.due = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, p.key, p.kind, p.version))
        if self._heap[0][1] == self._seq:
            self._wake.set()

    async def _dispatch(self) -> None:
        clock = self._clock
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, _, key, kind, version = self._heap[0]
            delay = due - clock.now()
            if delay > DUE_SLACK:
                # A timer sets the same event a new earlier poller would: no wait_for task.
                self._wake.clear()
                timer: Timer = clock.call_later(delay, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
                continue
            heapq.heappop(self._heap)
            p = self._pollers.get((key, kind))
            if p is None or p.version != version or p.task is not None:
                continue  # stale entry: rescheduled, stopped, or still running
            if self._workers is not None:
                await self._workers.acquire()
                if p.stopped or p.version != version:
                    self._workers.release()
                    continue
            p.holds_worker = self._workers is not None
            lag = clock.now() - due
            self.stats.lags.append(lag)
            if self._on_lag is not None:
                self._on_lag(kind, lag)
            self._in_flight += 1
            p.task = asyncio.create_task(self._run(p), name=f"poll {key} {kind}")

    async def _run(self, p: _Poller) -> None:
        clock = self._clock
        start = clock.now()
        p.last_start = start
        error: BaseException | None = None
        try:
            emitted = await p.poll_fn()
        except asyncio.CancelledError:
            p.task = None
            self._in_flight -= 1
            self._give_back(p)
            raise
        except Exception as exc:
            error = exc
            emitted = 0
        finally:
            p.runs += 1
            stats = self.stats
            stats.runs += 1
            stats.runs_by_kind[p.kind] = stats.runs_by_kind.get(p.kind, 0) + 1
        self._give_back(p)
        p.task = None
        self._in_flight -= 1
        if p.stopped:
            return
        now = clock.now()
        if error is None:
            p.consecutive_failures = 0
            p.last_error = None
            p.last_success = clock.utcnow()
            p.events_emitted += int(emitted or 0)
            jitter = self._jitter if p.jitter is None else p.jitter
            u = self._rng.random()
            due = next_start_after_success(start, p.interval, jitter, self._max_jitter, u)
        else:
            self.stats.failures += 1
            p.consecutive_failures += 1
            p.last_error = str(error) or type(error).__name__
            retry_after = getattr(error, "retry_after", None)
            due = start + backoff_delay(
                p.interval, p.consecutive_failures, self._max_backoff, retry_after
            )
            log.debug(
                "poll %s %s failed (%d in a row): %s", p.key, p.kind, p.consecutive_failures, error
            )
        self._push(p, max(due, now))
        if self._on_result is not None:
            try:
                self._on_result(p.key, p.kind, p.state(), error)
            except Exception:  # a listener bug must not kill the poller
                log.exception("poller result listener failed for %s %s", p.key, p.kind)
