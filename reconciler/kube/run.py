"""The operator process: resolve `pmsctl operator`'s flags into `RuntimeOptions`, build the
`Runtime` (`reconciler.runtime`) over the cluster's Secrets with the status writer as its
listener, and run it under Kopf until SIGTERM/SIGINT or a lost Lease. `reconciler.cli.operator`
parses the flags; `reconciler.kube.leading` holds the Lease under --leader-elect.

Kopf's part: the runtime is started and stopped by the startup and cleanup handlers
(`reconciler.kube.handlers`, through the memo), and Kopf's stop flag is the runtime's stop event.
The writeback API answers 503 (and /readyz, the readiness probe, too) until Kopf has handled
every practice `practice_keys` lists at start-up (`handlers.StartupReconciles`).

Under --leader-elect with a shared store, a standby serves the writeback API too
(`standby_writebacks`); with the SQLite files it serves only /healthz (docs/operator.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.runtime import RuntimeOptions

if TYPE_CHECKING:
    import asyncio

    from reconciler.kube.leader import LeaseConfig
    from reconciler.kube.leading import Standby
    from reconciler.writeback.target import WritebackTarget


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def run_operator(args: argparse.Namespace) -> int:
    """`pmsctl operator` after its flags are parsed; the exit code."""
    import asyncio

    import kopf

    from reconciler.kube.client import load_api_client
    from reconciler.kube.handlers import parse_selector
    from reconciler.kube.leader import LeaderElectionError
    from reconciler.kube.leading import lease_config
    from reconciler.runtime import setup_logging

    try:
        if args.status_qps < 0:
            raise ValueError(f"--status-qps: {args.status_qps:g} is negative (0 turns the cap off)")
        labels = parse_selector(args.selector)
        options = runtime_options(args)
        lease = lease_config(args)
        check_share(args)
    except ValueError as exc:
        print(f"pmsctl operator: {exc}", file=sys.stderr)
        return 2
    except LeaderElectionError as exc:
        print(f"pmsctl operator: --leader-elect: {exc}", file=sys.stderr)
        return 2
    namespaces = args.namespace
    if not namespaces and not args.all_namespaces and _env("PMSCTL_NAMESPACES"):
        namespaces = [n.strip() for n in (_env("PMSCTL_NAMESPACES") or "").split(",") if n.strip()]
    if getattr(args, "share", False):
        options = dataclasses.replace(options, share=share_group(args, namespaces))
    kopf.configure(
        debug=args.log_level == "debug",
        verbose=args.log_level in ("debug", "info"),
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    setup_logging(options)  # Kopf's handler stays; the levels are the runtime's
    try:
        api = load_api_client(args.kubeconfig)
    except Exception as exc:
        print(f"pmsctl operator: cannot load the Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    from reconciler.writeback.errors import StoreError

    try:
        return asyncio.run(_operate(args, api, labels, options, namespaces, lease))
    except LeaderElectionError as exc:
        print(f"pmsctl operator: leader election: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # the store named by --store cannot be used (message scrubbed)
        print(f"pmsctl operator: {exc}", file=sys.stderr)
        return 2


def check_share(args: argparse.Namespace) -> None:
    """ValueError naming the flags when --share cannot work as asked."""
    if not getattr(args, "share", False):
        return
    if args.leader_elect:
        raise ValueError(
            "--share and --leader-elect exclude each other: with --share every replica works "
            "on its share of the practices; with --leader-elect one replica works on all"
        )
    from reconciler.stores import scheme

    if scheme(args.store or "") not in ("postgresql", "postgres"):
        raise ValueError(
            "--share needs --store postgresql://... (or $PMSCTL_STORE): the replicas keep "
            "their membership, their claims and the cursors there"
        )
    from reconciler.kube.membership import FENCE_AFTER

    if not 0 < args.share_period <= FENCE_AFTER / 2:
        raise ValueError(
            f"--share-period: {args.share_period:g} must be positive and at most "
            f"{FENCE_AFTER / 2:g} s (a replica that could not look for {FENCE_AFTER:g} s stops "
            "its practices)"
        )


def share_group(args: argparse.Namespace, namespaces: list[str] | None) -> str:
    """The replicas sharing one fleet: same label selector, same namespaces."""
    terms = sorted(t.strip() for t in (args.selector or "").split(",") if t.strip())
    return "|".join([",".join(terms), ",".join(sorted(namespaces or []))])


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """The runtime's options from the operator's flags; ValueError naming the bad flag (a sink
    URL that cannot work, a writeback port without a token)."""
    from reconciler.runtime import check_sink_url, check_store_url
    from reconciler.writeback.service import default_db_path

    check_sink_url(args.sink)
    if getattr(args, "store", None):
        check_store_url(args.store)
    token = _writeback_token(args.writeback_port)
    return RuntimeOptions(
        sink_url=args.sink,
        state_db=Path(args.state_db),
        listen_host="0.0.0.0",
        writeback_port=args.writeback_port if token is not None else None,
        writeback_intake_process=getattr(args, "writeback_intake", "thread") == "process",
        writeback_token=token,
        writeback_db=Path(args.writeback_db or default_db_path()),
        store_url=getattr(args, "store", None),
        store_password_file=(
            Path(args.store_password_file) if getattr(args, "store_password_file", None) else None
        ),
        metrics_port=args.metrics_port,
        log_format=args.log_format,
        log_level=args.log_level,
    )


async def _operate(
    args: argparse.Namespace,
    api: Any,
    labels: Any,
    options: RuntimeOptions,
    namespaces: list[str] | None,
    lease: LeaseConfig | None,
) -> int:
    """Run Kopf over the runtime, under the Lease when electing. 0: a clean stop (or SIGTERM
    while standby); 1: the Lease was lost."""
    import asyncio

    from reconciler.kube.leading import run_as_leader

    stop = asyncio.Event()  # Kopf's stop flag: a lost Lease, SIGTERM, SIGINT

    async def work() -> None:
        await _work(args, api, labels, options, namespaces, stop)

    # Every replica serves the webhooks, leader or not: the API server calls any of them.
    webhooks = await _start_webhooks(args, api)
    try:
        if lease is None:
            await work()
            return 0
        standby = standby_writebacks(options)
        return await run_as_leader(api, lease, args.probe_port, stop, work, standby)
    finally:
        if webhooks is not None:
            await webhooks.stop()


class _HoldsNothing:
    """A standby's `PracticeDirectory`: it holds no practice (the leader's engine does)."""

    def target(self, practice_id: str) -> WritebackTarget | None:
        return None


def standby_writebacks(options: RuntimeOptions) -> Standby | None:
    """A standby's writeback service on a shared store: the API (decisions from the snapshots
    the leader publishes; Ready once it serves) and a drainer that delivers nothing, since it
    holds nothing (the leader is woken by the store's notification). None without a shared store
    or without a writeback API: on the SQLite files only the process that opened the queue
    file may use it."""
    url, token, port = options.store_url, options.writeback_token, options.writeback_port
    if not url or not token or port is None:
        return None

    async def start() -> Any:
        import math

        from reconciler.runtime import replica_name
        from reconciler.stores import backend_from_url
        from reconciler.writeback.delivery import DeliveryPolicy
        from reconciler.writeback.metrics import process_metrics
        from reconciler.writeback.service import WritebackService

        backend = backend_from_url(url, password_file=options.store_password_file)
        service = WritebackService(
            _HoldsNothing(),
            options.writeback_db,
            token,
            # No practice is unknown for good here: it is the leader's.
            policy=DeliveryPolicy(unknown_practice_grace=math.inf),
            metrics=process_metrics(),
            store=backend.queue_store(),
            intake_process=options.writeback_intake_process,
            shared=backend.shared_settings(replica_name()),
        )
        try:
            served = await service.start(options.listen_host, port)
        except BaseException:
            await service.stop(grace=1.0)
            raise
        import logging

        logging.getLogger(__name__).info("standby: writeback API on %s", served)
        return service.stop

    return start


async def _start_webhooks(args: argparse.Namespace, api: Any) -> Any:
    """The running `WebhookServer`, or None when no certificate is configured."""
    import asyncio

    from reconciler.api.crdgen import CONVERT_PATH, WEBHOOK_NAMESPACE, WEBHOOK_SERVICE
    from reconciler.kube import webhooks

    if args.webhook_self_signed:
        hosts = webhooks.service_hosts(WEBHOOK_SERVICE, WEBHOOK_NAMESPACE)
        if args.webhook_url:
            from urllib.parse import urlsplit

            host = urlsplit(args.webhook_url).hostname
            hosts = [h for h in [host] if h] + hosts
        tls = webhooks.self_signed(hosts)
    elif args.webhook_cert_dir:
        folder = Path(args.webhook_cert_dir)
        ca = folder / "ca.crt"
        tls = webhooks.Tls.from_files(
            folder / "tls.crt", folder / "tls.key", ca if ca.exists() else None
        )
    else:
        return None
    server = webhooks.WebhookServer(tls, port=args.webhook_port, lookup=webhooks.KubeLookup(api))
    await server.start()
    if args.webhook_self_signed:
        url = args.webhook_url.rstrip("/") + CONVERT_PATH if args.webhook_url else None
        await asyncio.to_thread(
            webhooks.patch_crd_ca_bundle, api, webhooks.CRD_NAME, tls.ca_bundle(), url
        )
    return server


async def _work(
    args: argparse.Namespace,
    api: Any,
    labels: Any,
    options: RuntimeOptions,
    namespaces: list[str] | None,
    stop: asyncio.Event,
) -> None:
    """Build the runtime (this opens the SQLite files) and run Kopf until `stop` is set (or
    Kopf ends)."""
    import asyncio

    import kopf

    from reconciler.engine.engine import EngineSettings
    from reconciler.kube.catalog import CatalogWriter
    from reconciler.kube.client import KubeSecrets, StatusWriter, connection_info
    from reconciler.kube.handlers import StartupReconciles, build_registry, make_memo
    from reconciler.kube.membership import keep_catalogs
    from reconciler.runtime import Runtime

    writer = StatusWriter(api)
    catalogs = CatalogWriter(api)
    share = bool(getattr(args, "share", False))
    secrets = KubeSecrets(api)
    runtime = Runtime(
        options,
        secrets=secrets,
        settings=EngineSettings(
            drift_interval=args.drift_interval,
            status_interval=args.status_interval,
            status_qps=args.status_qps,
            first_poll_jitter=args.first_poll_jitter,
        ),
        on_status=writer,
        stop=stop,
        on_catalog=keep_catalogs(catalogs) if share else catalogs,
        loading="the operator has not yet reconciled every PracticeWriteback it found at start-up",
    )

    async def list_keys() -> set[str]:
        return await asyncio.to_thread(practice_keys, api, namespaces, args.selector)

    startup = StartupReconciles(list_keys, runtime.loaded)
    memo = make_memo(runtime, writer, connection_info(api), catalogs, startup, secrets)
    if share:
        memo.share = _shared_fleet(args, runtime, memo, namespaces)
    # kopf.operator() spelled out, so that SIGTERM/SIGINT set the same stop flag as a lost
    # lease: with only Kopf's own signal handlers its stop-flag waiter outlives a SIGTERM and
    # Kopf waits 5 s for it before the Lease can be released.
    existing = asyncio.all_tasks()
    tasks = await kopf.spawn_tasks(
        registry=build_registry(labels=labels, share=share),
        memo=memo,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        liveness_endpoint=f"http://0.0.0.0:{args.probe_port}/healthz" if args.probe_port else None,
        stop_flag=runtime.stop_event,
    )
    runtime.handle_signals()
    await kopf.run_tasks(tasks, ignored=existing)


def _shared_fleet(
    args: argparse.Namespace, runtime: Any, memo: Any, namespaces: list[str] | None
) -> Any:
    """The `SharedFleet` of --share over the runtime's claims and the handlers' apply/forget."""
    from reconciler.kube.handlers import apply_shared, forget_shared
    from reconciler.kube.membership import SharedFleet

    return SharedFleet(
        runtime.claims,
        apply=lambda body: apply_shared(body, memo),
        forget=lambda key: forget_shared(key, memo),
        handled=memo.startup.handled,
        period=args.share_period,
    )


def practice_keys(api: Any, namespaces: list[str] | None, selector: str | None) -> set[str]:
    """namespace/name of every PracticeWriteback Kopf will handle at start-up: in `namespaces`
    (Kopf's patterns: a glob lists cluster-wide and filters, `!pattern` excludes; none: the
    whole cluster), matching the label `selector`, not being deleted."""
    from kubernetes import client

    from reconciler.kube.client import GROUP, PLURAL, VERSION

    custom = client.CustomObjectsApi(api)
    include = [n for n in namespaces or [] if not n.startswith("!")]
    exclude = [n[1:] for n in namespaces or [] if n.startswith("!")]
    kw: dict[str, Any] = {"label_selector": selector} if selector else {}
    items: list[dict[str, Any]] = []
    if include and not any(c in n for n in include for c in "*?["):
        for ns in include:
            answer: Any = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw)
            items.extend(answer["items"])
    else:
        answer = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)
        items.extend(answer["items"])
    keys = set()
    for obj in items:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        if meta.get("deletionTimestamp"):  # Kopf deletes it, or it is gone before Kopf sees it
            continue
        if include and not any(fnmatchcase(ns, n) for n in include):
            continue
        if any(fnmatchcase(ns, n) for n in exclude):
            continue
        keys.add(f"{ns}/{meta.get('name')}")
    return keys


def _writeback_token(port: int) -> str | None:
    """The writeback API's bearer token when the API is on (port != 0); ValueError saying how
    to configure one (or turn the API off) when there is none."""
    if port < 0 or port > 65535:
        raise ValueError(f"--writeback-port: {port} is not a port (0..65535; 0 turns it off)")
    if port == 0:
        return None
    from reconciler.runtime import writeback_token
    from reconciler.writeback.errors import WritebackConfigError

    try:
        return writeback_token()[0]
    except WritebackConfigError as exc:
        raise ValueError(
            f"the writeback API (--writeback-port {port}) needs a token: {exc}; "
            "or run with --writeback-port 0 to serve no writeback API"
        ) from exc
