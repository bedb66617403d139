"""Waiting in tests without waiting for timers.

- `elapse(seconds)`: let loop time pass in a test marked `@pytest.mark.looptime`. The `looptime`
  plugin fast-forwards the event loop to its next timer whenever nothing else can run, so this
  takes no real time; on a real loop it raises instead of sleeping, so a test cannot silently
  start waiting for a timer again.
- `eventually(check, ...)`: poll `check()` until it returns something truthy (and return it),
  failing after `timeout` seconds of loop time; for conditions that come from real I/O (a
  server answering, a process writing a line). `check` may be a coroutine function (a check
  that asks the API server). On a looptime loop the timeout is fake seconds.
- `wait_until(check, ...)`: the same for synchronous tests that wait for a real process.
- `stop_processes(*procs)`: SIGTERM the child processes still running, wait up to `grace`
  seconds for each, and SIGKILL the ones that did not stop (a test's `finally`).
- `Monotonic`: a `time.monotonic` stand-in that a test moves forward (`jump`), for code that
  takes a monotonic clock function (the simulator's rate-limit and outage windows, the
  transport's `Retry-After` pause): the window ends because the test says so, not because
  the test slept through it.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
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
    await asyncio.sleep(seconds)  # looptime's loop: fast-forwarded, takes no real time


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, what: str = "condition", step: float = 0.05
) -> Any:
    """`check()`'s (or its awaited result's) first truthy value; AssertionError after `timeout`
    seconds of loop time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)  # the polling step between checks of real I/O


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
        time.sleep(step)  # the polling step between checks of a real process


class Monotonic:
    """Real monotonic time plus an offset that only grows: `jump(seconds)` moves it forward.

    Real time keeps flowing underneath (a token bucket still refills between requests); a
    jump is a stretch of time that passes at once.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        """Move this clock `seconds` forward."""
        self.offset += seconds


def stop_processes(*procs: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM every process still running, then wait up to `grace` seconds for each and SIGKILL
    the ones that are still there; every process has ended when this returns."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
