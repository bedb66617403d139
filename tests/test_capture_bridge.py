"""Bridge change capture: a failed page keeps the pages before it (real HTTP on loopback).

Real: the simulator's bridge agent (aiohttp, in-memory SQLite) on a loopback port, the Dentrix and
Eaglesoft drivers on a plain httpx client (no token bucket: it would pause on the wall clock).
The simulator's adversary throttles one chosen request; nothing sleeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from pms_drivers.base import Credentials
from pms_drivers.bridge import BridgeDriver
from pms_drivers.errors import RateLimitedError
from pms_drivers.registry import DRIVERS
from pms_simulator import Simulator
from pms_simulator.adversary import Adversary, AdversaryConfig, ReadVerdict
from pms_simulator.state import Practice


class _ThrottleRead(Adversary):
    """Answers the n-th read 429 (once)."""

    nth = 0

    def before_read(self, p: Practice, path: str) -> ReadVerdict:
        self.reads = getattr(self, "reads", 0) + 1
        return ReadVerdict(throttle=self.reads == self.nth, retry_after=0)


@dataclass
class Env:
    sim: Simulator
    driver: BridgeDriver
    pid: str


@pytest.fixture(params=["Dentrix", "Eaglesoft"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    pms = request.param
    sim = Simulator(db=":memory:")
    pid = f"bridge-{pms}"
    async with sim.serve(host="127.0.0.1", port=0):
        creds = Credentials(dict(sim.add_practice(pid, pms)))
        sim.state.practice(pid)
        base = sim.base_url(pms)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            driver = DRIVERS[pms](client, base, creds, page_limit=100)  # type: ignore[call-arg]
            assert isinstance(driver, BridgeDriver)
            yield Env(sim, driver, pid)


async def test_a_throttled_page_ends_the_read_with_the_pages_before_it_kept(env: Env) -> None:
    adversary = _ThrottleRead(env.sim.state, AdversaryConfig(shuffle=False))
    adversary.nth = 3  # the third page of 100 patients
    env.sim.state.adversary = adversary
    first = await env.driver.patients_since(None)
    assert len(first.records) == 200
    rest = await env.driver.patients_since(first.cursor)
    ids = [p.id for p in first.records] + [p.id for p in rest.records]
    assert len(ids) == len(set(ids)) == 300


async def test_a_read_whose_first_page_is_throttled_raises_a_rate_limit_error(env: Env) -> None:
    adversary = _ThrottleRead(env.sim.state, AdversaryConfig(shuffle=False))
    adversary.nth = 1
    env.sim.state.adversary = adversary
    with pytest.raises(RateLimitedError):
        await env.driver.patients_since(None)
