"""`AckPacer`: PMS writes give way to acknowledgments while requests arrive.

Pure: the pacer is bookkeeping over a clock, so the clock here is a number the test moves
(nothing is slept). Nothing else is involved.
"""

from __future__ import annotations

import pytest

from reconciler.writeback.pacing import AckPacer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def pacer(clock: Clock, **kw: float) -> AckPacer:
    return AckPacer(target=0.005, start_rate=100.0, min_rate=5.0, max_rate=1000.0, quiet=0.5,
                    interval=0.1, burst=2.0, clock=clock, **kw)  # fmt: skip


def writes_in(p: AckPacer, clock: Clock, seconds: float, *, lag: float | None = None) -> int:
    """Writes started in `seconds`, asking every ms (with an ack and a loop `lag` every ms when
    given)."""
    started = 0
    for _ in range(round(seconds * 1000)):
        clock.t += 0.001
        if lag is not None:
            p.ack()
            p.lag(lag)
        if p.delay() == 0.0:
            started += 1
    return started


def test_writes_are_not_paced_while_no_acknowledgment_is_being_sent() -> None:
    clock = Clock()
    p = pacer(clock)
    assert all(p.delay() == 0.0 for _ in range(1000))
    assert not p.busy


def test_while_the_api_loop_is_on_time_writes_start_at_the_start_rate_and_the_rate_grows() -> None:
    clock = Clock()
    p = pacer(clock)
    first = writes_in(p, clock, 0.1, lag=0.002)
    assert p.busy and 8 <= first <= 13  # ~100/s plus the burst of 2
    writes_in(p, clock, 1.0, lag=0.002)
    assert p.rate > 500.0  # grew by a quarter per 0.1 s window


def test_a_late_api_loop_halves_the_rate_down_to_the_floor() -> None:
    clock = Clock()
    p = pacer(clock)
    writes_in(p, clock, 0.15, lag=0.050)
    assert p.rate == 50.0
    writes_in(p, clock, 2.0, lag=0.050)
    assert p.rate == 5.0
    assert writes_in(p, clock, 1.0, lag=0.050) <= 7  # 5/s (plus the burst)


def test_delay_says_how_long_until_the_next_write_may_start() -> None:
    clock = Clock()
    p = pacer(clock)
    p.ack()
    assert p.delay() == 0.0 and p.delay() == 0.0  # the burst
    assert p.delay() == pytest.approx(0.01)  # one token at 100/s
    clock.t += 0.01
    assert p.delay() == 0.0


def test_after_a_quiet_spell_the_next_burst_starts_again_at_the_start_rate() -> None:
    clock = Clock()
    p = pacer(clock)
    writes_in(p, clock, 1.0, lag=0.050)
    assert p.rate == 5.0
    clock.t += 0.6  # no acknowledgment for longer than `quiet`
    assert p.delay() == 0.0 and p.rate == 100.0 and not p.busy


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_rate <= start_rate"):
        AckPacer(start_rate=1.0, min_rate=2.0)
    with pytest.raises(ValueError, match="burst >= 1"):
        AckPacer(burst=0.5)
