"""The RBAC in deploy/ is enough, not just small: `pmsctl operator` runs as the rendered
ServiceAccount (a real token, a kubeconfig with nothing else) across all namespaces with leader
election, like the Deployment, and makes a practice Ready (watching it and its Secret, patching
it (Kopf's last-handled spec) and its status, posting Events, holding the Lease), then lets it go
when it is deleted, with no request refused. Real: the API server, the operator process, the simulator."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import stop_processes, wait_until

from pms_simulator import Simulator

pytestmark = pytest.mark.kube

DEV = testenv.REPO / "deploy" / "overlays" / "dev"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def _wait(check: Any, timeout: float, what: str, proc: subprocess.Popen[str], log: Path) -> Any:
    """`wait_until(check)` that stops early if the operator exits; both failures show its log."""

    def checked() -> Any:
        value = check()
        if not value and proc.poll() is not None:
            raise AssertionError(
                f"the operator exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            )
        return value

    try:
        return wait_until(checked, timeout, what, step=0.25)
    except AssertionError as exc:
        if proc.poll() is not None:
            raise
        raise AssertionError(f"{exc}:\n{log.read_text()[-4000:]}") from None


@pytest.fixture
def operator_identity(kube: testenv.Cluster, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The dev overlay's RBAC applied for real in a namespace of its own (cluster-scoped names
    made unique), and a kubeconfig holding only a token of its ServiceAccount."""
    suffix = testenv.namespace_name("rbac")[-6:]
    ns = f"pmsctl-rbac-{suffix}"
    rendered = kube.kubectl("kustomize", str(DEV)).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in RBAC_KINDS]
    text = yaml.safe_dump_all(docs).replace("pmsctl-system", ns)
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] += f"-{suffix}"
            if doc["kind"] == "ClusterRoleBinding":
                doc["roleRef"]["name"] += f"-{suffix}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    (sa,) = [d for d in docs if d["kind"] == "ServiceAccount"]
    token = kube.kubectl(
        "create", "token", sa["metadata"]["name"], "-n", ns, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
        "current-context": "sa",
    }
    path = tmp_path / "sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    assert base64.b64decode(cluster["certificate-authority-data"])  # a real CA, no insecure flag
    try:
        yield ns, path
    finally:
        for doc in docs:
            if doc["kind"].startswith("Cluster"):
                kube.kubectl(
                    "delete",
                    doc["kind"].lower(),
                    doc["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )
        testenv.delete_namespace(kube, ns)


def test_the_operator_works_as_the_rendered_service_account(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    operator_identity: tuple[str, Path],
    tmp_path: Path,
) -> None:
    ns, kubeconfig = operator_identity
    doc = yaml.safe_load((testenv.REPO / "practices" / "dentrix-lakeside.yaml").read_text())
    name = doc["metadata"]["name"]
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    creds = sim.add_practice(doc["spec"]["practiceId"], "Dentrix")
    log_path = tmp_path / "operator.log"
    with sim.serve_in_thread():
        testenv.apply_practice(kube, doc, kube_namespace, sim.base_url("Dentrix"), creds)
        log = log_path.open("w")
        env = {
            "PYTHONPATH": str(testenv.REPO),
            "KUBECONFIG": str(kubeconfig),
            "PMSCTL_WRITEBACK_TOKEN": "rbac-test-token-0123456789",
            "PMSCTL_LEADER_ELECT": "true",
            "PMSCTL_POD_NAMESPACE": ns,
            "POD_NAME": "pmsctl-operator-rbac-test",
        }
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "reconciler", "-A",
                "--sink", f"file:{tmp_path / 'events.jsonl'}",
                "--state-db", str(tmp_path / "state.db"),
                "--writeback-db", str(tmp_path / "writebacks.db"),
                "--probe-port", str(testenv.free_port()),
                "--metrics-port", "0",
                "--writeback-port", str(testenv.free_port()),
                "--first-poll-jitter", "0",
                "--log-format", "json",
            ],
            env={**kube.environ(), **env},
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        )  # fmt: skip
        try:

            def conditions() -> dict[str, str]:
                out = kube.kubectl("get", "pwb", name, "-n", kube_namespace, "-o", "json").stdout
                obj = json.loads(out)
                return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}

            _wait(lambda: conditions().get("Ready") == "True", 45, "Ready", proc, log_path)

            def patched() -> bool:
                out = kube.kubectl("get", "pwb", name, "-n", kube_namespace, "-o", "json").stdout
                annotations = json.loads(out)["metadata"].get("annotations") or {}
                return "operator.writeback.dental.dev/last-handled-configuration" in annotations

            _wait(patched, 30, "the operator's PATCH of the object (Kopf's last-handled spec)",
                  proc, log_path)  # fmt: skip
            lease = json.loads(kube.kubectl("get", "lease", "-n", ns, "-o", "json").stdout)["items"]
            (holder,) = [item["spec"]["holderIdentity"] for item in lease]
            assert holder.startswith("pmsctl-operator-rbac-test")  # the pod name, then a suffix
            events = kube.kubectl("get", "events", "-n", kube_namespace, "-o", "json").stdout
            assert any(e["involvedObject"].get("name") == name for e in json.loads(events)["items"])

            kube.kubectl("delete", "pwb", name, "-n", kube_namespace, "--wait=false")

            def gone() -> bool:
                result = kube.kubectl("get", "pwb", name, "-n", kube_namespace, check=False)
                return result.returncode != 0 and "NotFound" in result.stderr

            _wait(gone, 30, "the object to go", proc, log_path)
        finally:
            stop_processes(proc)
            log.close()
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    for refusal in ("Forbidden", "forbidden", " 403"):
        assert refusal not in text, [line for line in text.splitlines() if refusal in line][:5]
