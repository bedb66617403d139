"""`pmsctl diff --live`: files against the objects in a real cluster.

Real: the kube-apiserver and etcd of the testenv (fixtures `kube`, `crd_installed`,
`kube_namespace` from conftest.py), the generated CRD from `crds/`, objects created with the
testenv's `kubectl apply --server-side`, and the command reading them through
`reconciler.kube.client.list_practice_writebacks` (the `kubernetes` client) with the kubeconfig the
harness wrote. The API server applies the CRD's defaults to the stored objects, so these tests
also prove that defaults filled in by the server are "no change". The unreachable-server case
points a kubeconfig at a closed loopback port (a real refused connection, nothing faked).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from reconciler.kube.client import KubeReadError, context_namespace, list_practice_writebacks

pytestmark = pytest.mark.kube

PRACTICE = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: {name}
  namespace: {namespace}
spec:
  practiceId: {name}
  pms:
    type: OpenDental
    url: https://od.{name}.example/api/v1
    credentialsSecretRef:
      name: {name}-od
  providerId: "7"
  writeback:
    outgoingSms:
      allow: true
      noteType: Text Message
  sync:
    appointments:
      enabled: true
"""


def practice(name: str, namespace: str, **replace: str) -> str:
    text = PRACTICE.format(name=name, namespace=namespace)
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return text


def apply(kube, text: str) -> None:
    kube.kubectl("apply", "--server-side", "--field-manager=test", "-f", "-", input=text)


def diff_live(capsys, kube, folder: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["diff", "--live", "--kubeconfig", str(kube.kubeconfig), *extra, str(folder)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "practices"
    folder.mkdir()
    return folder


def test_files_that_match_the_cluster_are_no_change(
    kube, crd_installed, kube_namespace, files, capsys
):
    text = practice("bright-smiles-austin", kube_namespace)
    apply(kube, text)
    (files / "austin.yaml").write_text(text)
    code, out, err = diff_live(capsys, kube, files)
    assert (code, err) == (0, "")
    assert "no changes (1 practices unchanged)" in out
    # The server filled in defaults the file leaves out; the comparison sees through them.
    stored = yaml.safe_load(
        kube.kubectl(
            "get", "pwb", "-n", kube_namespace, "bright-smiles-austin", "-o", "yaml"
        ).stdout
    )
    assert stored["spec"]["sync"]["appointments"]["interval"] == "60s"


def test_edited_files_show_what_kubectl_apply_would_change(
    kube, crd_installed, kube_namespace, files, capsys
):
    apply(kube, practice("bright-smiles-austin", kube_namespace))
    (files / "austin.yaml").write_text(
        practice("bright-smiles-austin", kube_namespace)
        .replace('providerId: "7"', 'providerId: "12"')
        .replace("      enabled: true\n", "      enabled: true\n      interval: 30s\n")
    )
    (files / "new.yaml").write_text(practice("sunrise-dental", kube_namespace))
    code, out, err = diff_live(capsys, kube, files)
    assert err == ""
    assert code == 1
    assert "# cluster " in out and "-> files" in out
    assert "bright-smiles-austin: provider 7 -> 12  [RISK: provider changed]" in out
    assert "bright-smiles-austin: appointments poll interval 60s -> 30s (2x PMS read load)" in out
    assert "sunrise-dental: added: OpenDental" in out


def test_cluster_objects_without_a_file_count_only_with_prune(
    kube, crd_installed, kube_namespace, files, capsys
):
    apply(kube, practice("bright-smiles-austin", kube_namespace))
    apply(kube, practice("old-practice", kube_namespace))
    (files / "austin.yaml").write_text(practice("bright-smiles-austin", kube_namespace))
    code, out, _ = diff_live(capsys, kube, files)
    assert code == 0 and "old-practice" not in out
    code, out, _ = diff_live(capsys, kube, files, "--prune", "-o", "json")
    assert code == 1
    assert '"status": "removed"' in out and '"name": "old-practice"' in out


def test_documents_without_a_namespace_use_the_namespace_flag(
    kube, crd_installed, kube_namespace, files, capsys
):
    apply(kube, practice("bright-smiles-austin", kube_namespace))
    text = practice("bright-smiles-austin", kube_namespace).replace(
        f"  namespace: {kube_namespace}\n", ""
    )
    (files / "austin.yaml").write_text(text.replace("Text Message", "Phone Call"))
    code, out, _ = diff_live(capsys, kube, files, "-n", kube_namespace)
    assert code == 1
    assert "outgoing SMS writeback note type 'Text Message' -> 'Phone Call'" in out


def test_an_unreachable_api_server_is_a_clear_error(kube, files, tmp_path, capsys):
    (files / "austin.yaml").write_text(practice("bright-smiles-austin", "default"))
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"
    broken = tmp_path / "kubeconfig"
    broken.write_text(yaml.safe_dump(config))
    code = main(["diff", "--live", "--kubeconfig", str(broken), str(files)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot reach the API server at https://127.0.0.1:1" in err
    assert "Traceback" not in err


def test_the_kube_adapter_lists_plain_dicts_of_the_given_namespaces(
    kube, crd_installed, kube_namespace
):
    apply(kube, practice("bright-smiles-austin", kube_namespace))
    apply(kube, practice("sunrise-dental", kube_namespace))
    live = list_practice_writebacks(
        [kube_namespace, kube_namespace], kubeconfig=str(kube.kubeconfig)
    )
    assert sorted(o["metadata"]["name"] for o in live.items) == [
        "bright-smiles-austin",
        "sunrise-dental",
    ]
    assert all(type(o) is dict and o["kind"] == "PracticeWriteback" for o in live.items)
    assert live.label.startswith("cluster ") and live.server == kube.server
    assert list_practice_writebacks(["kube-system"], kubeconfig=str(kube.kubeconfig)).items == ()


def test_an_unknown_context_is_a_clear_error_from_the_adapter_and_the_command(kube, files, capsys):
    with pytest.raises(KubeReadError, match="no context named 'nope'"):
        context_namespace(str(kube.kubeconfig), "nope")
    with pytest.raises(KubeReadError, match="cannot load the kubeconfig"):
        list_practice_writebacks(["default"], kubeconfig=str(kube.kubeconfig), context="nope")
    (files / "austin.yaml").write_text(practice("bright-smiles-austin", "default"))
    code = main(
        ["diff", "--live", "--kubeconfig", str(kube.kubeconfig), "--context", "nope", str(files)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no context named 'nope'" in err and "Traceback" not in err
