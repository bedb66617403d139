"""deploy/: every kustomize overlay renders with the testenv's kubectl, the real API server
accepts all of it (`kubectl apply --dry-run=server`, with Pod Security "restricted" warning on
the namespace), each shard of the sharded overlay has its own selector, Lease and volume, the
production overlay keeps its state in PostgreSQL with no credential in the manifests, and the
RBAC, applied for real, lets the rendered ServiceAccount do what the operator needs and
nothing it must not (`kubectl auth can-i --as=system:serviceaccount:NS:SA`).

The production overlay also holds cert-manager's and the Prometheus Operator's kinds. The
testenv has neither, so `third_party_crds.yaml` (CRD shells: the kinds, no schema, no
controller) is installed for the dry run instead of leaving those objects out of it: the API
server then still checks that each kind exists at that version and scope and that its namespace
does, and the tests here check the fields that tie them to the operator."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import testenv
import yaml

from reconciler.cli import main

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
PWB = "practicewritebacks.writeback.dental.dev"
THIRD_PARTY_CRDS = Path(__file__).resolve().parent / "third_party_crds.yaml"
#: Replicas per Deployment: one SQLite writer per shard, or three sharing the fleet on PostgreSQL.
REPLICAS = {"dev": 1, "sharded": 1, "production": 3}
#: The operator's arguments: production shares the fleet instead of electing a leader.
ARGS = {
    "dev": ["operator"],
    "sharded": ["operator"],
    "production": ["operator", "--share", "--no-leader-elect"],
}


def test_the_overlays_are_dev_production_and_sharded() -> None:
    # Each overlay is listed here, so one added without its tests (REPLICAS, the production
    # checks below) fails instead of being dry-run with the assumptions of another.
    assert OVERLAYS == ["dev", "production", "sharded"]
    assert set(REPLICAS) == set(OVERLAYS)


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


@pytest.fixture(scope="module")
def third_party_crds(kube: testenv.Cluster) -> Iterator[list[str]]:
    """The CRD shells of `third_party_crds.yaml`, Established, deleted after the module."""
    docs = [d for d in yaml.safe_load_all(THIRD_PARTY_CRDS.read_text()) if d]
    names = [d["metadata"]["name"] for d in docs]
    kube.kubectl("apply", "--server-side", "-f", str(THIRD_PARTY_CRDS))
    try:
        kube.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{n}" for n in names],
        )  # fmt: skip
        yield names
    finally:
        kube.kubectl("delete", "-f", str(THIRD_PARTY_CRDS), "--ignore-not-found", check=False)


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_accepted_by_the_api_server(
    kube: testenv.Cluster, system_namespace: str, third_party_crds: list[str], overlay: str
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
        assert spec["replicas"] == REPLICAS[overlay]
        if overlay == "production":  # --share: no Lease to wait for, so a rollout finishes
            assert spec["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            }
        else:  # under a Lease a new pod is Ready only once it leads: a rollout would hang
            assert spec["strategy"]["type"] == "Recreate"
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
        assert container["args"] == ARGS[overlay]
        assert container["livenessProbe"] and container["readinessProbe"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        env = _env(container)
        assert env["PMSCTL_LEADER_ELECT"] == "true"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["PMSCTL_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/pmsctl", "/tmp"} <= mounts
        (state,) = [v for v in pod["volumes"] if v["name"] == "state"]
        if overlay == "production":  # the state is in the database; the folder is scratch
            assert "emptyDir" in state and "persistentVolumeClaim" not in state
        else:
            assert state["persistentVolumeClaim"]["claimName"]
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


@pytest.mark.kube
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_ships_a_credential(
    kube: testenv.Cluster, overlay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Secrets are created in the cluster (the commands are in each overlay's kustomization);
    # the manifests only name them.
    docs = _render(kube, overlay)
    assert not _of(docs, "Secret")
    # pmsctl's own check, as a CI job would run it on the rendered overlay.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(yaml.safe_dump_all(docs)))
        code = main(["validate", "--skip-other-kinds", "-"])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    for cm in _of(docs, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            if value.startswith(("postgresql://", "postgres://")):
                assert urlsplit(value).password is None, f"{cm['metadata']['name']}: {key}"


@pytest.mark.kube
def test_production_keeps_its_state_in_postgresql(kube: testenv.Cluster) -> None:
    docs = _render(kube, "production")
    assert not _of(docs, "PersistentVolumeClaim")
    (dep,) = _of(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    # The store's URL and the sink come from the generated ConfigMap; an env entry of the same
    # name would win over envFrom, so none is left, and nothing points at a SQLite file.
    (source,) = container["envFrom"]
    (config,) = [
        c for c in _of(docs, "ConfigMap")
        if c["metadata"]["name"] == source["configMapRef"]["name"]
    ]  # fmt: skip
    settings = config["data"]
    for name in ("PMSCTL_STORE", "PMSCTL_SINK", "PMSCTL_STATE_DB", "PMSCTL_WRITEBACK_DB"):
        assert name not in env, name
    store = urlsplit(settings["PMSCTL_STORE"])
    assert store.scheme == "postgresql" and store.username and store.password is None
    # Events go over HTTP: a file on an emptyDir would vanish with the pod while the cursor,
    # in the database, says they were delivered.
    assert urlsplit(settings["PMSCTL_SINK"]).scheme == "https"
    # The password is a file from the Secret pmsctl-db, mounted read-only.
    password = Path(env["PMSCTL_STORE_PASSWORD_FILE"])
    (mount,) = [
        m for m in container["volumeMounts"] if password.is_relative_to(m["mountPath"])
    ]  # fmt: skip
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "pmsctl-db"
    # The CA named in the URL is in the same Secret.
    assert Path(parse_qs(store.query)["sslrootcert"][0]).parent == password.parent
    # Three replicas sharing the practices (the base's leader election turned off by the
    # flag, which wins over its variable), never two on one node.
    assert dep["spec"]["replicas"] == 3
    assert container["args"] == ["operator", "--share", "--no-leader-elect"]
    hostname = [
        c for c in pod["topologySpreadConstraints"]
        if c["topologyKey"] == "kubernetes.io/hostname"
    ]  # fmt: skip
    assert [c["whenUnsatisfiable"] for c in hostname] == ["DoNotSchedule"]
    # Keep one pod; every replica serves the writeback API and is Ready, so a drain evicts any.
    (pdb,) = _of(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "minAvailable": 1,
        "selector": dep["spec"]["selector"],
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


@pytest.mark.kube
def test_production_has_the_webhooks_and_the_monitoring(kube: testenv.Cluster) -> None:
    docs = _render(kube, "production")
    (dep,) = _of(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    services = {s["metadata"]["name"]: s for s in _of(docs, "Service")}
    # cert-manager's Certificate names the webhook Service and fills the Secret the operator
    # serves the webhooks from; the webhook configuration gets its CA from that Certificate.
    (cert,) = _of(docs, "Certificate")
    (issuer,) = _of(docs, "Issuer")
    assert cert["spec"]["issuerRef"] == {"name": issuer["metadata"]["name"], "kind": "Issuer"}
    ns = cert["metadata"]["namespace"]
    assert f"pmsctl-webhooks.{ns}.svc" in cert["spec"]["dnsNames"]
    assert "pmsctl-webhooks" in services
    cert_dir = _env(container)["PMSCTL_WEBHOOK_CERT_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cert_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == cert["spec"]["secretName"]
    (webhooks,) = _of(docs, "ValidatingWebhookConfiguration")
    assert webhooks["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{ns}/{cert['metadata']['name']}"
    )
    # The ServiceMonitor scrapes the metrics Service's ports, in the operator's namespace.
    (monitor,) = _of(docs, "ServiceMonitor")
    selected = [
        s for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]  # fmt: skip
    assert [s["metadata"]["name"] for s in selected] == ["pmsctl-metrics"]
    ports = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [ns]
    assert _of(docs, "PrometheusRule")


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
