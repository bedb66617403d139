"""The capacity model: what a fleet of N practices costs, and how many replicas it needs.

Three parts (docs/scale.md, "Capacity model", explains the formulas and where each input was
measured):

1. The analytical model: small pure functions of the fleet size and the intervals (polls a
   second, PMS requests per practice, CPU cores, RSS, API-server writes, database writes and
   size), gathered per fleet size by `plan()`.
2. A discrete-event simulation of one replica's event loop (`simulate()`): pollers due at their
   intervals with the scheduler's first-run and period jitter, each poll a sampled CPU cost split
   around its PMS round trip, the young-generation GC pauses, the status flush in slices and the
   drift checks, all on one core. It gives the schedule lag p50/p99 at n practices per replica;
   `crossing()` finds the n where p99 passes 1 s. Replicas are independent event loops, so R
   replicas of n practices are R copies of one. Its clock is simulated: it runs in seconds.
3. A CLI printing the table for 10,000 / 30,000 / 100,000 practices (text, or `--json`):

    .venv/bin/python bench/capacity_model.py
    .venv/bin/python bench/capacity_model.py --cpu-per-poll-ms 0.3 --practices 100000 --json
    .venv/bin/python bench/bench_scale.py engine --counts 7000 --json > row.jsonl
    .venv/bin/python bench/capacity_model.py --from-bench row.jsonl    # inputs from a measurement
    .venv/bin/python bench/capacity_model.py --check                   # model vs measured points

Two inputs are measured by the script itself: `--measure-check N` (the CPU of one drift check,
the real `Engine` against the PMS simulator) and `--measure-rows` (PostgreSQL's bytes per
writeback and cursor row, on a server from tests/pg.py). Every input is a flag whose default is the measured figure (or, where nothing was measured, an
assumption the docs name as one), so the table can be recomputed from new measurements.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, also when loaded by path
from benchlib import cpu_pressure_us, load_module, tests_pg

#: The product's default poll intervals (schemas/: appointmentStatus 15s, patients 30s,
#: appointments 60s), in seconds.
DEFAULT_INTERVALS: dict[str, float] = {
    "appointmentStatus": 15.0,
    "patients": 30.0,
    "appointments": 60.0,
}
#: Assumed changes per practice per busy hour, per poller kind (a practice of a few chairs:
#: about 60 appointments a day, each changing status a few times). Not measured.
DEFAULT_CHANGES_PER_HOUR: dict[str, float] = {
    "appointmentStatus": 18.0,
    "patients": 4.0,
    "appointments": 8.0,
}
FLEETS = (10_000, 30_000, 100_000)
MB = 1024 * 1024


# ----- the analytical model: pure functions ----------------------------------------------------


def polls_per_second(practices: int, intervals: Mapping[str, float], jitter: float = 0.0) -> float:
    """Polls a second for `practices` practices, one poller per kind at its interval.

    The scheduler starts the next run `interval + U(0, jitter * interval)` after the last start,
    so the mean period is `interval * (1 + jitter / 2)`; jitter 0 gives the bare "due" rate."""
    return practices * sum(1.0 / (i * (1.0 + jitter / 2.0)) for i in intervals.values())


def pages_per_poll(changes_per_second: float, interval: float, page_size: int) -> float:
    """Mean HTTP requests of one poll: the first page, plus one per full page of changes."""
    return 1.0 + changes_per_second * interval / page_size


def pms_requests_per_practice(
    intervals: Mapping[str, float],
    changes_per_second: Mapping[str, float],
    page_size: int,
    drift_interval: float,
    drift_requests: int,
    writebacks_per_second: float,
) -> float:
    """PMS requests a second one practice costs: its polls (with their pages), its drift checks
    (`drift_requests` reads every `drift_interval`) and one request per writeback delivered."""
    polls = sum(
        pages_per_poll(changes_per_second.get(kind, 0.0), i, page_size) / i
        for kind, i in intervals.items()
    )
    drift = drift_requests / drift_interval if drift_interval > 0 else 0.0
    return polls + drift + writebacks_per_second


def cpu_cores(
    polls_s: float,
    cpu_per_poll_s: float,
    drift_checks_s: float = 0.0,
    cpu_per_check_s: float = 0.0,
    deliveries_s: float = 0.0,
    cpu_per_delivery_s: float = 0.0,
    api_writes_s: float = 0.0,
    cpu_per_api_write_s: float = 0.0,
) -> float:
    """Cores in use: every kind of work a second times its CPU cost."""
    return (
        polls_s * cpu_per_poll_s
        + drift_checks_s * cpu_per_check_s
        + deliveries_s * cpu_per_delivery_s
        + api_writes_s * cpu_per_api_write_s
    )


def rss_bytes(practices: int, base_bytes: float, bytes_per_practice: float) -> float:
    """Resident memory of one process holding `practices` practices."""
    return base_bytes + practices * bytes_per_practice


def status_writes_per_second(practices: int, status_interval: float, status_qps: float) -> float:
    """Counter-only status PATCHes a second of one process: every practice every
    `status_interval`, capped by `--status-qps` (0: no cap)."""
    wanted = practices / status_interval
    return wanted if status_qps <= 0 else min(wanted, status_qps)


def api_writes_per_second(
    practices: int,
    replicas: int,
    status_interval: float,
    status_qps: float,
    condition_changes_s: float,
    events_per_change: float,
    catalog_refresh: float,
) -> float:
    """API-server writes a second across `replicas` processes sharing `practices`: each one's
    status budget, one status write and `events_per_change` Events per condition change, and
    one PracticeCatalog write per practice every `catalog_refresh` (an unchanged catalog is
    rewritten only then)."""
    per_replica = math.ceil(practices / replicas) if replicas else 0
    status = replicas * status_writes_per_second(per_replica, status_interval, status_qps)
    catalogs = practices / catalog_refresh if catalog_refresh > 0 else 0.0
    return status + condition_changes_s * (1.0 + events_per_change) + catalogs


def cursor_saves_per_second(
    practices: int, intervals: Mapping[str, float], changes_per_second: Mapping[str, float]
) -> float:
    """Cursor writes a second: a poll saves its cursor only when it read a change, which with
    changes arriving at rate r happens with probability 1 - exp(-r * interval)."""
    return practices * sum(
        (1.0 - math.exp(-changes_per_second.get(kind, 0.0) * i)) / i
        for kind, i in intervals.items()
    )


def db_writes_per_second(
    cursor_saves_s: float,
    writebacks_s: float,
    row_writes_per_writeback: float,
    sink_batches_s: float = 0.0,
) -> float:
    """Row writes a second in the store: cursor upserts, each writeback's insert and state
    changes (`sending`, then `sent`), and sink batches when the sink is the database (it is a
    file or HTTP endpoint today: 0)."""
    return cursor_saves_s + writebacks_s * row_writes_per_writeback + sink_batches_s


def db_size_bytes(
    practices: int,
    kinds: int,
    cursor_row_bytes: float,
    writebacks_per_day: float,
    writeback_row_bytes: float,
    retention_days: float,
) -> float:
    """Database size: one cursor row per (practice, kind) plus the writeback rows kept for
    `retention_days` (a sent document's content is cleared, so its row is a note's size)."""
    cursors = practices * kinds * cursor_row_bytes
    outbox = practices * writebacks_per_day * retention_days * writeback_row_bytes
    return cursors + outbox


def max_locks_per_transaction(advisory_locks: int, connections: int, floor: int = 64) -> int:
    """PostgreSQL's `max_locks_per_transaction` for `advisory_locks` held at once: the shared
    lock table has room for max_locks_per_transaction x (max_connections +
    max_prepared_transactions) locks, advisory ones included. Sized with max_connections =
    `connections` (a server with more connections needs less) and twice the room, never below
    PostgreSQL's default."""
    return max(floor, math.ceil(2 * advisory_locks / max(1, connections)))


def practices_per_replica(cores_per_practice: float, target_cores: float) -> int:
    """The most practices one event loop (one core) holds while using at most `target_cores`."""
    if cores_per_practice <= 0:
        return sys.maxsize
    return int(target_cores / cores_per_practice + 1e-9)  # 0.7 / 0.0001 is 6999.999...


# ----- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """Every figure the model uses; defaults are the measured ones (docs/scale.md says where)."""

    intervals: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    #: Changes per practice per busy hour, per kind (assumed).
    changes_per_hour: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_CHANGES_PER_HOUR)
    )
    #: The scheduler's period jitter fraction (EngineSettings.jitter).
    jitter: float = 0.1
    #: Rows per page (Open Dental's cap and the bridge's limit).
    page_size: int = 100
    #: EngineSettings.drift_interval and the reads of one check (version, providers, note
    #: types, document categories).
    drift_interval: float = 30.0
    drift_requests: int = 4
    status_interval: float = 10.0
    status_qps: float = 20.0
    catalog_refresh: float = 600.0
    #: Engine CPU per poll, all in (bench_scale engine, 7,000-9,000 practices: 0.96-1.06 ms).
    cpu_per_poll_ms: float = 1.0
    #: CPU of one drift check: four PMS reads and a decide (`--measure-check 300`: 2.58-2.72 ms, contended).
    cpu_per_check_ms: float = 2.6
    #: CPU of one writeback, intake and delivery (estimated from bench_writeback: ~1,000 req/s
    #: accepted while delivering on 2 cores).
    cpu_per_delivery_ms: float = 2.0
    #: CPU of one API-server write (a status PATCH or an Event; estimated).
    cpu_per_api_write_ms: float = 2.0
    #: RSS: fitted to bench_scale's rows (4,000: 252 MB ... 9,000: 436 MB).
    rss_base_mb: float = 105.0
    rss_per_practice_kb: float = 37.0
    #: Writebacks per practice in the busy hour (sizes the rates) and per day (sizes the
    #: database); both assumed.
    writebacks_per_hour: float = 30.0
    writebacks_per_day: float = 150.0
    #: Insert, `sending`, `sent`.
    row_writes_per_writeback: float = 3.0
    #: Condition changes per practice per day (assumed: a PMS offline overnight and back) and the
    #: Events each one posts (the condition's and Ready's).
    condition_changes_per_day: float = 2.0
    events_per_change: float = 2.0
    #: PostgreSQL bytes per row, indexes and the space of its updates included (`--measure-rows`,
    #: PostgreSQL 15: a cursor written twice 443, an SMS note taken to `sent` 1,473).
    cursor_row_bytes: float = 443.0
    writeback_row_bytes: float = 1473.0
    #: How long sent writeback rows are kept (nothing deletes them today: the operator of the
    #: database does, see docs/scale.md).
    retention_days: float = 30.0
    #: A replica is planned to use at most this much of its one core (7,000 practices ran at
    #: 0.77 cores with p99 lag 243 ms; 9,000 at 0.90 with p50 already 94 ms).
    target_cores: float = 0.7
    #: PostgreSQL connections of one replica: the queue's writer, the claims, the cursors, the
    #: practice settings' listener and writer, and a reader per thread that reads the queue
    #: (estimated; a --leader-elect standby on PostgreSQL serves writebacks and opens most).
    db_connections_per_replica: int = 14
    #: Practice claims (session advisory locks) a replica holds at most: the drainer's
    #: DeliveryPolicy.max_concurrent_practices.
    claims_per_replica: int = 64
    #: Pods beyond the replicas the load needs: `--share` replicas take over a lost one's
    #: practices, so one spare keeps the plan's headroom while a pod is gone.
    spare_pods: int = 1

    def changes_per_second(self) -> dict[str, float]:
        return {k: v / 3600.0 for k, v in self.changes_per_hour.items()}

    def writebacks_per_second(self) -> float:
        """Per practice, in the busy hour."""
        return self.writebacks_per_hour / 3600.0


def cores_per_practice(inp: Inputs) -> float:
    """One practice's share of an engine core: polls, drift checks, writebacks, and the API
    writes that grow with the fleet (conditions, Events, catalogs; the status budget does not)."""
    polls = polls_per_second(1, inp.intervals, inp.jitter)
    checks = 1.0 / inp.drift_interval if inp.drift_interval > 0 else 0.0
    api = inp.condition_changes_per_day / 86400.0 * (1.0 + inp.events_per_change)
    api += 1.0 / inp.catalog_refresh if inp.catalog_refresh > 0 else 0.0
    return cpu_cores(
        polls,
        inp.cpu_per_poll_ms / 1000,
        checks,
        inp.cpu_per_check_ms / 1000,
        inp.writebacks_per_second(),
        inp.cpu_per_delivery_ms / 1000,
        api,
        inp.cpu_per_api_write_ms / 1000,
    )


def replica_capacity(inp: Inputs) -> int:
    """Practices one replica holds within `target_cores`, the status budget's own CPU taken off."""
    status_cores = inp.status_qps * inp.cpu_per_api_write_ms / 1000
    return practices_per_replica(cores_per_practice(inp), inp.target_cores - status_cores)


def plan(practices: int, inp: Inputs, per_replica: int | None = None) -> dict[str, Any]:
    """The table row for a fleet of `practices`: replicas, and what the fleet costs in total."""
    capacity = per_replica or replica_capacity(inp)
    replicas = max(1, math.ceil(practices / capacity))
    n = math.ceil(practices / replicas)
    changes = inp.changes_per_second()
    polls = polls_per_second(practices, inp.intervals, inp.jitter)
    checks = practices / inp.drift_interval if inp.drift_interval > 0 else 0.0
    wb = practices * inp.writebacks_per_second()
    conditions = practices * inp.condition_changes_per_day / 86400.0
    api = api_writes_per_second(
        practices,
        replicas,
        inp.status_interval,
        inp.status_qps,
        conditions,
        inp.events_per_change,
        inp.catalog_refresh,
    )
    cores = cpu_cores(
        polls,
        inp.cpu_per_poll_ms / 1000,
        checks,
        inp.cpu_per_check_ms / 1000,
        wb,
        inp.cpu_per_delivery_ms / 1000,
        api,
        inp.cpu_per_api_write_ms / 1000,
    )
    per_practice_pms = pms_requests_per_practice(
        inp.intervals,
        changes,
        inp.page_size,
        inp.drift_interval,
        inp.drift_requests,
        inp.writebacks_per_second(),
    )
    saves = cursor_saves_per_second(practices, inp.intervals, changes)
    size = db_size_bytes(
        practices,
        len(inp.intervals),
        inp.cursor_row_bytes,
        inp.writebacks_per_day,
        inp.writeback_row_bytes,
        inp.retention_days,
    )
    return {
        "practices": practices,
        "practices_per_replica": n,
        "replicas": replicas,
        "pods": replicas + inp.spare_pods,
        "cores_total": round(cores, 2),
        "cores_per_replica": round(cores / replicas, 2),
        "rss_mb_per_replica": round(
            rss_bytes(n, inp.rss_base_mb * MB, inp.rss_per_practice_kb * 1024) / MB
        ),
        "polls_per_s": round(polls, 1),
        "drift_checks_per_s": round(checks, 1),
        "api_writes_per_s": round(api, 1),
        "pms_req_per_s_per_practice": round(per_practice_pms, 3),
        "pms_req_per_s_total": round(per_practice_pms * practices),
        "db_writes_per_s": round(db_writes_per_second(saves, wb, inp.row_writes_per_writeback), 1),
        "cursor_saves_per_s": round(saves, 1),
        "writebacks_per_s": round(wb, 1),
        "db_size_gb": round(size / 1e9, 2),
        "db_growth_gb_per_day": round(
            practices * inp.writebacks_per_day * inp.writeback_row_bytes / 1e9, 2
        ),
        "db_connections": replicas * inp.db_connections_per_replica,
        "advisory_locks": replicas * (inp.claims_per_replica + 1),
        "max_locks_per_transaction": max_locks_per_transaction(
            replicas * (inp.claims_per_replica + 1), replicas * inp.db_connections_per_replica
        ),
    }


# ----- the discrete-event simulation -------------------------------------------------------------


@dataclass(frozen=True)
class SimParams:
    """One replica's event loop: its load and what each piece of work costs."""

    practices: int
    intervals: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    #: Mean engine CPU per poll, all in (GC and the status flush included, as bench_scale
    #: measures it); the simulation takes the GC and flush shares out and runs them as pauses.
    cpu_per_poll_ms: float = 1.0
    #: Spread of one poll's CPU (lognormal sigma).
    cpu_sigma: float = 0.5
    #: Share of a poll's CPU spent before its request goes out (the rest after the answer).
    send_share: float = 0.4
    #: Mean PMS round trip (exponential): the poll waits off the loop meanwhile.
    pms_latency_ms: float = 20.0
    #: Share of the engine's CPU that is young-generation GC (bench_scale at 7,000: 2.6 s of GC
    #: in 30 s at 0.77 cores, 11%), paid as one pause every `gc_every` polls.
    gc_share: float = 0.11
    gc_every: int = 75
    #: Status flush: every `status_interval`, each practice re-decided at `decide_ms`, in
    #: slices of `flush_slice` that go to the back of the loop's queue between slices.
    status_interval: float = 30.0
    decide_ms: float = 0.066
    flush_slice: int = 100
    #: Drift checks: `drift_requests` sequential reads every `drift_interval` (0: none), each
    #: read costing `cpu_per_check_ms / drift_requests`.
    drift_interval: float = 0.0
    drift_requests: int = 4
    cpu_per_check_ms: float = 2.6
    jitter: float = 0.1
    first_jitter: float = 1.0
    max_jitter: float = 30.0
    workers: int = 256
    #: Simulated seconds before measuring (every poller has started after `max_jitter`), and
    #: measured (one period of the slowest poller: the load alternates within it).
    warmup: float = 40.0
    duration: float = 60.0
    seed: int = 1


@dataclass(frozen=True)
class SimResult:
    """What one simulated replica did in the measured window: schedule lag percentiles (ms),
    the share of its core in use, and the most polls it had in flight at once."""

    practices: int
    polls: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    cores: float
    max_in_flight: int


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def simulate(p: SimParams) -> SimResult:
    """Run one replica's event loop on a simulated clock and measure each poll's schedule lag
    (when it started minus when it was due), as `Scheduler.stats.lags` does.

    The loop is one core running ready work first come, first served. Events on the timeline
    are: a poller due, a PMS answer arriving (its second chunk of CPU becomes ready), a flush
    starting. Deterministic for a given `seed`."""
    rng = random.Random(p.seed)
    flush_cpu_s = p.practices * p.decide_ms / 1000 / p.status_interval if p.status_interval else 0.0
    polls_s = polls_per_second(p.practices, p.intervals, p.jitter)
    flush_per_poll_ms = flush_cpu_s / polls_s * 1000 if polls_s else 0.0
    poll_ms = max(0.0, p.cpu_per_poll_ms * (1.0 - p.gc_share) - flush_per_poll_ms)
    gc_pause_s = p.cpu_per_poll_ms * p.gc_share * p.gc_every / 1000
    mu = math.log(poll_ms / 1000) - p.cpu_sigma**2 / 2 if poll_ms > 0 else 0.0
    check_chunk_s = p.cpu_per_check_ms / 1000 / max(1, p.drift_requests)

    def poll_cost() -> float:
        return rng.lognormvariate(mu, p.cpu_sigma) if poll_ms > 0 else 0.0

    # Timeline: (time, seq, what, data). Ready queue: (cost, what, data) served in order.
    timeline: list[tuple[float, int, str, Any]] = []
    seq = 0

    def at(t: float, what: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(timeline, (t, seq, what, data))

    ready: deque[tuple[float, str, Any]] = deque()
    waiting: deque[tuple[float, Any]] = deque()  # due polls held back by the worker limit
    pollers = [(i, kind, iv) for i in range(p.practices) for kind, iv in p.intervals.items()]
    for poller in pollers:
        iv = poller[2]
        at(rng.random() * min(iv * p.first_jitter, p.max_jitter), "due", poller)
    if p.drift_interval > 0:
        for i in range(p.practices):
            at(rng.random() * p.drift_interval, "check", (i, 0))
    if p.status_interval > 0 and p.decide_ms > 0:
        at(p.status_interval, "flush", None)

    end = p.warmup + p.duration
    now = 0.0
    busy_until = 0.0
    busy_s = 0.0
    in_flight = max_in_flight = 0
    polls_since_gc = 0
    lags: list[float] = []
    polls_measured = 0

    def start_poll(t: float, due: float, poller: Any) -> None:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        ready.append((poll_cost() * p.send_share, "send", (due, t, poller)))

    while True:
        # Run ready work while the loop is free before the next timeline event.
        next_t = timeline[0][0] if timeline else end
        while ready and busy_until <= next_t:
            cost, what, data = ready.popleft()
            start = max(now, busy_until)
            if what == "send":
                due, _, poller = data
                if start >= p.warmup:
                    lags.append(start - due)
                    polls_measured += 1
                data = (due, start, poller)
            elif what == "slice" and data > p.flush_slice:
                left = data - p.flush_slice
                ready.append((min(left, p.flush_slice) * p.decide_ms / 1000, "slice", left))
            busy_until = start + cost
            if start >= p.warmup:
                busy_s += cost
            if what == "send":
                at(busy_until + rng.expovariate(1000.0 / p.pms_latency_ms), "answer", data)
            elif what == "receive":
                _, started, poller = data
                polls_since_gc += 1
                if polls_since_gc >= p.gc_every:
                    polls_since_gc = 0
                    busy_until += gc_pause_s
                    if start >= p.warmup:
                        busy_s += gc_pause_s
                iv = poller[2]
                at(
                    max(started + iv + rng.random() * min(iv * p.jitter, p.max_jitter), busy_until),
                    "due",
                    poller,
                )
                in_flight -= 1
                if waiting:
                    w_due, w_poller = waiting.popleft()
                    start_poll(busy_until, w_due, w_poller)
            elif what == "check_send":
                at(busy_until + rng.expovariate(1000.0 / p.pms_latency_ms), "check", data)
            next_t = timeline[0][0] if timeline else end
        if not timeline:
            break
        now, _, what, data = heapq.heappop(timeline)
        if now >= end:
            break
        if what == "due":
            if in_flight >= p.workers:
                waiting.append((now, data))
            else:
                start_poll(now, now, data)
        elif what == "answer":
            ready.append((poll_cost() * (1 - p.send_share), "receive", data))
        elif what == "check":
            practice, step = data
            if step < p.drift_requests:
                ready.append((check_chunk_s, "check_send", (practice, step + 1)))
            else:
                at(now + p.drift_interval, "check", (practice, 0))
        elif what == "flush":
            n = p.practices
            ready.append((min(n, p.flush_slice) * p.decide_ms / 1000, "slice", n))
            at(now + p.status_interval, "flush", None)
    return SimResult(
        practices=p.practices,
        polls=polls_measured,
        lag_p50_ms=round(_percentile(lags, 0.5) * 1000, 2),
        lag_p99_ms=round(_percentile(lags, 0.99) * 1000, 2),
        lag_max_ms=round(max(lags, default=0.0) * 1000, 2),
        cores=round(busy_s / p.duration, 3),
        max_in_flight=max_in_flight,
    )


def loop_saturation(p: SimParams) -> int:
    """Practices at which the simulated loop's work adds up to one whole core (`p.practices`
    ignored): polls, drift checks and the status flush per practice, a second."""
    per_practice_ms = polls_per_second(1, p.intervals, p.jitter) * p.cpu_per_poll_ms
    if p.drift_interval > 0:
        per_practice_ms += p.cpu_per_check_ms / p.drift_interval
    if p.status_interval > 0:
        per_practice_ms += p.decide_ms / p.status_interval
    return int(1000.0 / per_practice_ms)


def crossing(base: SimParams, limit_ms: float = 1000.0) -> int:
    """The fewest practices per replica (to 2% of the saturation point) at which simulated p99
    lag passes `limit_ms`, by bisection between 50% and 110% of the loop's saturation point
    (lag grows with load; at half a core it stays in milliseconds). Returns the bound itself
    when the crossing lies outside."""
    saturation = loop_saturation(base)
    lo, hi, step = int(0.5 * saturation), int(1.1 * saturation), max(1, saturation // 50)

    def over(n: int) -> bool:
        return simulate(replace(base, practices=n)).lag_p99_ms > limit_ms

    if over(lo):
        return lo
    if not over(hi):
        return hi
    while hi - lo > step:
        mid = (lo + hi) // 2
        if over(mid):
            hi = mid
        else:
            lo = mid
    return hi


# ----- measured points and the CLI ---------------------------------------------------------------

#: bench_scale.py rows the model is checked against (docs/scale.md, README): engine rows ran
#: with the drift check every 3,600 s and the status flush every 30 s, no status listener.
MEASURED: tuple[dict[str, float], ...] = (
    {"practices": 7000, "cpu_cores": 0.77, "lag_p50_ms": 1.3, "lag_p99_ms": 243, "cpu_ms_per_poll": 1.06, "polls_per_s": 729, "rss_mb": 369},
    {"practices": 8000, "cpu_cores": 0.86, "lag_p50_ms": 3.2, "lag_p99_ms": 365, "cpu_ms_per_poll": 1.03, "polls_per_s": 836, "rss_mb": 393},
    {"practices": 9000, "cpu_cores": 0.90, "lag_p50_ms": 94, "lag_p99_ms": 693, "cpu_ms_per_poll": 0.96, "polls_per_s": 937, "rss_mb": 436},
)  # fmt: skip
#: bench_scale.py scheduler at 10,000 practices: 974 polls/s at 0.13 cores (no I/O, no GC tuning).
SCHEDULER_ALONE = {"practices": 10000, "polls_per_s": 974, "cpu_cores": 0.13}


def check(inp: Inputs) -> list[dict[str, Any]]:
    """The model and the simulation against every measured point, each at that point's measured
    CPU per poll and under the bench's settings (no drift checks, a status flush every 30 s, a
    simulator on loopback, so a short PMS round trip). The bench measured 30 s; the simulation
    measures 60 s, one period of the slowest poller, since load alternates within it."""
    rows = []
    for m in MEASURED:
        n = int(m["practices"])
        cpu = m["cpu_ms_per_poll"]
        polls = polls_per_second(n, DEFAULT_INTERVALS, 0.1)
        params = SimParams(practices=n, cpu_per_poll_ms=cpu, pms_latency_ms=10.0)
        sim = simulate(params)
        rows.append(
            {
                "practices": n,
                "measured_cores": m["cpu_cores"],
                "model_cores": round(polls * cpu / 1000, 2),
                "sim_cores": sim.cores,
                "measured_polls_per_s": m["polls_per_s"],
                "model_polls_per_s": round(polls),
                "measured_p50_ms": m["lag_p50_ms"],
                "sim_p50_ms": sim.lag_p50_ms,
                "measured_p99_ms": m["lag_p99_ms"],
                "sim_p99_ms": sim.lag_p99_ms,
                "measured_rss_mb": m["rss_mb"],
                "model_rss_mb": round(
                    rss_bytes(n, inp.rss_base_mb * MB, inp.rss_per_practice_kb * 1024) / MB
                ),
            }
        )
    return rows


def inputs_from_bench(path: Path, inp: Inputs) -> Inputs:
    """`inp` with the CPU per poll and the RSS per practice of bench_scale.py's engine rows in
    `path` (its JSON lines; other lines are skipped): the median CPU per poll, and RSS fitted
    by least squares when two or more counts ran."""
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            if row.get("bench") == "engine":
                rows.append(row)
    if not rows:
        raise SystemExit(
            f'{path}: no bench_scale.py engine row (a JSON line with "bench": "engine")'
        )
    cpu = statistics.median(float(r["cpu_ms_per_poll"]) for r in rows)
    out = replace(inp, cpu_per_poll_ms=cpu)
    xs = [float(r["practices"]) for r in rows]
    ys = [float(r["rss_mb"]) for r in rows]
    if len(set(xs)) >= 2:
        slope, intercept = statistics.linear_regression(xs, ys)
        out = replace(
            out, rss_base_mb=round(intercept, 1), rss_per_practice_kb=round(slope * 1024, 1)
        )
    return out


def _bench_scale() -> ModuleType:
    """bench/bench_scale.py, for its simulator process and secrets."""
    return load_module(Path(__file__).resolve().parent / "bench_scale.py", "bench_scale")


async def measure_check(practices: int, drift_interval: float, duration: float) -> dict[str, Any]:
    """Measure the CPU of one drift check: the real `Engine` with `practices` practices that
    have no pollers, against the PMS simulator in its own process (as bench_scale.py runs it),
    every practice re-checked every `drift_interval` seconds; CPU over `duration` seconds
    divided by the checks done (counted by `pmsctl_pms_calls_total{operation="server_info"}`)."""
    import asyncio
    import os
    import subprocess
    import tempfile
    import time

    from reconciler.api.spec import PracticeSpec
    from reconciler.engine import metrics
    from reconciler.engine.cursors import SqliteCursorStore
    from reconciler.engine.engine import Engine, EngineSettings
    from reconciler.engine.sink import JsonlSink

    bs = _bench_scale()
    pms = "Dentrix"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    sim = subprocess.Popen(
        [sys.executable, "-c", bs.SIM_SCRIPT, "100", pms],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert sim.stdout is not None
        base = f"{sim.stdout.readline().strip()}/bridge/v1"
        tmp = Path(tempfile.mkdtemp(prefix="pmsctl-check-"))
        settings = EngineSettings(drift_interval=drift_interval, status_interval=30.0)
        engine = Engine(
            sink=JsonlSink(tmp / "events.jsonl", fsync=False),
            store=SqliteCursorStore(tmp / "state.db"),
            secrets=bs.SimSecrets(pms),
            settings=settings,
        )
        await engine.start()
        for i in range(practices):
            spec = {
                "practiceId": f"p{i}",
                "pms": {"type": pms, "url": base, "credentialsSecretRef": {"name": f"p{i % 100}"}},
                "providerId": "DDS1",
                "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
                "sync": {},
            }
            await engine.apply(f"bench/p{i}", PracticeSpec.from_spec(spec))
        await asyncio.sleep(drift_interval + 1.0)  # every practice's checks are under way

        def checks() -> float:
            return sum(
                s.value
                for m in metrics.PMS_CALLS.collect()
                for s in m.samples
                if s.name.endswith("_total") and s.labels.get("operation") == "server_info"
            )

        n0, cpu0, psi0, wall0 = (
            checks(),
            bs.self_cpu_seconds(),
            cpu_pressure_us(),
            time.monotonic(),
        )
        await asyncio.sleep(duration)
        wall = time.monotonic() - wall0
        done, cpu = checks() - n0, bs.self_cpu_seconds() - cpu0
        row = {
            "measure": "drift check",
            "practices": practices,
            "drift_interval": drift_interval,
            "checks_per_s": round(done / wall, 1),
            "cpu_cores": round(cpu / wall, 3),
            "cpu_ms_per_check": round(cpu / max(done, 1) * 1000, 2),
            "machine_cpu_wait_pct": round((cpu_pressure_us() - psi0) / 1e6 / wall * 100, 1),
            "load_average": round(os.getloadavg()[0], 1),
        }
        await engine.stop()
        return row
    finally:
        sim.terminate()
        sim.wait(10)


def measure_rows(writebacks: int = 20_000, cursors: int = 30_000) -> dict[str, Any]:
    """Bytes per row, indexes included, of the writeback queue and the cursors in PostgreSQL:
    a server started from tests/pg.py (Debian's binaries), the schema from the PostgreSQL
    backend's migrations, `writebacks` SMS notes (143 characters of text) taken through
    pending, sending and sent and `cursors` cursors written twice, each table vacuumed (the
    space a long-lived table holds for its rows and their updates)."""
    import hashlib
    import shutil
    import tempfile
    import time

    import psycopg

    from reconciler.stores.postgres import MIGRATIONS

    pg = tests_pg()
    text = (
        "Reminder: your cleaning at Bright Smiles Dental is tomorrow, 9:00 AM. Reply C to"
        " confirm or call 555-0142 to reschedule. Reply STOP to opt out."
    )
    now = time.time()
    notes = [
        (
            f"wb-{hashlib.sha256(b'%d' % i).hexdigest()[:32]}",
            f"bright-smiles-dental-{i % 500:04d}",
            f"sms-{i:08x}-{i * 7919 % 100000:05d}",
            hashlib.sha256(b"body %d" % i).hexdigest(),
            "note",
            "outgoingSms",
            str(1000 + i % 5000),
            "2026-11-26T09:15:00-05:00",
            text,
            "pending",
            "284",
            "DDS1",
            now,
            now,
        )
        for i in range(writebacks)
    ]
    kinds = list(DEFAULT_INTERVALS)
    rows = [
        (f"dental-practices/bright-smiles-dental-{i // 3:05d}", kinds[i % 3], "c" * 38, now)
        for i in range(cursors)
    ]
    base = Path(tempfile.mkdtemp(prefix="pmsctl-rows-"))
    base.chmod(0o777)  # the server may run as another user
    try:
        with (
            pg.start_server(base) as server,
            psycopg.connect(server.database("rows"), autocommit=True) as c,
        ):
            c.execute(MIGRATIONS[0][2].encode())
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO writebacks (id, practice_id, caller_id, fingerprint, kind, type,"
                    " patient_id, occurred_at, text, status, target_type_id, provider_id,"
                    " created_at, updated_at) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    notes,
                )
                cur.executemany(
                    "INSERT INTO cursors (practice_key, kind, cursor, updated_at)"
                    " VALUES (%s, %s, %s, %s)",
                    rows,
                )
            c.execute("UPDATE writebacks SET status = 'sending', attempts = attempts + 1")
            c.execute("VACUUM writebacks")
            c.execute("UPDATE writebacks SET status = 'sent', pms_id = seq::text, sent_at = 1")
            c.execute("UPDATE cursors SET cursor = %s", ("d" * 38,))
            c.execute("VACUUM writebacks")
            c.execute("VACUUM cursors")
            size = "SELECT pg_total_relation_size(%s)"
            wb = c.execute(size, ("writebacks",)).fetchone()
            cu = c.execute(size, ("cursors",)).fetchone()
            version = c.execute("SHOW server_version").fetchone()
        assert wb is not None and cu is not None and version is not None
        return {
            "measure": "row bytes",
            "postgres": version[0],
            "writeback_row_bytes": round(wb[0] / writebacks),
            "cursor_row_bytes": round(cu[0] / cursors),
            "note_text_chars": len(text),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _parse_map(text: str) -> dict[str, float]:
    """`kind=value,kind=value` -> {kind: value}."""
    out = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        out[kind.strip()] = float(value.rstrip("s"))
    return out


def _format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = [title for _, title in columns]
    body = [
        [f"{r[key]:,}" if isinstance(r[key], int | float) else str(r[key]) for key, _ in columns]
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body]
    ]
    return "\n".join(lines)


PLAN_COLUMNS = (
    ("practices", "practices"),
    ("replicas", "replicas"),
    ("pods", "pods"),
    ("practices_per_replica", "per replica"),
    ("cores_total", "cores"),
    ("cores_per_replica", "cores/replica"),
    ("rss_mb_per_replica", "RSS MB/replica"),
    ("api_writes_per_s", "API writes/s"),
    ("pms_req_per_s_per_practice", "PMS req/s/practice"),
    ("pms_req_per_s_total", "PMS req/s"),
    ("db_writes_per_s", "DB writes/s"),
    ("db_size_gb", "DB GB"),
    ("db_connections", "DB conns"),
)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Inputs()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--practices", default=",".join(str(n) for n in FLEETS), help="fleet sizes, comma-separated"
    )
    ap.add_argument(
        "--intervals",
        default="appointmentStatus=15,patients=30,appointments=60",
        help="kind=seconds,...",
    )
    ap.add_argument(
        "--changes-per-hour",
        default=",".join(f"{k}={v:g}" for k, v in DEFAULT_CHANGES_PER_HOUR.items()),
        help="kind=changes per practice per busy hour,...",
    )
    ap.add_argument(
        "--from-bench",
        type=Path,
        metavar="FILE",
        help="bench_scale.py engine JSON lines: CPU per poll and RSS from them",
    )
    ap.add_argument(
        "--per-replica", type=int, help="practices per replica (default: from the CPU budget)"
    )
    ap.add_argument(
        "--simulate",
        action="store_true",
        help="also find, by simulation, the practices per replica where p99 lag passes 1 s",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="compare the model and the simulation with the measured points",
    )
    ap.add_argument(
        "--goal-cpu-per-poll-ms",
        type=float,
        default=0.3,
        help="--simulate also at this CPU per poll (default 0.3)",
    )
    ap.add_argument(
        "--measure-rows",
        action="store_true",
        help="measure PostgreSQL's bytes per writeback and cursor row (a server from tests/pg.py), print them and exit",
    )
    ap.add_argument(
        "--measure-check",
        type=int,
        metavar="PRACTICES",
        help="measure the CPU of one drift check with PRACTICES practices (about 20 s), print it and exit",
    )
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    for f in fields(Inputs):
        if f.name in ("intervals", "changes_per_hour"):
            continue
        value = getattr(defaults, f.name)
        ap.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"(default {value})",
        )
    args = ap.parse_args(argv)
    if args.measure_rows:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        print(json.dumps(measure_rows()))
        return 0
    if args.measure_check:
        import asyncio

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        print(json.dumps(asyncio.run(measure_check(args.measure_check, 3.0, 15.0))))
        return 0
    given = {
        f.name: getattr(args, f.name)
        for f in fields(Inputs)
        if f.name not in ("intervals", "changes_per_hour")
    }
    inp = Inputs(
        intervals=_parse_map(args.intervals),
        changes_per_hour=_parse_map(args.changes_per_hour),
        **given,
    )
    if args.from_bench:
        inp = inputs_from_bench(args.from_bench, inp)
    out: list[dict[str, Any]] = []
    if args.check:
        out += [{"check": "bench_scale engine", **r} for r in check(inp)]
        bench_like = SimParams(
            practices=0, cpu_per_poll_ms=inp.cpu_per_poll_ms, pms_latency_ms=10.0
        )
        sched = SCHEDULER_ALONE
        out.append(
            {
                "check": "summary",
                "bench_settings_sim_p99_passes_1s_at": crossing(bench_like),
                "scheduler_alone_ms_per_poll": round(
                    sched["cpu_cores"] / sched["polls_per_s"] * 1000, 3
                ),
            }
        )
    rows = [plan(int(n), inp, args.per_replica) for n in args.practices.split(",") if n]
    out += [{"plan": True, **r} for r in rows]
    if args.simulate:
        for cpu in sorted({inp.cpu_per_poll_ms, args.goal_cpu_per_poll_ms}, reverse=True):
            base = SimParams(
                practices=0,
                intervals=inp.intervals,
                cpu_per_poll_ms=cpu,
                drift_interval=inp.drift_interval,
                drift_requests=inp.drift_requests,
                cpu_per_check_ms=inp.cpu_per_check_ms,
                status_interval=inp.status_interval,
            )
            n = crossing(base)
            out.append({"simulated": True, "cpu_per_poll_ms": cpu, "p99_passes_1s_at": n})
    if args.json:
        for row in out:
            print(json.dumps(row))
        return 0
    print(f"inputs: {json.dumps(asdict(inp))}")
    if args.check:
        checked = [r for r in out if r.get("check") == "bench_scale engine"]
        summary = next(r for r in out if r.get("check") == "summary")
        print("\nmodel and simulation vs bench_scale engine (the bench's settings):")
        print(_format_table(checked, [(k, k) for k in checked[0] if k != "check"]))
        print(
            "simulated p99 lag passes 1 s at"
            f" {summary['bench_settings_sim_p99_passes_1s_at']:,} practices (the bench's"
            " settings); the scheduler alone costs"
            f" {summary['scheduler_alone_ms_per_poll']} ms per poll"
        )
    print(f"\none replica: {replica_capacity(inp):,} practices within {inp.target_cores} cores")
    print(_format_table(rows, PLAN_COLUMNS))
    for r in out:
        if r.get("simulated"):
            print(
                f"simulated, product settings: at {r['cpu_per_poll_ms']} ms CPU per poll p99 lag"
                f" passes 1 s at {r['p99_passes_1s_at']:,} practices per replica"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
