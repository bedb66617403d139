"""Waiting in tests without waiting for timers.

- `elapse(seconds)`: let loop time pass in a test marked `@pytest.mark.looptime`. The `looptime`
  plugin fast-forwards the event loop to its next timer whenever nothing else can run, so this
  takes no real time; on a real loop it raises instead of sleeping, so a test cannot silently
  start waiting for a timer again.
- `eventually(check, ...)`: poll `check()` until it returns something truthy (and return it),
  failing after `timeout` seconds of loop time; for conditions that come from real I/O (a
  server answering, a process writing a line). On a looptime loop the timeout is fake seconds.
- `wait_until(check, ...)`: the same for synchronous tests that wait for a real process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def fast_forwarded() -> bool:
    """True when the running loop's time is looptime's (fake, fast-forwarded)."""
    return bool(getattr(asyncio.get_running_loop(), "looptime_on", False))


async def elapse(seconds: float) -> None:
    """Let `seconds` of loop time pass; only on a looptime loop (see the module docstring)."""
    if not fast_forwarded():
        raise RuntimeError("elapse() needs @pytest.mark.looptime: on a real clock it would wait")
    await asyncio.sleep(seconds)


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition", step: float = 0.05
) -> Any:
    """`check()`'s first truthy value; AssertionError after `timeout` seconds of loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


def wait_until(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition", step: float = 0.05
) -> Any:
    """`check()`'s first truthy value, polling a real process or server every `step` seconds;
    AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
