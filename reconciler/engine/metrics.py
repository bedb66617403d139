"""Prometheus metrics of the engine (shared by the operator and the local mode).

    pmsctl_reconciles_total{result}                 reconciles by result (ok, error)
    pmsctl_pms_calls_total{pms, operation, status}  PMS calls by operation and outcome
                                                    (ok, or the error class: TemporaryPmsError, ...)
    pmsctl_poll_lag_seconds{kind}                   how late a poll started versus its due time
    pmsctl_poll_duration_seconds{kind}              how long a poll took (read + publish + cursor)
    pmsctl_events_emitted_total{kind}               CloudEvents accepted by the sink
    pmsctl_pollers_running{kind}                    pollers scheduled right now
    pmsctl_practices                                practices the engine holds
    pmsctl_practice_ready{practice}                 1 while a practice is Ready, 0 while it is not
                                                    (no series while it is suspended)

The hot path (every poll) goes through `pms_calls()`, `poll_lag()`, `poll_duration()` and
`events_emitted()`: each looks a labelled child up once and keeps it, because prometheus_client's
`labels()` (argument checks, a lock, a dict lookup) costs more than the increment it serves.
Those four metrics' children are never removed, so a kept child is always the registered one.

The metric objects live in `REGISTRY`, the process's one registry (prometheus_client's default,
which the writeback path's process metrics join too); `serve(port)` exposes all of it on one port.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = ["REGISTRY", "MetricsServer", "serve"]

from reconciler.engine.core import ConditionType, PracticeStatus, Reason

RECONCILES = Counter("pmsctl_reconciles_total", "Reconciles by result.", ["result"])
PMS_CALLS = Counter(
    "pmsctl_pms_calls_total", "PMS calls by operation and outcome.", ["pms", "operation", "status"]
)
POLL_LAG = Histogram(
    "pmsctl_poll_lag_seconds",
    "Seconds a poll started after it was due.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
POLL_DURATION = Histogram(
    "pmsctl_poll_duration_seconds",
    "Seconds one poll took.",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS_EMITTED = Counter("pmsctl_events_emitted_total", "Events accepted by the sink.", ["kind"])
POLLERS_RUNNING = Gauge("pmsctl_pollers_running", "Pollers scheduled right now.", ["kind"])
PRACTICES = Gauge("pmsctl_practices", "Practices the engine holds.")
PRACTICE_READY = Gauge(
    "pmsctl_practice_ready", "1 while the practice is Ready, 0 while it is not.", ["practice"]
)


@functools.cache
def pms_calls(pms: str, operation: str, status: str) -> Counter:
    """The pmsctl_pms_calls_total child for these labels (looked up once)."""
    return PMS_CALLS.labels(pms, operation, status)


@functools.cache
def poll_lag(kind: str) -> Histogram:
    """The pmsctl_poll_lag_seconds child of `kind` (looked up once)."""
    return POLL_LAG.labels(kind)


@functools.cache
def poll_duration(kind: str) -> Histogram:
    """The pmsctl_poll_duration_seconds child of `kind` (looked up once)."""
    return POLL_DURATION.labels(kind)


@functools.cache
def events_emitted(kind: str) -> Counter:
    """The pmsctl_events_emitted_total child of `kind` (looked up once)."""
    return EVENTS_EMITTED.labels(kind)


def record_ready(key: str, status: PracticeStatus | None) -> None:
    """Set `key`'s pmsctl_practice_ready from `status`; drop its series when the practice is
    suspended (Ready=False is what suspending means, not a fault to alert on) or gone (None)."""
    ready = status.condition(ConditionType.READY) if status is not None else None
    if ready is None or ready.reason == Reason.SUSPENDED:
        with contextlib.suppress(KeyError):
            PRACTICE_READY.remove(key)
        return
    PRACTICE_READY.labels(key).set(1 if ready.status == "True" else 0)


class MetricsServer:
    """`/metrics` of `REGISTRY` served from a thread of its own, so a busy event loop does not
    delay a scrape; `close()` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, addr: str) -> None:
        self._server = server
        self._thread = thread
        port = server.server_address[1]
        shown = f"[{addr}]" if ":" in addr else addr
        #: The base URL it answers on (the bound port, also when asked for port 0).
        self.url = f"http://{shown}:{port}"

    def close(self) -> None:
        """Stop serving and close the socket (blocks until the serving thread is done)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Expose /metrics of `REGISTRY` on addr:port (a daemon thread; returns at once)."""
    server, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return MetricsServer(server, thread, addr)
