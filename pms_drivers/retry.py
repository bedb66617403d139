"""The one place that retries PMS calls: capped exponential backoff with full jitter.

`with_retry(op, policy=...)` calls `op()` until it succeeds, raises an error that retrying cannot
fix, or runs out of attempts. Only `TemporaryPmsError` (timeouts, connection errors, 5xx, 429) is
retried; `PermanentPmsError`, `PmsNotFoundError` and `PmsAuthError` are raised at once. Callers
outside the drivers (the engine's HTTP event sink) name their own retryable errors with
`retry_on`, so every retry in the product follows this one schedule. The wait
before attempt n+1 is uniform in [0, min(max_delay, base_delay * 2**(n-1))] ("full jitter"), and
never shorter than the error's `retry_after` when the PMS sent one.

Drivers never retry on their own; callers wrap whole operations (a write is idempotent, see the
driver modules, so retrying it is safe).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pms_drivers.errors import TemporaryPmsError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called before each wait: (attempt that failed, its error, seconds about to wait). The error is
#: a `TemporaryPmsError` unless the caller passed other `retry_on` types.
OnRetry = Callable[[int, Any, float], Awaitable[None] | None]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `max_attempts` calls in all, waits from `base_delay` capped at `max_delay`."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}"
            )
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The jittered wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * float(2.0 ** (attempt - 1)))
        return rng() * ceiling

    def delay(
        self,
        attempt: int,
        error: Exception,
        rng: Callable[[], float] = random.random,
    ) -> float:
        """The wait before the next attempt: the backoff, but at least the server's Retry-After
        (the error's `retry_after`, when it has one)."""
        wait = self.backoff(attempt, rng)
        retry_after: float | None = getattr(error, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    retry_on: tuple[type[Exception], ...] = (TemporaryPmsError,),
) -> T:
    """Run `op()` until it succeeds; retry only `retry_on` errors (`TemporaryPmsError`), at most
    `policy.max_attempts` calls.

    The last retryable error is re-raised when attempts run out; any other exception propagates
    at once. `sleep` and `rng` are injectable so the schedule itself can be tested exactly.
    """
    attempt = 1
    while True:
        try:
            return await op()
        except retry_on as exc:
            if attempt >= policy.max_attempts:
                raise
            wait = policy.delay(attempt, exc, rng)
            log.info(
                "attempt %d/%d failed (%s); retrying in %.2fs",
                attempt,
                policy.max_attempts,
                exc,
                wait,
            )
            if on_retry is not None:
                result = on_retry(attempt, exc, wait)
                if inspect.isawaitable(result):
                    await result
            await sleep(wait)
            attempt += 1
