"""The generated CRD on a real API server, and the API server's verdicts beside `pmsctl validate`.

Real: etcd, kube-apiserver and kubectl from the testenv (`tests/testenv.py`, or the cluster named
by `PMSCTL_TEST_KUBECONFIG`), the CRD from `crds/`, the examples in `practices/`, the schema
cases in `tests/cases/{valid,invalid}/` and `reconciler.api.validate` (what `pmsctl validate` runs).
Nothing is faked. The comparison is the point: the JSON Schema (what `pmsctl validate` checks
at commit time) and the CRD's OpenAPI schema plus CEL rules (what the API server checks at
`kubectl apply` time) must give the same verdict on every case, otherwise a file passes review
and then fails in production, or the other way round.

Documents reach the API server exactly as `kubectl apply --server-side` sends them, with strict
field validation (kubectl's default `--validate=strict`). A few cases are rejected by kubectl
itself before a request is sent (no name, an apiVersion the server does not serve); that is
still the user's tool saying no, and the test accepts it as a rejection.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import wait_until

from reconciler.api import validate

pytestmark = pytest.mark.kube

PRACTICES = testenv.REPO / "practices"
CASES = testenv.REPO / "tests" / "cases"
CRD_NAME = "practicewritebacks.writeback.dental.dev"
EXPECT = re.compile(r"^# expect: (\S+) @ (\d+)$", re.MULTILINE)


def _files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def _crd() -> dict[str, Any]:
    docs = [
        d
        for p in _files(testenv.REPO / "crds")
        for d in testenv.load_documents(p)
        if d.get("kind") == "CustomResourceDefinition" and d["metadata"]["name"] == CRD_NAME
    ]
    assert len(docs) == 1, f"crds/ should hold exactly one {CRD_NAME}"
    return docs[0]


def _in_namespace(path: Path, namespace: str) -> str:
    """The file's documents with metadata.namespace set to the test's namespace."""
    docs = testenv.load_documents(path)
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace
    return yaml.safe_dump_all(docs, sort_keys=False)


def _pwb(name: str, namespace: str, **spec: Any) -> str:
    body = {
        "apiVersion": "writeback.dental.dev/v1alpha1",
        "kind": "PracticeWriteback",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "practiceId": name,
            "pms": {
                "type": "OpenDental",
                "url": "https://pms.example.com/api/v1",
                "credentialsSecretRef": {"name": f"{name}-pms"},
            },
            "providerId": "7",
            **spec,
        },
    }
    return yaml.safe_dump(body, sort_keys=False)


def _squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def cases_namespace(kube: testenv.Cluster, crd_installed: list[str]) -> Iterator[str]:
    """One namespace for every dry-run case (nothing is stored, so they cannot collide)."""
    from kubernetes import client

    name = testenv.namespace_name("schema-cases")
    client.CoreV1Api(kube.api_client).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    try:
        yield name
    finally:
        testenv.delete_namespace(kube, name)


# --------------------------------------------------------------------------------------------
# The CRD itself


def test_the_generated_crd_is_established_with_its_names_accepted(
    kube: testenv.Cluster, crd_installed: list[str]
) -> None:
    assert CRD_NAME in crd_installed
    crd = json.loads(kube.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions.get("Established") == "True", crd["status"]
    assert conditions.get("NamesAccepted") == "True", crd["status"]
    accepted = crd["status"]["acceptedNames"]
    assert accepted["kind"] == "PracticeWriteback"
    assert "pwb" in accepted["shortNames"]
    resources = kube.kubectl("api-resources", "--api-group=writeback.dental.dev", "-o", "wide")
    # discovery lists the preferred version: v1, the storage version (v1alpha1 is deprecated)
    assert re.search(
        r"practicewritebacks\s+pwb\s+writeback\.dental\.dev/v1\s+true", resources.stdout
    )


# --------------------------------------------------------------------------------------------
# The examples in practices/


def test_practices_holds_an_example_for_every_pms() -> None:
    kinds = {
        doc["spec"]["pms"]["type"] for p in _files(PRACTICES) for doc in testenv.load_documents(p)
    }
    assert kinds == {"OpenDental", "Eaglesoft", "Dentrix"}


@pytest.mark.parametrize("path", _files(PRACTICES), ids=[p.stem for p in _files(PRACTICES)])
def test_every_practice_example_applies_server_side_and_reapplying_changes_nothing(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str, path: Path
) -> None:
    manifest = _in_namespace(path, kube_namespace)
    applied = kube.kubectl("apply", "--server-side", "--validate=strict", "-f", "-", input=manifest)
    assert "serverside-applied" in applied.stdout
    names = [d["metadata"]["name"] for d in testenv.load_documents(path)]
    # read back in the file's own version (the API server converts from the stored v1)
    versions = {
        d["metadata"]["name"]: d["apiVersion"].split("/")[1] for d in testenv.load_documents(path)
    }
    stored = {
        name: json.loads(
            kube.kubectl(
                "get",
                f"practicewritebacks.{versions[name]}.writeback.dental.dev",
                name,
                "-n",
                kube_namespace,
                "-o",
                "json",
            ).stdout
        )
        for name in names
    }
    for doc in testenv.load_documents(path):
        # What the file says is what the API server stored (no field pruned or rewritten).
        stored_spec = stored[doc["metadata"]["name"]]["spec"]
        assert {k: stored_spec[k] for k in doc["spec"]} == doc["spec"]
    kube.kubectl("apply", "--server-side", "--validate=strict", "-f", "-", input=manifest)
    for name in names:
        again = json.loads(
            kube.kubectl("get", "pwb", name, "-n", kube_namespace, "-o", "json").stdout
        )
        assert again["metadata"]["resourceVersion"] == stored[name]["metadata"]["resourceVersion"]


# --------------------------------------------------------------------------------------------
# The schema cases: the API server and pmsctl validate agree


def _case_paths() -> list[Path]:
    return _files(CASES / "valid") + _files(CASES / "invalid")


def test_the_case_table_is_there_to_compare() -> None:
    assert len(_files(CASES / "valid")) >= 10
    assert len(_files(CASES / "invalid")) >= 40


@pytest.mark.parametrize(
    "path", _case_paths(), ids=[f"{p.parent.name}/{p.stem}" for p in _case_paths()]
)
def test_the_api_server_and_pmsctl_validate_give_the_same_verdict(
    kube: testenv.Cluster, cases_namespace: str, path: Path
) -> None:
    text = path.read_text(encoding="utf-8")
    answer = kube.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        cases_namespace,
        "-f",
        "-",
        input=text,
        check=False,
    )
    api_accepts = answer.returncode == 0
    api_says = (answer.stderr or answer.stdout).strip()
    _, problems = validate.validate_text(text, str(path))
    pmsctl_accepts = not problems
    pmsctl_says = "\n".join(str(p) for p in problems) or "(no problem)"
    assert api_accepts == pmsctl_accepts, (
        f"{path.relative_to(testenv.REPO)}: the API server "
        f"{'accepts' if api_accepts else 'rejects'} it, pmsctl validate "
        f"{'accepts' if pmsctl_accepts else 'rejects'} it.\n"
        f"API server (kubectl apply --server-side --dry-run=server):\n{api_says}\n"
        f"pmsctl validate:\n{pmsctl_says}"
    )
    # The table's own promise: valid/ is accepted and invalid/ rejected (by both, as above).
    assert api_accepts == (path.parent.name == "valid"), api_says


@pytest.mark.parametrize(
    "path", _files(CASES / "invalid"), ids=[p.stem for p in _files(CASES / "invalid")]
)
def test_an_api_server_rejection_names_the_field_the_case_expects(
    kube: testenv.Cluster, cases_namespace: str, path: Path
) -> None:
    text = path.read_text(encoding="utf-8")
    answer = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "-n", cases_namespace, "-f", "-",
        input=text, check=False,
    )  # fmt: skip
    assert answer.returncode != 0
    message = answer.stderr.strip()
    if message.startswith("error:"):
        # kubectl refused before sending (no name, an unserved apiVersion): no server message.
        expected = [p for p, _ in EXPECT.findall(text)]
        assert set(expected) <= {"metadata.name", "apiVersion"}, message
        return
    for field_path, _line in EXPECT.findall(text):
        assert field_path in message, (
            f"{path.name}: pmsctl validate reports {field_path}; the API server says:\n{message}"
        )


# --------------------------------------------------------------------------------------------
# Unknown fields


@pytest.mark.parametrize(
    ("where", "extra"),
    [
        ("spec", {"paused": True}),
        ("spec.sync.patients", {"sync": {"patients": {"enabled": True, "every": "30s"}}}),
        ("spec.pms", {"pms": {"type": "OpenDental", "url": "https://pms.example.com/api/v1",
                              "credentialsSecretRef": {"name": "x-pms"}, "password": "hunter2"}}),
    ],
    ids=["spec", "nested-sync", "pms-password"],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["client-side", "server-side"])
def test_kubectl_apply_rejects_an_unknown_field_instead_of_pruning_it(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    where: str,
    extra: dict[str, Any],
    mode: str,
) -> None:
    name = "unknown-field"
    manifest = _pwb(name, kube_namespace, **extra)
    unknown = next(k for k in _leaf_keys(extra) if k in {"paused", "every", "password"})
    args = ["apply", "-f", "-"] + (["--server-side"] if mode == "server-side" else [])
    answer = kube.kubectl(*args, input=manifest, check=False)
    assert answer.returncode != 0, f"kubectl apply accepted an unknown field:\n{answer.stdout}"
    assert f"{where}.{unknown}" in answer.stderr, answer.stderr
    missing = kube.kubectl("get", "pwb", name, "-n", kube_namespace, check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr, "nothing may be stored"


def _leaf_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _leaf_keys(inner)


def test_an_unknown_top_level_field_is_rejected_too(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str
) -> None:
    manifest = _pwb("top-level", kube_namespace) + "specs: {practiceId: typo}\n"
    answer = kube.kubectl("apply", "--server-side", "-f", "-", input=manifest, check=False)
    assert answer.returncode != 0
    assert "specs" in answer.stderr, answer.stderr


# --------------------------------------------------------------------------------------------
# What kubectl shows


def test_kubectl_get_pwb_shows_pms_provider_ready_reason_and_age(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str
) -> None:
    kube.kubectl("apply", "--server-side", "-f", "-", input=_pwb("columns", kube_namespace))
    before = _table(kube.kubectl("get", "pwb", "-n", kube_namespace).stdout)
    assert list(before[0]) == ["NAME", "PMS", "PROVIDER", "READY", "REASON", "AGE"]
    assert before[0] | {"AGE": ""} == {
        "NAME": "columns", "PMS": "OpenDental", "PROVIDER": "7", "READY": "", "REASON": "",
        "AGE": "",
    }  # fmt: skip
    assert re.fullmatch(r"\d+s", before[0]["AGE"])

    status = {
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ProviderInactive",
                    "message": "provider 7 is inactive in the PMS",
                    "lastTransitionTime": "2026-11-26T09:00:00Z",
                    "observedGeneration": 1,
                },
                {
                    "type": "PMSReachable",
                    "status": "True",
                    "reason": "Connected",
                    "message": "Open Dental answered",
                    "lastTransitionTime": "2026-11-26T09:00:00Z",
                    "observedGeneration": 1,
                },
            ],
        }
    }
    kube.kubectl(
        "patch", "pwb", "columns", "-n", kube_namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    after = _table(kube.kubectl("get", "pwb", "-n", kube_namespace).stdout)
    assert after[0]["READY"] == "False" and after[0]["REASON"] == "ProviderInactive"
    # The short name's category lists it too (`kubectl get dental`).
    by_category = kube.kubectl("get", "dental", "-n", kube_namespace, "-o", "name").stdout
    assert by_category.strip() == "practicewriteback.writeback.dental.dev/columns"


def _table(text: str) -> list[dict[str, str]]:
    """kubectl's table output as rows keyed by column title (cells cut at the title offsets)."""
    header, *rows = text.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    titles = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {title: row[a:b].strip() for title, (a, b) in zip(titles, bounds, strict=True)}
        for row in rows
    ]


def _explain(kube: testenv.Cluster, field: str) -> str:
    # kubectl explain reads the OpenAPI v3 document, which the API server republishes a moment
    # after a CRD becomes Established; allow it that moment.
    answers = []

    def explained() -> bool:
        answers.append(kube.kubectl("explain", field, check=False))
        return answers[-1].returncode == 0

    with contextlib.suppress(AssertionError):
        wait_until(explained, 20, f"kubectl explain {field}", step=0.5)
    answer = answers[-1]
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


def test_kubectl_explain_pwb_spec_sync_shows_the_schemas_descriptions(
    kube: testenv.Cluster, crd_installed: list[str]
) -> None:
    # kubectl explain shows the preferred version: the storage version
    version = next(v for v in _crd()["spec"]["versions"] if v["storage"])
    schema = version["schema"]["openAPIV3Schema"]
    sync = schema["properties"]["spec"]["properties"]["sync"]
    out = _squash(_explain(kube, "pwb.spec.sync"))
    assert "KIND: PracticeWriteback" in out
    assert f"DESCRIPTION: {_squash(sync['description'])}" in out
    for name, child in sync["properties"].items():
        assert child.get("description"), f"spec.sync.{name} has no description in the CRD"
        assert f"{name} <Object> {_squash(child['description'])}" in out, (name, out)
    interval = _squash(_explain(kube, "pwb.spec.sync.patients.interval"))
    described = sync["properties"]["patients"]["properties"]["interval"]["description"]
    assert _squash(described) in interval
