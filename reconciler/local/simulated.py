"""`SimulatedPms`: under `pmsctl up --simulate`, the PMS simulator runs in-process (autotick on,
so appointments, status changes and patients keep changing), every practice is registered with
it, and the engine gets a `connection_override` that points the practice at the simulator with
the credentials the simulator made up. Its database lives in the state dir so a second run
continues the same simulated offices and resumes from the saved cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pms_drivers.base import Credentials
from reconciler.api.spec import PmsType, PracticeSpec


class SimulatedPms:
    """The in-process PMS simulator every practice is pointed at under `--simulate`."""

    def __init__(self, sim: Any, server_url: str) -> None:
        self.sim = sim
        self.server_url = server_url
        self._creds: dict[str, tuple[str, Credentials]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, db: Path, tick_seconds: float = 2.0) -> AsyncIterator[SimulatedPms]:
        """Start the simulator on a free loopback port; stops it and closes its database on exit."""
        from pms_simulator import Simulator

        sim = Simulator(db=str(db), autotick=True, tick_seconds=tick_seconds)
        try:
            async with sim.serve(host="127.0.0.1", port=0) as server_url:
                yield cls(sim, str(server_url))
        finally:
            sim.close()

    async def ensure(self, spec: PracticeSpec) -> None:
        """Register the practice with the simulator (seeded from its id on first use) unless
        already known with this PMS type. Seeding writes SQLite, so it runs off the loop."""
        known = self._creds.get(spec.practice_id)
        if known is not None and known[0] == spec.pms.type.value:
            return
        made = await asyncio.to_thread(self.sim.add_practice, spec.practice_id, spec.pms.type.value)
        self._creds[spec.practice_id] = (spec.pms.type.value, Credentials(dict(made)))

    def base_url(self, spec: PracticeSpec) -> str:
        """The simulator's base URL for the practice's PMS type (what the engine talks to)."""
        return str(self.sim.base_url(PmsType(spec.pms.type).value))

    def override(self, spec: PracticeSpec) -> tuple[str, Credentials] | None:
        """The engine's `connection_override`: the simulator's base URL for this PMS type and the
        credentials it made up for this practice (None for a practice not registered)."""
        known = self._creds.get(spec.practice_id)
        if known is None or known[0] != spec.pms.type.value:
            return None
        return self.base_url(spec), known[1]
