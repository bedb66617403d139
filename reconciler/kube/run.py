"""The operator process: take the Lease (with --leader-elect), build the engine, and run Kopf
until SIGTERM/SIGINT or a lost Lease. `reconciler.cli.operator` parses the flags; this module
does everything after.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.kube.leader import LeaderElector, LeaseConfig


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def run_operator(args: argparse.Namespace) -> int:
    """`pmsctl operator` after its flags are parsed; the exit code."""
    import asyncio
    import logging

    import kopf

    from reconciler.kube.client import load_api_client
    from reconciler.kube.handlers import parse_selector
    from reconciler.kube.leader import LeaderElectionError

    try:
        if args.status_qps < 0:
            raise ValueError(f"--status-qps: {args.status_qps:g} is negative (0 turns the cap off)")
        labels = parse_selector(args.selector)
        sink = _deferred_sink(args.sink)
        token = _writeback_token(args.writeback_port)
        lease = _lease_config(args)
    except ValueError as exc:
        print(f"pmsctl operator: {exc}", file=sys.stderr)
        return 2
    except LeaderElectionError as exc:
        print(f"pmsctl operator: --leader-elect: {exc}", file=sys.stderr)
        return 2
    namespaces = args.namespace
    if not namespaces and not args.all_namespaces and _env("PMSCTL_NAMESPACES"):
        namespaces = [n.strip() for n in (_env("PMSCTL_NAMESPACES") or "").split(",") if n.strip()]
    kopf.configure(
        debug=args.log_level == "debug",
        verbose=args.log_level in ("debug", "info"),
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger().setLevel(args.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        api = load_api_client(args.kubeconfig)
    except Exception as exc:
        print(f"pmsctl operator: cannot load the Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_operate(args, api, labels, sink, token, namespaces, lease))
    except LeaderElectionError as exc:
        print(f"pmsctl operator: leader election: {exc}", file=sys.stderr)
        return 2


async def _operate(
    args: argparse.Namespace,
    api: Any,
    labels: Any,
    sink: Any,
    token: str | None,
    namespaces: list[str] | None,
    lease: LeaseConfig | None,
) -> int:
    """Take the Lease (when electing), keep renewing it, and run the engine under Kopf until
    it stops. 0: a clean stop (or SIGTERM while standby); 1: the Lease was lost."""
    import asyncio
    import logging

    from reconciler.kube.leader import LeaderElector, RenewalThread

    stop = asyncio.Event()  # Kopf's stop flag: a lost Lease, SIGTERM, SIGINT
    if lease is None:
        await _work(args, api, labels, sink, token, namespaces, stop)
        return 0
    log = logging.getLogger("reconciler.kube.run")
    elector = LeaderElector(api, lease)
    log.info("leader election: lease %s as %s", elector.where, lease.identity)
    lost: list[str] = []
    try:
        if not await _acquire_as_standby(elector, args.probe_port, stop):
            log.info("stopped while waiting for lease %s; it was never held", elector.where)
            return 0
        loop = asyncio.get_running_loop()
        renewals = RenewalThread(
            elector, lambda reason: _on_lost(elector, reason, loop, stop, lost)
        )
        renewals.start()  # at once: the first renewal is due retry_period after acquiring
        try:
            await _work(args, api, labels, sink, token, namespaces, stop)
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


async def _work(
    args: argparse.Namespace,
    api: Any,
    labels: Any,
    sink: Any,
    token: str | None,
    namespaces: list[str] | None,
    stop: Any,
) -> None:
    """Open the SQLite files, build the engine and run Kopf until `stop` is set (or Kopf ends)."""
    import asyncio
    import signal

    import kopf

    from reconciler.engine import metrics
    from reconciler.engine.cursors import SqliteCursorStore
    from reconciler.engine.engine import Engine, EngineSettings
    from reconciler.kube.client import KubeSecrets, StatusWriter, connection_info
    from reconciler.kube.handlers import build_registry

    writer = StatusWriter(api)
    engine = Engine(
        sink=sink(),
        store=SqliteCursorStore(args.state_db),
        secrets=KubeSecrets(api),
        settings=EngineSettings(
            drift_interval=args.drift_interval,
            status_interval=args.status_interval,
            status_qps=args.status_qps,
            first_poll_jitter=args.first_poll_jitter,
        ),
        on_status=writer,
    )
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    memo = kopf.Memo(engine=engine, writer=writer, connection=connection_info(api))
    if token is not None:
        from reconciler.writeback.service import WritebackService, default_db_path

        memo.writebacks = WritebackService(engine, args.writeback_db or default_db_path(), token)
        memo.writeback_listen = ("0.0.0.0", args.writeback_port)
    # kopf.operator() spelled out, so that SIGTERM/SIGINT set the same stop flag as a lost
    # lease: with only Kopf's own signal handlers its stop-flag waiter outlives a SIGTERM and
    # Kopf waits 5 s for it before the Lease can be released.
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(
        registry=build_registry(labels=labels),
        memo=memo,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        liveness_endpoint=f"http://0.0.0.0:{args.probe_port}/healthz" if args.probe_port else None,
        stop_flag=stop,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on_signal, sig, stop)
    await kopf.run_tasks(tasks, ignored=existing)


def _stop_on_signal(sig: int, stop: Any) -> None:
    import logging
    import signal

    logging.getLogger("reconciler.kube.run").info("%s received: stopping", signal.Signals(sig).name)
    stop.set()


def _on_lost(elector: LeaderElector, reason: str, loop: Any, stop: Any, lost: list[str]) -> None:
    """The Lease is lost (called on the renewal thread): stop Kopf gracefully now, and be gone
    for sure before any standby may take the Lease (`hard_stop_after`), even if a cleanup
    handler hangs or the event loop is stuck: the timer is a thread of its own."""
    import logging
    import threading

    from reconciler.kube.leader import hard_stop_after

    grace = hard_stop_after(elector.config)
    logging.getLogger("reconciler.kube.run").error(
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
    import logging

    logging.getLogger("reconciler.kube.run").error(
        "still stopping after losing lease %s: exiting now (exit 1)", where
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(1)


async def _acquire_as_standby(elector: LeaderElector, probe_port: int, stop: Any) -> bool:
    """Wait for the Lease; True once held. While waiting, answer /healthz on `probe_port` (so
    the liveness probe does not restart a standby) and treat SIGTERM/SIGINT as "stop waiting"
    (False). Once the Lease is held they set `stop` instead, so a signal before Kopf starts
    still ends in a clean stop that releases the Lease."""
    import asyncio
    import contextlib
    import signal

    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(elector.acquire(), name="lease acquire")
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, waiting.cancel)
    probe = None
    held = False
    try:
        if probe_port:
            probe = await _standby_probe(elector, probe_port)
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
        for sig in signals:
            if held:
                loop.add_signal_handler(sig, _stop_on_signal, sig, stop)
            else:
                loop.remove_signal_handler(sig)
        if probe is not None:
            await probe.cleanup()


def _current_task_cancelling() -> bool:
    import asyncio

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


def _deferred_sink(url: str) -> Any:
    """A factory for the event sink: an HTTP sink is built (and checked) now, a file sink opens
    its file only when called, after the Lease is held, so a standby opens nothing. A bad
    --sink raises sink_from_url's ValueError now, before connecting."""
    from reconciler.engine.sink import sink_from_url

    if url.startswith(("http://", "https://")):
        built = sink_from_url(url)
        return lambda: built
    if not url.removeprefix("file:").removeprefix("//"):
        sink_from_url(url)  # raises, naming the fix
    return lambda: sink_from_url(url)


def _lease_config(args: argparse.Namespace) -> LeaseConfig | None:
    """The Lease to hold under --leader-elect (None without it); LeaderElectionError naming
    the bad value."""
    if not args.leader_elect:
        return None
    from reconciler.kube.leader import LeaseConfig, lease_name_for, local_identity, local_namespace

    return LeaseConfig(
        name=args.leader_election_id or lease_name_for(args.selector),
        namespace=args.leader_election_namespace or local_namespace(),
        identity=local_identity(),
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
    )


def _writeback_token(port: int) -> str | None:
    """The writeback API's bearer token when the API is on (port != 0); ValueError saying how
    to configure one (or turn the API off) when there is none."""
    if port < 0 or port > 65535:
        raise ValueError(f"--writeback-port: {port} is not a port (0..65535; 0 turns it off)")
    if port == 0:
        return None
    from reconciler.writeback.errors import WritebackConfigError
    from reconciler.writeback.service import load_token

    try:
        return load_token()
    except WritebackConfigError as exc:
        raise ValueError(
            f"the writeback API (--writeback-port {port}) needs a token: {exc}; "
            "or run with --writeback-port 0 to serve no writeback API"
        ) from exc
