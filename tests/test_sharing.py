"""Three `pmsctl operator --share` processes share a fleet; one is killed, one joins.

Real: three (then four) `pmsctl operator --share` processes, the testenv's kube-apiserver, the
PostgreSQL server of tests/pg.py (the cursors, the members and the claims), the PMS simulator
(served from this test process on a background thread) recording each request with the
User-Agent of the replica that sent it (`pmsctl (POD_NAME)`). Nothing is faked.

36 Dentrix practices poll appointment status every 5 s (the schema's minimum). From the
simulator's request log, per practice: two replicas whose polling periods overlap (must be
none), and gaps between consecutive polls longer than two intervals (must be none), over the
whole run: the replicas settling, a SIGKILL, a replica joining. Also printed: each replica's
share, and the fraction of practices that moved on the join (about a third: the newcomer's).
Also: a writeback posted to the replica polling its practice is delivered once, by that replica;
a deleted practice (carrying the finalizer an operator without --share put there) goes at once
and is polled no more.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import stop_processes, wait_until

from pms_simulator import RequestRecord, Simulator
from reconciler.kube.handlers import FINALIZER

pytestmark = pytest.mark.kube

TOKEN = "share-test-token-0123456789abcdef"
PRACTICES = 36
INTERVAL = 5.0  # the schema's minimum
POLL_PATH = "/appointment-status-changes"


def practice_docs(ns: str, url: str, sim: Simulator) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for n in range(PRACTICES):
        pid, name = f"share-{n:02d}", f"share-{n:02d}"
        creds = sim.add_practice(pid, "Dentrix")
        docs.append({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": f"{name}-pms", "namespace": ns}, "stringData": creds,
        })  # fmt: skip
        docs.append({
            "apiVersion": "writeback.dental.dev/v1alpha1", "kind": "PracticeWriteback",
            "metadata": {"name": name, "namespace": ns,
                         # share-00 as an operator without --share left it: with Kopf's finalizer
                         **({"finalizers": [FINALIZER]} if n == 0 else {})},
            "spec": {
                "practiceId": pid, "displayName": f"Share {n}",
                "pms": {"type": "Dentrix", "url": url,
                        "credentialsSecretRef": {"name": f"{name}-pms"}},
                "providerId": "DDS1",
                "writeback": {"missedCall": {"allow": True, "noteType": "Missed Call"}},
                "sync": {"appointmentStatus": {"enabled": True, "interval": "5s"}},
            },
        })  # fmt: skip
    return docs


def post_writeback(port: int, practice_id: str) -> tuple[int, dict[str, Any]]:
    body = {
        "callerId": "share-call-1", "type": "missedCall", "patientId": "5",
        "occurredAt": "2026-11-26T09:15:00Z", "text": "missed call from the patient",
    }  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/practices/{practice_id}/writebacks",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, json.loads(r.read())


def polls(sim: Simulator, pid: str, since: float = 0.0) -> list[RequestRecord]:
    return [
        r
        for r in sim.requests(pid)
        if r.method == "GET" and r.path.endswith(POLL_PATH) and r.at >= since
    ]


def owner_after(sim: Simulator, pid: str, since: float) -> str | None:
    """The replica that polled `pid` last, counting polls from `since` on."""
    recent = polls(sim, pid, since)
    return recent[-1].agent if recent else None


def overlapping(records: list[RequestRecord]) -> bool:
    """True when two replicas' polling periods (first to last poll) of one practice overlap."""
    spans: dict[str, tuple[float, float]] = {}
    for r in records:
        first, _ = spans.get(r.agent, (r.at, r.at))
        spans[r.agent] = (first, r.at)
    ordered = sorted(spans.values())
    return any(b[0] <= a[1] for a, b in itertools.pairwise(ordered))


def gaps(records: list[RequestRecord], limit: float) -> list[float]:
    times = [r.at for r in records]
    return [b - a for a, b in itertools.pairwise(times) if b - a > limit]


def test_share_refuses_flags_it_cannot_work_with(tmp_path: Path) -> None:
    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PMSCTL_")}
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--sink", "file:x", "--no-writeback", *flags],
            capture_output=True, text=True, cwd=tmp_path, timeout=60,
            env=dict(env, PYTHONPATH=str(testenv.REPO)),
        )  # fmt: skip

    no_store = run("--share")
    assert no_store.returncode == 2
    assert "--share needs --store postgresql://" in no_store.stderr
    sqlite_like = run("--share", "--store", "sqlite:///x.db")
    assert sqlite_like.returncode == 2 and "unknown store" in sqlite_like.stderr
    both = run("--share", "--leader-elect", "--store", "postgresql://u@127.0.0.1:1/db")
    assert both.returncode == 2
    assert "--share and --leader-elect exclude each other" in both.stderr


def test_replicas_share_the_fleet_through_a_kill_and_a_join(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, pg_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    sim = Simulator(rate_limit_per_second=1000, burst=1000, request_log_size=10_000)
    pids = [f"share-{n:02d}" for n in range(PRACTICES)]
    procs: dict[str, subprocess.Popen[str]] = {}
    ports = {f"replica-{n}": testenv.free_port() for n in (1, 2, 3, 4)}

    def start(replica: str) -> None:
        log = (tmp_path / f"{replica}.log").open("w")
        procs[replica] = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler",
                "--namespace", kube_namespace,
                "--share", "--share-period", "1", "--store", pg_url,
                "--sink", f"file:{tmp_path / f'{replica}-events.jsonl'}",
                "--writeback-port", str(ports[replica]), "--probe-port", "0",
                "--metrics-port", "0",
                "--status-interval", "5", "--first-poll-jitter", "0.2",
            ],
            env=kube.environ({
                "PYTHONPATH": str(testenv.REPO), "POD_NAME": replica,
                "PMSCTL_WRITEBACK_TOKEN": TOKEN,
            }),
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip

    def alive() -> None:
        for replica, proc in procs.items():
            if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                tail = (tmp_path / f"{replica}.log").read_text()[-4000:]
                raise AssertionError(f"{replica} exited ({proc.returncode}); log:\n{tail}")

    def every_practice_polled(
        since: float, times: int, by: set[str] | None = None, among: list[str] = pids
    ) -> bool:
        alive()
        return all(
            len([r for r in polls(sim, pid, since) if by is None or r.agent in by]) >= times
            for pid in among
        )

    with sim.serve_in_thread():
        url = sim.base_url("Dentrix")
        kube.kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all(practice_docs(kube_namespace, url, sim))
        )
        try:
            began = time.time()
            for replica in ("replica-1", "replica-2", "replica-3"):
                start(replica)
            three = {f"pmsctl (replica-{n})" for n in (1, 2, 3)}
            wait_until(
                lambda: alive() or {owner_after(sim, p, began) for p in pids} == three,
                90, "the three replicas to share the practices", step=0.5,
            )  # fmt: skip
            settled = time.time()
            wait_until(lambda: every_practice_polled(settled, 2), 30, "two polls each", step=0.5)
            before_kill = {p: owner_after(sim, p, settled) for p in pids}

            # A writeback accepted by the replica polling the practice is delivered once, by
            # that replica: the others' drainers do not claim a practice they do not run.
            target = pids[5]
            owner = str(before_kill[target]).removeprefix("pmsctl (").removesuffix(")")
            code, answer = post_writeback(ports[owner], target)
            assert code == 202, answer
            wait_until(lambda: alive() or sim.notes(target), 30, "the note in the PMS", step=0.5)
            writes = [r for r in sim.requests(target) if r.method == "POST"]

            killed_at = time.time()
            procs["replica-1"].send_signal(signal.SIGKILL)
            procs["replica-1"].wait(10)
            survivors = {"pmsctl (replica-2)", "pmsctl (replica-3)"}
            wait_until(
                lambda: every_practice_polled(killed_at, 2, survivors),
                30, "the survivors to poll every practice", step=0.5,
            )  # fmt: skip
            after_kill_at = time.time()
            after_kill = {p: owner_after(sim, p, killed_at) for p in pids}

            joined_at = time.time()
            start("replica-4")
            wait_until(
                lambda: alive() or any(
                    owner_after(sim, p, joined_at) == "pmsctl (replica-4)" for p in pids
                ),
                60, "the new replica to poll its share", step=0.5,
            )  # fmt: skip
            first_poll_4 = time.time()
            wait_until(lambda: every_practice_polled(first_poll_4, 2), 30, "polls", step=0.5)
            ended = time.time()
            after_join = {p: owner_after(sim, p, first_poll_4) for p in pids}
            out = kube.kubectl("get", "pwb", "-n", kube_namespace, "-o", "json").stdout

            # A practice deleted: gone at once (no finalizer holds it, not even the one an
            # operator without --share had put there), and its owner stops polling it.
            kube.kubectl("delete", "pwb", "share-00", "-n", kube_namespace, "--timeout=30s")
            deleted_at = time.time()
            wait_until(
                lambda: every_practice_polled(deleted_at + 1, 1, None, pids[1:]),
                30, "the other practices' next polls", step=0.5,
            )  # fmt: skip
            polled_after_delete = polls(sim, "share-00", deleted_at + 1)
        finally:
            stop_processes(*procs.values(), grace=30)

    # Every poll from the first one of the settled fleet to the end of the run.
    records = {pid: polls(sim, pid, settled) for pid in pids}
    twice = [pid for pid in pids if overlapping(records[pid])]
    late = {pid: g for pid in pids if (g := gaps(records[pid], 2 * INTERVAL))}
    # The dead replica's practices: from its last poll to a survivor's first.
    takeover = max(
        polls(sim, p, killed_at)[0].at
        - max(r.at for r in polls(sim, p, settled) if r.at < killed_at)
        for p in pids
        if before_kill[p] == "pmsctl (replica-1)"
    )
    moved = [p for p in pids if after_join[p] != after_kill[p]]

    def share(owners: dict[str, str | None]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for agent in owners.values():
            counts[str(agent)] = counts.get(str(agent), 0) + 1
        return dict(sorted(counts.items()))

    print(
        f"\n{PRACTICES} practices, {INTERVAL:g} s interval, run {ended - began:.0f} s;"
        f"\nthe killed replica's practices polled again within {takeover:.1f} s of their last"
        f" poll; every practice polled twice by the survivors {after_kill_at - killed_at:.1f} s"
        " after the kill"
        f"\npolled by two replicas at once: {len(twice)} {twice}"
        f"\nnot polled for more than {2 * INTERVAL:g} s: {len(late)} {late}"
        f"\nshares before the kill: {share(before_kill)}"
        f"\nshares after the kill: {share(after_kill)}"
        f"\nshares after the join: {share(after_join)}"
        f"\nmoved on the join: {len(moved)} of {PRACTICES} ({len(moved) / PRACTICES:.0%}),"
        f" all to: {sorted({str(after_join[p]) for p in moved})}"
    )
    assert twice == []
    assert late == {}
    assert set(before_kill.values()) == three
    assert set(after_kill.values()) == survivors
    assert {after_join[p] for p in moved} == {"pmsctl (replica-4)"}
    assert 0.1 <= len(moved) / PRACTICES <= 0.6
    assert polled_after_delete == []
    assert [n["writeback_id"] for n in sim.notes(target)] == [answer["id"]]
    assert {r.agent for r in writes} == {f"pmsctl ({owner})"}, writes
    # Only the owner writes status, and every practice is Ready whoever polls it.
    for item in json.loads(out)["items"]:
        conds = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
        assert conds.get("Ready") == "True", (item["metadata"]["name"], conds)
    for replica in ("replica-2", "replica-3", "replica-4"):
        assert procs[replica].returncode == 0, (tmp_path / f"{replica}.log").read_text()[-3000:]
    sim.close()
