"""`pmsctl diff --kustomize` and `pmsctl validate -` on a kustomize fleet, with the real kubectl.

Real: each test writes the example fleet (`examples/fleet/generate.py`, 40 practices) into a git
repository in a temporary folder, commits, edits, and runs the real command through
`reconciler.cli.main`; the renderer is the testenv's own `kubectl kustomize` (`tests/testenv.py`
finds or builds it, hence the `kube` mark), git is the real CLI. Nothing is faked.

The generator's rules fix the expected figures: of 40 practices, 20 run Open Dental and 12
Dentrix; 4 Open Dental ones use the "SMS writeback off" component; 4 (2 of each) override their
outgoing SMS writeback in their own overlay.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import testenv

from reconciler.cli import main

REPO = Path(__file__).resolve().parent.parent
COUNT = 40


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fleet_generate", REPO / "examples" / "fleet" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _generator()


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


@pytest.fixture(scope="session")
def kubectl() -> str:
    return str(testenv.testenv_binaries() / "kubectl")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Path]:
    """A repository whose `main` holds the fleet in `fleet/`; yields the repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    generate.write(repo / "fleet", COUNT)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fleet")
    yield repo


def sms_off_in_bases(repo: Path, *bases: str) -> None:
    for base in bases:
        path = repo / "fleet" / "base" / base / "practice.yaml"
        text = path.read_text()
        old = "outgoingSms: {allow: true, noteType: Text Message}"
        assert old in text
        path.write_text(text.replace(old, "outgoingSms: {allow: false}"))


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO(stdin))
            code = main(list(argv))
    else:
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expected() -> tuple[list[str], list[str]]:
    """(turned off, kept by an override) for SMS off in the Open Dental and Dentrix bases."""
    off, kept = [], []
    for i, (name, row) in enumerate(generate.practices(COUNT)):
        if row[1] not in ("OpenDental", "Dentrix") or i % 10 == 3:
            continue
        (kept if i % 20 in (1, 7) else off).append(f"dental-practices/{name}")
    return sorted(off), sorted(kept)


@pytest.mark.kube
def test_a_base_change_is_one_group_with_its_count_and_the_overrides_kept(
    fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sms_off_in_bases(fleet, "opendental", "dentrix")
    git(fleet, "commit", "-qam", "SMS writeback off")
    args = ("diff", "--kustomize", str(fleet / "fleet"), "main~1..main")
    code, out, err = run(capsys, *args, "--kustomize-command", f"{kubectl} kustomize", "-o", "json")
    assert code == 1, err
    report = json.loads(out)
    off, kept = expected()
    assert len(off) == 24 and len(kept) == 4
    [group] = report["groups"]
    assert group["kind"] == "writeback_disabled"
    assert group["field"] == "spec.writeback.outgoingSms"
    assert group["risk"] == "writeback_off"
    assert group["count"] == 24
    assert group["practices"] == off
    assert group["byPms"] == {"OpenDental": 14, "Dentrix": 10}
    assert group["keptByLocalOverride"] == kept
    assert report["summary"]["changed"] == 24
    assert report["summary"]["unchanged"] == COUNT - 24
    assert "rendered with" in err

    code, out, _ = run(capsys, *args, "--kustomize-command", f"{kubectl} kustomize")
    assert code == 1
    assert (
        "outgoing SMS writeback disabled (was note type 'Text Message') in 24 practices "
        "(OpenDental 14, Dentrix 10); 4 kept as before by a local override  "
        "[RISK: writeback turned off]"
    ) in out

    code, out, _ = run(capsys, *args, "--kustomize-command", kubectl, "-o", "markdown")
    assert code == 1
    assert "<details><summary>24 practices</summary>" in out
    assert "<details><summary>4 kept by a local override</summary>" in out
    assert all(f"<code>{k}</code>" in out for k in off + kept)


@pytest.mark.kube
def test_an_interval_change_reports_the_read_load_per_pms(
    fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fleet / "fleet" / "base" / "eaglesoft" / "practice.yaml"
    path.write_text(
        path.read_text().replace(
            "appointments: {enabled: true, interval: 60s}",
            "appointments: {enabled: true, interval: 30s}",
        )
    )
    monkeypatch.setenv("PMSCTL_KUSTOMIZE", f"{kubectl} kustomize")
    code, out, err = run(
        capsys, "diff", "--kustomize", str(fleet / "fleet"), "main..", "-o", "json"
    )
    assert code == 1, err
    [group] = json.loads(out)["groups"]
    assert group["kind"] == "sync_interval"
    assert group["count"] == 8
    assert group["readLoad"] == [
        {
            "pms": "Eaglesoft",
            "practices": 8,
            "readsPerMinuteBefore": 8.0,
            "readsPerMinuteAfter": 16.0,
            "factor": 2.0,
        }
    ]


@pytest.mark.kube
def test_no_change_exits_0(fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "diff",
        "--kustomize",
        str(fleet / "fleet"),
        "--base",
        "main",
        "--kustomize-command",
        f"{kubectl} kustomize",
    )
    assert code == 0, err
    assert f"no changes ({COUNT} practices unchanged)" in out


@pytest.mark.kube
def test_a_broken_overlay_is_an_error_naming_the_overlays_file(
    fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = generate.practices(COUNT)[5][0]
    overlay = fleet / "fleet" / "practices" / name / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("../../base/dentrix", "../../base/dentirx"))
    code, out, err = run(
        capsys,
        "diff",
        "--kustomize",
        str(fleet / "fleet"),
        "--kustomize-command",
        f"{kubectl} kustomize",
        "--base",
        "main",
    )
    assert code == 2
    assert out == ""
    assert "failed at working tree" in err
    assert f"fleet/practices/{name}" in err
    assert str(fleet) not in err and "/tmp" not in err.split("failed at")[1]


@pytest.mark.kube
def test_an_invalid_value_in_an_overlay_names_the_document_and_the_overlay(
    fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = generate.practices(COUNT)[0][0]
    overlay = fleet / "fleet" / "practices" / name / "kustomization.yaml"
    overlay.write_text(overlay.read_text().replace('providerId: "1"', "providerId: one"))
    code, _, err = run(
        capsys,
        "diff",
        "--kustomize",
        str(fleet / "fleet"),
        "--kustomize-command",
        f"{kubectl} kustomize",
        "--base",
        "main",
    )
    assert code == 2
    [line] = [x for x in err.splitlines() if "spec.providerId" in x]
    assert f"PracticeWriteback dental-practices/{name}" in line
    assert "from fleet/base/opendental/practice.yaml" in line
    assert f"patched by fleet/practices/{name}/kustomization.yaml" in line


@pytest.mark.kube
def test_kubectl_kustomize_piped_to_validate_points_at_the_source_file(
    kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = subprocess.run(
        [kubectl, "kustomize", str(REPO / "examples" / "fleet")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    code, out, _ = run(capsys, "validate", "-", stdin=good)
    assert code == 0
    assert "50 valid PracticeWriteback document(s): all valid" in out


@pytest.mark.kube
def test_a_bad_base_value_in_the_stream_names_the_base_file_and_the_stream_line(
    fleet: Path, kubectl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fleet / "fleet" / "base" / "eaglesoft" / "practice.yaml"
    path.write_text(
        path.read_text().replace(
            "patients: {enabled: true, interval: 30s}", "patients: {enabled: true, interval: 30}"
        )
    )
    stream = subprocess.run(
        [kubectl, "kustomize", str(fleet / "fleet")], capture_output=True, text=True, check=True
    ).stdout
    code, out, _ = run(capsys, "validate", "-", stdin=stream)
    assert code == 1
    problems = [x for x in out.splitlines() if x.startswith("<stdin>:")]
    assert len(problems) == 8  # every Eaglesoft practice
    lines = stream.splitlines()
    for problem in problems:
        _, line, _, rest = problem.split(":", 3)
        assert lines[int(line) - 1].strip() == "interval: 30"
        assert "from base/eaglesoft/practice.yaml" in rest
        assert "PracticeWriteback dental-practices/" in rest


def test_no_renderer_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("PMSCTL_KUSTOMIZE", raising=False)
    code, out, err = run(capsys, "diff", "--kustomize", str(tmp_path))
    assert out == ""
    assert code == 2
    assert "neither kustomize nor kubectl is on PATH" in err
    assert "--kustomize-command" in err


def test_the_committed_example_is_the_generators_output(tmp_path: Path) -> None:
    generate.write(tmp_path, 50)
    here = REPO / "examples" / "fleet"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == 50 + 3 * 2 + 1 + 1
    for rel in written:
        assert (here / rel).read_text() == (tmp_path / rel).read_text(), rel


LIVE = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: {name}
  namespace: {namespace}
spec:
  practiceId: {name}
  pms:
    type: OpenDental
    url: https://{name}.example.com/api/v1
    credentialsSecretRef:
      name: {name}-pms
  providerId: "1"
  writeback:
    outgoingSms:
      allow: {sms}
      noteType: Text Message
"""


@pytest.mark.kube
def test_a_rendered_stream_on_stdin_diffs_against_the_cluster(
    kube: testenv.Cluster,
    crd_installed: list[str],
    kube_namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def live(name: str, sms: str) -> str:
        return LIVE.format(name=name, namespace=kube_namespace, sms=sms)

    kube.kubectl(
        "apply",
        "--server-side",
        "--field-manager=test",
        "-f",
        "-",
        input=live("a", "true") + "---\n" + live("b", "true"),
    )
    stream = live("a", "false") + "---\n" + live("b", "true")
    args = ("diff", "--live", "--kubeconfig", str(kube.kubeconfig), "-")
    code, out, err = run(capsys, *args, stdin=stream)
    assert (code, err) == (1, "")
    assert "-> stdin" in out
    assert "a: outgoing SMS writeback disabled (was note type 'Text Message')" in out
    assert "1 practice differs (1 changed), 1 unchanged; 1 risky" in out

    bad = stream.replace('providerId: "1"', "providerId: one", 1)
    code, out, err = run(capsys, *args, stdin=bad)
    assert code == 2 and out == ""
    assert "invalid documents on stdin:" in err
    assert (
        "<stdin>:13:3: spec.providerId:" in err
        and f"document 1 (PracticeWriteback {kube_namespace}/a)" in err
    )


def test_stdin_without_live_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "diff", "-", stdin="")
    assert code == 2 and out == ""
    assert "add --live" in err


def _resource(name: str, *, provider: str = "1", sms: bool = True, origin: str = "base/od") -> Any:
    from reconciler.api.spec import PracticeSpec
    from reconciler.review.diff import Resource

    spec = PracticeSpec.from_spec(
        {
            "practiceId": name,
            "pms": {
                "type": "OpenDental",
                "url": f"https://{name}.example.com/api/v1",
                "credentialsSecretRef": {"name": f"{name}-pms"},
            },
            "providerId": provider,
            "writeback": {"outgoingSms": {"allow": sms, "noteType": "Text Message"}},
        }
    )
    return Resource("ns", name, spec, file=origin)


def test_groups_split_by_value_and_name_added_practices_by_kind() -> None:
    from reconciler.review.diff import diff_practices
    from reconciler.review.grouped import group_report, render_text

    base = {r.key: r for r in (_resource(n) for n in ("a", "b", "c", "d", "e"))}
    head = {
        r.key: r
        for r in (
            _resource("a", provider="7"),
            _resource("b", provider="7"),
            _resource("c", provider="9"),
            _resource("d", sms=False),
            _resource("e", origin="base/other"),  # same value, another source: not kept
            _resource("f"),
        )
    }
    # b's overlay sets outgoingSms, d's sets providerId; e names neither.
    overrides = {("ns/b", "outgoingSms"), ("ns/d", "providerId"), ("ns/b", "providerId")}
    grouped = group_report(
        diff_practices(base, head), base, head, overrides=lambda k, s: (k, s) in overrides
    )
    heads = [g.headline() for g in grouped.groups]
    assert heads == [
        "provider 1 -> 7 in 2 practices (OpenDental 2); 1 kept as before by a local override",
        "practice added: 1 practice (OpenDental 1)",
        "file moved: 1 practice (OpenDental 1)",
        "provider 1 -> 9 in 1 practice (OpenDental 1); 1 kept as before by a local override",
        "outgoing SMS writeback disabled (was note type 'Text Message') in 1 practice "
        "(OpenDental 1); 1 kept as before by a local override",
    ]
    assert grouped.groups[0].kept == ("ns/d",)  # b changed its provider, e has no override
    assert grouped.groups[4].practices == ("ns/d",) and grouped.groups[4].kept == ("ns/b",)
    assert "[RISK: writeback turned off]" in render_text(grouped)
