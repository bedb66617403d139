"""deploy/: every kustomize overlay renders with the testenv's kubectl, the real API server
accepts all of it (`kubectl apply --dry-run=server`, with Pod Security "restricted" warning on
the namespace), each shard of the sharded overlay has its own selector, Lease and volume, and
the RBAC, applied for real, lets the rendered ServiceAccount do what the operator needs and
nothing it must not (`kubectl auth can-i --as=system:serviceaccount:NS:SA`)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
PWB = "practicewritebacks.writeback.dental.dev"


def test_the_overlays_are_dev_and_sharded() -> None:
    # No production overlay: it would need a PostgreSQL store, which pmsctl does not have.
    assert OVERLAYS == ["dev", "sharded"]


def test_the_base_crd_is_the_generated_one() -> None:
    generated = sorted((REPO / "crds").glob("*.yaml"))
    copied = sorted((DEPLOY / "base" / "cluster" / "crds").glob("*.yaml"))
    assert [p.name for p in copied] == [p.name for p in generated]
    for g, c in zip(generated, copied, strict=True):
        assert c.read_bytes() == g.read_bytes(), f"{c} differs from {g}: run `make deploy-crds`"


def _render(kube: testenv.Cluster, overlay: str) -> list[dict[str, Any]]:
    out = kube.kubectl("kustomize", str(DEPLOY / "overlays" / overlay)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _dry_run(kube: testenv.Cluster, docs: list[dict[str, Any]]) -> Any:
    """Server-side apply as a dry run: the API server validates and admits, stores nothing.

    The CRDs are checked as a dry-run replace instead: the suite's CRD is installed with a URL
    for its conversion webhook (the tests' webhook server), and an apply would merge the
    overlay's Service reference into it, giving a CRD with both, which the API server refuses."""
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    rest = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    result = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=pmsctl-deploy-test",
        "-f", "-", input=yaml.safe_dump_all(rest), check=False,
    )  # fmt: skip
    if not crds or result.returncode != 0:
        return result
    replaced = kube.kubectl(
        "replace", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(crds), check=False
    )
    return subprocess.CompletedProcess(
        result.args,
        replaced.returncode,
        replaced.stdout + result.stdout,
        replaced.stderr + result.stderr,
    )


@pytest.fixture(scope="module")
def system_namespace(kube: testenv.Cluster, crd_installed: list[str]) -> Iterator[str]:
    """The overlays' namespace, created for real (a dry run cannot hold namespaced objects in a
    namespace that is itself only dry-run), deleted afterwards with the cluster-wide RBAC."""
    namespace = _of(_render(kube, "dev"), "Namespace")[0]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    name = namespace["metadata"]["name"]
    try:
        yield name
    finally:
        for kind in ("clusterrole", "clusterrolebinding"):
            kube.kubectl("delete", kind, "pmsctl-operator", "--ignore-not-found", check=False)
        testenv.delete_namespace(kube, name)


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_accepted_by_the_api_server(
    kube: testenv.Cluster, system_namespace: str, overlay: str
) -> None:
    docs = _render(kube, overlay)
    result = _dry_run(kube, docs)
    assert result.returncode == 0, result.stderr
    applied = [line for line in result.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(applied) == len(docs), result.stdout
    # The namespace warns on anything Pod Security "restricted" would refuse to run.
    assert "Warning" not in result.stderr, result.stderr
    # ... and it does warn: the same Deployment without its container securityContext.
    for dep in _of(docs, "Deployment"):
        del dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    unsafe = _dry_run(kube, _of(docs, "Deployment"))
    assert unsafe.returncode == 0, unsafe.stderr
    assert 'would violate PodSecurity "restricted' in unsafe.stderr, unsafe.stderr
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "PodDisruptionBudget", "Service"} <= kinds
    assert kinds >= RBAC_KINDS


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_is_hardened_and_probed(kube: testenv.Cluster, overlay: str) -> None:
    docs = _render(kube, overlay)
    deployments = _of(docs, "Deployment")
    assert deployments
    pdbs = _of(docs, "PodDisruptionBudget")
    for dep in deployments:
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "command" not in container, "a command would bypass the image's umask entrypoint"
        assert container["args"] == ["operator"]
        assert container["livenessProbe"] and container["readinessProbe"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        env = _env(container)
        assert env["PMSCTL_LEADER_ELECT"] == "true"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["PMSCTL_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/pmsctl", "/tmp"} <= mounts
        labels = spec["template"]["metadata"]["labels"]
        covering = [
            p
            for p in pdbs
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
            and p["spec"]["selector"]["matchLabels"].items()
            >= spec["selector"]["matchLabels"].items()
        ]
        assert len(covering) == 1, f"{dep['metadata']['name']}: PDBs {covering}"


@pytest.mark.kube
def test_each_shard_has_its_own_selector_lease_volume_and_services(
    kube: testenv.Cluster,
) -> None:
    docs = _render(kube, "sharded")
    deployments = _of(docs, "Deployment")
    assert len(deployments) == 2
    selectors, leases, claims, match = set(), set(), set(), []
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        env = _env(pod["containers"][0])
        selectors.add(env["PMSCTL_SELECTOR"])
        leases.add(env["PMSCTL_LEADER_ELECTION_ID"])
        (claim,) = [
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        ]
        claims.add(claim)
        match.append(dep["spec"]["selector"]["matchLabels"])
        # The spread counts every shard's pods: its selector has no per-shard label.
        for constraint in pod["topologySpreadConstraints"]:
            assert "matchLabels" not in constraint["labelSelector"]
    assert selectors == {"shard=a", "shard=b"}
    assert leases == {"pmsctl-operator-shard-a", "pmsctl-operator-shard-b"}
    assert claims == {p["metadata"]["name"] for p in _of(docs, "PersistentVolumeClaim")}
    assert len(claims) == 2
    assert match[0] != match[1], "each Deployment must select only its own shard's pod"
    services = _of(docs, "Service")
    assert len(services) == 4
    for svc in services:
        shard = svc["spec"]["selector"]["pmsctl.dental.dev/shard"]
        assert svc["metadata"]["name"].endswith(f"-shard-{shard}")
    assert len(_of(docs, "ServiceAccount")) == 1, "one identity and one RBAC for all shards"


#: (verb, resource, extra kubectl args): what the operator's ServiceAccount must be allowed.
MUST = [
    ("get", PWB, ["-A"]),
    ("list", PWB, ["-A"]),
    ("watch", PWB, ["-A"]),
    ("patch", PWB, ["-n", "dental-practices"]),
    ("patch", PWB, ["--subresource=status", "-n", "dental-practices"]),
    ("get", "secrets", ["-n", "dental-practices"]),
    ("watch", "secrets", ["-A"]),
    ("create", "events", ["-n", "dental-practices"]),
    ("create", "events.events.k8s.io", ["-n", "dental-practices"]),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", []),
    ("list", "namespaces", []),
    ("get", "leases.coordination.k8s.io", ["-n", "{ns}"]),
    ("create", "leases.coordination.k8s.io", ["-n", "{ns}"]),
    ("update", "leases.coordination.k8s.io", ["-n", "{ns}"]),
]
#: And what it must not.
MUST_NOT = [
    ("delete", "secrets", ["-n", "dental-practices"]),
    ("create", "secrets", ["-n", "dental-practices"]),
    ("update", "secrets", ["-n", "dental-practices"]),
    ("patch", "secrets", ["-n", "{ns}"]),
    ("list", "pods", ["-A"]),
    ("get", "pods", ["-n", "{ns}"]),
    ("create", "pods", ["-n", "{ns}"]),
    ("get", "configmaps", ["-n", "dental-practices"]),
    ("create", PWB, ["-n", "dental-practices"]),
    ("update", PWB, ["-n", "dental-practices"]),
    ("update", PWB, ["--subresource=status", "-n", "dental-practices"]),
    ("delete", PWB, ["-n", "dental-practices"]),
    ("deletecollection", PWB, ["-n", "dental-practices"]),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", []),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", []),
    ("delete", "namespaces", []),
    ("get", "leases.coordination.k8s.io", ["-n", "kube-system"]),
    ("update", "leases.coordination.k8s.io", ["-n", "dental-practices"]),
    ("delete", "leases.coordination.k8s.io", ["-n", "{ns}"]),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", []),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", []),
    ("impersonate", "serviceaccounts", ["-n", "{ns}"]),
    ("create", "serviceaccounts/token", ["-n", "{ns}"]),
    ("delete", "events", ["-n", "dental-practices"]),
]


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_account_can_do_what_it_needs_and_nothing_more(
    kube: testenv.Cluster, system_namespace: str, overlay: str
) -> None:
    docs = _render(kube, overlay)
    kube.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump_all([d for d in docs if d["kind"] in RBAC_KINDS])
    )
    (sa,) = _of(docs, "ServiceAccount")
    ns, name = sa["metadata"]["namespace"], sa["metadata"]["name"]
    assert ns == system_namespace
    # Every Deployment runs as that ServiceAccount.
    for dep in _of(docs, "Deployment"):
        assert dep["spec"]["template"]["spec"]["serviceAccountName"] == name

    def can(verb: str, resource: str, extra: list[str]) -> str:
        args = [a.replace("{ns}", ns) for a in extra]
        result = kube.kubectl(
            "auth", "can-i", verb, resource, *args, f"--as=system:serviceaccount:{ns}:{name}",
            check=False,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        return result.stdout.strip()

    wrong = [f"cannot {v} {r} {' '.join(e)}" for v, r, e in MUST if can(v, r, e) != "yes"]
    wrong += [f"can {v} {r} {' '.join(e)}" for v, r, e in MUST_NOT if can(v, r, e) != "no"]
    assert not wrong, wrong
