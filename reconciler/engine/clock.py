"""The engine's clock: every timing decision reads time through a `Clock` handed in from outside.

`Engine`, `Scheduler` and the status budget take `clock=` (default `LoopClock()`), so a test can
run them on `FakeClock` and move time by hand instead of waiting for it:

    clock = FakeClock()
    scheduler = Scheduler(clock=clock, first_jitter=0.0)
    await scheduler.start()
    scheduler.ensure("ns/acme", "patients", 60.0, poll)
    await clock.advance(60.0)   # the first poll ran at 0 s, the second is due at 60 s: it ran

`LoopClock` is the real one: the running event loop's `time()` for monotonic time (asyncio's
loops read `time.monotonic()`, and a loop whose time is faked, such as the `looptime` pytest
plugin's, fakes it for the engine too) and the system's UTC time for timestamps written to
status. Monotonic time is for durations and due times; wall time only for what people read.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Timer(Protocol):
    """A callback scheduled with `Clock.call_later`; `cancel()` keeps it from running."""

    def cancel(self) -> None:
        """Do not run the callback (no-op once it ran)."""
        ...


class Clock(Protocol):
    """Where the engine reads time and waits for it."""

    def now(self) -> float:
        """Monotonic seconds (for due times and durations; the origin means nothing)."""
        ...

    def utcnow(self) -> datetime:
        """The wall-clock time, timezone-aware UTC (for timestamps in status)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` (on the event loop) once `delay` seconds have passed on this clock.
        The scheduler's dispatcher waits with this (no task per wait)."""
        ...


class LoopClock:
    """The real clock: the running event loop's time, and the system's UTC time."""

    def now(self) -> float:
        """The running loop's `time()`; `time.monotonic()` outside a loop (the same origin for
        asyncio's own loops)."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def utcnow(self) -> datetime:
        """`datetime.now(UTC)`."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)`."""
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """`loop.call_later(delay, callback)` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback)


class _FakeTimer:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class FakeClock:
    """A clock that moves only when told to (`advance`), for tests of timing logic.

    `sleep()` and `call_later()` wait for `advance()` to reach their due time; `advance()` runs
    every timer that falls due in order, setting `now()` to each one's due time and letting the
    event loop run what it woke before going on, so a chain of timers (a poll that schedules
    the next poll) plays out exactly as it would over real time.
    """

    #: Event-loop passes `advance` lets through after each timer and at its end: enough for a
    #: woken task to start a task of its own, run it to its next wait and report back.
    SETTLE_PASSES = 50

    def __init__(self, start: float = 1000.0, wall: datetime | None = None) -> None:
        self._now = start
        self._wall_origin = (wall or datetime(2026, 1, 1, tzinfo=UTC)) - timedelta(seconds=start)
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def utcnow(self) -> datetime:
        return self._wall_origin + timedelta(seconds=self._now)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = _FakeTimer(callback)
        heapq.heappush(self._timers, (self._now + max(0.0, delay), next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    def pending(self) -> int:
        """Timers not yet run nor cancelled."""
        return sum(1 for _, _, t in self._timers if t.callback is not None)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, running every timer due meanwhile in order."""
        target = self._now + seconds
        await self._settle()
        while self._timers and self._timers[0][0] <= target:
            due, _, timer = heapq.heappop(self._timers)
            callback, timer.callback = timer.callback, None
            if callback is None:
                continue
            self._now = max(self._now, due)
            callback()
            await self._settle()
        self._now = target
        await self._settle()

    async def _settle(self) -> None:
        for _ in range(self.SETTLE_PASSES):
            await asyncio.sleep(0)
