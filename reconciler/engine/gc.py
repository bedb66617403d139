"""Garbage-collector tuning for a process that holds thousands of practices (`GcPolicy`).

The policy is given the number of practices and a monotonic time by its caller (the engine's
status loop, on the engine's clock), so a test drives it with plain numbers.
"""

from __future__ import annotations

import gc


class GcPolicy:
    """Keeps the cyclic garbage collector's full passes short in a process holding many practices.

    Each practice keeps ~250 objects the collector tracks (client, connection pool, driver,
    catalogs, pollers), so at 4,000 practices a full pass walks a million objects that never
    become garbage: bench_scale measured 3 full passes in 30 s, up to 1 s each, and no poll
    starts during one (so they set the p99 schedule lag). Objects alive once the engine holds
    `min_practices`, and again whenever it grew by `growth`, are moved out of the collector's
    sight (`gc.freeze()`; reference counting still frees them). A cycle that becomes garbage
    after its freeze would be kept, so every `refresh` seconds everything is unfrozen, collected
    once (one full pass) and frozen again: memory stays bounded, one long pass an hour instead of
    several a minute. Meanwhile the young generation is collected after `young` net allocations
    instead of Python's 700: each poll's short-lived objects are then mostly freed before a
    collection sees them, so fewer reach the old generation (bench_scale, 4,000 practices: GC
    time 4.8 s -> 1.4 s in 30 s, no full pass, from this alone).
    """

    def __init__(
        self,
        *,
        min_practices: int = 500,
        growth: float = 1.25,
        refresh: float = 3600.0,
        young: int = 50_000,
    ) -> None:
        self.min_practices = min_practices
        self.growth = growth
        self.refresh = refresh
        self.young = young
        self.frozen_practices = 0
        self._refreshed_at: float | None = None
        self._thresholds: tuple[int, int, int] | None = None

    def check(self, practices: int, now: float) -> None:
        """Called every status interval with the number of practices held and a monotonic time."""
        if practices < self.min_practices:
            self.release()
            return
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(max(self.young, self._thresholds[0]), *self._thresholds[1:])
        if self._refreshed_at is None:
            self._refreshed_at = now
        if now - self._refreshed_at >= self.refresh:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._refreshed_at = now
            self.frozen_practices = practices
        elif practices >= self.frozen_practices * self.growth:
            gc.freeze()
            self.frozen_practices = practices

    def release(self) -> None:
        """Hand every frozen object back to the collector and restore its thresholds."""
        if self.frozen_practices:
            gc.unfreeze()  # the next full pass looks at everything again
            self.frozen_practices = 0
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        self._refreshed_at = None
