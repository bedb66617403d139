"""The operator's webhooks (reconciler.kube.webhooks): conversion and validating admission.

Real: the review handlers; the aiohttp HTTPS server with a self-signed CA, called over loopback
by the real kube-apiserver from the testenv (`kube` tests), which converts PracticeWritebacks
through it and sends it AdmissionReviews; kubectl for every write and read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import wait_until

from reconciler.api.convert import V1, V1_FIELDS, V1ALPHA1
from reconciler.kube import webhooks


class FakeLookup:
    """Practices by id and the Secrets that exist, as plain data."""

    def __init__(self, practices: dict[str, list[str]], secrets: set[tuple[str, str]]) -> None:
        self.practices, self.secrets = practices, secrets

    def practices_with_id(self, practice_id: str) -> list[str]:
        return self.practices.get(practice_id, [])

    def secret_exists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.secrets


def _body(name: str, practice_id: str, api_version: str = V1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "PracticeWriteback",
        "metadata": {"name": name},
        "spec": {
            "practiceId": practice_id,
            "pms": {
                "type": "OpenDental",
                "url": "https://pms.example/api/v1",
                "credentialsSecretRef": {"name": f"{name}-pms"},
            },
            "providerId": "1",
            **spec,
        },
    }


def _admission(obj: dict[str, Any], namespace: str, operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": operation,
            "namespace": namespace,
            "name": obj["metadata"]["name"],
            "object": obj,
        },
    }


def test_a_conversion_review_converts_every_object_and_echoes_the_uid() -> None:
    objects = [_body("a", "a", V1ALPHA1, patientProfilePhotos=True), _body("b", "b", V1ALPHA1)]
    review = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "ConversionReview",
        "request": {"uid": "abc", "desiredAPIVersion": V1, "objects": objects},
    }
    response = webhooks.review_conversion(review)["response"]
    assert response["uid"] == "abc" and response["result"] == {"status": "Success"}
    assert [o["apiVersion"] for o in response["convertedObjects"]] == [V1, V1]
    assert "patientProfilePhotos" not in response["convertedObjects"][0]["spec"]


def test_a_conversion_to_an_unknown_version_fails_with_a_message() -> None:
    review = {
        "request": {
            "uid": "x",
            "desiredAPIVersion": "writeback.dental.dev/v9",
            "objects": [_body("a", "a")],
        }
    }
    response = webhooks.review_conversion(review)["response"]
    assert response["result"]["status"] == "Failure"
    assert "writeback.dental.dev/v9" in response["result"]["message"]


def test_admission_refuses_a_second_resource_with_the_practice_id_naming_the_first() -> None:
    lookup = FakeLookup({"acme": ["clinics/acme-main"]}, {("clinics", "acme-copy-pms")})
    response = webhooks.review_admission(_admission(_body("acme-copy", "acme"), "clinics"), lookup)[
        "response"
    ]
    assert response["allowed"] is False and response["uid"] == "u-1"
    assert "clinics/acme-main" in response["status"]["message"]
    assert "warnings" not in response


def test_admission_lets_a_resource_update_itself_and_warns_about_a_missing_secret() -> None:
    lookup = FakeLookup({"acme": ["clinics/acme"]}, set())
    review = _admission(_body("acme", "acme"), "clinics", operation="UPDATE")
    response = webhooks.review_admission(review, lookup)["response"]
    assert response["allowed"] is True
    assert response["warnings"] == [
        "spec.pms.credentialsSecretRef: Secret clinics/acme-pms does not exist yet; "
        "the practice stays not Ready until it does"
    ]


# --- against the API server --------------------------------------------------------------------


def _apply(kube: testenv.Cluster, obj: dict[str, Any], namespace: str) -> Any:
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj), check=False)


def _get(kube: testenv.Cluster, name: str, namespace: str, version: str) -> dict[str, Any]:
    resource = f"practicewritebacks.{version.split('/')[1]}.writeback.dental.dev"
    out = kube.kubectl("get", resource, name, "-n", namespace, "-o", "json").stdout
    got: dict[str, Any] = json.loads(out)
    return got


@pytest.mark.kube
def test_created_as_v1alpha1_reads_as_v1_and_back(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str
) -> None:
    alpha = _body(
        "acme",
        "acme-conv",
        V1ALPHA1,
        documents={"accountStatement": {"readFrom": "Statements"}},
        sync={"patients": {"enabled": True}},
        patientProfilePhotos=True,
    )
    assert _apply(kube, alpha, kube_namespace).returncode == 0
    v1 = _get(kube, "acme", kube_namespace, V1)
    assert v1["apiVersion"] == V1
    assert v1["spec"]["documents"]["accountStatement"]["readFrom"] == ["Statements"]
    assert v1["spec"]["sync"]["patients"]["profilePhotos"] is True
    assert "patientProfilePhotos" not in v1["spec"]
    back = _get(kube, "acme", kube_namespace, V1ALPHA1)
    assert back["spec"]["documents"]["accountStatement"]["readFrom"] == "Statements"
    assert back["spec"]["patientProfilePhotos"] is True


@pytest.mark.kube
def test_v1_only_data_survives_a_v1alpha1_client(
    kube: testenv.Cluster, crd_installed: list[str], kube_namespace: str
) -> None:
    v1 = _body(
        "acme",
        "acme-v1only",
        documents={"insuranceVerification": {"readFrom": ["Cards", "Old Cards"]}},
    )
    assert _apply(kube, v1, kube_namespace).returncode == 0
    alpha = _get(kube, "acme", kube_namespace, V1ALPHA1)
    assert alpha["spec"]["documents"]["insuranceVerification"]["readFrom"] == "Cards"
    assert V1_FIELDS in alpha["metadata"]["annotations"]
    # a v1alpha1 client changes something else and writes the whole object back
    alpha["spec"]["displayName"] = "Acme"
    kube.kubectl("replace", "-f", "-", input=json.dumps(alpha))
    again = _get(kube, "acme", kube_namespace, V1)
    assert again["spec"]["displayName"] == "Acme"
    assert again["spec"]["documents"]["insuranceVerification"]["readFrom"] == ["Cards", "Old Cards"]
    assert V1_FIELDS not in (again["metadata"].get("annotations") or {})


@pytest.fixture
def admission(kube: testenv.Cluster, kube_namespace: str) -> Iterator[testenv.WebhookThread]:
    """The admission webhook registered for PracticeWritebacks in the test's namespace only
    (by a namespaceSelector on a label the test gives it), the way deploy/webhooks/ registers
    it, but by URL; unregistered afterwards."""
    server = testenv.WebhookThread(lookup=webhooks.KubeLookup(kube.api_client)).start()
    kube.kubectl("label", "namespace", kube_namespace, f"pmsctl-test-admission={kube_namespace}")
    config = yaml.safe_load(
        (testenv.REPO / "deploy" / "webhooks" / "validating.yaml").read_text(encoding="utf-8")
    )
    config["metadata"] = {"name": kube_namespace}
    hook = config["webhooks"][0]
    hook["clientConfig"] = {
        "url": server.base_url + webhooks.VALIDATE_PATH,
        "caBundle": server.tls.ca_bundle(),
    }
    hook["namespaceSelector"] = {"matchLabels": {"pmsctl-test-admission": kube_namespace}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        yield server
    finally:
        server.stop()
        kube.kubectl("delete", "validatingwebhookconfiguration", kube_namespace, check=False)


@pytest.mark.kube
def test_admission_refuses_a_duplicate_practice_id_naming_the_other_resource(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    admission: testenv.WebhookThread,
) -> None:
    first = _apply(kube, _body("acme-main", "acme-dup"), kube_namespace)
    assert first.returncode == 0, first.stderr
    assert f"Secret {kube_namespace}/acme-main-pms does not exist yet" in first.stderr  # a warning
    second = _apply(kube, _body("acme-copy", "acme-dup"), kube_namespace)
    assert second.returncode != 0
    assert f"already used by PracticeWriteback {kube_namespace}/acme-main" in second.stderr
    # an update of the first one is not a duplicate of itself
    assert (
        _apply(kube, _body("acme-main", "acme-dup", suspend=True), kube_namespace).returncode == 0
    )


@pytest.mark.kube
def test_a_down_webhook_server_blocks_neither_other_kinds_nor_practices(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    admission: testenv.WebhookThread,
) -> None:
    admission.stop()
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "front-desk"},
        "data": {"hours": "8-17"},
    }
    assert _apply(kube, config_map, kube_namespace).returncode == 0
    # failurePolicy: Ignore: the reconcile-time DuplicatePracticeId check is the backstop
    result = _apply(kube, _body("acme", "acme-down"), kube_namespace)
    assert result.returncode == 0, result.stderr


@pytest.mark.kube
def test_the_operator_serves_conversion_with_a_self_signed_ca_it_writes_into_the_crd(
    kube: testenv.Cluster,
    crd_installed: list[str],
    webhook_server: testenv.WebhookThread,
    kube_namespace: str,
    tmp_path: Path,
) -> None:
    port = testenv.free_port()
    url = f"https://127.0.0.1:{port}"
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "reconciler",
            "--namespace", kube_namespace,
            "--sink", f"file:{tmp_path / 'events.jsonl'}",
            "--state-db", str(tmp_path / "state.db"),
            "--probe-port", "0", "--metrics-port", "0", "--writeback-port", "0",
            "--webhook-self-signed", "--webhook-url", url, "--webhook-port", str(port),
        ],
        env=kube.environ({"PYTHONPATH": str(testenv.REPO)}),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    try:

        def pointed_at_the_operator() -> bool:
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()
            out = kube.kubectl("get", "crd", webhooks.CRD_NAME, "-o", "json").stdout
            config = json.loads(out)["spec"]["conversion"]["webhook"]["clientConfig"]
            return bool(config.get("url") == url + webhooks.CONVERT_PATH)

        # from here on the API server converts through the operator only
        wait_until(pointed_at_the_operator, 60, "the operator's URL in the CRD", step=0.25)
        alpha = _body("acme", "acme-operator", V1ALPHA1, patientProfilePhotos=False)
        alpha["spec"]["sync"] = {"patients": {"enabled": False}}
        result = _apply(kube, alpha, kube_namespace)
        assert result.returncode == 0, result.stderr
        v1 = _get(kube, "acme", kube_namespace, V1)
        assert v1["spec"]["sync"]["patients"] == {
            "enabled": False,
            "interval": "30s",  # the API server's default
            "profilePhotos": False,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        # the session's webhook server takes over again
        folder = tmp_path / "crds-again"
        folder.mkdir()
        testenv.install_crds(
            kube, testenv.crds_with_webhook_url(testenv.REPO / "crds", folder, webhook_server)
        )
