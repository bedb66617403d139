"""Shared pytest fixtures.

The Kubernetes fixtures (harness in `tests/testenv.py`, guide in `docs/testenv.md`):

- `kube` (session): a `testenv.Cluster` - a real etcd + kube-apiserver started for the session
  on free loopback ports, or the cluster named by `PMSCTL_TEST_KUBECONFIG` (kind, k3d). It has
  `.kubeconfig`, `.server`, `.kubectl(*args, input=None, check=True)`, `.api_client` and
  `.environ()`. When the testenv binaries are missing it builds them (`hack/testenv/build.sh`);
  a failed build fails the tests, it never skips them.
- `webhook_server` (session): the operator's conversion webhook on loopback (self-signed CA).
- `crd_installed` (session): the CRDs from `crds/` applied server-side, Established and served,
  converting through `webhook_server`; the value is the list of CRD names.
- `kube_namespace` (per test): a fresh namespace name, deleted with what the test left in it.

Mark every test that uses them `@pytest.mark.kube`.

The PostgreSQL fixtures (harness in `tests/pg.py`):

- `pg_server` (session): a real PostgreSQL server on a free loopback port, from Debian's
  `postgresql` binaries (`make postgres` installs them; missing ones fail the tests).
- `pg_url` (per test): the URL of a fresh, empty database of the test's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pg
import pytest
import testenv


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[testenv.Cluster]:
    """A real API server for the session (or PMSCTL_TEST_KUBECONFIG's cluster)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    progress = testenv.default_progress()
    external = os.environ.get(testenv.ENV_KUBECONFIG)
    # Build progress goes straight to the terminal: a first build takes minutes.
    with capture.global_and_fixture_disabled():
        if external:
            cluster = testenv.connect_existing(Path(external), progress)
        else:
            bin_dir = testenv.testenv_binaries(progress)
    if external:
        try:
            yield cluster
        finally:
            cluster.close()
        return
    with testenv.start_control_plane(bin_dir) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def webhook_server() -> Iterator[testenv.WebhookThread]:
    """The operator's webhook server (reconciler.kube.webhooks, conversion only) on a loopback
    port with a self-signed CA, in a thread of its own for the session: the API server converts
    PracticeWritebacks between versions through it."""
    with testenv.WebhookThread() as server:
        yield server


@pytest.fixture(scope="session")
def crd_installed(
    kube: testenv.Cluster,
    webhook_server: testenv.WebhookThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[str]:
    """Install every CRD in crds/ once per session and wait until each is Established; the
    conversion webhook is pointed at `webhook_server` (a URL instead of the in-cluster Service)."""
    folder = testenv.crds_with_webhook_url(
        testenv.REPO / "crds", tmp_path_factory.mktemp("crds"), webhook_server
    )
    return testenv.install_crds(kube, folder)


@pytest.fixture
def kube_namespace(kube: testenv.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, deleted (with its objects) after the test."""
    from kubernetes import client

    name = testenv.namespace_name(request.node.name)
    namespace = client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    client.CoreV1Api(kube.api_client).create_namespace(namespace)
    try:
        yield name
    finally:
        testenv.delete_namespace(kube, name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.Server]:
    """A real PostgreSQL server for the session, stopped and removed at its end."""
    # Not under pytest's tmp_path: that is private to root, and the server runs as another user.
    base = Path(tempfile.mkdtemp(prefix="pmsctl-pg-"))
    try:
        with pg.start_server(base) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: pg.Server, request: pytest.FixtureRequest) -> str:
    """A fresh database of the test's own; its URL."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    return pg_server.database(f"t_{digest}")
