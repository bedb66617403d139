"""Benchmark: N PracticeWritebacks applied at once against the real operator -> all Ready.

Starts the testenv's etcd + kube-apiserver (tests/testenv.py) with an audit log (Metadata level,
JSON lines), installs the CRDs, runs the PMS simulator in its own process (N practices added and
seeded before the clock starts) and the real operator process (`python -m reconciler` (`pmsctl operator`),
its default flags but no writeback API). Then:

1. `parallel`: creates the N Secrets, then the N practices through the API, `--concurrency` at a
   time, and waits (one watch) until every practice reports Ready=True;
2. `kubectl` (unless `--no-kubectl`): N more practices and their Secrets in a second namespace,
   through one `kubectl apply -f` of one file, for comparison.

For each phase it reports the time from the first create to the last Ready, p50 / p99 / max of the
per-object create -> Ready time, and, from the audit log, the API requests the operator made per
object by verb and resource; for the parallel phase also the most status writes an object got
before it was Ready, reconciles per object (the operator's /metrics), how many objects Kopf ran a
create or resume handler for more than once (the operator's log), the operator's CPU seconds and
peak RSS, and the machine's load (load average, PSI CPU wait). `--restart-after K` stops the
operator (SIGTERM) once K practices are Ready and starts it again at once: a restart under load.

    .venv/bin/python bench/bench_apply.py --n 1000                 # the documented run
    .venv/bin/python bench/bench_apply.py --n 100 --no-kubectl     # while developing
    .venv/bin/python bench/bench_apply.py --n 300 --restart-after 150

Prints a report and one JSON line (`{"bench": "apply", ...}`). `tests/test_apply_requests.py`
runs `run()` with a small N and asserts the request counts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))  # benchlib, also when a test loads this file by path
from benchlib import cpu_pressure_us  # noqa: E402

GROUP, PLURAL = "writeback.dental.dev", "practicewritebacks"
#: The version the practices are created in: the storage version, as the operator reads them (the
#: examples are v1alpha1; converted here, no conversion webhook runs).
CREATE_VERSION = "v1"
BENCH_AGENT = "pmsctl-bench"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}
TEMPLATES = sorted((ROOT / "practices").glob("*.yaml"))
#: Seconds an audit log entry may trail the watch event of the same change.
AUDIT_LAG = 1.0


# --- the simulator process --------------------------------------------------------------------


def serve_simulator(count: int, out: Path) -> None:
    """The simulator child: add and seed `count` practices, write their URLs and credentials to
    `out` (JSON), serve until SIGTERM."""
    import asyncio

    from pms_simulator import Simulator

    async def main() -> None:
        sim = Simulator(rate_limit_per_second=1000, burst=1000, request_log_size=50)
        kinds = [yaml.safe_load(t.read_text())["spec"]["pms"]["type"] for t in TEMPLATES]
        creds = {}
        for i in range(count):
            pid = practice_id(i)
            creds[pid] = sim.add_practice(pid, kinds[i % len(kinds)])
        sim.seed()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with sim.serve():
            urls = {k: sim.base_url(k) for k in set(kinds)}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"urls": urls, "credentials": creds}))
            tmp.rename(out)
            await stop.wait()
        sim.close()

    asyncio.run(main())


def practice_id(i: int) -> str:
    return f"bench-{i:05d}"


@contextlib.contextmanager
def simulator(count: int, workdir: Path) -> Iterator[dict[str, Any]]:
    """The simulator in its own process; yields {"urls": {pms: url}, "credentials": {pid: ...}}."""
    out = workdir / "simulator.json"
    log = (workdir / "simulator.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-simulator", str(count), "--out", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 120 + count / 10
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the simulator did not start: {(workdir / 'simulator.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        yield json.loads(out.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- the practices ----------------------------------------------------------------------------


def documents(
    first: int, count: int, namespace: str, sim: dict[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Secret, PracticeWriteback) for practices first..first+count-1, the examples in turn."""
    from reconciler.api.convert import convert

    templates = [
        convert(yaml.safe_load(t.read_text()), f"{GROUP}/{CREATE_VERSION}") for t in TEMPLATES
    ]
    out = []
    for i in range(first, first + count):
        pid = practice_id(i)
        doc = copy.deepcopy(templates[i % len(templates)])
        spec = doc["spec"]
        doc["metadata"] = {"name": pid, "namespace": namespace}
        spec["practiceId"] = pid
        spec["pms"]["url"] = sim["urls"][spec["pms"]["type"]]
        spec["pms"]["credentialsSecretRef"]["name"] = f"{pid}-pms"
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": f"{pid}-pms", "namespace": namespace},
            "stringData": dict(sim["credentials"][pid]),
        }
        out.append((secret, doc))
    return out


# --- the control plane and the operator -------------------------------------------------------


@contextlib.contextmanager
def audited_cluster(workdir: Path) -> Iterator[tuple[Any, Path]]:
    """The testenv's control plane with an audit log and the CRDs; yields (Cluster, log path)."""
    import testenv

    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit = workdir / "audit.log"
    args = [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={audit}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",
    ]
    with testenv.start_control_plane(apiserver_args=args) as cluster:
        testenv.install_crds(cluster, ROOT / "crds")
        yield cluster, audit


@dataclass
class Operator:
    """`python -m reconciler` (`pmsctl operator`) as a subprocess; `start()` / `stop()` again for a restart."""

    cluster: Any
    namespaces: Sequence[str]
    workdir: Path
    extra: Sequence[str] = ()
    profile: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    probe_port: int = 0
    logs: list[Path] = field(default_factory=list)
    cpu_seconds: float = 0.0
    peak_rss_mib: float = 0.0

    def start(self) -> None:
        import testenv

        self.metrics_port, self.probe_port = testenv.free_port(), testenv.free_port()
        log_path = self.workdir / f"operator-{len(self.logs)}.log"
        self.logs.append(log_path)
        profiler = (
            ["-m", "cProfile", "-o", f"{self.profile}.{len(self.logs)}"] if self.profile else []
        )
        argv = [
            sys.executable, *profiler, "-m", "reconciler",
            *(f"--namespace={ns}" for ns in self.namespaces),
            f"--sink=file:{self.workdir / 'events.jsonl'}",
            f"--state-db={self.workdir / 'state.db'}",
            "--log-format=json",
            "--log-level=info",
            f"--probe-port={self.probe_port}",
            f"--metrics-port={self.metrics_port}",
            "--writeback-port=0",
            *self.extra,
        ]  # fmt: skip
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.cluster.environ({"PYTHONPATH": str(ROOT)}),
                cwd=self.workdir,
            )
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{self.probe_port}/healthz") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def sample(self) -> None:
        """Add the running process's CPU time and peak RSS so far (Linux /proc)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            self._cpu_now = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mib = max(self.peak_rss_mib, int(line.split()[1]) / 1024)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.sample()
        self.cpu_seconds += getattr(self, "_cpu_now", 0.0)
        self._cpu_now = 0.0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def reconciles(self) -> float:
        """pmsctl_reconciles_total (every result) of the running operator."""
        text = _get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("pmsctl_reconciles_total{")
        )

    def handler_runs(self) -> dict[str, Counter[str]]:
        """Per object (namespace/name), how many times Kopf finished each cause (creation,
        resuming, updating), over every log this operator wrote."""
        runs: dict[str, Counter[str]] = defaultdict(Counter)
        for path in self.logs:
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    message = str(entry.get("message", ""))
                    if not message.endswith("is processed: 1 succeeded; 0 failed."):
                        continue
                    obj = entry.get("object") or {}
                    key = f"{obj.get('namespace')}/{obj.get('name')}"
                    runs[key][message.split(" ", 1)[0]] += 1
        return runs


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()  # type: ignore[no-any-return]
    except OSError:
        return None


# --- applying and watching --------------------------------------------------------------------


#: The annotation Kopf writes once it has handled a practice (its last-handled spec).
HANDLED = "operator.writeback.dental.dev/last-handled-configuration"


class ReadyWatch:
    """One watch on the practices of a namespace: when each one was first seen Ready=True, and
    when first seen handled by Kopf (its last-handled annotation written)."""

    def __init__(self, cluster: Any, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.ready: dict[str, float] = {}
        self.handled: dict[str, float] = {}
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        from kubernetes import client, watch

        api = bench_client(self.cluster)
        custom = client.CustomObjectsApi(api)
        version = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    custom.list_namespaced_custom_object, GROUP, "v1", self.namespace, PLURAL,
                    timeout_seconds=30, resource_version=version,
                ):  # fmt: skip
                    obj = event["object"]
                    version = obj["metadata"].get("resourceVersion")
                    conds = (obj.get("status") or {}).get("conditions") or []
                    name = obj["metadata"]["name"]
                    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
                    handled = HANDLED in (obj["metadata"].get("annotations") or {})
                    with self._changed:
                        if ready and name not in self.ready:
                            self.ready[name] = time.time()
                        if handled and name not in self.handled:
                            self.handled[name] = time.time()
                        self._changed.notify_all()
                    if self._stop.is_set():
                        break
            except Exception:  # the watch expired or broke: start again from where it was
                version = None
                time.sleep(0.2)

    def wait(self, count: int, timeout: float) -> bool:
        """Until `count` practices are Ready (False when `timeout` ran out first)."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.ready) >= count, timeout)

    def wait_handled(self, count: int, timeout: float) -> bool:
        """Until `count` practices carry Kopf's last-handled annotation."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.handled) >= count, timeout)


def bench_client(cluster: Any, pool: int = 8) -> Any:
    """A Kubernetes client that the audit log tells apart from the operator's."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    api = client.ApiClient(cfg)
    api.user_agent = BENCH_AGENT
    return api


def create_namespace(cluster: Any, name: str) -> None:
    from kubernetes import client

    client.CoreV1Api(bench_client(cluster)).create_namespace({"metadata": {"name": name}})


def apply_parallel(
    cluster: Any, docs: list[tuple[dict[str, Any], dict[str, Any]]], concurrency: int
) -> dict[str, float]:
    """Create every Secret, then every practice, `concurrency` at a time; name -> create time."""
    from kubernetes import client

    api = bench_client(cluster, pool=concurrency)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    started: dict[str, float] = {}

    def secret(doc: dict[str, Any]) -> None:
        core.create_namespaced_secret(doc["metadata"]["namespace"], doc)

    def practice(doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        started[meta["name"]] = time.time()
        custom.create_namespaced_custom_object(
            GROUP, CREATE_VERSION, meta["namespace"], PLURAL, doc
        )

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(secret, [s for s, _ in docs]))
        list(pool.map(practice, [d for _, d in docs]))
    return started


def apply_kubectl(
    cluster: Any, docs: list[tuple[dict[str, Any], dict[str, Any]]], workdir: Path
) -> tuple[dict[str, float], float]:
    """One `kubectl apply -f` of every Secret and practice; (name -> start time, its seconds)."""
    path = workdir / "kubectl-apply.yaml"
    path.write_text(yaml.safe_dump_all([s for s, _ in docs] + [d for _, d in docs]))
    began = time.time()
    cluster.kubectl("apply", "-f", str(path), timeout=max(120.0, len(docs) / 2))
    return {d["metadata"]["name"]: began for _, d in docs}, time.time() - began


# --- the audit log ----------------------------------------------------------------------------


@dataclass
class Request:
    at: float
    verb: str
    resource: str
    namespace: str
    name: str
    agent: str


def audit_requests(path: Path) -> list[Request]:
    """Every request the audit log recorded (once each), with when it completed."""
    out: list[Request] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        watch = e.get("verb") == "watch"
        if e.get("stage") != ("ResponseStarted" if watch else "ResponseComplete"):
            continue
        ref = e.get("objectRef") or {}
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        at = datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
        out.append(
            Request(
                at,
                e["verb"],
                resource,
                ref.get("namespace", ""),
                ref.get("name", ""),
                e.get("userAgent", ""),
            )
        )
    return out


def is_operator(r: Request) -> bool:
    """The operator's requests: Kopf's and the Kubernetes Python client's, not the bench's."""
    return r.agent.startswith(("kopf/", "OpenAPI-Generator/")) and BENCH_AGENT not in r.agent


def per_object(requests: Sequence[Request], n: int) -> dict[str, float]:
    """'verb resource' -> requests per object, sorted by count."""
    counts = Counter(f"{r.verb} {r.resource}" for r in requests)
    return {k: round(v / n, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


# --- one run ----------------------------------------------------------------------------------


def latency(started: dict[str, float], ready: dict[str, float]) -> dict[str, float]:
    lat = sorted(ready[k] - started[k] for k in ready if k in started)
    if not lat:
        return {}

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)

    return {"p50_s": pct(0.5), "p99_s": pct(0.99), "max_s": round(lat[-1], 2)}


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of this process and of each of its child processes by name (the API
    server, etcd, the simulator, the operator; Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    out: Counter[str] = Counter()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid != me and ppid != me:
            continue
        if pid == me:
            name = "bench"
        elif b"--serve-simulator" in cmdline:
            name = "simulator"
        elif b"reconciler" in cmdline:
            name = "operator"
        else:
            name = comm
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def run(
    n: int,
    *,
    concurrency: int = 32,
    kubectl: bool = True,
    restart_after: int | None = None,
    timeout: float = 300.0,
    workdir: Path | None = None,
    progress: Any = print,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The whole benchmark (see the module docstring); the report as a dict."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pmsctl-bench-apply-"))
    ns, ns2 = "bench-apply", "bench-apply-kubectl"
    result: dict[str, Any] = {"bench": "apply", "n": n, "concurrency": concurrency}
    with (
        audited_cluster(workdir) as (cluster, audit),
        simulator(n * (2 if kubectl else 1), workdir) as sim,
    ):
        create_namespace(cluster, ns)
        if kubectl:
            create_namespace(cluster, ns2)
        op = Operator(cluster, [ns, ns2] if kubectl else [ns], workdir, profile=profile)
        op.start()
        try:
            load0, psi0, wall0 = os.getloadavg()[0], cpu_pressure_us(), time.monotonic()
            cpu0 = process_cpu()
            docs = documents(0, n, ns, sim)
            progress(f"applying {n} practices, {concurrency} at a time")
            with ReadyWatch(cluster, ns) as watch:
                began = time.time()
                restarter = None
                if restart_after is not None:

                    def restart() -> None:
                        watch.wait(restart_after, timeout)
                        op.stop()
                        op.start()

                    restarter = threading.Thread(target=restart, daemon=True)
                    restarter.start()
                started = apply_parallel(cluster, docs, concurrency)
                applied = time.time()
                all_ready = watch.wait(n, timeout)
                done = time.time()
                if restarter is not None:
                    restarter.join(timeout)
                # The requests counted are those until Kopf has recorded every practice as
                # handled (its PATCH follows the handler, so it may come after Ready).
                watch.wait_handled(n, 30.0)
                settled = max([done, *watch.handled.values()])
                ready = dict(watch.ready)
                cpu1 = process_cpu()
            op.sample()
            reconciles = op.reconciles()
            wall = time.monotonic() - wall0
            requests = [
                r for r in audit_requests(audit) if is_operator(r) and r.namespace in ("", ns)
            ]
            # The API server sends a change to its watchers before it logs the request's end.
            window = [r for r in requests if began <= r.at <= settled + AUDIT_LAG]
            # Status writes until Kopf recorded the practice as handled: its PATCH follows the
            # handler, which returns after the engine's status write (the audit log and the watch
            # are not ordered closely enough to compare with the moment Ready was seen).
            handled = dict(watch.handled)
            status_before_ready = Counter(
                r.name for r in window
                if r.verb == "patch" and r.resource == f"{PLURAL}/status"
                and r.name in handled and r.at <= handled[r.name]
            )  # fmt: skip
            runs = op.handler_runs()
            twice = {
                k: dict(c) for k, c in runs.items() if k.startswith(f"{ns}/") and c["Creation"] > 1
            }
            result["parallel"] = {
                "all_ready": all_ready,
                "ready": len(ready),
                "apply_s": round(applied - began, 2),
                "all_ready_s": round(max(ready.values()) - began, 2) if ready else None,
                **latency(started, ready),
                "operator_requests_per_object": per_object(window, n),
                "secret_gets_per_object": round(
                    sum(1 for r in window if r.verb == "get" and r.resource == "secrets") / n, 3
                ),
                "max_status_writes_before_ready": max(status_before_ready.values(), default=0),
                "reconciles_per_object": round(reconciles / n, 3)
                if restart_after is None
                else None,
                "objects_created_twice": len(twice),
                # From the first create until every practice was handled; an operator restarted
                # meanwhile counts from its start.
                "cpu_s_by_process": {
                    k: round(v - cpu0.get(k, 0.0), 2)
                    for k, v in sorted(cpu1.items())
                    if k != "operator" or restart_after is None
                },
                "restarted_after": restart_after,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "load_average_1m_before": round(load0, 2),
                "machine_cpu_wait_pct": round((cpu_pressure_us() - psi0) / 1e6 / wall * 100, 1),
            }
            if twice:
                result["parallel"]["created_twice_examples"] = dict(list(twice.items())[:5])
            if kubectl:
                docs2 = documents(n, n, ns2, sim)
                progress(f"one kubectl apply -f of {n} practices and their Secrets")
                with ReadyWatch(cluster, ns2) as watch2:
                    began2 = time.time()
                    started2, seconds = apply_kubectl(cluster, docs2, workdir)
                    all_ready2 = watch2.wait(n, timeout)
                    watch2.wait_handled(n, 30.0)
                    done2 = max([time.time(), *watch2.handled.values()])
                    ready2 = dict(watch2.ready)
                window2 = [
                    r for r in audit_requests(audit)
                    if is_operator(r) and r.namespace == ns2 and began2 <= r.at <= done2
                ]  # fmt: skip
                result["kubectl"] = {
                    "all_ready": all_ready2,
                    "ready": len(ready2),
                    "kubectl_apply_s": round(seconds, 2),
                    "all_ready_s": round(max(ready2.values()) - began2, 2) if ready2 else None,
                    **latency(started2, ready2),
                    "operator_requests_per_object": per_object(window2, n),
                }
            op.sample()
        finally:
            op.stop()
        result["operator"] = {
            "cpu_s": round(op.cpu_seconds, 2),
            "peak_rss_mib": round(op.peak_rss_mib, 1),
        }
    result["workdir"] = str(workdir)
    return result


def report(result: dict[str, Any]) -> None:
    p = result["parallel"]
    print(f"\n{result['n']} practices applied through the API, {result['concurrency']} at a time:")
    print(f"  all Ready: {p['all_ready']} ({p['ready']}) after {p['all_ready_s']} s "
          f"(creates took {p['apply_s']} s); create -> Ready p50 {p.get('p50_s')} s, "
          f"p99 {p.get('p99_s')} s, max {p.get('max_s')} s")  # fmt: skip
    print(f"  operator requests per object: {p['operator_requests_per_object']}")
    print(f"  Secret GETs per object: {p['secret_gets_per_object']}; most status writes before "
          f"Ready: {p['max_status_writes_before_ready']}; reconciles per object: "
          f"{p['reconciles_per_object']}; objects created twice: {p['objects_created_twice']}")  # fmt: skip
    print(f"  CPU seconds by process until all were handled: {p['cpu_s_by_process']}")
    if "kubectl" in result:
        k = result["kubectl"]
        print(f"one kubectl apply -f: {k['kubectl_apply_s']} s; all Ready: {k['all_ready']} "
              f"after {k['all_ready_s']} s; p50 {k.get('p50_s')} s, max {k.get('max_s')} s")  # fmt: skip
        print(f"  operator requests per object: {k['operator_requests_per_object']}")
    o = result["operator"]
    print(f"operator: {o['cpu_s']} CPU s, peak RSS {o['peak_rss_mib']} MiB; load average "
          f"{p['load_average_1m_before']} -> {p['load_average_1m']} on {os.cpu_count()} CPUs, "
          f"CPU wait {p['machine_cpu_wait_pct']} %")  # fmt: skip
    print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="practices per phase (default 1000)")
    ap.add_argument("--concurrency", type=int, default=32, help="creates in flight (default 32)")
    ap.add_argument("--no-kubectl", action="store_true", help="skip the kubectl apply -f phase")
    ap.add_argument("--restart-after", type=int, default=None, metavar="K",
                    help="restart the operator once K practices are Ready")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Ready")
    ap.add_argument("--profile", type=Path, default=None, metavar="PATH",
                    help="run the operator under cProfile, its stats in PATH.<start>")  # fmt: skip
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (audit log, operator logs) and print its path")  # fmt: skip
    ap.add_argument("--serve-simulator", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_simulator is not None:
        serve_simulator(args.serve_simulator, args.out)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="pmsctl-bench-apply-"))
    try:
        result = run(
            args.n,
            concurrency=args.concurrency,
            kubectl=not args.no_kubectl,
            restart_after=args.restart_after,
            timeout=args.timeout,
            profile=args.profile,
            workdir=workdir,
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.keep:
        del result["workdir"]
    report(result)
    ok = result["parallel"]["all_ready"] and result.get("kubectl", {}).get("all_ready", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
