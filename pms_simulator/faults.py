"""Fault injection and rate limiting, decided per request before the handler runs.

`FaultConfig` is what a test or `PUT /_admin/practices/{id}/faults` sets for one practice;
`Gate.check()` turns it into a verdict for one request: revoked credentials (401), an outage
window (503 + Retry-After),
the per-practice token bucket (429 + Retry-After), a random 5xx at `error_rate` (writes also at
`write_error_rate`), and added latency. `Gate.lose_write()` is asked after a write was stored: at
`lost_write_rate` its answer is replaced by the error status (the note is in the PMS, the caller
sees a 5xx); `write_answer_delay_ms` holds a stored write's answer back. Randomness comes from a per-practice generator seeded from
the practice id, so a fault run repeats. Time is real (monotonic), not the simulated clock:
rate limits and outages are about the caller's wall clock. `Gate(clock=)` takes that monotonic
clock (default `time.monotonic`) so a test can move it forward instead of waiting out a window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from pms_simulator.clock import rng_for


@dataclass(frozen=True)
class FaultConfig:
    """One practice's faults. All off by default; `rate_limit_per_second=None` = simulator default."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    write_error_rate: float = 0.0
    #: Writes that are stored and then answered with `status` all the same: the answer lost on
    #: the way back, so the caller cannot tell the write happened (the case retries must not
    #: double).
    lost_write_rate: float = 0.0
    #: A stored write's answer waits this long: the window in which a caller that dies leaves a
    #: note it never recorded (a crash test aims its kills there without aiming).
    write_answer_delay_ms: float = 0.0
    outage: bool = False
    revoked: bool = False  # the practice disabled its key/token: every request gets 401
    outage_seconds: float | None = None  # with outage=True: a window that ends by itself
    status: int = 503  # the status the error rates answer with
    retry_after: int = 1  # seconds, on outage answers
    rate_limit_per_second: float | None = None
    burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "write_error_rate", "lost_write_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("latency_ms", "write_answer_delay_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {self.status}")
        if self.rate_limit_per_second is not None and self.rate_limit_per_second <= 0:
            raise ValueError("rate_limit_per_second must be positive")

    @classmethod
    def from_json(cls, body: dict[str, object]) -> FaultConfig:
        """Build from the admin endpoint's JSON (snake_case or camelCase keys); ValueError if bad."""
        names = {f.name: f.name for f in fields(cls)}
        names.update({_camel(n): n for n in list(names)})
        kwargs: dict[str, object] = {}
        for key, value in body.items():
            if key not in names:
                raise ValueError(
                    f"unknown fault setting {key!r}; known: {', '.join(sorted(n for n in names.values()))}"
                )
            kwargs[names[key]] = value
        return cls(**kwargs)  # type: ignore[arg-type]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


@dataclass(frozen=True)
class Verdict:
    """What to do with a request: answer `status` now (with Retry-After), or go on after `delay`."""

    status: int | None = None
    retry_after: int | None = None
    reason: str = ""
    delay: float = 0.0


@dataclass
class TokenBucket:
    """A token bucket: `rate` tokens per second, at most `burst` banked."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float) -> float:
        """Take one token; 0.0 if granted, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Gate:
    """One practice's faults, bucket and random stream."""

    def __init__(
        self,
        practice_id: str,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = (rate, burst)
        self._clock = clock
        self.config = FaultConfig()
        self.bucket = TokenBucket(rate, burst, last=clock())
        self._rng = rng_for(practice_id, "faults")
        self._outage_until: float | None = None

    def configure(self, config: FaultConfig) -> None:
        """Replace the practice's faults (a fresh bucket when the limit changes)."""
        rate = config.rate_limit_per_second or self._default[0]
        burst = config.burst or (
            self._default[1] if config.rate_limit_per_second is None else max(1.0, rate)
        )
        if (rate, burst) != (self.bucket.rate, self.bucket.burst):
            self.bucket = TokenBucket(rate, burst, last=self._clock())
        self._outage_until = (
            self._clock() + config.outage_seconds
            if config.outage and config.outage_seconds is not None
            else None
        )
        self.config = config

    def check(self, is_write: bool) -> Verdict:
        """Decide this request's fate (cheap: a few float operations)."""
        cfg = self.config
        if cfg.revoked:
            return Verdict(401, None, "the credentials were revoked by the practice")
        now = self._clock()
        if cfg.outage and (self._outage_until is None or now < self._outage_until):
            left = cfg.retry_after if self._outage_until is None else self._outage_until - now
            return Verdict(503, max(1, math.ceil(left)), "the server is down for maintenance")
        wait = self.bucket.take(now)
        if wait > 0:
            return Verdict(429, max(1, math.ceil(wait)), "rate limit exceeded")
        if cfg.error_rate and self._rng.random() < cfg.error_rate:
            return Verdict(cfg.status, 1 if cfg.status in (429, 503) else None, "injected error")
        if is_write and cfg.write_error_rate and self._rng.random() < cfg.write_error_rate:
            return Verdict(
                cfg.status, 1 if cfg.status in (429, 503) else None, "injected write error"
            )
        return Verdict(delay=cfg.latency_ms / 1000.0)

    def lose_write(self) -> bool:
        """After a write was stored: whether to answer it with the error status anyway."""
        rate = self.config.lost_write_rate
        return bool(rate) and self._rng.random() < rate
