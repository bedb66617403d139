"""Running the operator's work under a Lease (`pmsctl operator --leader-elect`): wait as a
standby (answering /healthz so the liveness probe does not restart it), keep renewing once the
Lease is held, stop the work when it is lost, release it after a clean stop.

With a shared store (PostgreSQL) a standby also serves the writeback API (`standby`, built by
`reconciler.kube.run.standby_writebacks`): it accepts writebacks for the leader's practices and
is Ready, so the PodDisruptionBudget can drain any pod. It stops before the work starts, which
then serves the API on the same port.

`reconciler.kube.leader` holds the election itself (timing decisions, the Lease writes, the
renewal thread); this module wires it around one `work()` coroutine and the stop event the
work ends on. No Kopf here: `reconciler.kube.run` passes the Kopf run as `work`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.kube.leader import (
    LeaderElector,
    LeaseConfig,
    RenewalThread,
    hard_stop_after,
    lease_name_for,
    local_identity,
    local_namespace,
)
from reconciler.runtime import STOP_SIGNALS, stop_on_signals

log = logging.getLogger("reconciler.kube.run")

#: Starts a standby's writeback service; returns the coroutine function that stops it.
Standby = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


def lease_config(args: argparse.Namespace) -> LeaseConfig | None:
    """The Lease to hold under --leader-elect (None without it); LeaderElectionError naming
    the bad value."""
    if not args.leader_elect:
        return None
    return LeaseConfig(
        name=args.leader_election_id or lease_name_for(args.selector),
        namespace=args.leader_election_namespace or local_namespace(),
        identity=local_identity(),
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )


async def run_as_leader(
    api: Any,
    lease: LeaseConfig,
    probe_port: int,
    stop: asyncio.Event,
    work: Callable[[], Awaitable[None]],
    standby: Standby | None = None,
) -> int:
    """Take the Lease, keep renewing it, and run `work()` (which ends once `stop` is set);
    while waiting, run `standby` (see the module doc). 0: a clean stop (or SIGTERM while
    standby); 1: the Lease was lost."""
    elector = LeaderElector(api, lease)
    log.info("leader election: lease %s as %s", elector.where, lease.identity)
    lost: list[str] = []
    try:
        if not await _acquire_as_standby(elector, probe_port, stop, standby):
            log.info("stopped while waiting for lease %s; it was never held", elector.where)
            return 0
        loop = asyncio.get_running_loop()
        renewals = RenewalThread(
            elector, lambda reason: _on_lost(elector, reason, loop, stop, lost)
        )
        renewals.start()  # at once: the first renewal is due retry_period after acquiring
        try:
            await work()
        finally:
            await asyncio.to_thread(renewals.stop)
            if not lost:
                await elector.release()
    finally:
        elector.close()
    if lost:
        log.error("stopped after losing the lease (%s); exit 1", lost[0])
        return 1
    return 0


def _on_lost(
    elector: LeaderElector,
    reason: str,
    loop: asyncio.AbstractEventLoop,
    stop: asyncio.Event,
    lost: list[str],
) -> None:
    """The Lease is lost (called on the renewal thread): stop the work gracefully now, and be
    gone for sure before any standby may take the Lease (`hard_stop_after`), even if a cleanup
    handler hangs or the event loop is stuck: the timer is a thread of its own."""
    grace = hard_stop_after(elector.config)
    log.error(
        "lost the leadership of lease %s (%s): stopping; exit 1 so Kubernetes restarts this pod "
        "as a standby (forced exit in %.1f s)",
        elector.where, reason, grace,
    )  # fmt: skip
    lost.append(reason)
    timer = threading.Timer(grace, _hard_exit, (elector.where,))
    timer.daemon = True
    timer.start()
    loop.call_soon_threadsafe(stop.set)


def _hard_exit(where: str) -> None:
    """End the process at once: a holder that lost its lease must not outlive it."""
    log.error("still stopping after losing lease %s: exiting now (exit 1)", where)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


async def _acquire_as_standby(
    elector: LeaderElector, probe_port: int, stop: asyncio.Event, standby: Standby | None = None
) -> bool:
    """Wait for the Lease; True once held. While waiting, answer /healthz on `probe_port` (so
    the liveness probe does not restart a standby) and treat SIGTERM/SIGINT as "stop waiting"
    (False). Once the Lease is held they set `stop` instead, so a signal before the work starts
    still ends in a clean stop that releases the Lease."""
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(elector.acquire(), name="lease acquire")
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, waiting.cancel)
    probe = None
    held = False
    stop_standby = None
    try:
        if probe_port:
            probe = await _standby_probe(elector, probe_port)
        stop_standby = await _start_standby(standby)
        await waiting
        held = True
        return True
    except asyncio.CancelledError:
        if waiting.cancelled() and not _current_task_cancelling():
            return False
        raise
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        if held:
            stop_on_signals(stop)
        if stop_standby is not None:  # before the work serves the API on the same port
            await stop_standby()
        if probe is not None:
            await probe.cleanup()


async def _start_standby(standby: Standby | None) -> Callable[[], Awaitable[None]] | None:
    """Start the standby's writeback service; None without one, or when it cannot start (the
    standby then waits for the Lease as before, not Ready)."""
    if standby is None:
        return None
    try:
        return await standby()
    except Exception as exc:
        log.error("standby: the writeback API did not start: %s", exc)
        return None


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task and task.cancelling())


async def _standby_probe(elector: LeaderElector, port: int) -> Any:
    """An aiohttp runner answering GET /healthz with {"standby": ...} while the Lease is held
    elsewhere (Kopf's probe endpoint replaces it once this process leads)."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(
            {"standby": {"lease": elector.where, "identity": elector.identity}}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
