"""Benchmark: one process polling N simulated practices through the PMS drivers.

The PMS simulator runs in a child process (its own interpreter, so its CPU is not the poller's),
with N practices spread over Open Dental, Eaglesoft and Dentrix and its clock ticking so there
are real changes to find. This process builds one `new_client` + driver per practice, exactly as
the engine does, and runs three pollers per practice (appointment status, appointments,
patients) at the product's default intervals (15 s, 60 s, 30 s; `--interval` sets one interval for
all three to push the load up), each from its stored cursor, for `--duration` seconds after
a warm-up first read. It reports HTTP requests/second and the latency percentiles of the poll
operations (one poll can be several HTTP requests when it pages) and of the single HTTP requests.

    .venv/bin/python bench/bench_drivers.py                         # 200 practices, product intervals
    .venv/bin/python bench/bench_drivers.py --practices 200 --interval 2 --duration 20   # saturate

Prints a table and one JSON line (`{"bench": "drivers", ...}`). Nothing is faked; figures depend
on the machine (quote them with the date and core count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pms_drivers.base import Credentials, PmsDriver
from pms_drivers.errors import PmsError
from pms_drivers.registry import create_driver
from pms_drivers.retry import RetryPolicy, with_retry
from pms_drivers.transport import new_client

PMS_TYPES = ("OpenDental", "Eaglesoft", "Dentrix")
#: The product's default poll intervals (reconciler.api.spec.DEFAULT_INTERVALS), in seconds.
DEFAULT_INTERVALS = {"appointmentStatus": 15.0, "appointments": 60.0, "patients": 30.0}


def _serve(practices: int, conn: Any, stop: Any, tick_seconds: float) -> None:
    """Child process: a simulator with `practices` practices, until `stop` is set."""
    from pms_simulator import Simulator

    # A generous server-side limit: the bench measures the drivers, not the simulated throttle.
    sim = Simulator(db=":memory:", autotick=True, tick_seconds=tick_seconds, tick_minutes=2.0,
                    rate_limit_per_second=1000.0, burst=1000)  # fmt: skip
    with sim.serve_in_thread() as url:
        creds = []
        for i in range(practices):
            pms = PMS_TYPES[i % len(PMS_TYPES)]
            pid = f"bench-{i:04d}"
            creds.append((pid, pms, sim.add_practice(pid, pms)))
        bases = {pms: sim.base_url(pms) for pms in PMS_TYPES}
        conn.send({"url": url, "bases": bases, "practices": creds})
        stop.wait()


class Counting(httpx.AsyncBaseTransport):
    """The real network transport, timing every HTTP request (the bench's only instrument)."""

    def __init__(self, samples: list[float]) -> None:
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4)
        )
        self._samples = samples

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        await response.aread()
        self._samples.append(time.perf_counter() - started)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds (zeros when there are no samples)."""
    if len(samples) < 2:
        value = samples[0] * 1000 if samples else 0.0
        return {"p50": value, "p95": value, "p99": value, "max": value}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50": cuts[49] * 1000,
        "p95": cuts[94] * 1000,
        "p99": cuts[98] * 1000,
        "max": max(samples) * 1000,
    }


async def poll_loop(
    name: str,
    op: Callable[[str | None], Awaitable[Any]],
    cursor: str,
    interval: float,
    deadline: float,
    samples: dict[str, list[float]],
    errors: dict[str, int],
    events: dict[str, int],
    offset: float,
) -> None:
    """One poller: read from its stored cursor every `interval` s until `deadline`."""
    await asyncio.sleep(min(offset, max(0.0, deadline - time.monotonic())))
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            page = await op(cursor)
            cursor = page.cursor
            events[name] += len(page.records)
        except PmsError:
            errors[name] += 1
        samples[name].append(time.perf_counter() - started)
        # Sleep to the next poll, but not past the deadline (a 60 s poller must not stretch the run).
        next_in = interval - (time.perf_counter() - started)
        await asyncio.sleep(max(0.0, min(next_in, deadline - time.monotonic())))


async def run(args: argparse.Namespace, setup: dict[str, Any]) -> dict[str, Any]:
    """Build the clients and drivers, warm up (first full reads), then poll for `--duration`."""
    http_samples: list[float] = []
    op_samples: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    events: dict[str, int] = defaultdict(int)
    clients: list[httpx.AsyncClient] = []
    pollers: list[tuple[str, Callable[[str | None], Awaitable[Any]]]] = []
    for _pid, pms, creds in setup["practices"]:
        base = setup["bases"][pms]
        client = new_client(
            base,
            timeout=args.timeout,
            rate_per_second=args.rate,
            burst=args.burst,
            inner=Counting(http_samples),
        )
        clients.append(client)
        driver: PmsDriver = create_driver(pms, client, base, Credentials(creds))
        pollers += [
            ("appointmentStatus", driver.appointment_status_since),
            ("appointments", driver.appointments_since),
            ("patients", driver.patients_since),
        ]
    intervals = (
        dict.fromkeys(DEFAULT_INTERVALS, args.interval)
        if args.interval
        else dict(DEFAULT_INTERVALS)
    )
    rng = random.Random(7)
    try:
        warm_started = time.monotonic()
        # Warm-up with bounded concurrency and retries: 3N first full reads at once would only
        # measure the simulator's queue.
        gate = asyncio.Semaphore(args.warm_up_concurrency)

        async def first_read(op: Callable[[str | None], Awaitable[Any]]) -> Any:
            async with gate:
                return await with_retry(lambda: op(None), policy=RetryPolicy(max_attempts=5))

        first = await asyncio.gather(*(first_read(op) for _, op in pollers))
        warm_up = time.monotonic() - warm_started
        measured_from = len(http_samples)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        deadline = t0 + args.duration
        await asyncio.gather(
            *(
                poll_loop(
                    name,
                    op,
                    page.cursor,
                    intervals[name],
                    deadline,
                    op_samples,
                    errors,
                    events,
                    rng.uniform(0, intervals[name]),
                )
                for (name, op), page in zip(pollers, first, strict=True)
            )
        )
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    finally:
        for client in clients:
            await client.aclose()
    http = http_samples[measured_from:]
    polls = [s for v in op_samples.values() for s in v]
    return {
        "bench": "drivers",
        "practices": len(clients),
        "intervals_s": intervals,
        "offered_polls_per_second": round(len(clients) * sum(1 / v for v in intervals.values()), 1),
        "duration_s": round(wall, 2),
        "warm_up_s": round(warm_up, 2),
        "cores": os.cpu_count(),
        "http_requests": len(http),
        "requests_per_second": round(len(http) / wall, 1) if wall else 0.0,
        "polls": len(polls),
        "polls_per_second": round(len(polls) / wall, 1) if wall else 0.0,
        # The poller side's own CPU (this process only; the simulator runs in another one).
        "client_cpu_ms_per_poll": round(cpu * 1000 / len(polls), 3) if polls else 0.0,
        "poll_errors": dict(errors),
        "events": dict(events),
        "http_latency_ms": {k: round(v, 2) for k, v in percentiles(http).items()},
        "poll_latency_ms": {
            name: {k: round(v, 2) for k, v in percentiles(s).items()}
            for name, s in sorted(op_samples.items())
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['practices']} practices, intervals {result['intervals_s']} "
        f"(offered {result['offered_polls_per_second']} polls/s), "
        f"{result['duration_s']} s measured on {result['cores']} cores "
        f"(warm-up first reads: {result['warm_up_s']} s)"
    )
    print(
        f"HTTP requests/second: {result['requests_per_second']}   polls/second: {result['polls_per_second']}"
    )
    print(f"poller CPU per poll: {result['client_cpu_ms_per_poll']} ms (this process only)")
    print(f"{'what':<24}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    rows = [("HTTP request", result["http_latency_ms"])]
    rows += [(f"poll {name}", v) for name, v in sorted(result["poll_latency_ms"].items())]
    for name, p in rows:
        print(f"{name:<24}{p['p50']:>10.1f}{p['p95']:>10.1f}{p['p99']:>10.1f}{p['max']:>10.1f}")
    if result["poll_errors"]:
        print(f"poll errors: {result['poll_errors']}")
    print(f"changes seen: {result['events']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--practices", "-n", type=int, default=200, help="simulated practices (default 200)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="one interval in seconds for all three pollers (default: the product's 15/60/30 s)",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds to measure (default 60)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="client timeout per request (default 10)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        help="client token bucket rate per practice (default 10/s)",
    )
    parser.add_argument(
        "--burst", type=int, default=20, help="client token bucket burst (default 20)"
    )
    parser.add_argument(
        "--warm-up-concurrency",
        type=int,
        default=16,
        help="first full reads in flight at once before measuring (default 16)",
    )
    args = parser.parse_args(argv)
    if args.practices < 1 or args.interval < 0 or args.duration <= 0:
        parser.error("--practices and --duration must be positive, --interval not negative")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    server = ctx.Process(target=_serve, args=(args.practices, child, stop, 2.0), daemon=True)
    server.start()
    try:
        if not parent.poll(120):
            raise SystemExit("the simulator did not start within 120 s")
        setup = parent.recv()
        result = asyncio.run(run(args, setup))
    finally:
        stop.set()
        server.join(30)
        if server.is_alive():
            server.terminate()
    print_table(result)
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
