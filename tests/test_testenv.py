"""The test harness itself: the control plane starts, serves a CRD, cleans up and dies with us.

Real: etcd, kube-apiserver and kubectl from `hack/testenv/` (see `tests/testenv.py`), and a
small CRD of this module's own so these tests do not depend on `crds/`. Nothing is faked. Two
tests start a second control plane of their own to watch it stop; they are the slow ones here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import testenv
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from timing import wait_until

WIDGET_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.pmsctl.test
spec:
  group: harness.pmsctl.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer, minimum: 1}
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that our own Popen has not reaped yet counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout, "exit", step=0.1)
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.kube
def test_the_api_server_is_ready_and_knows_the_admin_as_a_cluster_admin(
    kube: testenv.Cluster,
) -> None:
    assert kube.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    answer = kube.kubectl("auth", "can-i", "*", "*", "--all-namespaces")
    assert answer.stdout.strip() == "yes"


@pytest.mark.kube
def test_the_python_client_reaches_the_same_server_as_kubectl(kube: testenv.Cluster) -> None:
    version = client.VersionApi(kube.api_client).get_code()
    gomod = (testenv.REPO / "hack" / "testenv" / "go.mod").read_text()
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", gomod, re.M)
    assert pinned is not None
    assert version.git_version == pinned.group(1)
    assert kube.server.startswith("https://")


@pytest.mark.kube
def test_kubectl_failure_raises_with_kubectls_own_message(kube: testenv.Cluster) -> None:
    with pytest.raises(testenv.KubectlError, match=r"(?s)get configmap no-such-map.*NotFound"):
        kube.kubectl("get", "configmap", "no-such-map", "-n", "default")
    unchecked = kube.kubectl("get", "configmap", "no-such-map", "-n", "default", check=False)
    assert unchecked.returncode == 1


@pytest.mark.kube
def test_a_crd_from_a_folder_installs_and_its_objects_are_validated(
    kube: testenv.Cluster, kube_namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "widget.yaml").write_text(WIDGET_CRD)
    assert testenv.install_crds(kube, tmp_path) == ["widgets.harness.pmsctl.test"]
    good = (
        "apiVersion: harness.pmsctl.test/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 2}\n"
    )
    kube.kubectl("apply", "--server-side", "-n", kube_namespace, "-f", "-", input=good)
    assert kube.kubectl("get", "wdg", "-n", kube_namespace, "-o", "name").stdout.strip() == (
        "widget.harness.pmsctl.test/w"
    )
    bad = good.replace("size: 2", "size: 0")
    rejected = kube.kubectl(
        "apply", "--server-side", "-n", kube_namespace, "-f", "-", input=bad, check=False
    )
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr


@pytest.mark.kube
def test_deleting_a_test_namespace_removes_it_even_with_a_finalizer_left_behind(
    kube: testenv.Cluster, tmp_path: Path
) -> None:
    (tmp_path / "widget.yaml").write_text(WIDGET_CRD)
    testenv.install_crds(kube, tmp_path)
    name = testenv.namespace_name("finalizer-left-behind")
    core = client.CoreV1Api(kube.api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    stuck = (
        "apiVersion: harness.pmsctl.test/v1\nkind: Widget\n"
        "metadata: {name: stuck, finalizers: [harness.pmsctl.test/hold]}\nspec: {size: 1}\n"
    )
    kube.kubectl("apply", "--server-side", "-n", name, "-f", "-", input=stuck)
    testenv.delete_namespace(kube, name)
    with pytest.raises(ApiException) as gone:
        core.read_namespace(name)
    assert gone.value.status == 404


@pytest.mark.kube
def test_stopping_a_control_plane_ends_its_processes_and_removes_its_folder(
    kube: testenv.Cluster,
) -> None:
    plane = testenv.ControlPlane(kube.kubectl_path.parent)
    cluster = plane.start()
    pids = [p.popen.pid for p in plane._procs]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    plane.stop()
    assert _wait_gone(pids) == []
    assert not plane.workdir.exists()


@pytest.mark.kube
def test_a_killed_test_session_takes_its_control_plane_with_it(
    kube: testenv.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL skips atexit and finally blocks: the parent-death signal must still end etcd and
    kube-apiserver, and the next control plane sweeps the folder the dead session left."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import testenv
        plane = testenv.ControlPlane(testenv.Path({str(kube.kubectl_path.parent)!r}))
        plane.start()
        print(" ".join(str(p.popen.pid) for p in plane._procs), flush=True)
        time.sleep(120)  # no timer under test: this child only lives until the test kills it
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, f"the child printed {line!r}"
        assert all(_alive(pid) for pid in pids)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert _wait_gone(pids) == []
        left = list(tmp_path.glob(f"{testenv.WORKDIR_PREFIX}*"))
        assert len(left) == 1
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        testenv._sweep_stale_workdirs()
        assert not left[0].exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_machine_without_go_gets_told_exactly_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real build.sh with a PATH that holds only the shell tools it needs before Go."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname", "awk", "cat", "cksum"):
        found = shutil.which(tool)
        assert found, f"{tool} is needed to run build.sh"
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("PMSCTL_TESTENV_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(testenv.ENV_BIN_DIR, raising=False)
    with pytest.raises(testenv.TestenvError) as failed:
        testenv.testenv_binaries()
    message = str(failed.value)
    assert "exit 2" in message
    assert "the Go toolchain is missing" in message
    assert "install Go 1." in message and "https://go.dev/doc/install" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
