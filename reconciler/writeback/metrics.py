"""Prometheus metrics of the writeback path, in a registry the service owns.

    pmsctl_writebacks_total{kind, type, outcome}   outcome: accepted, skipped, replayed, sent, failed
    pmsctl_writeback_attempts_total{pms, result}   result: ok, temporary, permanent
    pmsctl_writeback_queue_depth                   records still to deliver (pending + sending)
    pmsctl_writeback_ack_seconds                   request received -> 202 (includes the commit)
    pmsctl_writeback_delivery_seconds{pms}         accepted -> written in the PMS

A process serves one registry: `process_metrics()` registers these once in prometheus_client's
default registry, next to the engine's, and the runtime serves it on its one metrics port. A
`WritebackService` built without metrics (a test, a tool) gets a private registry instead, which
its API's `GET /metrics` shows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


@dataclass(frozen=True)
class WritebackMetrics:
    """The writeback path's metric objects, registered in `registry`."""

    registry: CollectorRegistry
    writebacks: Counter
    attempts: Counter
    queue_depth: Gauge
    ack_seconds: Histogram
    delivery_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WritebackMetrics:
        """Register the metrics in `registry` (a new private one when None)."""
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            writebacks=Counter(
                "pmsctl_writebacks",
                "Writeback requests by kind, type and outcome.",
                ["kind", "type", "outcome"],
                registry=reg,
            ),
            attempts=Counter(
                "pmsctl_writeback_attempts",
                "Delivery attempts to the PMS by PMS type and result.",
                ["pms", "result"],
                registry=reg,
            ),
            queue_depth=Gauge(
                "pmsctl_writeback_queue_depth",
                "Writebacks accepted and not yet delivered or failed.",
                registry=reg,
            ),
            ack_seconds=Histogram(
                "pmsctl_writeback_ack_seconds",
                "Seconds from receiving a writeback request to acknowledging it (stored).",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            delivery_seconds=Histogram(
                "pmsctl_writeback_delivery_seconds",
                "Seconds from accepting a writeback to the PMS having it.",
                ["pms"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
        )


@functools.cache
def process_metrics() -> WritebackMetrics:
    """The writeback metrics of this process, in the default registry (created once: a
    registry refuses a second metric of the same name)."""
    return WritebackMetrics.create(REGISTRY)
