"""`pmsctl migrate`: practice files from v1alpha1 to v1 (reconciler.review.migrate), and the
stored objects of a cluster (`--cluster`, reconciler.kube.storage).

Real: the example practices and a commented multi-document file, converted byte for byte into
the golden files in tests/golden/; files in a temporary folder rewritten by `pmsctl migrate`
(the CLI entry point); `pmsctl validate`'s checks and PracticeSpec on both sides. The cluster
test runs the upgrade of docs/versions.md against the real API server: objects stored as
v1alpha1 before the upgrade, the new CRD applied, `pmsctl migrate --cluster` twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml

from reconciler.api import crdgen, validate
from reconciler.api.convert import V1, V1ALPHA1
from reconciler.api.spec import PracticeSpec
from reconciler.cli import main
from reconciler.review.migrate import migrate_text

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
PRACTICES = sorted((ROOT / "practices").glob("*.yaml"))


@pytest.mark.parametrize("path", PRACTICES, ids=[p.name for p in PRACTICES])
def test_the_example_practices_migrate_to_their_golden_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    result = migrate_text(text, path.name)
    assert result.text == (GOLDEN / "practices" / path.name).read_text(encoding="utf-8")
    assert result.changed and result.documents == 1 and result.notes == ()


def test_a_commented_file_migrates_to_its_golden_file_with_a_note() -> None:
    text = (GOLDEN / "commented.v1alpha1.yaml").read_text(encoding="utf-8")
    result = migrate_text(text, "commented.yaml")
    assert result.text == (GOLDEN / "commented.v1.yaml").read_text(encoding="utf-8")
    assert result.documents == 2  # the Secret and the practice already on v1 are left alone
    assert result.notes == (
        "commented.yaml: acme-south: dropped spec.patientProfilePhotos: true, which has no effect "
        "without sync.patients; set sync.patients.profilePhotos when you add the patient sync",
    )


@pytest.mark.parametrize(
    "path", [*PRACTICES, GOLDEN / "commented.v1alpha1.yaml"], ids=lambda p: p.name
)
def test_migrated_files_are_valid_v1_meaning_the_same_and_a_second_run_changes_nothing(
    path: Path,
) -> None:
    text = path.read_text(encoding="utf-8")
    migrated = migrate_text(text).text
    assert migrate_text(migrated).changed is False
    before, problems = validate.validate_text(text, "p.yaml", skip_other_kinds=True)
    after, problems_after = validate.validate_text(migrated, "p.yaml", skip_other_kinds=True)
    assert problems == problems_after == []
    assert [d.body["apiVersion"] for d in after] == [V1] * len(after)
    assert [d.spec() for d in after] == [d.spec() for d in before]


def test_cli_check_exits_1_until_the_folder_is_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "practices"
    shutil.copytree(ROOT / "practices", folder)
    assert main(["migrate", "--check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "would migrate 1 PracticeWriteback document(s) to v1" in out
    assert "3 file(s), 3 would change" in out
    assert [p.read_text() for p in sorted(folder.glob("*.yaml"))] == [
        p.read_text() for p in PRACTICES
    ]  # --check writes nothing
    assert main(["migrate", str(folder)]) == 0
    for path in sorted(folder.glob("*.yaml")):
        assert path.read_text() == (GOLDEN / "practices" / path.name).read_text()
    assert main(["migrate", "--check", str(folder)]) == 0
    assert "3 file(s), 0 would change" in capsys.readouterr().out
    assert main(["validate", str(folder)]) == 0


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["migrate"]) == 2
    assert main(["migrate", str(tmp_path / "missing")]) == 2
    assert main(["migrate", "--cluster", "--check"]) == 2


# --- the cluster -------------------------------------------------------------------------------


def _crd(storage_alpha: bool, webhook: testenv.WebhookThread, folder: Path) -> Path:
    """The generated CRD (converting through `webhook`), or, for "before the upgrade", the same
    CRD storing v1alpha1."""
    folder.mkdir(parents=True, exist_ok=True)
    testenv.crds_with_webhook_url(ROOT / "crds", folder, webhook)
    path = folder / crdgen.CRD_FILENAME
    crd = yaml.safe_load(path.read_text())
    if storage_alpha:
        for version in crd["spec"]["versions"]:
            version["storage"] = version["name"] == "v1alpha1"
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return folder


def _stored_versions(kube: testenv.Cluster) -> list[str]:
    out = kube.kubectl("get", "crd", "practicewritebacks.writeback.dental.dev", "-o", "json").stdout
    versions: list[str] = json.loads(out)["status"]["storedVersions"]
    return versions


@pytest.mark.kube
def test_objects_stored_before_the_upgrade_survive_it_and_migrate_cluster_rewrites_them(
    kube: testenv.Cluster,
    crd_installed: list[str],
    webhook_server: testenv.WebhookThread,
    kube_namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from reconciler.kube.storage import migrate_storage

    before = _crd(True, webhook_server, tmp_path / "before")
    after = _crd(False, webhook_server, tmp_path / "after")
    try:
        testenv.install_crds(kube, before)
        bodies: list[dict[str, Any]] = []
        for path in PRACTICES:
            body = yaml.safe_load(path.read_text())
            body["metadata"]["namespace"] = kube_namespace
            kube.kubectl("apply", "-f", "-", input=json.dumps(body))
            bodies.append(body)
        assert "v1alpha1" in _stored_versions(kube)

        testenv.install_crds(kube, after)  # the upgrade: v1 stored from now on
        for body in bodies:
            name = body["metadata"]["name"]
            got = json.loads(
                kube.kubectl(
                    "get",
                    f"practicewritebacks.v1.writeback.dental.dev/{name}",
                    "-n",
                    kube_namespace,
                    "-o",
                    "json",
                ).stdout
            )
            assert got["apiVersion"] == V1
            assert PracticeSpec.from_resource(got) == PracticeSpec.from_resource(body)

        assert migrate_storage(api_client=kube.api_client, progress=print) >= len(bodies)
        assert _stored_versions(kube) == ["v1"]
        assert "storedVersions: " in capsys.readouterr().out
        migrate_storage(api_client=kube.api_client, progress=print)  # a second run is harmless
        assert _stored_versions(kube) == ["v1"]
        assert "storedVersions: v1 already" in capsys.readouterr().out
        for body in bodies:
            name = body["metadata"]["name"]
            alpha = json.loads(
                kube.kubectl(
                    "get",
                    f"practicewritebacks.v1alpha1.writeback.dental.dev/{name}",
                    "-n",
                    kube_namespace,
                    "-o",
                    "json",
                ).stdout
            )
            assert alpha["apiVersion"] == V1ALPHA1
            assert alpha["spec"] == {**body["spec"]}
    finally:
        testenv.install_crds(kube, after)
