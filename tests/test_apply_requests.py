"""What applying practices at once costs the API server, counted in its audit log.

Real: the testenv's etcd + kube-apiserver started here with an audit log (every request, Metadata
level), the CRDs, the PMS simulator in its own process, `pmsctl operator` as a subprocess with its
default flags (no writeback API). The practices and their Secrets are created through the API, a
few at a time (bench/bench_apply.py's own code: these are its figures at a small N). Counting is
not timing: the assertions hold however slow the machine is.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kopf
import pytest
import testenv
from timing import wait_until

from reconciler.kube.handlers import configure

N = 20
NS = "apply"


def _bench() -> ModuleType:
    path = testenv.REPO / "bench" / "bench_apply.py"
    spec = importlib.util.spec_from_file_location("pmsctl_bench_apply", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path, dict[str, Any]]]:
    """(cluster, audit log, simulator) for this module: N practices in the simulator."""
    workdir = tmp_path_factory.mktemp("apply")
    with (
        bench.audited_cluster(workdir) as (cluster, audit),
        bench.simulator(N, workdir) as sim,
    ):
        bench.create_namespace(cluster, NS)
        yield cluster, audit, sim


def _operator_requests(audit: Path, since: float) -> list[Any]:
    return [
        r
        for r in bench.audit_requests(audit)
        if bench.is_operator(r) and r.namespace in ("", NS) and r.at >= since
    ]


def _custom(cluster: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(bench.bench_client(cluster))


@pytest.mark.kube
def test_practices_applied_at_once_cost_one_reconcile_one_status_write_and_no_secret_read_each(
    world: tuple[Any, Path, dict[str, Any]], tmp_path: Path
) -> None:
    cluster, audit, sim = world
    op = bench.Operator(cluster, [NS], tmp_path)
    op.start()
    try:
        docs = bench.documents(0, N, NS, sim)
        with bench.ReadyWatch(cluster, NS) as watch:
            began = time.time()
            bench.apply_parallel(cluster, docs, 8)
            assert watch.wait(N, 120), f"Ready: {len(watch.ready)} of {N}"
            assert watch.wait_handled(N, 60), f"handled: {len(watch.handled)} of {N}"
            handled = dict(watch.handled)
        reconciles = op.reconciles()
        names = {d["metadata"]["name"] for _, d in docs}

        # The API server sends a change to its watchers before it logs the request's end: wait
        # until the log has Kopf's PATCH of every practice too.
        def logged() -> list[Any] | None:
            found = _operator_requests(audit, began)
            patched = {r.name for r in found if r.resource == "practicewritebacks"}
            return found if patched >= names else None

        requests = wait_until(logged, 30, "Kopf's PATCH of every practice in the audit log")

        # Secrets come from the watch Kopf already runs: not one GET, at most its first listing.
        secret_reads = Counter(r.verb for r in requests if r.resource == "secrets")
        assert secret_reads["get"] == 0 and secret_reads["list"] <= 1, secret_reads
        # One status write per practice until Kopf recorded it as handled (its PATCH follows the
        # handler): the one that says Ready=True, there is no other.
        status_writes = Counter(
            r.name
            for r in requests
            if r.resource == "practicewritebacks/status" and r.at <= handled[r.name]
        )
        assert status_writes == Counter(dict.fromkeys(names, 1)), status_writes
        # Kopf's own PATCH of each object: its last-handled spec, nothing else (no finalizer).
        object_patches = Counter(
            r.name for r in requests if r.resource == "practicewritebacks" and r.verb == "patch"
        )
        assert object_patches == Counter(dict.fromkeys(names, 1)), object_patches
        # One reconcile per practice, one create handler run per practice.
        assert reconciles == N
        runs = op.handler_runs()
        assert {k: dict(c) for k, c in runs.items()} == {
            f"{NS}/{name}": {"Creation": 1} for name in names
        }
    finally:
        op.stop()

    # Restart: a spec changed while the operator is down is reconciled once it is back, every
    # other practice is resumed once, and Secrets still come from the watch only.
    first = docs[0][1]["metadata"]["name"]
    custom = _custom(cluster)
    custom.patch_namespaced_custom_object(
        bench.GROUP, "v1", NS, bench.PLURAL, first, {"spec": {"displayName": "Renamed"}}
    )
    restarted = time.time()
    op.start()
    try:

        def observed() -> bool:
            obj = custom.get_namespaced_custom_object(bench.GROUP, "v1", NS, bench.PLURAL, first)
            return bool((obj.get("status") or {}).get("observedGeneration") == 2)

        wait_until(
            observed, 60, "the change made while the operator was down reconciled", step=0.25
        )

        def resumed() -> dict[str, Counter[str]] | None:
            runs = {k: c for k, c in op.handler_runs().items() if c["Resuming"] or c["Updating"]}
            return runs if len(runs) >= N else None

        runs = wait_until(resumed, 60, "every practice resumed", step=0.25)
        # The changed one is updated (not resumed too), the others resumed; none created again.
        assert runs[f"{NS}/{first}"] == Counter(Creation=1, Updating=1)
        assert all(
            c == Counter(Creation=1, Resuming=1)
            for k, c in runs.items()
            if not k.endswith(f"/{first}")
        )
        after = _operator_requests(audit, restarted)
        assert not [r for r in after if r.resource == "secrets" and r.verb == "get"]
        assert op.reconciles() == N
    finally:
        op.stop()


def test_kopf_waits_for_its_own_patch_longer_than_a_loaded_watch_delays_it() -> None:
    """Kopf handles a practice again only once the watch delivered the version its own PATCH
    made; if it gives up waiting first it sees no last-handled state and runs the create
    handler a second time (seen 10-53 s apart under load with Kopf's 5 s default)."""
    settings = kopf.OperatorSettings()
    configure(settings)
    assert settings.persistence.consistency_timeout >= 60


def test_the_essence_kopf_stores_is_kopfs_own_without_copying_the_status_first() -> None:
    """The diff-base is built from the spec, labels and annotations only (a practice's status is
    most of its body, and Kopf builds an essence for every event): the same essence as Kopf's."""
    body = {
        "apiVersion": f"{bench.GROUP}/v1",
        "kind": "PracticeWriteback",
        "metadata": {
            "name": "acme",
            "namespace": NS,
            "uid": "0000",
            "resourceVersion": "7",
            "labels": {"shard": "a"},
            "annotations": {
                "writeback.dental.dev/reconcile-requested-at": "t1",
                "operator.writeback.dental.dev/last-handled-configuration": '{"spec": {}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
        "spec": {"practiceId": "acme", "sync": {"patients": {"enabled": True}}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}] * 8},
    }
    settings = kopf.OperatorSettings()
    configure(settings)
    ours = settings.persistence.diffbase_storage.build(body=kopf.Body(body))
    kopfs = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.writeback.dental.dev", key="last-handled-configuration"
    ).build(body=kopf.Body(body))
    assert ours == kopfs
    assert ours["metadata"]["annotations"] == {"writeback.dental.dev/reconcile-requested-at": "t1"}
