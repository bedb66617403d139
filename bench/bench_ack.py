"""Benchmark: writeback acknowledgment latency under a fixed arrival rate, per store backend.

An open-loop load generator (requests are due at fixed intervals; each one's latency counts from
when it was due, so a stalled server cannot hide its queue) POSTs writebacks at each rate of
`--rates` for `--seconds`, and reports the ack latency p50 / p99 / p99.9 and the highest rate at
which p99 stays under `--p99-budget-ms` (20 ms), for:

- `service`: the product's wiring (its default), the real `WritebackService` (auth,
  validation, decision, the store's group commit) with the API on its own thread and event
  loop, and delivery running in the same process: the drainer writes every note to the PMS
  simulator (in this process) through the real drivers, each practice within its PMS budget
  (`--pms-rate`, default the product's 5 requests a second);
- `process` (`--writeback-intake process`): the same service with the API in a process of its
  own (`reconciler.writeback.intake`), for comparison;
- `floor`: a minimal aiohttp handler that parses the body and commits it through the same store
  (one `Insert` in a group commit) and nothing else: what the store alone costs;

each on SQLite (the queue file, `synchronous=FULL`) and on PostgreSQL (a server started here from
Debian's binaries with fsync on, or `--pg-url`). All real, on loopback; this process runs the
simulator, the server and its intake process and the load generator run in their own. A 503
(overloaded, or the queue unavailable) counts against a rate: only a rate whose every answer was
a 202 can be the highest. Each row shows the machine's 1-minute load average and the share of
the run some task waited for a CPU (Linux PSI), so a contended figure is seen as one.

    .venv/bin/python bench/bench_ack.py                                  # rates 200..1500, 3 s each
    .venv/bin/python bench/bench_ack.py --rates 200,400 --seconds 5 --backends postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from benchlib import ROOT, cpu_pressure_us, load_module, tests_pg

sys.path.insert(0, str(ROOT))
TOKEN = "bench-token-0123456789abcdef"


def _bench_writeback() -> ModuleType:
    """bench_writeback.py: its practices, specs and engine-like directory."""
    return load_module(ROOT / "bench" / "bench_writeback.py", "bench_writeback")


# --- the server process -----------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Any:
    if args.store.startswith("postgresql://"):
        from reconciler.stores import backend_from_url

        return backend_from_url(args.store).queue_store()
    from reconciler.writeback.store import Store

    return Store(args.store)


async def serve(args: argparse.Namespace) -> None:
    bw = _bench_writeback()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if args.mode == "floor":
        from aiohttp import web

        from reconciler.writeback import store as ops
        from reconciler.writeback.model import Status, parse_request

        store = _store(args)
        store.open()

        async def accept(request: web.Request) -> web.Response:
            body = await request.json()
            wb = parse_request(request.match_info["pid"], body)
            record, _ = await store.run(ops.Insert(wb, Status.PENDING, ops.now()))
            return web.json_response({"id": record.id}, status=202)

        app = web.Application()
        app.router.add_post("/v1/practices/{pid}/writebacks", accept)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        Path(args.url_file).write_text(f"http://127.0.0.1:{port}\n")
        await stop.wait()
        await runner.cleanup()
        store.close()
        return

    from reconciler.writeback.delivery import DeliveryPolicy
    from reconciler.writeback.service import WritebackService

    directory = bw.Directory()
    for pid, pms in bw.practice_ids(args.practices):
        await directory.add(pid, pms, args.sim_url, args.pms_rate, 50)
    policy = DeliveryPolicy(max_concurrent_practices=32, quantum=8, not_ready_delay=2.0)
    service = WritebackService(
        directory, args.store, TOKEN, policy=policy, store=_store(args),
        intake_process=args.mode == "process",
    )  # fmt: skip
    url = await service.start("127.0.0.1", 0)
    Path(args.url_file).write_text(f"{url}\n")
    await stop.wait()
    await service.stop(grace=2.0)
    for client in directory.clients:
        await client.aclose()


# --- the load process -------------------------------------------------------------------------


async def load(args: argparse.Namespace) -> None:
    import aiohttp

    bw = _bench_writeback()
    pids = [pid for pid, _ in bw.practice_ids(args.practices)]
    n = int(args.rate * args.seconds)
    acks: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one(http: aiohttp.ClientSession, i: int, due: float) -> None:
        body = {
            "callerId": f"{args.tag}-{i}",
            "type": "outgoingSms",
            "patientId": str(2 + i % 50),
            "occurredAt": "2026-11-26T09:15:00-05:00",
            "text": f"bench ack {i}",
        }
        pid = pids[i % len(pids)]
        async with http.post(f"{args.url}/v1/practices/{pid}/writebacks", json=body,
                             headers=headers) as resp:  # fmt: skip
            await resp.read()
        acks.append(time.perf_counter() - due)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            due = started + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, i, due)))
        await asyncio.gather(*tasks)
    print(json.dumps({"acks": acks, "statuses": statuses, "cpu_s": time.process_time()}))


# --- the main process -------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live children (the
    intake process), from /proc; 0 where /proc is unavailable."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(int(c) for c in children)
    return total


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def child(*argv: str) -> list[str]:
    return [sys.executable, __file__, *argv]


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str | None]:
    """`url`, or a PostgreSQL server started for the run (fsync on) from tests/pg.py."""
    if url:
        yield url
        return
    pg = tests_pg()
    base = Path(tempfile.mkdtemp(prefix="pmsctl-bench-pg-"))
    try:
        with pg.start_server(base, fsync=True) as server:
            yield server.database("bench_ack")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def fresh_pg(url: str) -> None:
    """Empty the queue between configurations (same database, schema kept)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in tables.fetchall():
            conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        functions = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        )
        for (function,) in functions.fetchall():
            conn.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")


async def main(args: argparse.Namespace) -> int:
    from pms_simulator.server import Simulator

    bw = _bench_writeback()
    rates = [float(r) for r in args.rates.split(",")]
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    for pid, pms in bw.practice_ids(args.practices):
        sim.add_practice(pid, pms)
    results: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="pmsctl-bench-ack-"))
    with postgres(args.pg_url if "postgresql" in args.backends else "") as pg_url:
        async with sim.serve() as sim_url:
            for backend in args.backends.split(","):
                for mode in args.modes.split(","):
                    if backend == "postgresql":
                        assert pg_url is not None
                        fresh_pg(pg_url)
                        store = pg_url
                    else:
                        store = str(tmp / f"{mode}.db")
                    url_file = tmp / f"{backend}-{mode}.url"
                    server = subprocess.Popen(
                        child("serve", "--mode", mode, "--store", store, "--sim-url", sim_url,
                              "--url-file", str(url_file), "--practices", str(args.practices),
                              "--pms-rate", str(args.pms_rate))
                    )  # fmt: skip
                    try:
                        deadline = time.monotonic() + 60
                        while not url_file.exists() or not url_file.read_text().strip():
                            if server.poll() is not None or time.monotonic() > deadline:
                                raise RuntimeError(f"{backend}/{mode}: the server did not start")
                            await asyncio.sleep(0.1)  # process start-up
                        url = url_file.read_text().strip()
                        for rate in rates:
                            tag = f"{backend}-{mode}-{int(rate)}"
                            psi0, t0 = cpu_pressure_us(), time.monotonic()
                            server_cpu0, sim_cpu0 = tree_cpu_s(server.pid), time.process_time()
                            proc = await asyncio.create_subprocess_exec(
                                *child("load", "--url", url, "--rate", str(rate), "--seconds",
                                       str(args.seconds), "--tag", tag, "--practices",
                                       str(args.practices)),
                                stdout=asyncio.subprocess.PIPE,
                            )  # fmt: skip
                            out, _ = await proc.communicate()
                            wall = time.monotonic() - t0
                            server_cores = (tree_cpu_s(server.pid) - server_cpu0) / wall
                            sim_cores = (time.process_time() - sim_cpu0) / wall
                            data = json.loads(out.decode().strip().splitlines()[-1])
                            acks = data["acks"]
                            row = {
                                "backend": backend, "mode": mode, "rate": rate,
                                "requests": len(acks), "statuses": data["statuses"],
                                "p50_ms": pct(acks, 50) * 1000, "p99_ms": pct(acks, 99) * 1000,
                                "p999_ms": pct(acks, 99.9) * 1000,
                                "server_cores": round(server_cores, 2),
                                "simulator_cores": round(sim_cores, 2),
                                "load_cores": round(data["cpu_s"] / wall, 2),
                                "machine_load_average_1m": round(os.getloadavg()[0], 2),
                                "machine_cpu_wait_pct": round(
                                    (cpu_pressure_us() - psi0) / 1e6 / wall * 100, 1),
                            }  # fmt: skip
                            results.append(row)
                            print(
                                f"{backend:10s} {mode:7s} {rate:6.0f}/s  n={len(acks):5d}  "
                                f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                                f"p99.9 {row['p999_ms']:7.2f} ms  {data['statuses']}  "
                                f"cores server {server_cores:.2f} sim {sim_cores:.2f} "
                                f"load-gen {row['load_cores']:.2f}  "
                                f"load {row['machine_load_average_1m']:.1f} "
                                f"cpu-wait {row['machine_cpu_wait_pct']:.0f}%",
                                flush=True,
                            )
                    finally:
                        server.send_signal(signal.SIGTERM)
                        try:
                            server.wait(30)
                        except subprocess.TimeoutExpired:
                            server.kill()
                            server.wait()
    sim.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print()
    summary = {}
    for backend in args.backends.split(","):
        for mode in args.modes.split(","):
            ok = [
                r["rate"]
                for r in results
                if r["backend"] == backend and r["mode"] == mode
                and r["p99_ms"] < args.p99_budget_ms and set(r["statuses"]) == {"202"}
            ]  # fmt: skip
            best = max(ok) if ok else 0.0
            summary[f"{backend}/{mode}"] = best
            print(f"{backend}/{mode}: highest rate with p99 < {args.p99_budget_ms:g} ms: "
                  f"{best:g}/s (of those tried)")  # fmt: skip
    print(json.dumps({"bench": "ack", "results": results, "max_rate_p99_ok": summary}))
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role")
    s = sub.add_parser("serve")
    s.add_argument("--mode", choices=("service", "process", "floor"), required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--sim-url", required=True)
    s.add_argument("--url-file", required=True)
    s.add_argument("--practices", type=int, default=20)
    s.add_argument("--pms-rate", type=float, default=5.0)
    ld = sub.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--rate", type=float, required=True)
    ld.add_argument("--seconds", type=float, required=True)
    ld.add_argument("--tag", required=True)
    ld.add_argument("--practices", type=int, default=20)
    p.add_argument("--rates", default="200,500,1000,1250,1500",
                   help="arrival rates to try (per second)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of load per rate")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--modes", default="service,process,floor", help="service, process, floor")
    p.add_argument("--practices", type=int, default=20)
    p.add_argument("--p99-budget-ms", type=float, default=20.0)
    p.add_argument("--pms-rate", type=float, default=5.0,
                   help="each practice's PMS request budget (per second) for delivery")  # fmt: skip
    p.add_argument("--pg-url", default=os.environ.get("PMSCTL_BENCH_PG_URL"),
                   help="use this database instead of starting a server")  # fmt: skip
    return p.parse_args(argv)


if __name__ == "__main__":
    ns = parse(sys.argv[1:])
    if ns.role == "serve":
        asyncio.run(serve(ns))
    elif ns.role == "load":
        asyncio.run(load(ns))
    else:
        sys.exit(asyncio.run(main(ns)))
