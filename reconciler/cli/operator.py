"""`pmsctl operator` (also `python -m reconciler`): run the Kopf operator against a cluster.

    pmsctl operator --namespace dental-practices --sink file:/var/lib/pmsctl/events.jsonl
    pmsctl operator --all-namespaces --selector shard=a --sink https://events.example/ingest

Flags have environment fallbacks (PMSCTL_NAMESPACES comma-separated, PMSCTL_SELECTOR,
PMSCTL_SINK, PMSCTL_STATE_DB, PMSCTL_LOG_FORMAT, PMSCTL_LOG_LEVEL, PMSCTL_PROBE_PORT,
PMSCTL_METRICS_PORT, PMSCTL_DRIFT_INTERVAL, PMSCTL_STATUS_INTERVAL, PMSCTL_WRITEBACK_PORT,
PMSCTL_WRITEBACK_DB, PMSCTL_STORE, PMSCTL_STORE_PASSWORD_FILE) so the Deployment can set them.
Liveness and readiness are Kopf's probe
endpoint (`/healthz` on --probe-port); metrics (the engine's and the writeback path's, one
registry) are Prometheus text on --metrics-port.
Ports: 0 means off, for every port flag and its variable, as in `pmsctl up`; `--no-writeback`
and `--no-metrics` say the same in words.
The writeback API (`reconciler.writeback.service`, docs/writeback.md) is served on
--writeback-port (0 or --no-writeback: off) with the bearer token from $PMSCTL_WRITEBACK_TOKEN
or the file named by $PMSCTL_WRITEBACK_TOKEN_FILE; without one the command refuses to start
(exit 2).

With --share (PMSCTL_SHARE=true) and a PostgreSQL --store, the replicas divide the practices
among themselves (`reconciler.kube.membership`): each runs the practices whose bucket it claims
in the store, and takes over those of a replica that goes, from the saved cursors.

With --leader-elect (PMSCTL_LEADER_ELECT=true) the process first takes a coordination.k8s.io
Lease (`reconciler.kube.leader`; docs/operator.md, "Leader election") and only then opens the
SQLite files and starts Kopf; a standby waits (answering /healthz so it is not restarted) and
exits 0 on SIGTERM. The holder renews the Lease alongside Kopf, releases it on a clean stop,
and exits 1 when it loses it (Kubernetes then restarts it as a standby).
"""

from __future__ import annotations

import argparse
import os
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
        "--no-metrics",
        dest="metrics_port",
        action="store_const",
        const=0,
        help="serve no /metrics (same as --metrics-port 0)",
    )
    p.add_argument(
        "--drift-interval",
        type=float,
        default=float(_env("PMSCTL_DRIFT_INTERVAL", "30") or 30),
        metavar="SECONDS",
        help="re-resolve each practice's PMS names this long after its last reconcile (default 30)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=float(_env("PMSCTL_STATUS_INTERVAL", "10") or 10),
        metavar="SECONDS",
        help="write poller counters to status at most this often (default 10)",
    )
    p.add_argument(
        "--status-qps",
        type=float,
        default=float(_env("PMSCTL_STATUS_QPS", "20") or 20),
        metavar="N",
        help="at most N status writes a second that only carry poller counters, across all "
        "practices, longest-unwritten first (default 20; 0: no cap). Condition changes are "
        "written at once",
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
        "--no-writeback",
        dest="writeback_port",
        action="store_const",
        const=0,
        help="serve no writeback API (same as --writeback-port 0; needs no token)",
    )
    p.add_argument(
        "--writeback-intake",
        choices=("thread", "process"),
        default=_env("PMSCTL_WRITEBACK_INTAKE", "thread"),
        help="where the writeback API runs: thread (default: its own thread and event loop in this process) or process (a process of its own; measured slower on 2 cores, see docs/writeback.md)",
    )
    p.add_argument(
        "--writeback-db",
        default=None,
        metavar="PATH",
        help="SQLite queue of accepted writebacks (put it on a persistent volume; "
        "default: $PMSCTL_WRITEBACK_DB or .pmsctl/writebacks.db)",
    )
    p.add_argument(
        "--store",
        default=_env("PMSCTL_STORE") or None,
        metavar="URL",
        help="keep the cursors and the writeback queue in this database instead of the SQLite "
        "files: postgresql://USER@HOST/DB (default: $PMSCTL_STORE; see docs/store.md)",
    )
    p.add_argument(
        "--store-password-file",
        default=_env("PMSCTL_STORE_PASSWORD_FILE") or None,
        metavar="PATH",
        help="a file holding the store's password (a mounted Secret key; default: "
        "$PMSCTL_STORE_PASSWORD_FILE, else the password in the URL, if any)",
    )
    wh = p.add_argument_group(
        "webhooks",
        "conversion (v1alpha1 <-> v1) and admission on one HTTPS port, on every replica; on "
        "with --webhook-cert-dir or --webhook-self-signed (docs/versions.md)",
    )
    wh.add_argument(
        "--webhook-port",
        type=int,
        default=int(_env("PMSCTL_WEBHOOK_PORT", "9443") or 0),
        metavar="PORT",
        help="the webhooks' HTTPS port (default 9443)",
    )
    wh.add_argument(
        "--webhook-cert-dir",
        default=_env("PMSCTL_WEBHOOK_CERT_DIR"),
        metavar="DIR",
        help="serve the certificate in DIR (tls.crt, tls.key: cert-manager's Secret)",
    )
    wh.add_argument(
        "--webhook-self-signed",
        action="store_true",
        help="development: make a CA and a certificate at start and write the CA into the "
        "CRD's conversion caBundle",
    )
    wh.add_argument(
        "--webhook-url",
        default=None,
        metavar="URL",
        help="with --webhook-self-signed: the API server calls this base URL instead of the "
        "in-cluster Service (an operator outside the cluster, e.g. https://127.0.0.1:9443)",
    )
    le = p.add_argument_group(
        "leader election",
        "only the holder of a coordination.k8s.io Lease works; the others wait as standbys",
    )
    le.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=_truthy(_env("PMSCTL_LEADER_ELECT")),
        help="take the Lease before working (default: $PMSCTL_LEADER_ELECT, else off)",
    )
    le.add_argument(
        "--leader-election-id",
        default=_env("PMSCTL_LEADER_ELECTION_ID"),
        metavar="NAME",
        help="the Lease's name (default: pmsctl-operator, plus a short hash of --selector when "
        "one is given, so each shard has its own Lease)",
    )
    le.add_argument(
        "--leader-election-namespace",
        default=_env("PMSCTL_LEADER_ELECTION_NAMESPACE"),
        metavar="NS",
        help="the Lease's namespace (default: the pod's namespace, else $PMSCTL_POD_NAMESPACE, "
        "else default)",
    )
    for flag, env, default, text in (
        ("lease-duration", "LEASE_DURATION", "15", "a holder not renewing for this long is replaced"),
        ("renew-deadline", "RENEW_DEADLINE", "10", "the holder stops when it could not renew for this long"),
        ("retry-period", "RETRY_PERIOD", "2", "time between renewals and between attempts to acquire"),
    ):  # fmt: skip
        le.add_argument(
            f"--leader-elect-{flag}",
            type=float,
            default=float(_env(f"PMSCTL_LEADER_ELECT_{env}", default) or default),
            metavar="SECONDS",
            help=f"{text} (default {default})",
        )
    sh = p.add_argument_group(
        "sharing the fleet",
        "replicas divide the practices among themselves through the PostgreSQL store: each "
        "polls its share, and a replica's share moves to the others when it goes "
        '(docs/operator.md, "Sharing the fleet")',
    )
    sh.add_argument(
        "--share",
        action=argparse.BooleanOptionalAction,
        default=_truthy(_env("PMSCTL_SHARE")),
        help="share the practices with the other replicas (needs --store postgresql://...; "
        "excludes --leader-elect; default: $PMSCTL_SHARE, else off)",
    )
    sh.add_argument(
        "--share-period",
        type=float,
        default=float(_env("PMSCTL_SHARE_PERIOD", "2") or 2),
        metavar="SECONDS",
        help="look at the members this often; a replica that dies is replaced within it "
        "(default 2, at most 4: a replica that could not look for 8 s stops its practices)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the operator (`reconciler.kube.run`); the exit code."""
    from reconciler.kube.run import run_operator

    return run_operator(args)


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def _fraction(text: str) -> float:
    """argparse type for a number in 0..1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use 0..1)") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..1")
    return value
