"""PracticeCatalogs in a real cluster: the operator publishes them, a read-only identity reads them.

Real: the testenv's etcd + kube-apiserver (RBAC on) with both generated CRDs installed, Kopf
in-process with the engine and the `CatalogWriter` wired as `pmsctl operator` wires them, the PMS
simulator over loopback HTTP, `kubectl` and `pmsctl catalog`/`pmsctl plan` against the API server.

Garbage collection: the testenv runs no kube-controller-manager, so a catalog outliving a
deleted practice is not collected here. The tests check that the ownerReference points at the
PracticeWriteback's uid (what the garbage collector acts on) and that the operator's delete
handler removes the catalog itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import testenv
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from test_operator import SETTINGS, Env, eventually, load_examples

from pms_simulator import Simulator
from reconciler.api.catalog import CATALOG_VERSION, Catalog
from reconciler.cli import main
from reconciler.engine.engine import EngineSettings
from reconciler.engine.sink import JsonlSink
from reconciler.kube.catalog import HASH_ANNOTATION, CatalogWriter
from reconciler.kube.client import GROUP, VERSION, KubeSecrets, StatusWriter, connection_info
from reconciler.kube.handlers import build_registry, make_memo
from reconciler.runtime import Runtime, RuntimeOptions

pytestmark = pytest.mark.kube

PLURAL = "practicecatalogs"


class CatalogOperator:
    """Kopf in this loop with a runtime as `pmsctl operator` builds it, catalogs included."""

    def __init__(self, env: Env, settings: EngineSettings) -> None:
        api = env.kube.api_client
        self.writer = StatusWriter(api)
        self.catalogs = CatalogWriter(api)
        self.runtime = Runtime(
            RuntimeOptions(state_db=env.tmp / "state.db", listen_host="127.0.0.1"),
            secrets=KubeSecrets(api),
            settings=settings,
            on_status=self.writer,
            on_catalog=self.catalogs,
            sink=JsonlSink(env.tmp / "events.jsonl", fsync=False),
        )
        self.engine = self.runtime.engine
        self._stop = asyncio.Event()
        memo = make_memo(self.runtime, self.writer, connection_info(api), self.catalogs)
        self.task = asyncio.create_task(
            kopf.operator(
                registry=build_registry(),
                memo=memo,
                standalone=True,
                namespaces=[env.ns],
                stop_flag=self._stop,
            )
        )

    async def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def operator(env: Env) -> AsyncIterator[CatalogOperator]:
    op = CatalogOperator(env, SETTINGS)
    try:
        yield op
    finally:
        await op.stop()


@pytest.fixture
async def cluster(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> AsyncIterator[Env]:
    """The test's namespace and a simulator holding the example practices (as in
    tests/test_operator.py)."""
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    for d in load_examples():
        sim.add_practice(d["spec"]["practiceId"], d["spec"]["pms"]["type"])
    async with sim.serve():
        yield Env(kube, kube_namespace, sim, tmp_path)
    sim.close()


async def get_catalog(env: Env, name: str) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(  # type: ignore[no-any-return]
            env.custom.get_namespaced_custom_object, GROUP, CATALOG_VERSION, env.ns, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def test_the_operator_publishes_a_catalog_owned_by_the_practice_and_removes_it_with_it(
    cluster: Env, tmp_path: Path
) -> None:
    env = cluster
    name = "lakeside-dental"
    await env.secrets_for_examples()
    async with operator(env) as op:
        await env.create(env.example(name))
        obj = await eventually(lambda: get_catalog(env, name), 20, "the catalog")
        practice = await env.get(name)

        owner = obj["metadata"]["ownerReferences"]
        assert owner == [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PracticeWriteback",
                "name": name,
                "uid": practice["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
        catalog = Catalog.from_object(obj)
        assert catalog.pms_type == "Dentrix" and catalog.practice_id == name
        assert ("DDS1", True) in {(p.id, p.active) for p in catalog.providers}
        assert "Text Message" in {t.name for t in catalog.note_types}
        assert HASH_ANNOTATION in obj["metadata"]["annotations"]

        table = env.kube.kubectl("get", PLURAL, "-n", env.ns).stdout
        header, row = table.splitlines()[:2]
        assert header.split() == ["NAME", "PMS", "PROVIDERS", "NOTETYPES", "DOCUMENTS", "AGE"]
        assert row.split()[:5] == [
            name,
            "Dentrix",
            str(len(catalog.providers)),
            str(len(catalog.note_types)),
            str(len(catalog.document_categories)),
        ]

        # A reconcile that reads the same lists writes nothing; a renamed note type is written.
        assert op.catalogs.writes == 1
        await op.engine.refresh(f"{env.ns}/{name}")
        assert op.catalogs.writes == 1
        assert (await get_catalog(env, name))["metadata"]["resourceVersion"] == obj["metadata"][  # type: ignore[index]
            "resourceVersion"
        ]
        env.sim.rename_note_type(name, "Fax", "Facsimile")
        await op.engine.refresh(f"{env.ns}/{name}")
        assert op.catalogs.writes == 2
        renamed = Catalog.from_object(await get_catalog(env, name))  # type: ignore[arg-type]
        assert "Facsimile" in {t.name for t in renamed.note_types}

        # A reviewer exports the catalogs with a kubeconfig, and plan checks a change offline.
        export = tmp_path / "catalogs.json"
        code = await asyncio.to_thread(
            main,
            ["catalog", "export", "-o", str(export), "-n", env.ns,
             "--kubeconfig", str(env.kube.kubeconfig)],
        )  # fmt: skip
        assert code == 0
        items = json.loads(export.read_text())["items"]
        assert [i["metadata"] for i in items] == [{"namespace": env.ns, "name": name}]
        kubeconfig = str(env.kube.kubeconfig)
        get = ["catalog", "get", name, "-n", env.ns, "--kubeconfig", kubeconfig, "-o", "json"]
        assert await asyncio.to_thread(main, get) == 0
        # Without -n, the kubeconfig context's namespace (`default` here), as kubectl does.
        assert (
            await asyncio.to_thread(main, ["catalog", "get", name, "--kubeconfig", kubeconfig]) == 1
        )

        await env.delete(name)

        async def gone() -> bool:
            return await get_catalog(env, name) is None

        await eventually(gone, 20, "the catalog to be deleted with its practice")


def _unique(docs: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
    """deploy/ documents made safe to apply in a shared test cluster: the operator's namespace
    becomes the test's, cluster-scoped names get the namespace's suffix."""
    suffix = ns[-6:]
    for doc in docs:
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] += f"-{suffix}"
            if doc["kind"] == "ClusterRoleBinding":
                doc["roleRef"]["name"] += f"-{suffix}"
    return docs


def test_the_reader_role_reads_catalogs_and_nothing_else_and_the_operator_may_write_them(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ns = kube_namespace
    folder = testenv.REPO / "deploy" / "base" / "catalog"
    docs: list[dict[str, Any]] = []
    for path in ("reader-clusterrole.yaml", "operator-rbac.yaml"):
        text = (folder / path).read_text().replace("pmsctl-system", ns)
        docs += [d for d in yaml.safe_load_all(text) if d]
    docs = _unique(docs, ns)
    reader_role = next(
        d for d in docs if d["kind"] == "ClusterRole" and "reader" in d["metadata"]["name"]
    )
    docs += [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reviewer", "namespace": ns},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "pmsctl-operator", "namespace": ns},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reviewer-reads-catalogs", "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": reader_role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": ns}],
        },
    ]
    manifest = yaml.safe_dump_all(docs)
    kube.kubectl("apply", "-f", "-", input=manifest)
    try:

        def can(who: str, verb: str, resource: str) -> bool:
            result = kube.kubectl(
                "auth", "can-i", verb, resource, "-n", ns,
                f"--as=system:serviceaccount:{ns}:{who}", check=False,
            )  # fmt: skip
            answer = result.stdout.strip()
            assert answer in ("yes", "no"), result.stderr
            return answer == "yes"

        catalogs = f"{PLURAL}.{GROUP}"
        for verb in ("get", "list", "watch"):
            assert can("reviewer", verb, catalogs)
        for verb in ("create", "patch", "update", "delete"):
            assert not can("reviewer", verb, catalogs)
        assert not can("reviewer", "get", f"practicewritebacks.{GROUP}")
        assert not can("reviewer", "get", "secrets")
        assert not can("reviewer", "list", "configmaps")
        for verb in ("get", "create", "patch", "delete"):
            assert can("pmsctl-operator", verb, catalogs)
        assert not can("pmsctl-operator", "delete", "secrets")

        # An operator without the rule writes no catalog and says once what to grant.
        token = kube.kubectl("create", "token", "reviewer", "-n", ns).stdout.strip()
        cfg = client.Configuration()
        cfg.host = kube.server
        cfg.ssl_ca_cert = kube.api_client.configuration.ssl_ca_cert
        cfg.api_key = {"authorization": f"Bearer {token}"}
        with client.ApiClient(cfg) as api, caplog.at_level(logging.WARNING):
            writer = CatalogWriter(api)
            writer.remember(f"{ns}/acme", "0d2f3a8e-0000-4000-8000-000000000001")
            catalog = Catalog(ns, "acme", "acme", "OpenDental", "2026-12-02T14:00:00Z")
            for _ in range(2):
                asyncio.run(writer(f"{ns}/acme", catalog))
        assert (writer.writes, writer.refused) == (0, 2)
        warnings = [r.getMessage() for r in caplog.records if "PracticeCatalog" in r.getMessage()]
        assert warnings == [
            f"{ns}/acme: cannot write its PracticeCatalog: HTTP 403 Forbidden; "
            "grant the operator deploy/base/catalog/operator-rbac.yaml"
        ]
        assert token not in caplog.text
    finally:
        kube.kubectl("delete", "--wait=false", "--ignore-not-found", "-f", "-", input=manifest)


def test_the_catalog_crd_is_served_with_its_printer_columns(
    kube: testenv.Cluster, crd_installed: list[str]
) -> None:
    assert f"{PLURAL}.{GROUP}" in crd_installed
    crd = client.ApiextensionsV1Api(kube.api_client).read_custom_resource_definition(
        f"{PLURAL}.{GROUP}"
    )
    columns = [c.name for c in crd.spec.versions[0].additional_printer_columns]
    assert columns == ["PMS", "Providers", "NoteTypes", "Documents", "Age"]


def test_the_operator_deployment_includes_the_catalog_rbac(kube: testenv.Cluster) -> None:
    out = kube.kubectl("kustomize", str(testenv.REPO / "deploy" / "overlays" / "dev")).stdout
    names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert ("ClusterRole", "pmsctl-operator-catalogs") in names
    assert ("ClusterRoleBinding", "pmsctl-operator-catalogs") in names
    assert ("ClusterRole", "pmsctl-catalog-reader") in names
