"""The poller scheduler on a real event loop with real (short) timers.

Nothing is faked: polls are plain coroutines that record when they ran. Intervals are a fraction
of a second so cadence can be observed quickly; timing assertions leave generous slack for a
loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import itertools
import random

from reconciler.engine.scheduler import Scheduler


class Recorder:
    """A poll function that records start times, concurrency, and can fail on demand."""

    def __init__(
        self, *, duration: float = 0.0, fail: int = 0, error: Exception | None = None
    ) -> None:
        self.starts: list[float] = []
        self.duration = duration
        self.fail = fail
        self.error = error or RuntimeError("boom")
        self.active = 0
        self.max_active = 0

    async def __call__(self) -> int:
        self.starts.append(asyncio.get_running_loop().time())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.duration:
                await asyncio.sleep(self.duration)
            if self.fail:
                self.fail -= 1
                raise self.error
            return 2
        finally:
            self.active -= 1


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_one_poller_per_key_and_kind_runs_at_its_interval() -> None:
    s = Scheduler(first_jitter=0.0, jitter=0.0)
    await s.start()
    rec = Recorder()
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        s.ensure("ns/a", "patients", 0.1, rec)  # idempotent: still one poller
        await asyncio.sleep(0.55)
    finally:
        await s.close()
    assert len(s) == 0
    assert 4 <= len(rec.starts) <= 7
    assert min(gaps(rec.starts)) >= 0.099
    assert rec.max_active == 1


async def test_interval_change_reschedules_without_a_second_poller() -> None:
    s = Scheduler(first_jitter=0.0, jitter=0.0)
    await s.start()
    rec = Recorder(duration=0.02)
    try:
        s.ensure("ns/a", "appointments", 0.4, rec)
        await asyncio.sleep(0.05)
        s.ensure("ns/a", "appointments", 0.1, rec)
        await asyncio.sleep(0.6)
        state = s.state("ns/a", "appointments")
    finally:
        await s.close()
    assert state is not None and state.interval_seconds == 0.1
    assert rec.max_active == 1
    assert len(rec.starts) >= 5  # at 0.4 s there would have been 2
    assert min(gaps(rec.starts)) >= 0.099


async def test_stop_cancels_a_run_in_flight_and_no_more_runs_happen() -> None:
    s = Scheduler(first_jitter=0.0)
    await s.start()
    slow = Recorder(duration=5.0)
    other = Recorder()
    try:
        s.ensure("ns/a", "patients", 0.1, slow)
        s.ensure("ns/a", "appointments", 0.1, other)
        s.ensure("ns/b", "patients", 0.1, other)
        await asyncio.sleep(0.05)
        assert slow.active == 1
        await s.stop_practice("ns/a")
        assert slow.active == 0  # cancelled, not left running
        assert s.kinds("ns/a") == {}
        assert s.kinds("ns/b") == {"patients": 0.1}
        n = len(slow.starts)
        await asyncio.sleep(0.3)
        assert len(slow.starts) == n
    finally:
        await s.close()


async def test_failures_back_off_exponentially_and_never_poll_faster_than_the_interval() -> None:
    seen: list[tuple[int, str | None]] = []
    s = Scheduler(
        first_jitter=0.0,
        jitter=0.0,
        max_backoff=0.4,
        on_result=lambda key, kind, st, err: seen.append((st.consecutive_failures, st.last_error)),
    )
    await s.start()
    rec = Recorder(fail=4)
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        await asyncio.sleep(1.6)
        state = s.state("ns/a", "patients")
    finally:
        await s.close()
    g = gaps(rec.starts)
    # 0.1, 0.2, 0.4, 0.4 (capped), then back to the interval after the first success.
    assert [round(x, 1) for x in g[:4]] == [0.1, 0.2, 0.4, 0.4]
    assert min(g) >= 0.099
    assert [f for f, _ in seen[:5]] == [1, 2, 3, 4, 0]
    assert seen[0][1] == "boom"
    assert state is not None and state.consecutive_failures == 0 and state.last_error is None
    assert state.events_emitted == 2 * (len(rec.starts) - 4)
    assert state.last_success is not None


async def test_retry_after_from_the_error_is_honoured() -> None:
    class Throttled(Exception):
        retry_after = 0.5

    s = Scheduler(first_jitter=0.0, jitter=0.0)
    await s.start()
    rec = Recorder(fail=1, error=Throttled("429"))
    try:
        s.ensure("ns/a", "patients", 0.1, rec)
        await asyncio.sleep(0.75)
    finally:
        await s.close()
    assert len(rec.starts) >= 2
    assert gaps(rec.starts)[0] >= 0.499


async def test_worker_pool_bounds_polls_in_flight() -> None:
    s = Scheduler(workers=4, first_jitter=0.0)
    await s.start()
    active = 0
    peak = 0
    runs = 0

    async def poll() -> int:
        nonlocal active, peak, runs
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        runs += 1
        return 0

    try:
        for i in range(40):
            s.ensure(f"ns/p{i}", "patients", 5.0, poll)
        await asyncio.sleep(0.8)
    finally:
        await s.close()
    assert peak == 4
    assert runs == 40  # each ran once; 10 rounds of 4 at 0.05 s each
    assert max(s.stats.lags) >= 0.2  # the queue was real: later polls started late


async def test_first_runs_are_spread_by_jitter() -> None:
    s = Scheduler(first_jitter=1.0, rng=random.Random(7))
    await s.start()
    starts: list[float] = []

    async def poll() -> int:
        starts.append(asyncio.get_running_loop().time())
        return 0

    try:
        t0 = asyncio.get_running_loop().time()
        for i in range(50):
            s.ensure(f"ns/p{i}", "patients", 1.0, poll)
        await asyncio.sleep(1.05)
    finally:
        await s.close()
    offsets = sorted(x - t0 for x in starts)
    assert len(offsets) == 50
    # Spread over the interval, not all at once: each tenth of the second got some.
    buckets = {int(o * 10) for o in offsets}
    assert len(buckets) >= 8
