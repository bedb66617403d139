"""`AckPacer`: PMS writes give way to acknowledgments while requests are arriving.

The API and the drainer share one process and so one GIL (and, on a small machine, the same
cores). A 202 is owed now; a PMS write only has to happen soon. So while acknowledgments are
being sent the drainer starts writes at a limited rate, adjusted to how late the API's event
loop runs what is due (its lag, sampled every few ms while requests arrive): every `interval`
seconds, if the worst lag in that window was over `target`, the rate halves (down to
`min_rate`); otherwise it grows by a quarter (up to `max_rate`). When no acknowledgment was sent
for `quiet` seconds, writes are not paced at all (and the next burst starts at `start_rate`).

The loop's lag, not the acknowledgment time, is the signal: an acknowledgment also waits for
the fsync, and a slow disk must not throttle delivery; the lag grows only when the API thread
cannot get the CPU or the GIL, which is what fewer concurrent PMS writes give back.

Pure bookkeeping over a clock: `ack()` and `lag()` are called from the API thread (float
stores, safe under the GIL; a lost update only blurs one window), `delay()` from the drainer's
loop. No I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class AckPacer:
    """Rate limit for PMS writes that adapts to the API loop's lag (see the module)."""

    target: float = 0.005  # the API loop's worst lag per window to stay under (s)
    start_rate: float = 200.0  # writes/s when a burst of requests begins
    min_rate: float = 5.0
    max_rate: float = 5000.0
    quiet: float = 0.5  # no acknowledgment for this long: intake is idle, writes run freely
    interval: float = 0.1  # seconds between rate adjustments
    burst: float = 4.0  # writes that may start at once
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.min_rate <= self.start_rate <= self.max_rate:
            raise ValueError("AckPacer: need 0 < min_rate <= start_rate <= max_rate")
        if self.target <= 0 or self.interval <= 0 or self.burst < 1:
            raise ValueError("AckPacer: target and interval must be > 0, burst >= 1")
        self.rate = self.start_rate
        self._last_ack = float("-inf")
        self._peak = 0.0
        now = self.clock()
        self._adjusted_at = now
        self._tokens = self.burst
        self._filled_at = now

    def ack(self) -> None:
        """The API sent an acknowledgment (requests are arriving)."""
        self._last_ack = self.clock()

    def lag(self, seconds: float) -> None:
        """The API's event loop ran a timer `seconds` late."""
        if seconds > self._peak:
            self._peak = seconds

    @property
    def busy(self) -> bool:
        """Whether acknowledgments are being sent (one in the last `quiet` seconds)."""
        return self.clock() - self._last_ack <= self.quiet

    def delay(self) -> float:
        """0.0: start a write now (a token is taken). Otherwise: wait that long, then ask again."""
        now = self.clock()
        if now - self._last_ack > self.quiet:
            self.rate, self._peak = self.start_rate, 0.0
            self._tokens, self._filled_at, self._adjusted_at = self.burst, now, now
            return 0.0
        if now - self._adjusted_at >= self.interval:
            peak, self._peak = self._peak, 0.0
            if peak > self.target:
                self.rate = max(self.min_rate, self.rate / 2)
            else:
                self.rate = min(self.max_rate, self.rate * 1.25)
            self._adjusted_at = now
        self._tokens = min(self.burst, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
