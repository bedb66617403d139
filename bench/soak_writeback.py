"""The writeback crash soak: two `pmsctl up` replicas on one PostgreSQL store, one of them killed
with SIGKILL at random moments, while a load generator posts writebacks to both and the PMS
simulator (its own process) answers writes with 5xx, loses answers to stored writes, holds
stored writes' answers back 150 ms (so a kill often lands between a note stored and its record),
and rate limits with 429. At the end every acknowledged writeback is compared with the simulator's own
record of the notes it stored:

    lost     acknowledged (202/200) and not in the PMS
    doubled  in the PMS more than once
    phantom  in the PMS and never acknowledged

Everything is a real process over loopback: PostgreSQL (tests/pg.py, or --pg-url), `pmsctl
simulate`, two `pmsctl up --no-simulate --store postgresql://... --store-password-file FILE`. The
load generator and the killer are seeded (`--seed`; the seed is printed so a failing run replays
the same requests and the same kill schedule, though not the same interleaving).

    .venv/bin/python bench/soak_writeback.py                       # full size: 5,000 / >= 20 kills
    .venv/bin/python bench/soak_writeback.py --pms OpenDental,Eaglesoft,Dentrix --seed 7
    make soak-writeback

`run_soak(config)` is the one implementation; tests/test_writeback_kill.py runs it smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # benchlib, also when a test loads this file by path
from benchlib import tests_pg  # noqa: E402

TOKEN = "soak-token-0123456789abcdef0123456789"
PROVIDER = {"OpenDental": "1", "Dentrix": "DDS1", "Eaglesoft": "DCM"}
KINDS = ("outgoingSms", "incomingSms", "outgoingEmail", "incomingCall", "patientNote")
NOTE_TYPES = {
    "outgoingSms": "Text Message",
    "incomingSms": "Text Message",
    "outgoingEmail": "Email",
    "incomingCall": "Phone Call",
    "patientNote": "Patient Note",
}
#: The Open Dental driver's line when a read-back finds the note already there (not re-sent).
READ_BACK_HIT = re.compile(r"already carries writeback")


@dataclass(frozen=True)
class SoakConfig:
    """One soak run. The defaults are the full size the issue asks for."""

    seed: int = 1
    writebacks: int = 5_000
    min_kills: int = 20
    pms: tuple[str, ...] = ("OpenDental",)
    #: The product writes at most 5 requests/s to one practice (its client's budget; an Open
    #: Dental note is a read-back and a POST), so throughput comes from practices.
    practices_per_pms: int = 20
    patients: int = 60
    #: Share of PMS writes answered 5xx before they are stored / after they are stored.
    write_error_rate: float = 0.05
    lost_write_rate: float = 0.02
    error_status: int = 500
    #: A stored write's answer is held back this long: most kills then find a replica with a
    #: note in the PMS that it has not recorded yet (the window exactly-once is about).
    write_answer_delay_ms: float = 150.0
    #: The simulator's per-practice rate limit (requests/s, burst the same): beyond it, 429.
    rate_limit: float = 4.5
    #: Writebacks posted per second (all practices), so that the kills land while requests
    #: arrive as well as while the queue drains; and requests kept in flight.
    post_rate: float = 40.0
    concurrency: int = 24
    #: Seconds between kills (uniform), and between a kill and the restart.
    kill_every: tuple[float, float] = (2.0, 6.0)
    restart_after: tuple[float, float] = (0.0, 1.0)
    #: Give up (and report what is still open) after this long.
    timeout: float = 900.0
    pg_url: str | None = None  # None: start a PostgreSQL server for the run
    pg_fsync: bool = True
    workdir: Path | None = None  # None: a temporary folder, removed after


@dataclass
class SoakResult:
    """What a run counted; `ok` when nothing was lost, doubled or phantom and all were settled."""

    seed: int
    acked: int = 0
    replayed_acks: int = 0  # acks that were a 200 for a callerId stored before (a lost answer)
    post_retries: int = 0  # POSTs repeated after a refused connection, 503 or 429
    rejected: dict[str, int] = field(default_factory=dict)  # POSTs answered otherwise (bugs)
    sent: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # failed records by reason
    skipped: dict[str, int] = field(default_factory=dict)
    open: int = 0  # acked records still pending when the run gave up
    in_pms: int = 0
    lost: int = 0
    doubled: int = 0
    phantom: int = 0
    kills: int = 0
    kills_mid_write: int = 0  # kills that left notes in the PMS their replica had not recorded
    unrecorded_at_kill: int = 0  # how many such notes, over all kills
    read_back_hits: int = 0  # Open Dental re-sends that found the note already there
    key_replays: int = 0  # bridge re-sends the agent answered from their Idempotency-Key
    pms_5xx: int = 0
    pms_429: int = 0
    load_seconds: float = 0.0
    drain_seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)
    password_logged: bool = False
    exits: list[str] = field(default_factory=list)  # replicas that exited without being killed

    @property
    def ok(self) -> bool:
        bad = (self.lost, self.doubled, self.phantom, self.open, self.rejected, self.exits)
        return not any(bad) and not self.password_logged

    def table(self) -> str:
        rows = [
            ("seed", self.seed),
            ("kills (SIGKILL)", self.kills),
            ("  of which left notes stored, unrecorded", self.kills_mid_write),
            ("  notes so left (all kills)", self.unrecorded_at_kill),
            ("replica exits not caused by a kill", len(self.exits)),
            ("writebacks acknowledged", self.acked),
            ("  of which replayed acks (200)", self.replayed_acks),
            ("POSTs retried (refused/503/429)", self.post_retries),
            ("POSTs rejected otherwise", sum(self.rejected.values())),
            ("sent (store)", self.sent),
            ("failed (store)", f"{sum(self.failed.values())} {self.failed or ''}".strip()),
            ("skipped (store)", f"{sum(self.skipped.values())} {self.skipped or ''}".strip()),
            ("still open at the end", self.open),
            ("notes in the PMS", self.in_pms),
            ("LOST", self.lost),
            ("DOUBLED", self.doubled),
            ("PHANTOM", self.phantom),
            ("Open Dental read-backs that found the note", self.read_back_hits),
            ("bridge re-sends answered by Idempotency-Key", self.key_replays),
            ("PMS answers 5xx / 429", f"{self.pms_5xx} / {self.pms_429}"),
            ("load seconds / drain seconds", f"{self.load_seconds:.1f} / {self.drain_seconds:.1f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@contextlib.contextmanager
def postgres(config: SoakConfig, base: Path) -> Iterator[tuple[str, str | None]]:
    """(URL without its password, password) of an empty database for the run."""
    if config.pg_url:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(config.pg_url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", "@", 1)
        yield urlunsplit(parts._replace(netloc=netloc)), parts.password
        return
    pg = tests_pg()
    with pg.start_server(base / "pg", fsync=config.pg_fsync) as server:
        server.database("soak")
        yield server.url_for("soak", password=False), pg.PASSWORD


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler.cli", *args]


def practice_yaml(pid: str, pms: str, url: str) -> str:
    """A practice file: the note types the load posts, no pollers (they would only add reads)."""
    lines = [
        "apiVersion: writeback.dental.dev/v1alpha1",
        "kind: PracticeWriteback",
        f"metadata: {{name: {pid}, namespace: soak}}",
        "spec:",
        f"  practiceId: {pid}",
        f"  pms: {{type: {pms}, url: '{url}', credentialsSecretRef: {{name: {pid}-pms}}}}",
        f"  providerId: '{PROVIDER[pms]}'",
        "  writeback:",
        *(f"    {k}: {{allow: true, noteType: {v}}}" for k, v in NOTE_TYPES.items()),
        "  sync:",
        "    appointmentStatus: {enabled: false}",
        "    appointments: {enabled: false}",
        "    patients: {enabled: false}",
    ]
    return "\n".join(lines) + "\n"


class Simulator:
    """`pmsctl simulate` in its own process, driven through its /_admin API."""

    def __init__(self, work: Path, rate_limit: float) -> None:
        self.log = work / "simulator.log"
        out = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            _cli("simulate", "--port", "0", "--no-autotick", "--rate-limit", f"{rate_limit:g}"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.url = ""

    async def started(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited: {self.log.read_text()[-2000:]}")
            found = re.search(r"listening on (http://\S+)", self.log.read_text())
            if found:
                self.url = found.group(1)
                return self.url
            await asyncio.sleep(0.05)
        raise RuntimeError("the simulator did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


class Replica:
    """One `pmsctl up` on the shared store; `kill()` is SIGKILL, `start()` (re)starts it."""

    def __init__(self, name: str, work: Path, folder: Path, creds: Path, store: str,
                 password_file: Path) -> None:  # fmt: skip
        self.name = name
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = work / name
        self.state.mkdir(mode=0o700)
        self.out = work / f"{name}.out"
        self._args = _cli(
            "up", str(folder), "--no-simulate", "--credentials", str(creds), "--store", store,
            "--store-password-file", str(password_file), "--writeback-port", str(self.port),
            "--state-dir", str(self.state), "-o", "lines",
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, "PMSCTL_WRITEBACK_TOKEN": TOKEN}
        env.pop("PMSCTL_STORE", None)
        with open(self.out, "ab") as out:
            out.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self._args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        parts = [self.out.read_text(errors="replace")] if self.out.exists() else []
        log = self.state / "pmsctl.log"
        if log.exists():
            parts.append(log.read_text(errors="replace"))
        return "\n".join(parts)


@dataclass(frozen=True)
class Planned:
    """One writeback the load generator will post until it is acknowledged."""

    n: int
    practice: str
    body: dict[str, Any]


def plan(config: SoakConfig, practices: list[str]) -> list[Planned]:
    """The seeded list of writebacks: practice, patient, kind and text of each."""
    rng = random.Random(f"{config.seed}-load")
    out = []
    for n in range(config.writebacks):
        pid = rng.choice(practices)
        kind = rng.choice(KINDS)
        patient = str(rng.randint(1, config.patients))
        out.append(Planned(n, pid, {
            "callerId": f"soak-{config.seed}-{n}",
            "type": kind,
            "patientId": patient,
            "occurredAt": "2026-11-26T09:15:00-05:00",
            "text": f"{kind} #{n} for patient {patient}",
        }))  # fmt: skip
    return out


class Load:
    """Posts every planned writeback to the replicas (alternating) until one acknowledges it."""

    def __init__(self, config: SoakConfig, replicas: list[Replica], result: SoakResult) -> None:
        self.config = config
        self.replicas = replicas
        self.result = result
        #: writeback id -> (practice, callerId) of every acknowledged writeback.
        self.acked: dict[str, tuple[str, str]] = {}
        self._rng = random.Random(f"{config.seed}-replica")
        self._t0 = 0.0

    async def run(self, planned: list[Planned]) -> None:
        queue: asyncio.Queue[Planned] = asyncio.Queue()
        for p in planned:
            queue.put_nowait(p)
        timeout = aiohttp.ClientTimeout(total=30, sock_connect=2)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            self._t0 = time.monotonic()
            workers = [
                asyncio.create_task(self._worker(http, queue))
                for _ in range(self.config.concurrency)
            ]
            await asyncio.gather(*workers)

    async def _worker(self, http: aiohttp.ClientSession, queue: asyncio.Queue[Planned]) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            due = self._t0 + item.n / self.config.post_rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            start = self._rng.randrange(len(self.replicas))
            tries = 0
            while True:
                replica = self.replicas[(start + tries) % len(self.replicas)]
                tries += 1
                url = f"{replica.url}/v1/practices/{item.practice}/writebacks"
                try:
                    async with http.post(url, json=item.body, headers=headers) as r:
                        status = r.status
                        body = await r.json(content_type=None) if status < 500 else None
                except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                    status, body = 0, None  # refused, reset, cut off: the replica died
                if status in (200, 202) and isinstance(body, dict):
                    self.acked[str(body["id"])] = (item.practice, item.body["callerId"])
                    self.result.acked += 1
                    self.result.replayed_acks += status == 200
                    break
                if status in (0, 429, 503):
                    self.result.post_retries += 1
                    await asyncio.sleep(0.05 if tries < 4 else 0.25)
                    continue
                key = f"{status} {(body or {}).get('error', {}).get('code', '')}".strip()
                self.result.rejected[key] = self.result.rejected.get(key, 0) + 1
                break


async def killer(config: SoakConfig, replicas: list[Replica], result: SoakResult,
                 load_done: asyncio.Event, probe: Callable[[], Awaitable[int]]) -> None:  # fmt: skip
    """SIGKILL a random replica every few seconds and restart it, until the load is done and
    `min_kills` kills happened. After each kill `probe()` counts the notes the victim left in
    the PMS unrecorded (the window the kill is meant to hit)."""
    rng = random.Random(f"{config.seed}-kill")
    while not (load_done.is_set() and result.kills >= config.min_kills):
        await asyncio.sleep(rng.uniform(*config.kill_every))
        for r in replicas:  # one that exited by itself is a finding: counted, then restarted
            if r.proc is not None and r.proc.poll() is not None:
                result.exits.append(f"{r.name}: exit {r.proc.returncode}")
                r.start()
        victim = rng.choice(replicas)
        if not victim.alive():
            continue
        await asyncio.to_thread(victim.kill)
        result.kills += 1
        try:
            left = await probe()
        except Exception as exc:  # a statistic: the run goes on without it
            print(f"soak_writeback: probe after a kill failed: {exc}", file=sys.stderr)
            left = 0
        result.kills_mid_write += left > 0
        result.unrecorded_at_kill += left
        await asyncio.sleep(rng.uniform(*config.restart_after))
        victim.start()


#: Open records of the practices no live session has claimed (see `PgQueueStore.claim`).
UNCLAIMED_OPEN = """
SELECT w.practice_id, w.id FROM writebacks w
WHERE w.status IN ('pending', 'sending') AND NOT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND ((l.classid::bigint << 32) | l.objid::bigint)
          = hashtextextended('pmsctl-writeback:' || w.practice_id, 0))
"""


def unclaimed_open(url: str, password: str | None) -> dict[str, set[str]]:
    """practice -> ids of its open records, for the practices nobody delivers right now."""
    import psycopg

    kwargs: dict[str, Any] = {"password": password} if password else {}
    out: dict[str, set[str]] = {}
    with psycopg.connect(url, **kwargs) as conn:
        try:
            rows = conn.execute(UNCLAIMED_OPEN.encode()).fetchall()
        except psycopg.errors.UndefinedTable:  # killed before any replica created the schema
            return out
    for pid, wid in rows:
        out.setdefault(str(pid), set()).add(str(wid))
    return out


def store_state(url: str, password: str | None) -> dict[str, tuple[str, str | None, int]]:
    """Every record in the shared queue: id -> (status, reason, attempts)."""
    import psycopg

    kwargs: dict[str, Any] = {"password": password} if password else {}
    with psycopg.connect(url, **kwargs) as conn:
        rows = conn.execute("SELECT id, status, reason, attempts FROM writebacks").fetchall()
    return {str(r[0]): (str(r[1]), r[2], int(r[3])) for r in rows}


async def pms_notes(http: aiohttp.ClientSession, sim_url: str, pid: str) -> list[dict[str, Any]]:
    async with http.get(f"{sim_url}/_admin/practices/{pid}/notes") as r:
        r.raise_for_status()
        notes: list[dict[str, Any]] = await r.json()
        return notes


async def pms_statuses(
    http: aiohttp.ClientSession, sim_url: str, pid: str
) -> Counter[tuple[str, int]]:
    """(method, status) of the practice's requests (the simulator keeps the last 2,000)."""
    async with http.get(f"{sim_url}/_admin/practices/{pid}/requests") as r:
        r.raise_for_status()
        return Counter((str(x["method"]), int(x["status"])) for x in await r.json())


async def run_soak(config: SoakConfig) -> SoakResult:
    """Run the soak; the counts. Every process it started is stopped before it returns."""
    result = SoakResult(seed=config.seed)
    work = config.workdir or Path(tempfile.mkdtemp(prefix="pmsctl-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with postgres(config, work) as (store, password):
            await _run(config, work, store, password, result)
    finally:
        if config.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return result


@contextlib.asynccontextmanager
async def _processes(sim: Simulator, replicas: list[Replica]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for r in replicas:
            await asyncio.to_thread(r.stop)
        sim.stop()


async def _run(config: SoakConfig, work: Path, store: str, password: str | None,
               result: SoakResult) -> None:  # fmt: skip
    password_file = work / "store-password"
    password_file.write_text((password or "") + "\n")
    password_file.chmod(0o600)
    sim = Simulator(work, config.rate_limit)
    replicas: list[Replica] = []
    async with _processes(sim, replicas), aiohttp.ClientSession() as http:
        sim_url = await sim.started()
        folder = work / "practices"
        folder.mkdir()
        creds: dict[str, dict[str, str]] = {}
        practices: list[str] = []
        for pms in config.pms:
            for k in range(config.practices_per_pms):
                pid = f"soak-{pms.lower()}-{k}"
                async with http.post(f"{sim_url}/_admin/practices",
                                     json={"practiceId": pid, "pms": pms}) as r:  # fmt: skip
                    r.raise_for_status()
                    added = await r.json()
                faults = {
                    "writeErrorRate": config.write_error_rate,
                    "lostWriteRate": config.lost_write_rate,
                    "writeAnswerDelayMs": config.write_answer_delay_ms,
                    "status": config.error_status,
                    "rateLimitPerSecond": config.rate_limit,
                }
                async with http.put(f"{sim_url}/_admin/practices/{pid}/faults", json=faults) as r:
                    r.raise_for_status()
                (folder / f"{pid}.yaml").write_text(practice_yaml(pid, pms, added["baseUrl"]))
                creds[f"{pid}-pms"] = added["credentials"]
                practices.append(pid)
        creds_file = work / "credentials.json"
        creds_file.write_text(json.dumps(creds))
        creds_file.chmod(0o600)
        for name in ("a", "b"):
            replicas.append(Replica(name, work, folder, creds_file, store, password_file))
        for r in replicas:
            r.start()

        load = Load(config, replicas, result)
        load_done = asyncio.Event()

        async def probe() -> int:
            """Notes in the PMS whose records are open and unclaimed: the dead replica's."""
            left = 0
            for pid, ids in (await asyncio.to_thread(unclaimed_open, store, password)).items():
                stored = {str(n["writeback_id"]) for n in await pms_notes(http, sim_url, pid)}
                left += len(ids & stored)
            return left

        kill_task = asyncio.create_task(killer(config, replicas, result, load_done, probe))
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(load.run(plan(config, practices)), config.timeout)
        finally:
            result.load_seconds = time.monotonic() - t0
            load_done.set()
        await asyncio.wait_for(kill_task, config.timeout)
        for r in replicas:  # both run for the drain
            if r.proc is not None and r.proc.poll() is not None:
                result.exits.append(f"{r.name}: exit {r.proc.returncode}")
                r.start()

        # Drain: until every acknowledged record is settled in the store.
        t1 = time.monotonic()
        deadline = t0 + config.timeout
        state: dict[str, tuple[str, str | None, int]] = {}
        while True:
            state = await asyncio.to_thread(store_state, store, password)
            open_ = [
                w for w in load.acked if state.get(w, ("pending",))[0] in ("pending", "sending")
            ]
            if not open_ or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        result.drain_seconds = time.monotonic() - t1
        result.open = len(open_)
        result.examples["open"] = open_[:5]

        for wid in load.acked:
            status, reason, _ = state.get(wid, ("missing", None, 0))
            if status == "sent":
                result.sent += 1
            elif status == "failed":
                result.failed[reason or "?"] = result.failed.get(reason or "?", 0) + 1
            elif status == "skipped":
                result.skipped[reason or "?"] = result.skipped.get(reason or "?", 0) + 1

        written: Counter[str] = Counter()
        for pid in practices:
            for note in await pms_notes(http, sim_url, pid):
                written[str(note["writeback_id"])] += 1
            codes = await pms_statuses(http, sim_url, pid)
            result.pms_5xx += sum(n for (_, c), n in codes.items() if c >= 500)
            result.pms_429 += sum(n for (_, c), n in codes.items() if c == 429)
            if not pid.startswith("soak-opendental-"):  # the bridge: a replayed key is a 200
                result.key_replays += codes.get(("POST", 200), 0)
        result.in_pms = sum(written.values())
        acked = set(load.acked)
        lost = sorted(acked - set(written))
        doubled = sorted(w for w, n in written.items() if n > 1)
        phantom = sorted(set(written) - acked)
        result.lost, result.doubled, result.phantom = len(lost), len(doubled), len(phantom)
        result.examples.update(lost=lost[:5], doubled=doubled[:5], phantom=phantom[:5])
        logs = "\n".join(r.logs() for r in replicas)
        result.read_back_hits = len(READ_BACK_HIT.findall(logs))
        result.password_logged = bool(password) and str(password) in logs


def _pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    p.add_argument("--writebacks", type=int, default=SoakConfig.writebacks)
    p.add_argument("--kills", type=int, default=SoakConfig.min_kills, help="at least this many")
    p.add_argument(
        "--pms", default="OpenDental", help="comma-separated: OpenDental,Eaglesoft,Dentrix"
    )
    p.add_argument("--practices-per-pms", type=int, default=SoakConfig.practices_per_pms)
    p.add_argument("--patients", type=int, default=SoakConfig.patients, help="per practice")
    p.add_argument("--kill-every", default="2,6", metavar="MIN,MAX", help="seconds (uniform)")
    p.add_argument("--write-error-rate", type=float, default=SoakConfig.write_error_rate)
    p.add_argument("--lost-write-rate", type=float, default=SoakConfig.lost_write_rate)
    p.add_argument("--write-answer-delay-ms", type=float, default=SoakConfig.write_answer_delay_ms)
    p.add_argument("--rate-limit", type=float, default=SoakConfig.rate_limit)
    p.add_argument("--post-rate", type=float, default=SoakConfig.post_rate)
    p.add_argument("--concurrency", type=int, default=SoakConfig.concurrency)
    p.add_argument("--timeout", type=float, default=SoakConfig.timeout)
    p.add_argument("--pg-url", default=None, help="an empty database (default: start one)")
    p.add_argument("--keep", type=Path, default=None, help="keep the logs and files in this folder")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    config = SoakConfig(
        seed=seed,
        writebacks=args.writebacks,
        min_kills=args.kills,
        pms=tuple(x.strip() for x in args.pms.split(",") if x.strip()),
        practices_per_pms=args.practices_per_pms,
        patients=args.patients,
        kill_every=_pair(args.kill_every),
        write_error_rate=args.write_error_rate,
        lost_write_rate=args.lost_write_rate,
        write_answer_delay_ms=args.write_answer_delay_ms,
        rate_limit=args.rate_limit,
        post_rate=args.post_rate,
        concurrency=args.concurrency,
        timeout=args.timeout,
        pg_url=args.pg_url,
        workdir=args.keep,
    )
    print(f"soak_writeback: seed {seed} (replay with --seed {seed}); {config.writebacks} "
          f"writebacks, >= {config.min_kills} kills, PMS {', '.join(config.pms)}", flush=True)  # fmt: skip
    load1 = os.getloadavg()[0]
    result = asyncio.run(run_soak(config))
    print(result.table())
    print(f"load average (1 min) before / after: {load1:.2f} / {os.getloadavg()[0]:.2f}; "
          f"cpus: {os.cpu_count()}")  # fmt: skip
    for what, ids in result.examples.items():
        if ids:
            print(f"{what}: {', '.join(ids)}")
    print(json.dumps({k: v for k, v in asdict(result).items() if k != "examples"}))
    print("OK: 0 lost, 0 doubled, 0 phantom" if result.ok else "FAILED", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
