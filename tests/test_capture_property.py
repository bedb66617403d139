"""Random hostile histories through every driver: nothing lost, nothing doubled (hypothesis).

Real: the simulator on a loopback port (aiohttp, in-memory SQLite) with its adversary on, the
real driver of each PMS (Open Dental, and the bridge as Dentrix and as Eaglesoft) on a real
client, restarted mid-read when the history says so. Hypothesis draws the histories (office
changes, clock ticks of 0-3 s so reads and changes share seconds, polls that are hostile or not,
restarts) and the adversary's rates; `pms_simulator.checker` counts lost and doubled against the
simulator's own change log. The simulated clock only moves when a step says so: nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pms_simulator import Simulator
from pms_simulator.adversary import AdversaryConfig
from pms_simulator.capture import KINDS, Change, Poll, Report, Step, Tick, run_history

steps = st.lists(
    st.one_of(
        st.builds(Change, st.integers(1, 4)),
        st.builds(Tick, st.sampled_from([0, 0, 1, 2, 3])),
        st.builds(
            Poll,
            st.sampled_from(KINDS),
            st.booleans(),
            st.one_of(st.none(), st.none(), st.none(), st.integers(1, 4)),
        ),
    ),
    min_size=1,
    max_size=60,
)
configs = st.builds(
    AdversaryConfig,
    seed=st.integers(0, 2**16),
    change_rate=st.sampled_from([0.0, 0.3, 0.8]),
    max_changes=st.integers(1, 3),
    backdate_rate=st.sampled_from([0.0, 0.2]),
    throttle_rate=st.sampled_from([0.0, 0.1]),
    drop_rate=st.sampled_from([0.0, 0.1]),
    shuffle=st.booleans(),
)


async def _run(pms: str, history: list[Step], config: AdversaryConfig) -> Report:
    sim = Simulator(db=":memory:")
    try:
        async with sim.serve(host="127.0.0.1", port=0):
            return await run_history(sim, f"prop-{pms}", pms, history, config=config, page_limit=40)
    finally:
        sim.close()


@pytest.mark.parametrize("pms", ["OpenDental", "Dentrix", "Eaglesoft"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=steps, config=configs)
def test_every_change_reaches_the_sink_exactly_once(
    pms: str, history: list[Step], config: AdversaryConfig
) -> None:
    report = asyncio.run(_run(pms, history, config))
    for verdict in report.verdicts.values():
        assert verdict.ok, "\n".join([*report.lines(), *verdict.examples])
    assert report.verdicts["patients"].required >= 300  # the first read is checked too
