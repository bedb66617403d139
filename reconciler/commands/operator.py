"""`pmsctl operator` (also `python -m reconciler`): run the Kopf operator against a cluster.

    pmsctl operator --namespace dental-practices --sink file:/var/lib/pmsctl/events.jsonl
    pmsctl operator --all-namespaces --selector shard=a --sink https://events.example/ingest

Flags have environment fallbacks (PMSCTL_NAMESPACES comma-separated, PMSCTL_SELECTOR,
PMSCTL_SINK, PMSCTL_STATE_DB, PMSCTL_LOG_FORMAT, PMSCTL_LOG_LEVEL, PMSCTL_PROBE_PORT,
PMSCTL_METRICS_PORT, PMSCTL_DRIFT_INTERVAL, PMSCTL_STATUS_INTERVAL, PMSCTL_WRITEBACK_PORT,
PMSCTL_WRITEBACK_DB) so the Deployment can set them. Liveness and readiness are Kopf's probe
endpoint (`/healthz` on --probe-port); metrics are Prometheus text on --metrics-port.
The writeback API (`reconciler.writeback.service`, docs/writeback.md) is served on
--writeback-port (0: off) with the bearer token from $PMSCTL_WRITEBACK_TOKEN or the file named
by $PMSCTL_WRITEBACK_TOKEN_FILE; without one the command refuses to start (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (reconciles PracticeWriteback resources)",
        description="Reconcile PracticeWriteback resources against their PMS and run their pollers.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        metavar="NS",
        help="watch this namespace (repeatable; default: $PMSCTL_NAMESPACES or all namespaces)",
    )
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument(
        "--selector",
        "-l",
        default=_env("PMSCTL_SELECTOR"),
        metavar="LABELSEL",
        help="only practices with these labels (k=v,k!=v,k,!k): one shard per replica",
    )
    p.add_argument(
        "--sink",
        default=_env("PMSCTL_SINK", "file:pmsctl-events.jsonl"),
        metavar="URL|file:PATH",
        help="where poller events go: an http(s) URL (CloudEvents batches) or file:PATH (JSON lines)",
    )
    p.add_argument(
        "--state-db",
        default=_env("PMSCTL_STATE_DB", "pmsctl-state.db"),
        metavar="PATH",
        help="SQLite file with the pollers' cursors (put it on a persistent volume)",
    )
    p.add_argument(
        "--kubeconfig",
        default=_env("KUBECONFIG"),
        help="kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )
    p.add_argument(
        "--log-format", choices=("text", "json"), default=_env("PMSCTL_LOG_FORMAT", "text")
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=_env("PMSCTL_LOG_LEVEL", "info"),
    )
    p.add_argument(
        "--probe-port",
        type=int,
        default=int(_env("PMSCTL_PROBE_PORT", "8080") or 0),
        help="liveness/readiness on :PORT/healthz (0: off)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("PMSCTL_METRICS_PORT", "9090") or 0),
        help="Prometheus /metrics on :PORT (0: off)",
    )
    p.add_argument(
        "--drift-interval",
        type=float,
        default=float(_env("PMSCTL_DRIFT_INTERVAL", "300") or 300),
        metavar="SECONDS",
        help="re-check each PMS this often (default 300)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=float(_env("PMSCTL_STATUS_INTERVAL", "10") or 10),
        metavar="SECONDS",
        help="write poller counters to status at most this often (default 10)",
    )
    p.add_argument(
        "--first-poll-jitter",
        type=_fraction,
        default=_env("PMSCTL_FIRST_POLL_JITTER", "1") or "1",
        metavar="FRACTION",
        help="spread each new poller's first run over U(0, FRACTION x interval), at most 30 s, "
        "so a restart does not poll every practice at once (0..1, default 1; 0: at once)",
    )
    p.add_argument(
        "--writeback-port",
        type=int,
        default=int(_env("PMSCTL_WRITEBACK_PORT", "8081") or 0),
        metavar="PORT",
        help="serve the writeback API on :PORT (default 8081; 0: off). Needs a token: "
        "$PMSCTL_WRITEBACK_TOKEN or $PMSCTL_WRITEBACK_TOKEN_FILE",
    )
    p.add_argument(
        "--writeback-db",
        default=None,
        metavar="PATH",
        help="SQLite queue of accepted writebacks (put it on a persistent volume; "
        "default: $PMSCTL_WRITEBACK_DB or .pmsctl/writebacks.db)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    import kopf

    from reconciler import metrics
    from reconciler.engine import Engine, EngineSettings
    from reconciler.kube import KubeSecrets, StatusWriter, connection_info, load_api_client
    from reconciler.operator import build_registry, parse_selector
    from reconciler.sink import sink_from_url
    from reconciler.store import SqliteCursorStore

    try:
        labels = parse_selector(args.selector)
        sink = sink_from_url(args.sink)
        token = _writeback_token(args.writeback_port)
    except ValueError as exc:
        print(f"pmsctl operator: {exc}", file=sys.stderr)
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
    writer = StatusWriter(api)
    engine = Engine(
        sink=sink,
        store=SqliteCursorStore(args.state_db),
        secrets=KubeSecrets(api),
        settings=EngineSettings(
            drift_interval=args.drift_interval,
            status_interval=args.status_interval,
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
    asyncio.run(
        kopf.operator(
            registry=build_registry(labels=labels),
            memo=memo,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            liveness_endpoint=f"http://0.0.0.0:{args.probe_port}/healthz"
            if args.probe_port
            else None,
        )
    )
    return 0


def _fraction(text: str) -> float:
    """argparse type for a number in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0..1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..1")
    return value


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
