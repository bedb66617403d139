"""Replicas that share the fleet (`pmsctl operator --share`): every replica sees every
PracticeWriteback, and each applies to its engine only the practices whose bucket it holds.

`SharedFleet` keeps the latest body of every practice Kopf has shown (`observe`, fed by a Kopf
event handler: a plain watch, so no Kopf state on the objects that replicas would fight over),
and every `period` seconds (`sync`) looks at the members (`reconciler.stores.claims`), computes
the buckets this replica should hold (`reconciler.engine.ring`), and then:

1. for each bucket it should no longer hold: forgets its practices (pollers stopped, a poll in
   flight saves its cursor first), then releases the bucket's claim;
2. tries to claim the buckets it should hold and does not (a claim still held by the previous
   owner fails and is tried again next time), and applies the practices of those it got.

So a practice is polled by one replica at a time even while the replicas' views of the members
disagree: the claim is granted to one session, and released only after the pollers stopped.
Cursors come from the shared store, so the next owner resumes where the previous one stopped.
A practice created, changed or deleted is applied or forgotten at once by the replica holding
its bucket; the others only remember its body for the day they gain the bucket.

The callbacks (`apply(body)`, `forget(key)`, `handled(key)`) are `reconciler.kube.handlers`'
(engine, status writer, catalog writer); the claims' blocking calls run in worker threads. The
loop sleeps on the injected clock; tests call `sync()` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import Gauge

from reconciler.api.catalog import Catalog
from reconciler.engine import ring
from reconciler.engine.catalog import CatalogListener
from reconciler.engine.clock import Clock, LoopClock
from reconciler.kube.handlers import ANNOTATION_RECONCILE
from reconciler.stores.claims import DEAD_AFTER, FleetClaims
from reconciler.writeback.errors import StoreError

log = logging.getLogger(__name__)

#: Per replica, labelled by the group of replicas sharing one fleet (label selector and
#: namespaces). The buckets summed over a group's replicas are all of `ring.BUCKETS` when
#: every practice has a replica polling it (the PmsctlShareUnclaimed alert).
SHARE_MEMBERS = Gauge(
    "pmsctl_share_members", "Replicas sharing the fleet, at this one's last look.", ["group"]
)
SHARE_BUCKETS = Gauge(
    "pmsctl_share_buckets", "Buckets of practices whose claim this replica holds.", ["group"]
)
SHARE_FENCED = Gauge(
    "pmsctl_share_fenced",
    "1 while this replica stopped its practices for want of an answer from the store.",
    ["group"],
)

#: Seconds between two looks at the members (`--share-period`).
DEFAULT_PERIOD = 2.0
#: A replica whose last successful look is this old stops every practice it runs ("fences"
#: itself): cut off from the database, it cannot tell whether the server has ended its session
#: and handed its claims to another replica, which the server does after `DEAD_AFTER` seconds.
FENCE_AFTER = DEAD_AFTER - 3.0


class SharedFleet:
    """Which practices this replica runs, kept in line with the members; see the module
    docstring. `parallel` bounds the applies (each reads the PMS) run at once on a gain."""

    def __init__(
        self,
        claims: FleetClaims,
        *,
        apply: Callable[[Mapping[str, Any]], Awaitable[None]],
        forget: Callable[[str], Awaitable[None]],
        handled: Callable[[str], None] | None = None,
        period: float = DEFAULT_PERIOD,
        clock: Clock | None = None,
        parallel: int = 16,
        fence_after: float = FENCE_AFTER,
    ) -> None:
        if not 0 < period <= fence_after / 2:
            raise ValueError(
                f"--share-period: {period:g} must be positive and at most {fence_after / 2:g} s "
                f"(a replica that has not looked for {fence_after:g} s stops its practices)"
            )
        self.fence_after = fence_after
        self._last_ok: float | None = None
        #: True once this replica stopped its practices for want of the database (until a look
        #: succeeds again).
        self.fenced = False
        SHARE_FENCED.labels(claims.group).set(0)
        self.claims = claims
        self.period = period
        self._apply_cb = apply
        self._forget_cb = forget
        self._handled = handled
        self._clock: Clock = clock or LoopClock()
        self._parallel = asyncio.Semaphore(parallel)
        self._bodies: dict[str, Mapping[str, Any]] = {}
        self._bucket: dict[str, int] = {}
        #: Keys applied to the engine (so to forget when their bucket goes).
        self.applied: set[str] = set()
        #: Buckets being given up: held still, but no practice of theirs is applied any more.
        self._leaving: set[int] = set()
        self._locks: dict[int, asyncio.Lock] = {}
        self.members: list[str] = []
        self.synced = False
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.stopped = False
        self._applying: asyncio.Task[None] | None = None

    # -- what Kopf shows -------------------------------------------------------------------

    async def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (None: the initial listing) for one PracticeWriteback. Ignored once
        `stop()` was called: the engine is stopping, nothing is applied to it any more."""
        if self.stopped:
            return
        meta = body.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            await self.withdraw(key)
            return
        practice_id = str((body.get("spec") or {}).get("practiceId") or "")
        b = ring.bucket(practice_id)
        previous = self._bucket.get(key)
        known = self._bodies.get(key)
        self._bodies[key] = copy.deepcopy(dict(body))
        if previous == b and known is not None and _version(known) == _version(body):
            return  # its own status patch, say: nothing to apply again
        self._bucket[key] = b
        if previous is not None and previous != b:  # its practiceId changed: maybe not ours now
            async with self._lock(previous):
                if key in self.applied and not self._mine(b):
                    await self._forget(key)
        async with self._lock(b):
            if self._mine(b):
                await self._apply(key)
        if self.synced and self._handled is not None:
            self._handled(key)

    async def withdraw(self, key: str) -> None:
        """The practice is gone (deleted): forget it if it runs here."""
        self._bodies.pop(key, None)
        b = self._bucket.pop(key, None)
        if b is None:
            return
        async with self._lock(b):
            if key in self.applied:
                await self._forget(key)
        if self._handled is not None:
            self._handled(key)

    # -- the members -----------------------------------------------------------------------

    async def sync(self, *, wait: bool = True) -> None:
        """Look at the members once and move practices in or out (see the module docstring).
        The practices gained are applied in a task of their own (a takeover of thousands takes
        a while, and the looks must go on meanwhile); `wait` waits for it."""
        try:
            name = await asyncio.to_thread(self.claims.join)
            members = await asyncio.to_thread(self.claims.members)
        except StoreError as exc:
            log.error("share: cannot reach the store (%s): stopping every practice here", exc)
            await self._give_up_all()
            return
        if members != self.members:
            log.info("share: members now %s (this replica: %s)", ", ".join(members), name)
            self.members = members
        SHARE_MEMBERS.labels(self.claims.group).set(len(members))
        wanted = ring.buckets_of(name, members)
        losing = self.claims.held - wanted
        if losing:
            self._leaving |= losing
            try:
                moved = await self._forget_buckets(losing)
                await asyncio.to_thread(self.claims.release, losing)
            except StoreError as exc:
                log.error("share: releasing claims failed (%s); the connection is dropped", exc)
            finally:
                self._leaving -= losing
            if moved:
                log.info("share: gave up %d practices (%d buckets)", moved, len(losing))
        try:
            gained = await asyncio.to_thread(self.claims.claim, wanted - self.claims.held)
        except StoreError as exc:
            log.error("share: claiming failed (%s): stopping every practice here", exc)
            await self._give_up_all()
            return
        self._last_ok = self._clock.now()
        SHARE_BUCKETS.labels(self.claims.group).set(len(self.claims.held))
        if self.fenced:
            log.info("share: the store answers again: running this replica's practices")
            self.fenced = False
            SHARE_FENCED.labels(self.claims.group).set(0)
        # The gained buckets' practices, and any of a held bucket not running (after a fence).
        if self._applying is None or self._applying.done():
            self._applying = asyncio.create_task(self._apply_held(len(gained)), name="share-apply")
        if wait:
            await asyncio.shield(self._applying)

    async def _apply_held(self, gained: int) -> None:
        taken = await self._apply_buckets(self.claims.held)
        if taken:
            log.info("share: took %d practices (%d buckets new)", taken, gained)
        if not self.synced:
            self.synced = True
            if self._handled is not None:
                for key in list(self._bodies):
                    self._handled(key)

    async def run(self) -> None:
        """`sync()` every `period` seconds until cancelled."""
        while True:
            try:
                await self.sync(wait=False)
            except Exception:  # a bug must not end the sharing: the next look tries again
                log.exception("share: sync failed")
            await self._clock.sleep(self.period)

    async def check_fence(self) -> bool:
        """Stop every practice when the last successful look is `fence_after` old (see
        `FENCE_AFTER`); True when it did so now."""
        if self._last_ok is None or self.fenced:
            return False
        silent = self._clock.now() - self._last_ok
        if silent < self.fence_after:
            return False
        self.fenced = True
        SHARE_FENCED.labels(self.claims.group).set(1)
        log.error(
            "share: no answer from the store for %.0f s: stopping every practice here (another "
            "replica may hold their claims soon)", silent,
        )  # fmt: skip
        await self._give_up_all()
        SHARE_BUCKETS.labels(self.claims.group).set(0)  # held, maybe, but not polled
        return True

    async def watch(self) -> None:
        """`check_fence()` every `period` seconds until cancelled; apart from `run()`, whose
        look may be the call that hangs."""
        while True:
            await self._clock.sleep(self.period)
            await self.check_fence()

    def start(self) -> None:
        """Run `run()` and `watch()` in the background."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self.run(), name="pmsctl-share")
        if self._watch_task is None:
            self._watch_task = loop.create_task(self.watch(), name="pmsctl-share-fence")

    async def stop(self) -> None:
        """Stop looking (the engine's stop ends the pollers; closing the claims leaves)."""
        self.stopped = True
        tasks = [t for t in (self._task, self._watch_task, self._applying) if t is not None]
        self._task = self._watch_task = self._applying = None
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- internals -------------------------------------------------------------------------

    def _lock(self, b: int) -> asyncio.Lock:
        lock = self._locks.get(b)
        if lock is None:
            lock = self._locks[b] = asyncio.Lock()
        return lock

    def _mine(self, b: int) -> bool:
        return b in self.claims.held and b not in self._leaving and not self.fenced

    def _keys_in(self, buckets: frozenset[int] | set[int]) -> list[str]:
        return sorted(k for k, b in self._bucket.items() if b in buckets)

    async def _apply(self, key: str) -> None:
        body = self._bodies.get(key)
        if body is None:
            return
        self.applied.add(key)
        try:
            await self._apply_cb(body)
        except Exception:  # the engine reports PMS errors in status; anything else is logged
            log.exception("share: applying %s failed", key)

    async def _forget(self, key: str) -> None:
        self.applied.discard(key)
        try:
            await self._forget_cb(key)
        except Exception:
            log.exception("share: forgetting %s failed", key)

    async def _forget_buckets(self, buckets: frozenset[int]) -> int:
        async def one(b: int) -> int:
            async with self._lock(b):
                keys = [k for k in self._keys_in({b}) if k in self.applied]
                for key in keys:
                    await self._forget(key)
                return len(keys)

        return sum(await asyncio.gather(*(one(b) for b in buckets)))

    async def _apply_buckets(self, buckets: frozenset[int]) -> int:
        """Apply the practices of `buckets` that do not run here yet; how many."""
        waiting: dict[int, list[str]] = {}
        for key, b in self._bucket.items():
            if b in buckets and key not in self.applied:
                waiting.setdefault(b, []).append(key)

        async def one(b: int, keys: list[str]) -> int:
            async with self._parallel, self._lock(b):
                if not self._mine(b):
                    return 0
                todo = [k for k in sorted(keys) if k not in self.applied and k in self._bodies]
                for key in todo:
                    await self._apply(key)
                return len(todo)

        return sum(await asyncio.gather(*(one(b, keys) for b, keys in waiting.items())))

    async def _give_up_all(self) -> None:
        """The claims' connection is gone, and the claims with it (another replica may hold
        them now): stop every practice at once."""
        SHARE_BUCKETS.labels(self.claims.group).set(len(self.claims.held))
        keys = sorted(self.applied)
        for key in keys:
            await self._forget(key)
        if keys:
            log.error("share: stopped %d practices until the store answers again", len(keys))


def _version(body: Mapping[str, Any]) -> tuple[object, ...]:
    """What makes a practice worth applying again: another object (uid), a spec change
    (generation), a reconcile request (the annotation). Status patches change none of them."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (meta.get("uid"), meta.get("generation"), annotations.get(ANNOTATION_RECONCILE))


def keep_catalogs(listener: CatalogListener) -> CatalogListener:
    """A catalog listener that ignores "practice removed": under --share a practice leaving this
    replica is not gone, and its PracticeCatalog goes with the PracticeWriteback it belongs to
    (its ownerReference), not when a replica stops polling it."""

    async def publish(key: str, catalog: Catalog | None) -> None:
        if catalog is not None:
            await listener(key, catalog)

    return publish
