"""How many practices one operator process holds: scheduler and pollers at increasing counts.

Two benchmarks, both reporting schedule lag (how late a poll started versus when it was due,
p50/p99/max), CPU (cores used by this process, and by the simulator), and memory (RSS):

  scheduler  3 pollers per practice with a trivial poll, no I/O: the scheduler's own overhead.
             `--mode heap` is `reconciler.engine.scheduler.Scheduler` (one heap, one dispatcher, a bounded
             pool); `--mode tasks` is the naive design (one sleeping task per poller) for comparison.
  engine     the real `Engine` as the operator runs it: every practice reconciled against the PMS
             simulator (running in its own process, so it does not steal this process's GIL;
             its CPU is reported apart, `sim_cpu_*`), then the three pollers per practice at the
             product intervals (appointmentStatus 15 s, patients 30 s, appointments 60 s) with
             real drivers, the drift check at its default (30 s), a JSONL sink that fsyncs, the
             SQLite cursor store, and a status listener shaped like the operator's (the status
             as a JSON patch body, a thread hop per write) under the `--status-qps` budget.

    .venv/bin/python bench/bench_scale.py scheduler --counts 1000,10000 --mode both
    .venv/bin/python bench/bench_scale.py engine --counts 1000,3000 --duration 60
    .venv/bin/python bench/bench_scale.py engine --counts 10000 --duration 60

The last line is the 10,000-practice run (about 5-10 minutes on a quiet 2-core machine, most of
it the initial sync); run it alone on the machine.

The first-poll jitter spreads each poller's first run over its interval. The engine bench first
measures the start (`startup_*`: schedule lag, fsyncs and cursor commits a second, the longest
cursor transaction) from the moment every practice was applied until every poller has read its
practice's history once (`initial_sync_s`: each practice starts from an empty cursor, ~350
events), then waits `--warmup` more seconds (default 60, the longest interval: until then pollers still
ask for URLs they have not asked for before) and measures the steady state for `--duration` (a
multiple of the 30 s drift period: the drift checks of practices applied together are due
together, so a shorter window catches an uneven share of them).
The report says at which count p99 lag first passes 1 s. Engine rows also carry
`cpu_ms_per_poll` (the engine's whole CPU, drift checks and status writes included, over its
polls; `drift_checks_per_s` says how many checks that covers), `fsyncs_per_s`,
`cursor_writes_per_s`, `status_writes_per_s`, `gc_*` (the cyclic collector's passes and time in
the window), `load_avg_1m` and `machine_cpu_wait_pct` (Linux PSI: the share of the window in
which some task on the machine waited for a CPU; high means the figures are contended).
`--profile PATH` writes a cProfile (CPU time) of the measured window to PATH.<count>;
`--no-gc-tuning`, `--no-fsync`, `--no-status`, `--drift-interval` and `--status-qps` run the
engine differently from the operator, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # benchlib, also when capacity_model.py loads this file

from benchlib import cpu_pressure_us  # noqa: E402

from pms_drivers.base import Credentials  # noqa: E402
from reconciler.api.spec import PracticeSpec  # noqa: E402
from reconciler.engine.cursors import SqliteCursorStore  # noqa: E402
from reconciler.engine.decisions import DRIFT  # noqa: E402
from reconciler.engine.engine import Engine, EngineSettings, SecretNotFoundError  # noqa: E402
from reconciler.engine.scheduler import Scheduler  # noqa: E402
from reconciler.engine.sink import JsonlSink  # noqa: E402

INTERVALS = {"appointmentStatus": 15.0, "patients": 30.0, "appointments": 60.0}


def rss_mb(pid: int | None = None) -> float:
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class GcPauses:
    """Times the cyclic garbage collector's passes (gc.callbacks), per generation, while on."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        full = self.pauses[2]
        return {
            "gc_full_passes": len(full),
            "gc_full_max_ms": round(max(full, default=0.0) * 1000, 1),
            "gc_total_ms": round(sum(sum(v) for v in self.pauses.values()) * 1000, 1),
        }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class TaskPerPoller:
    """The naive design, for comparison: one task per poller sleeping until its next run."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []
        self.lags: list[float] = []

    def ensure(
        self, key: str, kind: str, interval: float, poll: Callable[[], Awaitable[int]], first: float
    ) -> None:
        async def loop() -> None:
            clock = asyncio.get_running_loop()
            due = clock.time() + first
            while True:
                await asyncio.sleep(max(0.0, due - clock.time()))
                start = clock.time()
                self.lags.append(start - due)
                await poll()
                due = start + interval

        self.tasks.append(asyncio.create_task(loop()))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def bench_scheduler(
    count: int, mode: str, duration: float, warmup: float, workers: int
) -> dict[str, Any]:
    import random

    rng = random.Random(1)
    polls = 0

    async def poll() -> int:
        nonlocal polls
        polls += 1
        await asyncio.sleep(0)  # a real poll yields at least once
        return 0

    rss0 = rss_mb()
    if mode == "heap":
        s = Scheduler(workers=workers, first_jitter=1.0, rng=rng)
        await s.start()
        for i in range(count):
            for kind, interval in INTERVALS.items():
                s.ensure(f"ns/p{i}", kind, interval, poll)
        await asyncio.sleep(warmup)
        s.stats.lags.clear()
        lags_src: Any = s.stats.lags
    else:
        t = TaskPerPoller()
        for i in range(count):
            for kind, interval in INTERVALS.items():
                t.ensure(f"ns/p{i}", kind, interval, poll, rng.uniform(0, min(interval, 30.0)))
        await asyncio.sleep(warmup)
        t.lags.clear()
        lags_src = t.lags
    polls = 0
    cpu0, wall0 = self_cpu_seconds(), time.monotonic()
    await asyncio.sleep(duration)
    cpu = (self_cpu_seconds() - cpu0) / (time.monotonic() - wall0)
    lags = list(lags_src)
    rss = rss_mb()
    if mode == "heap":
        await s.close()
    else:
        await t.close()
    return {
        "bench": "scheduler", "mode": mode, "practices": count, "pollers": 3 * count,
        "polls_per_s": round(polls / duration, 1),
        "lag_p50_ms": round(pct(lags, 0.5) * 1000, 2), "lag_p99_ms": round(pct(lags, 0.99) * 1000, 2),
        "lag_max_ms": round(max(lags, default=0) * 1000, 2),
        "cpu_cores": round(cpu, 3), "rss_mb": round(rss, 1), "rss_added_mb": round(rss - rss0, 1),
    }  # fmt: skip


SIM_SCRIPT = r"""
import asyncio, sys
from pms_simulator import Simulator
count, pms = int(sys.argv[1]), sys.argv[2]
sim = Simulator(rate_limit_per_second=1000, burst=1000)
for i in range(count):
    sim.add_practice(f"p{i}", pms)
async def main():
    async with sim.serve() as url:
        print(url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


class SimSecrets:
    def __init__(self, pms: str) -> None:
        from pms_simulator import simulator_credentials

        self._creds = simulator_credentials
        self._pms = pms

    async def get(self, key: str, secret_name: str) -> Credentials:
        if not secret_name.startswith("p"):
            raise SecretNotFoundError(secret_name)
        return Credentials(self._creds(secret_name, self._pms))


class StatusCounter:
    """A status listener shaped like the operator's (`reconciler.kube.client.StatusWriter`): the
    status becomes the JSON patch body on the event loop and the write is a thread hop (the
    Kubernetes client's call); no API server, so what is measured is this process's share."""

    def __init__(self) -> None:
        self.writes = 0
        self.with_transitions = 0

    async def __call__(self, key: str, status: Any, transitions: Any) -> None:
        body = [{"op": "add", "path": "/status", "value": status.to_dict()}]
        await asyncio.to_thread(json.dumps, body)
        self.writes += 1
        if transitions:
            self.with_transitions += 1


class CountingCursorStore(SqliteCursorStore):
    """The operator's SQLite cursor store, counting cursors written and transactions."""

    puts = 0
    commits = 0
    #: Longest single transaction (seconds).
    put_max = 0.0

    def put(self, key: str, kind: str, cursor: str) -> None:
        self.put_many([(key, kind, cursor)])

    def put_many(self, cursors: Sequence[tuple[str, str, str]]) -> None:
        began = time.perf_counter()
        super().put_many(cursors)
        self.put_max = max(self.put_max, time.perf_counter() - began)
        self.puts += len(cursors)
        self.commits += 1


def lag_summary(prefix: str, lags: list[float]) -> dict[str, float]:
    return {
        f"{prefix}lag_p50_ms": round(pct(lags, 0.5) * 1000, 1),
        f"{prefix}lag_p99_ms": round(pct(lags, 0.99) * 1000, 1),
        f"{prefix}lag_max_ms": round(max(lags, default=0) * 1000, 1),
        # How many runs started more than 1 s late: a handful of very late runs is one stall
        # (of this process, or of the machine), a steady share is a saturated event loop.
        f"{prefix}late_over_1s": sum(1 for lag in lags if lag > 1.0),
    }


async def bench_engine(
    count: int,
    duration: float,
    warmup: float,
    workers: int,
    pms: str,
    sim_practices: int,
    profile: str | None = None,
    gc_tuning: bool = True,
    *,
    fsync: bool = True,
    status: bool = True,
    drift_interval: float | None = None,
    status_qps: float | None = None,
) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    shared = min(count, sim_practices)
    sim = subprocess.Popen(
        [sys.executable, "-c", SIM_SCRIPT, str(shared), pms],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().strip()
        base = f"{url}/api/v1" if pms == "OpenDental" else f"{url}/bridge/v1"
        tmp = Path(tempfile.mkdtemp(prefix="pmsctl-bench-"))
        defaults = EngineSettings()
        drift = defaults.drift_interval if drift_interval is None else drift_interval
        qps = defaults.status_qps if status_qps is None else status_qps
        sink = JsonlSink(tmp / "events.jsonl", fsync=fsync)
        store = CountingCursorStore(tmp / "state.db")
        listener = StatusCounter() if status else None
        engine = Engine(
            sink=sink,
            store=store,
            secrets=SimSecrets(pms),
            on_status=listener,
            settings=EngineSettings(
                poll_workers=workers,
                drift_interval=drift,
                status_qps=qps,
                gc_tuning=gc_tuning,
            ),
        )
        await engine.start()
        rss0 = rss_mb()
        provider = "1" if pms == "OpenDental" else "DDS1"
        t0 = time.monotonic()
        sem = asyncio.Semaphore(200)

        async def add(i: int) -> bool:
            spec = PracticeSpec.from_spec(
                {
                    "practiceId": f"p{i}",
                    # Engine practices share the simulator's practices (seeding 300 patients each
                    # would dominate); every engine practice still has its own client, bucket,
                    # cursors and pollers, which is what is measured.
                    "pms": {
                        "type": pms,
                        "url": base,
                        "credentialsSecretRef": {"name": f"p{i % shared}"},
                    },
                    "providerId": provider,
                    "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
                    "sync": {
                        k: {"enabled": True, "interval": f"{int(v)}s"} for k, v in INTERVALS.items()
                    },
                }
            )
            async with sem:
                return (await engine.apply(f"bench/p{i}", spec)).condition(
                    "PMSReachable"
                ).status == "True"  # type: ignore[union-attr]

        ok = sum(await asyncio.gather(*(add(i) for i in range(count))))
        reconcile_s = time.monotonic() - t0

        def synced() -> bool:
            # Every poller has read its practice's whole history once (the initial sync).
            return all(
                (st := engine.scheduler.state(f"bench/p{i}", kind)) is not None
                and st.last_success is not None
                for i in range(count)
                for kind in INTERVALS
            )

        # The start: how late polls run while every practice reads its whole history (the
        # initial sync writes ~350 events per practice through the sink, fsynced).
        stats = engine.scheduler.stats
        startup_lags: list[float] = []
        fsync0, puts0, writes0 = sink.fsyncs, store.puts, listener.writes if listener else 0
        commits0 = store.commits
        while not synced() and time.monotonic() - t0 < 1800:
            await asyncio.sleep(1)
            startup_lags.extend(stats.lags)
            stats.lags.clear()
        initial_sync_s = time.monotonic() - t0
        startup_wall = initial_sync_s - reconcile_s
        startup_fsyncs = sink.fsyncs - fsync0
        startup_puts = store.puts - puts0
        startup_commits = store.commits - commits0
        startup_put_max, store.put_max = store.put_max, 0.0
        await asyncio.sleep(warmup)
        startup_lags.extend(stats.lags)
        stats.lags.clear()
        runs0 = dict(stats.runs_by_kind)
        fails0 = stats.failures
        fsync0, puts0, writes0 = sink.fsyncs, store.puts, listener.writes if listener else 0
        commits0 = store.commits
        profiler = None
        if profile:
            import cProfile

            # CPU time, not wall time: on a shared machine a wall-clock profile charges this
            # process for the time the kernel gave the CPU to someone else.
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
        cpu0, sim0, wall0 = self_cpu_seconds(), proc_cpu_seconds(sim.pid), time.monotonic()
        psi0 = cpu_pressure_us()
        with GcPauses() as gc_pauses:
            await asyncio.sleep(duration)
        wall = time.monotonic() - wall0
        # Share of the window in which some runnable task on the machine waited for a CPU: the
        # machine is shared, and a starved benchmark reads as lag, not as CPU.
        cpu_wait = (cpu_pressure_us() - psi0) / 1e6 / wall
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{count}")
        cpu = (self_cpu_seconds() - cpu0) / wall
        sim_cpu = (proc_cpu_seconds(sim.pid) - sim0) / wall
        lags = list(stats.lags)
        runs = {k: n - runs0.get(k, 0) for k, n in stats.runs_by_kind.items()}
        polls = sum(n for k, n in runs.items() if k in INTERVALS)
        drifts = runs.get(DRIFT, 0)
        fails = stats.failures - fails0
        rss = rss_mb()
        fsyncs, puts, commits = sink.fsyncs - fsync0, store.puts - puts0, store.commits - commits0
        writes = (listener.writes - writes0) if listener else 0
        await engine.stop()
        settings = engine.settings
        return {
            "bench": "engine", "pms": pms, "practices": count, "sim_practices": shared, "reachable": ok,
            "fsync": fsync, "status_listener": status, "drift_interval_s": settings.drift_interval,
            "status_qps": settings.status_qps,
            "reconcile_all_s": round(reconcile_s, 1), "initial_sync_s": round(initial_sync_s, 1),
            **lag_summary("startup_", startup_lags),
            "startup_fsyncs_per_s": round(startup_fsyncs / max(startup_wall, 1e-9), 1),
            "startup_cursor_writes_per_s": round(startup_puts / max(startup_wall, 1e-9), 1),
            "startup_cursor_commits_per_s": round(startup_commits / max(startup_wall, 1e-9), 1),
            "startup_cursor_commit_max_ms": round(startup_put_max * 1000, 1),
            "polls_per_s": round(polls / wall, 1),
            "expected_polls_per_s": round(count * sum(1 / v for v in INTERVALS.values()), 1),
            "drift_checks_per_s": round(drifts / wall, 1),
            "poll_failures": fails,
            **lag_summary("", lags),
            "cpu_cores": round(cpu, 2), "sim_cpu_cores": round(sim_cpu, 2),
            # The engine's whole CPU (drift checks and status writes included) over its polls.
            "cpu_ms_per_poll": round(cpu * wall / max(polls, 1) * 1000, 3),
            "sim_cpu_ms_per_poll": round(sim_cpu * wall / max(polls, 1) * 1000, 3),
            "fsyncs_per_s": round(fsyncs / wall, 1),
            "cursor_writes_per_s": round(puts / wall, 1),
            "cursor_commits_per_s": round(commits / wall, 1),
            "cursor_commit_max_ms": round(store.put_max * 1000, 1),
            "status_writes_per_s": round(writes / wall, 1),
            "machine_cpu_wait_pct": round(cpu_wait * 100, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "rss_mb": round(rss, 1), "rss_added_mb": round(rss - rss0, 1),
            **gc_pauses.summary(),
        }  # fmt: skip
    finally:
        sim.terminate()
        sim.wait(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=("scheduler", "engine"))
    p.add_argument(
        "--counts", default="100,1000,3000,10000", help="practice counts, comma-separated"
    )
    p.add_argument(
        "--mode",
        choices=("heap", "tasks", "both"),
        default="heap",
        help="scheduler bench: which design",
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured per count")
    p.add_argument(
        "--warmup",
        type=float,
        help="seconds before measuring (scheduler: 16 by default; engine: 60, counted after the"
        " initial sync: the longest interval, so every poller has run with its settled cursor)",
    )
    p.add_argument("--workers", type=int, default=256, help="polls in flight at once")
    p.add_argument("--pms", choices=("OpenDental", "Dentrix", "Eaglesoft"), default="Dentrix")
    p.add_argument(
        "--sim-practices",
        type=int,
        default=100,
        help="engine bench: simulator practices the engine's practices share",
    )
    p.add_argument(
        "--profile",
        metavar="PATH",
        help="engine bench: cProfile the measured window into PATH.<count> (slows the engine)",
    )
    p.add_argument(
        "--no-gc-tuning",
        action="store_true",
        help="engine bench: EngineSettings(gc_tuning=False), Python's collector as it comes",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="engine bench: JsonlSink(fsync=False) (the operator fsyncs; this is for comparison)",
    )
    p.add_argument(
        "--no-status",
        action="store_true",
        help="engine bench: no status listener (the operator has one; for comparison)",
    )
    p.add_argument(
        "--drift-interval",
        type=float,
        help="engine bench: seconds between drift checks (default: EngineSettings')",
    )
    p.add_argument(
        "--status-qps",
        type=float,
        help="engine bench: counter-only status writes a second (default: EngineSettings')",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines only")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    if args.warmup is None:
        args.warmup = 60.0 if args.bench == "engine" else 16.0
    rows: list[dict[str, Any]] = []
    for count in counts:
        modes = ("heap", "tasks") if args.mode == "both" else (args.mode,)
        for mode in modes if args.bench == "scheduler" else ("heap",):
            if args.bench == "scheduler":
                row = asyncio.run(
                    bench_scheduler(count, mode, args.duration, args.warmup, args.workers)
                )
            else:
                row = asyncio.run(
                    bench_engine(
                        count,
                        args.duration,
                        args.warmup,
                        args.workers,
                        args.pms,
                        args.sim_practices,
                        args.profile,
                        not args.no_gc_tuning,
                        fsync=not args.no_fsync,
                        status=not args.no_status,
                        drift_interval=args.drift_interval,
                        status_qps=args.status_qps,
                    )
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not args.json:
        over = [r for r in rows if r["lag_p99_ms"] > 1000]
        first = min((r["practices"] for r in over), default=None)
        print(
            f"p99 schedule lag passes 1 s at: {first if first else 'none of ' + args.counts} practices"
        )
        if rows:
            print(
                f"median p50 lag across runs: {statistics.median(r['lag_p50_ms'] for r in rows)} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
