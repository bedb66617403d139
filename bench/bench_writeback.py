"""Benchmark: writebacks for many simulated practices, through one writeback service.

Three processes on loopback, all real:
- this one: the PMS simulator (every practice, with a per-practice rate limit), and the checks;
- `serve`: one `WritebackService` (SQLite queue with group commit, drainer, aiohttp API) whose
  directory resolves every practice through the real drivers, each on its own rate-limited client;
- `load`: the load generator, POSTing writebacks open-loop at `--offered-rate` per second (each
  request's latency counts from when it was due, so a stalled server cannot hide its queue).

It reports accepted requests per second, the acknowledgment latency (p50/p99, measured by the
client: request sent -> 202 read), the end-to-end latency to the PMS (p50/p99, the queue's
accepted -> sent stamps), and, from the simulator's own request log, whether every practice's
PMS rate budget was respected (the highest request count any practice saw in any 1 s window,
and the number of 429 answers).

    .venv/bin/python bench/bench_writeback.py                      # 1,000 practices x 5
    .venv/bin/python bench/bench_writeback.py --practices 100 --per-practice 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PMS_TYPES = ("OpenDental", "Eaglesoft", "Dentrix")
PROVIDER = {"OpenDental": "1", "Dentrix": "DDS1", "Eaglesoft": "DCM"}
TOKEN = "bench-token-0123456789abcdef"
API_SWITCH_INTERVAL = 0.0005  # reconciler.writeback.service.API_SWITCH_INTERVAL
KINDS = ("outgoingSms", "incomingSms", "outgoingEmail", "incomingCall", "missedCall")


def practice_ids(n: int) -> list[tuple[str, str]]:
    return [(f"wb-{i:04d}", PMS_TYPES[i % len(PMS_TYPES)]) for i in range(n)]


def spec_for(pid: str, pms: str, url: str) -> Any:
    from reconciler.api.spec import PracticeSpec

    names = {"outgoingSms": "Text Message", "incomingSms": "Text Message",
             "outgoingEmail": "Email", "incomingCall": "Phone Call", "missedCall": "Missed Call"}  # fmt: skip
    return PracticeSpec.from_spec(
        {
            "practiceId": pid,
            "pms": {"type": pms, "url": url, "credentialsSecretRef": {"name": f"{pid}-creds"}},
            "providerId": PROVIDER[pms],
            "writeback": {k: {"allow": True, "noteType": v} for k, v in names.items()},
        }
    )


# --- the service process ----------------------------------------------------------------------


class Directory:
    """`PracticeDirectory` built like the engine builds it: spec + driver + resolved ids."""

    def __init__(self) -> None:
        self.targets: dict[str, Any] = {}
        self.clients: list[Any] = []

    def target(self, practice_id: str) -> Any:
        return self.targets.get(practice_id)

    async def add(self, pid: str, pms: str, sim_url: str, rate: float, burst: int) -> None:
        from pms_drivers.base import Credentials
        from pms_drivers.registry import create_driver
        from pms_drivers.transport import new_client
        from pms_simulator.server import simulator_credentials
        from reconciler.writeback.target import WritebackTarget

        base = f"{sim_url}/api/v1" if pms == "OpenDental" else f"{sim_url}/bridge/v1"
        # The engine's client: new_client()'s default transport (AiohttpTransport, shared TLS).
        client = new_client(base, timeout=30.0, rate_per_second=rate, burst=burst)
        self.clients.append(client)
        driver = create_driver(pms, client, base, Credentials(simulator_credentials(pid, pms)))
        spec = spec_for(pid, pms, sim_url)
        active = {p.id for p in await driver.list_providers() if p.active}
        names = {n.name: n.id for n in await driver.list_note_types() if not n.hidden}
        self.targets[pid] = WritebackTarget(
            key=f"bench/{pid}",
            spec=spec,
            provider_id=spec.provider_id if spec.provider_id in active else None,
            note_type_ids={k: names[n] for k, n in spec.allowed_note_types().items()},
            driver=driver,
        )


async def serve(args: argparse.Namespace) -> None:
    import signal

    from reconciler.writeback.delivery import DeliveryPolicy
    from reconciler.writeback.service import WritebackService

    directory = Directory()
    sem = asyncio.Semaphore(32)

    async def add(pid: str, pms: str) -> None:
        async with sem:
            await directory.add(pid, pms, args.sim_url, args.rate, args.burst)

    await asyncio.gather(*(add(pid, pms) for pid, pms in practice_ids(args.practices)))
    if args.intake_only:  # no driver: the drainer parks every practice, only intake runs
        import dataclasses

        directory.targets = {
            k: dataclasses.replace(t, driver=None) for k, t in directory.targets.items()
        }
    policy = DeliveryPolicy(
        max_concurrent_practices=args.max_concurrent,
        quantum=8,
        not_ready_delay=3600.0 if args.intake_only else 2.0,
        api_lag_target=args.api_lag_target,
    )
    service = WritebackService(
        directory,
        args.db,
        TOKEN,
        policy=policy,
        synchronous=args.synchronous,
        switch_interval=args.switch_interval,
    )
    url = await service.start("127.0.0.1", 0)
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    Path(args.url_file).write_text(f"{url}\n")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    spent = cpu.ru_utime + cpu.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    Path(args.url_file + ".commits").write_text(
        json.dumps({"commits": service.store.commits, "cpu_s": spent})
    )
    await service.stop(grace=2.0)


# --- the load process -------------------------------------------------------------------------


async def load(args: argparse.Namespace) -> None:
    import resource

    import aiohttp

    pids = [pid for pid, _ in practice_ids(args.practices)]
    jobs = [(pids[i % len(pids)], i) for i in range(args.practices * args.per_practice)]
    # A few busy practices get many more, so their PMS budget is what limits their delivery.
    base = len(jobs)
    jobs += [(pids[i % args.hot], base + i) for i in range(args.hot * args.hot_extra)]
    random.Random(0).shuffle(jobs)
    acks: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    slots = asyncio.Semaphore(args.concurrency)

    async def one(http: aiohttp.ClientSession, pid: str, i: int, due: float) -> None:
        body = {
            "callerId": f"bench-{i}",
            "type": KINDS[i % len(KINDS)],
            "patientId": str(2 + i % 50),
            "occurredAt": "2026-11-26T09:15:00-05:00",
            "text": f"bench writeback {i}",
        }
        async with slots:
            if due == 0.0:
                due = time.perf_counter()
            async with http.post(f"{args.url}/v1/practices/{pid}/writebacks", json=body,
                                 headers=headers) as resp:  # fmt: skip
                await resp.read()
        # Measured from when the request was due, so time waiting to be sent counts too.
        acks.append(time.perf_counter() - due)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        tasks = []
        for n, (pid, i) in enumerate(jobs):
            due = 0.0
            if args.offered_rate > 0:  # open loop: request n is due at n / rate
                due = started + n / args.offered_rate
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
            tasks.append(asyncio.create_task(one(http, pid, i, due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    spent = cpu.ru_utime + cpu.ru_stime
    print(json.dumps({"wall": wall, "acks": acks, "statuses": statuses, "cpu_s": spent}))


# --- the main process: simulator, orchestration, checks ----------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def histogram_quantiles(text: str, name: str) -> list[float]:
    """Upper bucket bounds (ms) holding the p50 and p99 of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in (0.5, 0.99):
        bound = next((le for le, n in buckets if n >= q * total), float("inf"))
        out.append(bound * 1000)
    return out


def max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def main(args: argparse.Namespace) -> int:
    from pms_simulator.server import Simulator
    from reconciler.writeback import store as ops

    practices = practice_ids(args.practices)
    # The simulator's bucket gets 3 more burst than the client's: requests leave the client's
    # bucket evenly but can arrive bunched (scheduling jitter on a busy machine).
    sim = Simulator(rate_limit_per_second=args.rate, burst=args.burst + 3)
    t = time.perf_counter()
    for pid, pms in practices:
        sim.add_practice(pid, pms)
        sim.state.practice(pid)  # seed now, not during the measurement
    print(f"seeded {len(practices)} practices in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="bench-wb-"))
    db = tmp / "wb.db"
    me = str(Path(__file__).resolve())
    async with sim.serve() as sim_url:
        url_file = tmp / "url"
        server = subprocess.Popen([sys.executable, me, "serve", "--sim-url", sim_url, "--db", str(db),
                                   "--url-file", str(url_file), "--practices", str(args.practices),
                                   "--rate", str(args.rate), "--burst", str(args.burst),
                                   "--max-concurrent", str(args.max_concurrent),
                                   "--synchronous", args.synchronous,
                                   "--switch-interval", str(args.switch_interval),
                                   "--api-lag-target", str(args.api_lag_target),
                                   *(["--intake-only"] if args.intake_only else [])])  # fmt: skip
        try:
            t = time.perf_counter()
            while not url_file.exists() or not url_file.read_text().strip():
                if server.poll() is not None:
                    raise SystemExit("the writeback service exited early")
                await asyncio.sleep(0.2)
            url = url_file.read_text().strip()
            print(f"service up, {len(practices)} practices resolved in "
                  f"{time.perf_counter() - t:.1f}s", file=sys.stderr)  # fmt: skip
            for pid, _ in practices:
                sim.clear_requests(pid)
            cpu0 = time.process_time()  # the simulator's work from here on
            loader = await asyncio.create_subprocess_exec(
                sys.executable, me, "load", "--url", url, "--practices", str(args.practices),
                "--per-practice", str(args.per_practice), "--concurrency", str(args.concurrency),
                "--hot", str(args.hot), "--hot-extra", str(args.hot_extra),
                "--offered-rate", str(args.offered_rate),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await loader.communicate()
            result = json.loads(out)
            import urllib.request

            with urllib.request.urlopen(f"{url}/metrics") as resp:
                metrics_text = resp.read().decode()
            total = args.practices * args.per_practice + args.hot * args.hot_extra
            t = time.perf_counter()
            while True:
                conn = ops.connect(db)
                try:
                    c = ops.counts(conn)
                finally:
                    conn.close()
                if (
                    args.intake_only
                    or c["pending"] == 0
                    or time.perf_counter() - t > args.drain_timeout
                ):
                    break
                await asyncio.sleep(0.5)
            sim_cpu = time.process_time() - cpu0
        finally:
            server.terminate()
            server.wait(30)
        conn = ops.connect(db)
        try:
            rows = conn.execute(
                "SELECT practice_id, sent_at - created_at FROM writebacks WHERE status = 'sent'"
            ).fetchall()
        finally:
            conn.close()
        hot = {pid for pid, _ in practices[: args.hot]}
        e2e = [r[1] for r in rows if r[0] not in hot]
        e2e_hot = [r[1] for r in rows if r[0] in hot]
        windows = {pid: max_in_window([r.at for r in sim.requests(pid)]) for pid, _ in practices}
        throttled = sum(1 for pid, _ in practices for r in sim.requests(pid) if r.status == 429)
        notes = sum(len(sim.notes(pid)) for pid, _ in practices)
    commits_file = Path(str(url_file) + ".commits")
    served = json.loads(commits_file.read_text()) if commits_file.exists() else {}
    acks = result["acks"]
    server_ack = histogram_quantiles(metrics_text, "pmsctl_writeback_ack_seconds")
    report = {
        "practices": args.practices,
        "writebacks": total,
        "accepted": result["statuses"].get("202", 0),
        "offered_per_second": args.offered_rate or "max",
        "accepted_per_second": round(result["statuses"].get("202", 0) / result["wall"], 1),
        "ack_ms_p50": round(pct(acks, 50) * 1000, 2),
        "ack_ms_p99": round(pct(acks, 99) * 1000, 2),
        "server_ack_ms_p50_p99_upper_bounds": server_ack,
        "group_commits": served.get("commits"),
        "service_cpu_s": round(served.get("cpu_s", 0.0), 1),
        "load_client_cpu_s": round(result.get("cpu_s", 0.0), 1),
        "simulator_cpu_s": round(sim_cpu, 1),
        "machine_load_average_1m": os.getloadavg()[0],
        "sqlite_synchronous": args.synchronous,
        "sent": c["sent"],
        "failed": c["failed"],
        "pending_at_end": c["pending"],
        "notes_in_pms": notes,
        "e2e_s_p50": round(pct(e2e, 50), 3),
        "e2e_s_p99": round(pct(e2e, 99), 3),
        "busy_practices_e2e_s_p50_p99": [round(pct(e2e_hot, 50), 3), round(pct(e2e_hot, 99), 3)],
        "pms_budget_per_practice": f"{args.rate}/s burst {args.burst}",
        "max_requests_in_any_1s_window": max(windows.values()),
        "busy_practices_requests_in_any_1s_window": sorted(
            {windows[pid] for pid, _ in practices[: args.hot]}
        ),
        "http_429_answers": throttled,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    ok = (
        report["accepted"] == total
        and (args.intake_only or notes == total)
        and c["failed"] == 0
        and report["max_requests_in_any_1s_window"] <= args.rate + args.burst
    )
    return 0 if ok else 1


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", nargs="?", default="main", choices=("main", "serve", "load"))
    p.add_argument("--practices", type=int, default=1000)
    p.add_argument("--per-practice", type=int, default=5)
    p.add_argument("--hot", type=int, default=10, help="busy practices (the first N)")
    p.add_argument("--hot-extra", type=int, default=50, help="extra writebacks per busy practice")
    p.add_argument("--concurrency", type=int, default=256, help="client connections (at most)")
    p.add_argument("--offered-rate", type=float, default=1000.0,
                   help="requests/s the client sends at (open loop); 0 = as fast as it can")  # fmt: skip
    p.add_argument("--rate", type=float, default=5.0, help="PMS requests/s per practice")
    p.add_argument("--burst", type=int, default=5)
    p.add_argument("--max-concurrent", type=int, default=256, help="practices drained at once")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--intake-only", action="store_true",
                   help="measure intake alone: nothing is delivered")  # fmt: skip
    p.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"),
                   help="SQLite synchronous: FULL fsyncs every group commit (the default)")  # fmt: skip
    p.add_argument("--switch-interval", type=float, default=API_SWITCH_INTERVAL,
                   help="the service's switch_interval (0.005: Python's default)")  # fmt: skip
    p.add_argument("--api-lag-target", type=float, default=0.005,
                   help="DeliveryPolicy.api_lag_target: PMS writes slow down while the API "
                        "loop runs later than this")  # fmt: skip
    p.add_argument("--sim-url")
    p.add_argument("--db")
    p.add_argument("--url-file")
    p.add_argument("--url")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse(sys.argv[1:])
    if a.mode == "serve" and os.environ.get("BENCH_PROFILE"):
        import cProfile

        cProfile.run("asyncio.run(serve(a))", os.environ["BENCH_PROFILE"])
    elif a.mode == "serve":
        asyncio.run(serve(a))
    elif a.mode == "load":
        asyncio.run(load(a))
    else:
        sys.exit(asyncio.run(main(a)))
