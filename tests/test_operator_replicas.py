"""`pmsctl operator --leader-elect` on a PostgreSQL store: the standby serves the writeback API.

Real: two `pmsctl operator` processes against the testenv kube-apiserver and its Leases, one
PostgreSQL server (`tests/pg.py`) as their shared store, the simulator (on a background thread
of this test process), HTTP on loopback. The leader runs the engine; the standby answers
/readyz with 200 (so the PodDisruptionBudget may evict either pod) and acknowledges a
writeback for the leader's practice, which the leader then writes to the PMS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import stop_processes, wait_until

from pms_simulator import Simulator

pytestmark = pytest.mark.kube

TOKEN = "replicas-test-token-0123456789"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_standby_is_ready_and_its_writebacks_are_delivered_by_the_leader(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    tmp_path: Path,
    pg_url: str,
) -> None:
    doc = yaml.safe_load((testenv.REPO / "practices" / "dentrix-lakeside.yaml").read_text())
    pid = doc["spec"]["practiceId"]
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    creds = sim.add_practice(pid, "Dentrix")
    procs: dict[str, subprocess.Popen[str]] = {}
    ports: dict[str, int] = {}

    def start(who: str) -> None:
        folder = tmp_path / who
        folder.mkdir()
        ports[who] = testenv.free_port()
        procs[who] = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler",
                "--namespace", kube_namespace,
                "--sink", f"file:{folder / 'events.jsonl'}",
                "--store", pg_url,
                "--writeback-port", str(ports[who]), "--metrics-port", "0",
                "--probe-port", str(testenv.free_port()),
                "--first-poll-jitter", "0",
                "--leader-elect",
                "--leader-election-id", "replicas-lock",
                "--leader-election-namespace", kube_namespace,
                # Long enough that a loaded machine does not hand the Lease over mid-test.
                "--leader-elect-lease-duration", "15",
                "--leader-elect-renew-deadline", "10",
                "--leader-elect-retry-period", "1",
            ],
            env=kube.environ({
                "PYTHONPATH": str(testenv.REPO), "POD_NAME": f"op-{who}",
                "PMSCTL_WRITEBACK_TOKEN": TOKEN,
            }),
            stdout=(folder / "operator.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            cwd=folder,
        )  # fmt: skip

    def holder() -> str:
        out = kube.kubectl(
            "get", "lease", "replicas-lock", "-n", kube_namespace, "-o", "json", check=False
        )
        if out.returncode != 0:
            return ""
        return str(json.loads(out.stdout)["spec"].get("holderIdentity") or "")

    def log_of(who: str) -> str:
        return (tmp_path / who / "operator.log").read_text()[-4000:]

    with sim.serve_in_thread():
        testenv.apply_practice(kube, doc, kube_namespace, sim.base_url("Dentrix"), creds)
        try:
            start("a")
            first = wait_until(holder, 30, "a holder of the lease", step=0.1)
            assert first.startswith("op-a_")
            start("b")
            leader, standby = ports["a"], ports["b"]
            wait_until(
                lambda: _status(f"http://127.0.0.1:{leader}/readyz") == 200, 30, "leader Ready"
            )
            # The standby serves the API and is Ready, while it does not lead.
            wait_until(
                lambda: _status(f"http://127.0.0.1:{standby}/readyz") == 200,
                30,
                "standby Ready",
                step=0.1,
            )
            assert holder() == first, log_of("b")
            assert procs["b"].poll() is None, log_of("b")
            body = {
                "callerId": "via-standby-1",
                "type": "missedCall",
                "patientId": "5",
                "occurredAt": "2026-11-26T09:15:00Z",
                "text": "missed call, acknowledged by the standby",
            }

            def acked() -> tuple[int, dict[str, Any]] | None:
                # 404 until the leader's engine has published the practice's snapshot.
                status, answer = _post(
                    f"http://127.0.0.1:{standby}/v1/practices/{pid}/writebacks", body
                )
                return (status, answer) if status != 404 else None

            status, answer = wait_until(acked, 30, "the standby to know the practice", step=0.2)
            assert status == 202 and answer["status"] == "pending", answer
            notes = wait_until(lambda: sim.notes(pid), 15, "the note in the PMS", step=0.1)
            assert [n["writeback_id"] for n in notes] == [answer["id"]]
            # A practice nobody holds is 404 on the standby too.
            status, _ = _post(f"http://127.0.0.1:{standby}/v1/practices/nobody/writebacks", body)
            assert status == 404
        finally:
            stop_processes(*procs.values())
        for who, proc in procs.items():
            assert proc.returncode == 0, log_of(who)
            assert TOKEN not in log_of(who)
    sim.close()
