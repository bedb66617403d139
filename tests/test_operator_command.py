"""`pmsctl operator` as a real subprocess, and the deploy/ manifests, against the testenv API server.

Real: the `pmsctl operator` process (its flags, Kopf's probe endpoint, the Prometheus endpoint,
the JSONL sink and state file), the kube-apiserver, the simulator (served from this test process
on a background thread). Nothing is faked. The deploy manifests are checked by a server-side dry
run, which runs the API server's own validation without creating anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import stop_processes, wait_until

from pms_simulator import Simulator

pytestmark = pytest.mark.kube


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _post(url: str, body: dict[str, Any], token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


#: Operator process id -> its log file, so a failure shows what the operator said.
_LOGS: dict[int, Path] = {}


def _wait(check: Any, timeout: float, what: str, proc: subprocess.Popen[str] | None = None) -> Any:
    def alive_check() -> Any:
        value = check()
        if not value and proc is not None and proc.poll() is not None:
            log = _LOGS.get(proc.pid)
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(
                f"the operator exited ({proc.returncode}) while waiting for {what}; log:\n{tail}"
            )
        return value

    return wait_until(alive_check, timeout, what, step=0.25)


def test_pmsctl_operator_makes_a_practice_ready_and_serves_probes_and_metrics(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load((testenv.REPO / "practices" / "dentrix-lakeside.yaml").read_text())
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    creds = sim.add_practice(doc["spec"]["practiceId"], "Dentrix")
    probe, metrics_port, wb_port = testenv.free_port(), testenv.free_port(), testenv.free_port()
    token = "command-test-token-0123456789"
    with sim.serve_in_thread():
        testenv.apply_practice(kube, doc, kube_namespace, sim.base_url("Dentrix"), creds)
        events = tmp_path / "events.jsonl"
        log = (tmp_path / "operator.log").open("w")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler",
                "--namespace", kube_namespace,
                "--sink", f"file:{events}",
                "--state-db", str(tmp_path / "state.db"),
                "--log-format", "json",
                "--probe-port", str(probe),
                "--metrics-port", str(metrics_port),
                "--writeback-port", str(wb_port),
                # The first polls run at once, not spread over their interval (up to 60 s here).
                "--first-poll-jitter", "0",
                "--writeback-db", str(tmp_path / "writebacks.db"),
            ],
            env=kube.environ({"PYTHONPATH": str(testenv.REPO), "PMSCTL_WRITEBACK_TOKEN": token}),
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        _LOGS[proc.pid] = tmp_path / "operator.log"
        try:

            def ready() -> bool:
                out = kube.kubectl(
                    "get", "pwb", "lakeside-dental", "-n", kube_namespace, "-o", "json"
                ).stdout
                conds = json.loads(out).get("status", {}).get("conditions", [])
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

            _wait(ready, 30, "Ready", proc)
            table = kube.kubectl("get", "pwb", "-n", kube_namespace).stdout
            assert (
                "lakeside-dental" in table
                and "Dentrix" in table
                and "DDS1" in table
                and "True" in table
            )
            _, body = _wait(
                lambda: (r := _get(f"http://127.0.0.1:{probe}/healthz"))[0] == 200 and r,
                10,
                "/healthz",
            )
            assert json.loads(body)["practices"] == 1
            _wait(
                lambda: events.exists() and events.stat().st_size > 0,
                30,
                "events in the sink",
                proc,
            )
            _, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert 'pmsctl_reconciles_total{result="ok"}' in text
            assert 'pmsctl_pollers_running{kind="appointmentStatus"} 1.0' in text
            assert "pmsctl_events_emitted_total" in text
            # The writeback API is served by the operator process too.
            wb = {
                "callerId": "call-cmd-1",
                "type": "missedCall",
                "patientId": "5",
                "occurredAt": "2026-11-26T09:15:00Z",
                "text": "missed call from the patient",
            }
            status, answer = _post(
                f"http://127.0.0.1:{wb_port}/v1/practices/{doc['spec']['practiceId']}/writebacks",
                wb,
                token,
            )
            assert status == 202 and answer["status"] == "pending", answer
            notes = _wait(
                lambda: sim.notes(doc["spec"]["practiceId"]), 15, "the note in the PMS", proc
            )
            assert [n["writeback_id"] for n in notes] == [answer["id"]]
            assert notes[0]["kind"] == "missedCall" and notes[0]["provider_id"] == "DDS1"
            assert (tmp_path / "writebacks.db").exists()
            # One registry on one port: the writeback path's metrics beside the engine's.
            _, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert 'outcome="accepted",type="missedCall"} 1.0' in text
            assert 'pmsctl_reconciles_total{result="ok"}' in text
        finally:
            stop_processes(proc)
            log.close()
        assert proc.returncode == 0, (tmp_path / "operator.log").read_text()[-3000:]
        lines = (tmp_path / "operator.log").read_text().splitlines()
        assert any(line.startswith("{") and json.loads(line).get("message") for line in lines)
        assert creds[next(iter(creds))] not in "\n".join(lines)  # the token never reaches the log
        assert token not in "\n".join(lines)
    sim.close()


def test_deploy_manifests_pass_a_server_side_dry_run(
    kube: testenv.Cluster, crd_installed: list[str]
) -> None:
    # A dry run of namespaced objects needs their namespace to exist for real.
    kube.kubectl("create", "namespace", "pmsctl-system", check=False)
    rendered = kube.kubectl("kustomize", str(testenv.REPO / "deploy/overlays/dev")).stdout
    # The CRD is left out: the suite's copy converts through a webhook URL, and an apply would
    # merge the overlay's Service reference into it (test_deploy.py checks it as a replace).
    docs = [d for d in yaml.safe_load_all(rendered) if d["kind"] != "CustomResourceDefinition"]
    try:
        out = kube.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs)
        ).stdout
    finally:
        testenv.delete_namespace(kube, "pmsctl-system")
    for kind in (
        "namespace/pmsctl-system",
        "serviceaccount/pmsctl-operator",
        "clusterrole.rbac.authorization.k8s.io/pmsctl-operator",
        "persistentvolumeclaim/pmsctl-state",
        "deployment.apps/pmsctl-operator",
        "service/pmsctl-writeback",
        "role.rbac.authorization.k8s.io/pmsctl-operator-leader-election",
        "rolebinding.rbac.authorization.k8s.io/pmsctl-operator-leader-election",
    ):
        assert kind in out, out


def test_operator_flags_are_checked_before_connecting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--selector", "tier in (a,b)", "--sink", "file:x"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(testenv.REPO)),
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "--selector: 'tier in (a': only key=value, key!=value, key and !key are supported"
        in result.stderr
    )


def test_operator_refuses_to_start_a_writeback_api_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMSCTL_WRITEBACK")}
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--sink", "file:x", "--writeback-port", "18081"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=dict(env, PYTHONPATH=str(testenv.REPO)),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "the writeback API (--writeback-port 18081) needs a token" in result.stderr
    assert "PMSCTL_WRITEBACK_TOKEN_FILE" in result.stderr and "--writeback-port 0" in result.stderr


def test_operator_killed_mid_drain_and_restarted_loses_and_doubles_no_writeback(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> None:
    """`pmsctl operator` is killed with SIGKILL while it delivers notes to an Open Dental
    practice whose writes fail 40% of the time (the simulator's fault settings) and are slow,
    then started again on the same queue file: every note is in the PMS exactly once, in order
    per patient, and status.writebacks says so."""
    doc = yaml.safe_load((testenv.REPO / "practices" / "opendental-bright-smiles.yaml").read_text())
    pid = doc["spec"]["practiceId"]
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    creds = sim.add_practice(pid, "OpenDental")
    token = "kill-test-token-0123456789abcdef"
    wb_port = testenv.free_port()
    procs: list[subprocess.Popen[str]] = []

    def start(n: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler",
                "--namespace", kube_namespace,
                "--sink", f"file:{tmp_path / 'events.jsonl'}",
                "--state-db", str(tmp_path / "state.db"),
                "--writeback-db", str(tmp_path / "writebacks.db"),
                "--writeback-port", str(wb_port),
                "--probe-port", "0", "--metrics-port", "0", "--status-interval", "1",
            ],
            env=kube.environ({"PYTHONPATH": str(testenv.REPO), "PMSCTL_WRITEBACK_TOKEN": token}),
            stdout=(tmp_path / f"operator{n}.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        procs.append(proc)
        _LOGS[proc.pid] = tmp_path / f"operator{n}.log"
        return proc

    def status() -> dict[str, Any]:
        out = kube.kubectl("get", "pwb", "bright-smiles", "-n", kube_namespace, "-o", "json")
        return dict(json.loads(out.stdout).get("status") or {})

    url = f"http://127.0.0.1:{wb_port}/v1/practices/{pid}/writebacks"
    with sim.serve_in_thread():
        testenv.apply_practice(kube, doc, kube_namespace, sim.base_url("OpenDental"), creds)
        try:
            first = start(1)
            _wait(
                lambda: any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in status().get("conditions", [])
                ),
                30,
                "Ready",
                first,
            )
            sim.set_faults(pid, write_error_rate=0.4, status=500, latency_ms=40)
            posted: list[tuple[str, str]] = []
            for n in range(16):
                patient = str(2 + n % 3)
                body = {
                    "callerId": f"kill-{n}",
                    "type": "outgoingSms",
                    "patientId": patient,
                    "occurredAt": "2026-11-26T09:15:00Z",
                    "text": f"message {n}",
                }
                code, answer = _post(url, body, token)
                assert code == 202 and answer["status"] == "pending", answer
                posted.append((answer["id"], patient))
            _wait(lambda: len(sim.notes(pid)) >= 4, 15, "some notes in the PMS", first)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert len(sim.notes(pid)) < len(posted), "the drain finished before the kill"

            sim.set_faults(pid)  # the PMS takes writes again
            second = start(2)
            want = {"sent": len(posted), "skipped": 0, "pending": 0, "failed": 0}
            _wait(lambda: status().get("writebacks") == want, 25, f"writebacks {want}", second)
        finally:
            stop_processes(*procs)
        notes = sim.notes(pid)
        written = [n["writeback_id"] for n in notes]
        assert len(written) == len(set(written)), "a writeback was written twice"
        assert set(written) == {w for w, _ in posted}, "a writeback was lost"
        for patient in {p for _, p in posted}:
            want_order = [w for w, p in posted if p == patient]
            assert [n["writeback_id"] for n in notes if n["patient_id"] == patient] == want_order
        assert procs[-1].returncode == 0, (tmp_path / "operator2.log").read_text()[-3000:]
    sim.close()
