"""Drive a real PMS driver over real HTTP through a history of hostile events, then check it.

A history is a list of steps (`Change`, `Tick`, `Poll`) that the property test draws with
hypothesis and the soak (`bench/soak_capture.py`) draws from a seeded random generator:

- `Change(n)`: the office makes n changes now, between polls (stamped with the clock's second);
- `Tick(s)`: the simulated clock moves on s seconds (0 keeps polls and changes in one second);
- `Poll(kind, hostile, restart_after)`: one poll of `kind`; with `hostile` the simulator's
  adversary may change rows before each of its requests, shuffle, throttle (429) and cut bodies
  off; with `restart_after` the reader dies after that many requests and a new driver on a new
  client starts from the stored cursor, as a restarted process would.

A poll that fails (429, dropped connection, a read that did not settle) keeps its cursor, like
the engine; a bridge poll that ended early at a failed page counts as a poll up to its cursor
only (it is no proof about later changes). Records of a successful poll are "handed to the sink", then its cursor is stored.
The run ends with quiet polls until nothing new comes, and `pms_simulator.checker` compares the
records with the simulator's change log.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from pms_drivers.base import Credentials, PmsDriver
from pms_drivers.errors import PmsError
from pms_drivers.opendental import OpenDentalDriver
from pms_drivers.registry import DRIVERS
from pms_drivers.retry import RetryPolicy
from pms_drivers.transport import AiohttpTransport
from pms_simulator.adversary import Adversary, AdversaryConfig
from pms_simulator.checker import (
    PROJECTIONS,
    Verdict,
    check_flow,
    check_records,
    record_state,
    versions_from_log,
)
from pms_simulator.checker import (
    Poll as PollWindow,
)
from pms_simulator.server import Simulator

KINDS = ("appointmentStatus", "appointments", "patients")
_TWO_TRIES = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)
#: Quiet polls at the end of a run before a kind that still brings records is an error.
QUIET_POLLS = 20


@dataclass(frozen=True)
class Change:
    """The office makes `count` changes now."""

    count: int


@dataclass(frozen=True)
class Tick:
    """The simulated clock moves on `seconds`."""

    seconds: int


@dataclass(frozen=True)
class Poll:
    """One poll of `kind` (one of KINDS)."""

    kind: str
    hostile: bool = True
    restart_after: int | None = None  # requests before the reader dies, or None


Step = Change | Tick | Poll


class ReaderRestart(Exception):
    """The reader process died mid-read (raised by the kill switch, never by a driver)."""


class _KillSwitch(httpx.AsyncBaseTransport):
    """Wraps the network transport; when armed, the n-th request kills the reader."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.left: int | None = None
        #: A request of the current poll failed (an error status or a broken connection).
        self.troubled = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left is not None:
            self.left -= 1
            if self.left <= 0:
                self.left = None
                raise ReaderRestart("the reader was restarted mid-read")
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.troubled = True
            raise
        self.troubled |= response.status_code >= 400
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Report:
    """What a run did and what the checker found, per kind."""

    pms: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    polls: int = 0
    failed_polls: int = 0
    restarts: int = 0
    changes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts.values())

    def lines(self) -> list[str]:
        head = (
            f"{self.pms}: {self.polls} polls ({self.failed_polls} failed, "
            f"{self.restarts} restarts), changes made: {sum(self.changes.values())}"
        )
        return [head, *(f"  {v.line()}" for v in self.verdicts.values())]


class _Reader:
    """A driver on its own client, with the stored cursors (what survives a restart)."""

    def __init__(self, sim: Simulator, pms: str, credentials: Credentials, page_limit: int):
        self.sim, self.pms, self.credentials, self.page_limit = sim, pms, credentials, page_limit
        self.cursors: dict[str, str | None] = dict.fromkeys(KINDS)
        self.client: httpx.AsyncClient | None = None
        self.kill: _KillSwitch | None = None
        self.driver: PmsDriver | None = None

    async def start(self) -> PmsDriver:
        """A new client and driver, as a restarted process builds them.

        The client is the production network transport without the practice's token bucket, and
        the Open Dental driver's page retries wait on a clock that does not wait: waiting is not
        what this tests, and a run must take no longer on a quiet machine than it needs.
        """
        base = self.sim.base_url(self.pms)
        self.kill = _KillSwitch(AiohttpTransport(max_connections=2))
        self.client = httpx.AsyncClient(base_url=base, transport=self.kill, timeout=30)
        driver: PmsDriver
        if self.pms == "OpenDental":
            # Two attempts a page: both a page asked again and a read given up happen.
            driver = OpenDentalDriver(
                self.client, base, self.credentials, page_retry=_TWO_TRIES, sleep=_no_wait
            )
        else:
            driver = DRIVERS[self.pms](
                self.client, base, self.credentials, page_limit=self.page_limit
            )  # type: ignore[call-arg]
        self.driver = driver
        return driver

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        self.client = self.kill = self.driver = None

    async def poll(self, kind: str, photos: bool = False) -> list[Any]:
        driver = self.driver or await self.start()
        cursor = self.cursors[kind]
        if kind == "appointmentStatus":
            page: Any = await driver.appointment_status_since(cursor)
        elif kind == "appointments":
            page = await driver.appointments_since(cursor)
        else:
            page = await driver.patients_since(cursor, photos=photos)
        self.cursors[kind] = page.cursor
        return list(page.records)


async def run_history(
    sim: Simulator,
    practice_id: str,
    pms: str,
    steps: Sequence[Step],
    *,
    config: AdversaryConfig,
    page_limit: int = 50,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run `steps` against a fresh practice `practice_id` of `sim` (which must be serving)."""
    state = sim.state
    state.record_rows = True
    credentials = Credentials(dict(sim.add_practice(practice_id, pms)))
    p = state.practice(practice_id)
    # The adversary throttles on purpose; the simulator's own wall-clock rate limit would
    # throttle by how fast this machine is, which is no part of the history.
    sim.set_faults(practice_id, rate_limit_per_second=1e9, burst=1e9)
    adversary = Adversary(state, config)
    adversary.enabled = False
    state.adversary = adversary
    family = "OpenDental" if pms == "OpenDental" else "Bridge"
    reader = _Reader(sim, pms, credentials, page_limit)
    delivered: dict[str, list[Any]] = {k: [] for k in KINDS}
    windows: dict[str, list[PollWindow]] = {k: [] for k in KINDS}
    report = Report(pms)

    async def poll(kind: str, restart_after: int | None) -> int:
        report.polls += 1
        await (reader.start() if reader.driver is None else _noop())
        assert reader.kill is not None
        reader.kill.left = restart_after
        reader.kill.troubled = False
        start = p.seq
        try:
            records = await reader.poll(kind)
        except ReaderRestart:
            report.restarts += 1
            await reader.stop()
            return -1
        except PmsError:
            report.failed_polls += 1
            return -1
        finally:
            if reader.kill is not None:
                reader.kill.left = None
        # A bridge read that met a failed page ends early at an exact cursor: it did not look
        # past it, so it proves nothing about what was current after it.
        if not (family == "Bridge" and reader.kill is not None and reader.kill.troubled):
            windows[kind].append(PollWindow(start, p.seq))
        delivered[kind].extend(records)
        return len(records)

    # The status baseline: flow already in place before the run is not a change to deliver.
    baseline = p.seq
    for kind in KINDS:
        while await poll(kind, None) < 0:
            pass
    status_from = len(delivered["appointmentStatus"])
    adversary.enabled = True
    for n, step in enumerate(steps):
        if isinstance(step, Change):
            adversary.change(p, step.count)
        elif isinstance(step, Tick):
            if step.seconds:
                sim.advance(minutes=step.seconds / 60)
        else:
            adversary.enabled = step.hostile
            await poll(step.kind, step.restart_after)
            adversary.enabled = True
        if progress is not None:
            progress(n + 1, len(steps))
    # Quiet end: the clock moves past the overlap, then every kind is read until it is dry.
    adversary.enabled = False
    sim.advance(minutes=5 / 60)
    for kind in KINDS:
        for _ in range(QUIET_POLLS):
            if await poll(kind, None) == 0:
                break
        else:
            raise RuntimeError(f"{kind}: no quiet poll came back empty in {QUIET_POLLS} tries")
    await reader.stop()
    state.adversary = None
    report.changes = dict(adversary.made)

    for kind in ("appointments", "patients"):
        versions = versions_from_log(sim.changes(practice_id, kind), PROJECTIONS[(family, kind)])
        got = [(r.id, record_state(family, kind, r)) for r in delivered[kind]]
        report.verdicts[kind] = check_records(kind, versions, got, windows[kind])
    truth = [
        (str(c["appointment_id"]), str(c["status"]))
        for c in sim.changes(practice_id, "appointmentStatus")
        if int(c["seq"]) > baseline
    ]
    got_flow = [(r.appointment_id, r.status) for r in delivered["appointmentStatus"][status_from:]]
    report.verdicts["appointmentStatus"] = check_flow("appointmentStatus", truth, got_flow)
    return report


async def _noop() -> None:
    return None


async def _no_wait(seconds: float) -> None:
    return None


def random_history(rng: random.Random, changes: int) -> list[Step]:
    """A history of a little over `changes` office changes between polls (the adversary adds
    more inside hostile polls), for the soak; hypothesis draws its own."""
    steps: list[Step] = []
    made = 0
    # A change the office cannot make (no appointment left to move on) is skipped: aim higher.
    while made < changes * 1.3:
        roll = rng.random()
        if roll < 0.3:
            n = rng.randint(1, 4)
            steps.append(Change(n))
            made += n
        elif roll < 0.45:
            steps.append(Tick(rng.choice((0, 1, 1, 2, 3))))
        else:
            restart = rng.randint(1, 4) if rng.random() < 0.08 else None
            steps.append(Poll(rng.choice(KINDS), rng.random() < 0.8, restart))
    return steps
