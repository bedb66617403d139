"""Two resources naming the same practiceId: the older one manages the practice, the other waits.

Real: the PMS simulator on a loopback port, the drivers, the scheduler, SQLite and the JSONL sink
(the fixtures of `test_engine.py`). Faked: time, on the `looptime` plugin's event loop, as in
`test_engine.py`. A second resource for the same practice would double every
event and could write a note twice, so the engine runs exactly one of them and says why in the
other's status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_engine import FAST, Statuses, make_engine, spec_for
from timing import eventually

from pms_simulator import Simulator
from reconciler.engine.core import ConditionType, PracticeStatus, Reason
from reconciler.engine.engine import Engine

pytestmark = pytest.mark.looptime(end=3600)

OLDER = "2026-11-01T08:00:00Z"
NEWER = "2026-11-20T08:00:00Z"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(rate_limit_per_second=1000, burst=1000)
    s.add_practice("acme", "OpenDental")
    async with s.serve():
        yield s
    s.close()


def cond(status: PracticeStatus | None, ctype: ConditionType) -> tuple[str, str, str]:
    assert status is not None
    c = next(c for c in status.conditions if c.type == ctype)
    return c.status, c.reason, c.message


def requests_since(sim: Simulator, n: int) -> int:
    return len(sim.requests("acme")) - n


async def test_a_newer_resource_with_the_same_practice_id_is_refused_and_does_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    statuses = Statuses()
    engine = make_engine(sim, tmp_path, statuses)
    await engine.start()
    try:
        first = await engine.apply("clinic-a/acme", spec_for(sim), created=OLDER)
        assert cond(first, ConditionType.READY)[0] == "True"
        second = await engine.apply("clinic-b/acme-copy", spec_for(sim), created=NEWER)
        status, reason, message = cond(second, ConditionType.READY)
        assert (status, reason) == ("False", Reason.DUPLICATE_PRACTICE_ID)
        assert "'acme' is already managed by clinic-a/acme" in message
        assert "its own practiceId or delete one" in message
        assert cond(second, ConditionType.SYNCED)[:2] == ("False", Reason.DUPLICATE_PRACTICE_ID)
        assert cond(second, ConditionType.POLLERS_RUNNING)[:2] == (
            "False",
            Reason.DUPLICATE_PRACTICE_ID,
        )
        assert cond(second, ConditionType.PMS_REACHABLE)[:2] == ("Unknown", Reason.NOT_CHECKED)
        assert engine.scheduler.kinds("clinic-b/acme-copy") == {}
        assert second.pollers == {}
        # The writeback path finds the managing resource only.
        target = engine.target("acme")
        assert target is not None and target.key == "clinic-a/acme"
        # The first one keeps running, untouched.
        assert cond(engine.status("clinic-a/acme"), ConditionType.READY)[0] == "True"
        assert len(engine.scheduler.kinds("clinic-a/acme")) == 4  # three pollers + drift
    finally:
        await engine.stop()


async def test_an_older_resource_arriving_later_takes_over_and_the_newer_one_stops(
    sim: Simulator, tmp_path: Path
) -> None:
    """After an operator restart the resources arrive in any order: the older one still wins."""
    statuses = Statuses()
    engine = make_engine(sim, tmp_path, statuses)
    await engine.start()
    try:
        newer = await engine.apply("clinic-b/acme-copy", spec_for(sim), created=NEWER)
        assert cond(newer, ConditionType.READY)[0] == "True"
        older = await engine.apply("clinic-a/acme", spec_for(sim), created=OLDER)
        assert cond(older, ConditionType.READY)[0] == "True"
        await eventually(
            lambda: (
                cond(engine.status("clinic-b/acme-copy"), ConditionType.READY)[1]
                == Reason.DUPLICATE_PRACTICE_ID
            )
        )
        assert engine.scheduler.kinds("clinic-b/acme-copy") == {}
        assert engine.target("acme").key == "clinic-a/acme"  # type: ignore[union-attr]
        # The demotion was reported to the status listener (and so as an Event), not just kept.
        demoted = [
            t
            for key, _, ts in statuses.calls
            if key == "clinic-b/acme-copy"
            for t in ts
            if t.type == ConditionType.READY
        ]
        assert demoted[-1].new_status == "False"
        assert demoted[-1].reason == Reason.DUPLICATE_PRACTICE_ID
    finally:
        await engine.stop()


async def test_deleting_the_managing_resource_lets_the_duplicate_take_over(
    sim: Simulator, tmp_path: Path
) -> None:
    engine = make_engine(sim, tmp_path, Statuses(), settings=FAST)
    await engine.start()
    try:
        await engine.apply("clinic-a/acme", spec_for(sim), created=OLDER)
        await engine.apply("clinic-b/acme-copy", spec_for(sim), created=NEWER)
        before = len(sim.requests("acme"))
        await engine.remove("clinic-a/acme")
        await eventually(
            lambda: cond(engine.status("clinic-b/acme-copy"), ConditionType.READY)[0] == "True"
        )
        assert engine.target("acme").key == "clinic-b/acme-copy"  # type: ignore[union-attr]
        assert len(engine.scheduler.kinds("clinic-b/acme-copy")) == 4
        await eventually(lambda: requests_since(sim, before) > 0)
    finally:
        await engine.stop()


async def test_giving_the_duplicate_its_own_practice_id_makes_it_ready(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_practice("acme-north", "OpenDental")
    engine: Engine = make_engine(sim, tmp_path, Statuses())
    await engine.start()
    try:
        await engine.apply("clinic-a/acme", spec_for(sim), created=OLDER)
        dup = await engine.apply("clinic-b/north", spec_for(sim), created=NEWER)
        assert cond(dup, ConditionType.READY)[1] == Reason.DUPLICATE_PRACTICE_ID
        fixed = await engine.apply(
            "clinic-b/north",
            spec_for(
                sim,
                practiceId="acme-north",
                pms={
                    "type": "OpenDental",
                    "url": sim.base_url("OpenDental"),
                    "credentialsSecretRef": {"name": "acme-north-pms"},
                },
            ),
            generation=2,
            created=NEWER,
        )
        assert cond(fixed, ConditionType.READY)[0] == "True", fixed.conditions
        assert engine.target("acme").key == "clinic-a/acme"  # type: ignore[union-attr]
        assert engine.target("acme-north").key == "clinic-b/north"  # type: ignore[union-attr]
        # The first one was not disturbed by the rename.
        assert cond(engine.status("clinic-a/acme"), ConditionType.READY)[0] == "True"
    finally:
        await engine.stop()
