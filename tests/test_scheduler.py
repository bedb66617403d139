"""The poller scheduler on a real event loop and a fake clock.

Real: the event loop, the scheduler's dispatcher and worker pool, the polls (plain coroutines that
record when they ran). Faked: time. The scheduler runs on `FakeClock`, which the test moves
forward by hand (`await clock.advance(seconds)`), so no test waits for a timer and the cadence,
backoff and jitter assertions hold exactly on a loaded machine too. One test runs the real
`LoopClock` on the `looptime` plugin's fast-forwarded event loop instead.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from timing import elapse

from reconciler.engine.clock import FakeClock
from reconciler.engine.scheduler import Scheduler


class Recorder:
    """A poll function that records start times, concurrency, and can fail on demand."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        duration: float = 0.0,
        fail: int = 0,
        error: Exception | None = None,
    ) -> None:
        self.clock = clock
        self.starts: list[float] = []
        self.duration = duration
        self.fail = fail
        self.error = error or RuntimeError("boom")
        self.active = 0
        self.max_active = 0

    async def __call__(self) -> int:
        self.starts.append(self.clock.now())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.duration:
                await self.clock.sleep(self.duration)
            if self.fail:
                self.fail -= 1
                raise self.error
            return 2
        finally:
            self.active -= 1


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_one_poller_per_key_and_kind_runs_at_its_interval() -> None:
    clock = FakeClock()
    s = Scheduler(first_jitter=0.0, jitter=0.0, clock=clock)
    await s.start()
    rec = Recorder(clock)
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        s.ensure("ns/a", "patients", 0.1, rec)  # idempotent: still one poller
        await clock.advance(0.55)
    finally:
        await s.close()
    assert len(s) == 0
    assert 4 <= len(rec.starts) <= 7
    assert len(rec.starts) == 6  # at 0, 0.1, ..., 0.5
    assert min(gaps(rec.starts)) >= 0.099
    assert rec.max_active == 1
    assert s.stats.runs_by_kind == {"patients": 6}


async def test_interval_change_reschedules_without_a_second_poller() -> None:
    clock = FakeClock()
    s = Scheduler(first_jitter=0.0, jitter=0.0, clock=clock)
    await s.start()
    rec = Recorder(clock, duration=0.02)
    try:
        s.ensure("ns/a", "appointments", 0.4, rec)
        await clock.advance(0.05)
        s.ensure("ns/a", "appointments", 0.1, rec)
        await clock.advance(0.6)
        state = s.state("ns/a", "appointments")
    finally:
        await s.close()
    assert state is not None and state.interval_seconds == 0.1
    assert rec.max_active == 1
    assert len(rec.starts) >= 5  # at 0.4 s there would have been 2
    assert min(gaps(rec.starts)) >= 0.099


async def test_stop_cancels_a_run_in_flight_and_no_more_runs_happen() -> None:
    clock = FakeClock()
    s = Scheduler(first_jitter=0.0, clock=clock)
    await s.start()
    slow = Recorder(clock, duration=5.0)
    other = Recorder(clock)
    try:
        s.ensure("ns/a", "patients", 0.1, slow)
        s.ensure("ns/a", "appointments", 0.1, other)
        s.ensure("ns/b", "patients", 0.1, other)
        await clock.advance(0.05)
        assert slow.active == 1
        await s.stop_practice("ns/a")
        assert slow.active == 0  # cancelled, not left running
        assert s.kinds("ns/a") == {}
        assert s.kinds("ns/b") == {"patients": 0.1}
        n = len(slow.starts)
        await clock.advance(10.0)  # past the slow run's end: it neither finishes nor runs again
        assert len(slow.starts) == n
    finally:
        await s.close()


async def test_failures_back_off_exponentially_and_never_poll_faster_than_the_interval() -> None:
    seen: list[tuple[int, str | None]] = []
    clock = FakeClock()
    s = Scheduler(
        first_jitter=0.0,
        jitter=0.0,
        max_backoff=0.4,
        on_result=lambda key, kind, st, err: seen.append((st.consecutive_failures, st.last_error)),
        clock=clock,
    )
    await s.start()
    rec = Recorder(clock, fail=4)
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        await clock.advance(1.6)
        state = s.state("ns/a", "patients")
    finally:
        await s.close()
    g = gaps(rec.starts)
    # 0.1, 0.2, 0.4, 0.4 (capped), then back to the interval after the first success.
    assert [round(x, 1) for x in g[:4]] == [0.1, 0.2, 0.4, 0.4]
    assert [round(x, 6) for x in g[4:]] == [0.1] * len(g[4:])
    assert min(g) >= 0.099
    assert [f for f, _ in seen[:5]] == [1, 2, 3, 4, 0]
    assert seen[0][1] == "boom"
    assert state is not None and state.consecutive_failures == 0 and state.last_error is None
    assert state.events_emitted == 2 * (len(rec.starts) - 4)
    assert state.last_success is not None
    # The clock's wall time of the last (successful) run, not the machine's.
    last_run = clock.utcnow() - timedelta(seconds=clock.now() - rec.starts[-1])
    assert abs((state.last_success - last_run).total_seconds()) < 1e-3


async def test_retry_after_from_the_error_is_honoured() -> None:
    class Throttled(Exception):
        retry_after = 0.5

    clock = FakeClock()
    s = Scheduler(first_jitter=0.0, jitter=0.0, clock=clock)
    await s.start()
    rec = Recorder(clock, fail=1, error=Throttled("429"))
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        await clock.advance(0.75)
    finally:
        await s.close()
    assert len(rec.starts) >= 2
    assert gaps(rec.starts)[0] >= 0.499
    assert gaps(rec.starts)[0] == pytest.approx(0.5)


async def test_worker_pool_bounds_polls_in_flight() -> None:
    clock = FakeClock()
    s = Scheduler(workers=4, first_jitter=0.0, clock=clock)
    await s.start()
    active = 0
    peak = 0
    runs = 0

    async def poll() -> int:
        nonlocal active, peak, runs
        active += 1
        peak = max(peak, active)
        await clock.sleep(0.05)
        active -= 1
        runs += 1
        return 0

    try:
        for i in range(40):
            s.ensure(f"ns/p{i}", "patients", 5.0, poll)
        await clock.advance(0.8)
    finally:
        await s.close()
    assert peak == 4
    assert runs == 40  # each ran once; 10 rounds of 4 at 0.05 s each
    assert max(s.stats.lags) >= 0.2  # the queue was real: later polls started late
    assert max(s.stats.lags) == pytest.approx(0.45)  # the tenth round waited for nine


async def test_a_run_that_gives_its_worker_back_lets_the_next_due_poll_start() -> None:
    """With one worker, polls whose second half waits on a slow disk (released early) still
    start on time; the releasing poller does not run again before its run ends, and a second
    release (or the run's own end) frees no extra worker."""
    clock = FakeClock()
    s = Scheduler(workers=1, first_jitter=0.0, jitter=0.0, clock=clock)
    await s.start()
    disk = asyncio.Event()
    starts: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    active = 0
    peak = 0

    def poll(name: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            nonlocal active, peak
            starts[name].append(clock.now())
            active += 1
            peak = max(peak, active)
            await clock.sleep(0.01)  # the PMS read, holding the worker
            active -= 1
            s.release_worker(f"ns/{name}", "patients")
            s.release_worker(f"ns/{name}", "patients")  # twice: still one worker given back
            if name == "a":
                await disk.wait()  # the fsync, without a worker
            return 0

        return run

    try:
        for name in starts:
            s.ensure(f"ns/{name}", "patients", 1.0, poll(name))
        await clock.advance(0.05)
        assert [len(v) for v in starts.values()] == [1, 1, 1]  # b and c did not wait for a
        assert max(s.stats.lags) == pytest.approx(0.02)  # each waited only for the reads before
        await clock.advance(2.0)
        assert len(starts["a"]) == 1  # a's run is still waiting on its disk: no second run
        assert len(starts["b"]) == 3
        disk.set()
        await clock.advance(0.0)
        assert starts["a"] == [1000.0, 1002.05]  # overdue once its run ended: at once
    finally:
        await s.close()
    assert peak == 1  # the reads never overlapped: one worker, never two


async def test_first_runs_are_spread_by_jitter() -> None:
    clock = FakeClock()
    s = Scheduler(first_jitter=1.0, rng=random.Random(7), clock=clock)
    await s.start()
    starts: list[float] = []

    async def poll() -> int:
        starts.append(clock.now())
        return 0

    try:
        t0 = clock.now()
        for i in range(50):
            s.ensure(f"ns/p{i}", "patients", 1.0, poll)
        await clock.advance(1.05)
    finally:
        await s.close()
    offsets = sorted(x - t0 for x in starts)
    assert len(offsets) == 50
    # Spread over the interval, not all at once: each tenth of the second got some.
    buckets = {int(o * 10) for o in offsets}
    assert len(buckets) >= 8


async def test_a_poller_can_start_after_a_fixed_delay_without_jitter_and_be_postponed() -> None:
    """What the engine's drift check uses: first run exactly `first_delay` after `ensure`,
    then every interval with no jitter; `postpone` moves the next run from now."""
    clock = FakeClock()
    s = Scheduler(first_jitter=1.0, jitter=0.5, rng=random.Random(1), clock=clock)
    await s.start()
    rec = Recorder(clock)
    t0 = clock.now()
    try:
        s.ensure("ns/a", "drift", 30.0, rec, first_delay=30.0, jitter=0.0)
        await clock.advance(29.9)
        assert rec.starts == []
        await clock.advance(0.1)
        assert [x - t0 for x in rec.starts] == [30.0]
        await clock.advance(50.0)  # 60 s
        assert [x - t0 for x in rec.starts] == [30.0, 60.0]
        s.postpone("ns/a", "drift", 30.0)  # at 80 s: the next run moves from 90 s to 110 s
        await clock.advance(29.0)
        assert len(rec.starts) == 2
        await clock.advance(1.0)
        assert [x - t0 for x in rec.starts] == [30.0, 60.0, 110.0]
        s.postpone("ns/none", "drift", 1.0)  # no such poller: nothing happens
    finally:
        await s.close()


@pytest.mark.looptime(end=600)
async def test_the_default_clock_is_the_event_loops_so_looptime_fast_forwards_it() -> None:
    """No clock given: the scheduler reads the loop's time; `looptime` makes 300 s take none."""
    s = Scheduler(first_jitter=0.0, jitter=0.0)
    await s.start()
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def poll() -> int:
        starts.append(loop.time())
        return 0

    try:
        s.ensure("ns/a", "patients", 60.0, poll)
        await elapse(300.5)
    finally:
        await s.close()
    assert [round(b - a, 3) for a, b in itertools.pairwise(starts)] == [60.0] * 5
