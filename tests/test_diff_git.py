"""`pmsctl diff` over real git repositories made in a temporary folder.

Everything is real: each test builds a repository with the `git` CLI (commits on `main`, edits
in the working tree or on a branch), runs the real command through `reconciler.cli.main` (one
test also through the installed `pmsctl` script), and reads stdout, stderr and the exit code.
The validator is the real `reconciler.api.validate`. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.cli import main

AUSTIN = """\
# yaml-language-server: $schema=../schemas/practicewriteback.v1alpha1.schema.json
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: bright-smiles-austin
  namespace: dental
spec:
  practiceId: bright-smiles-austin
  displayName: Bright Smiles Austin
  pms:
    type: OpenDental
    url: https://od.bright-smiles.example/api/v1
    credentialsSecretRef:
      name: bright-smiles-od
  providerId: "7"
  writeback:
    outgoingSms:
      allow: true
      noteType: Text Message
    missedCall:
      allow: true
      noteType: Missed Call
  documents:
    insuranceVerification:
      writeTo: Insurance Verification
  sync:
    appointments:
      enabled: true
      interval: 60s
    patients:
      enabled: true
"""

# The same resource, reformatted: comments, other key order, flow style, other quoting and
# every default spelled out. It must diff as "no change".
AUSTIN_REFORMATTED = """\
# Bright Smiles, Austin TX: moved to the new provider numbering in 2026.
kind: "PracticeWriteback"
apiVersion: 'writeback.dental.dev/v1alpha1'
metadata: {namespace: dental, name: "bright-smiles-austin"}
spec:
  providerId: '7'   # Dr. Priya Shah
  pms: {credentialsSecretRef: {name: bright-smiles-od}, url: "https://od.bright-smiles.example/api/v1", type: OpenDental, timeoutSeconds: 10}
  practiceId: "bright-smiles-austin"
  displayName: "Bright Smiles Austin"
  sync:
    patients: {enabled: true, interval: 30s}
    appointments: {interval: 1m, enabled: true}
    appointmentStatus: {enabled: false}
  writeback:
    missedCall: {noteType: "Missed Call", allow: true}
    outgoingSms: {allow: true, noteType: 'Text Message'}
    taskNote: {allow: false}
  documents:
    insuranceVerification: {writeTo: "Insurance Verification"}
  patientProfilePhotos: false
  suspend: false
"""

ELPASO = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: sunrise-dental-elpaso
  namespace: dental
spec:
  practiceId: sunrise-dental-elpaso
  pms:
    type: Dentrix
    url: https://bridge.sunrise.example/bridge/v1
    credentialsSecretRef:
      name: sunrise-bridge
  providerId: DDS1
  writeback:
    outgoingEmail:
      allow: true
      noteType: Email
  sync:
    appointmentStatus:
      enabled: true
      interval: 15s
"""

MESA = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: mesa-family-dental
  namespace: dental
spec:
  practiceId: mesa-family-dental
  pms:
    type: Eaglesoft
    url: https://bridge.mesa.example/bridge/v1
    credentialsSecretRef:
      name: mesa-bridge
  providerId: DCM
"""

BASE_FILES = {
    "practices/bright-smiles-austin.yaml": AUSTIN,
    "practices/texas.yaml": ELPASO + "---\n" + MESA,
}


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def write(repo: Path, files: dict[str, str | None]) -> None:
    for rel, text in files.items():
        path = repo / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository with BASE_FILES committed on `main`, the current folder set to it."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    write(root, BASE_FILES)
    commit_all(root, "base")
    monkeypatch.chdir(root)
    return root


@dataclass
class Run:
    code: int
    out: str
    err: str


def pmsctl_diff(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    code = main(["diff", *args])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def sub(old: str, new: str, text: str = AUSTIN) -> str:
    assert old in text, old
    return text.replace(old, new)


A = "practices/bright-smiles-austin.yaml"
T = "practices/texas.yaml"


@dataclass
class Case:
    id: str
    edit: dict[str, str | None]
    lines: list[str] = field(default_factory=list)
    code: int = 1


CASES = [
    Case(
        "writeback enabled",
        {
            A: sub(
                "  writeback:\n",
                "  writeback:\n    outgoingEmail: {allow: true, noteType: Email}\n",
            )
        },
        ["bright-smiles-austin: outgoing email writeback enabled (note type 'Email')"],
    ),
    Case(
        "writeback disabled",
        {A: sub("      allow: true\n      noteType: Text Message", "      allow: false")},
        [
            "bright-smiles-austin: outgoing SMS writeback disabled (was note type 'Text Message')"
            "  [RISK: writeback turned off]"
        ],
    ),
    Case(
        "note type changed",
        {A: sub("noteType: Missed Call", "noteType: Phone Call")},
        ["bright-smiles-austin: missed call writeback note type 'Missed Call' -> 'Phone Call'"],
    ),
    Case(
        "document mapping changed",
        {A: sub("writeTo: Insurance Verification", "writeTo: Insurance Cards")},
        [
            "bright-smiles-austin: insurance verification documents written to "
            "'Insurance Verification' -> 'Insurance Cards'"
        ],
    ),
    Case(
        "provider changed",
        {A: sub('providerId: "7"', 'providerId: "12"')},
        ["bright-smiles-austin: provider 7 -> 12  [RISK: provider changed]"],
    ),
    Case(
        "pms type changed",
        {
            T: sub("type: Eaglesoft", "type: Dentrix", ELPASO + "---\n" + MESA).replace(
                "DCM", "DDS2"
            )
        },
        [
            "mesa-family-dental: PMS type 'Eaglesoft' -> 'Dentrix'",
            "mesa-family-dental: provider DCM -> DDS2  [RISK: provider changed]",
        ],
    ),
    Case(
        "pms url changed",
        {A: sub("od.bright-smiles.example", "od2.bright-smiles.example")},
        [
            "bright-smiles-austin: PMS URL 'https://od.bright-smiles.example/api/v1' -> "
            "'https://od2.bright-smiles.example/api/v1'  [RISK: PMS URL changed]"
        ],
    ),
    Case(
        "secret changed",
        {A: sub("name: bright-smiles-od\n", "name: bright-smiles-od-v2\n")},
        ["bright-smiles-austin: credentials Secret 'bright-smiles-od' -> 'bright-smiles-od-v2'"],
    ),
    Case(
        "interval shortened",
        {A: sub("interval: 60s", "interval: 30s")},
        [
            "bright-smiles-austin: appointments poll interval 60s -> 30s (2x PMS read load)"
            "  [RISK: poll interval below the product default]"
        ],
    ),
    Case(
        "sync enabled and disabled",
        {
            A: sub("    patients:\n      enabled: true", "    patients:\n      enabled: false"),
            T: sub("      enabled: true\n      interval: 15s", "      enabled: false", ELPASO)
            + "---\n"
            + MESA
            + "  sync:\n    appointments: {enabled: true}\n",
        },
        [
            "bright-smiles-austin: patients sync disabled (was every 30s)",
            "sunrise-dental-elpaso: appointment status sync disabled (was every 15s)",
            "mesa-family-dental: appointments sync enabled (every 60s)",
        ],
    ),
    Case(
        "photos and suspension",
        {A: AUSTIN + "  patientProfilePhotos: true\n  suspend: true\n"},
        [
            "bright-smiles-austin: suspended",
            "bright-smiles-austin: patient profile photos enabled",
        ],
    ),
    Case(
        "display name changed",
        {A: sub("displayName: Bright Smiles Austin", "displayName: Bright Smiles (Austin)")},
        ["bright-smiles-austin: display name 'Bright Smiles Austin' -> 'Bright Smiles (Austin)'"],
    ),
    Case(
        "practice added in a new file",
        {"practices/new/round-rock.yaml": sub("bright-smiles-austin", "bright-smiles-round-rock")},
        ["bright-smiles-round-rock: added: OpenDental at https://od.bright-smiles.example/api/v1"],
    ),
    Case(
        "practice removed with its file",
        {A: None},
        ["bright-smiles-austin: removed (was: OpenDental"],
    ),
    Case(
        "practice removed from a multi-document file",
        {T: ELPASO},
        ["mesa-family-dental: removed (was: Eaglesoft", "[RISK: practice removed]"],
    ),
    Case(
        "file moved is reported but changes nothing",
        {A: None, "practices/tx/austin.yaml": AUSTIN},
        [
            "bright-smiles-austin: moved practices/bright-smiles-austin.yaml -> "
            "practices/tx/austin.yaml"
        ],
        code=0,
    ),
    Case(
        "multi-document file split into two files",
        {T: ELPASO, "practices/mesa.yaml": MESA},
        ["mesa-family-dental: moved practices/texas.yaml -> practices/mesa.yaml"],
        code=0,
    ),
    Case(
        "moved and changed in one go",
        {A: None, "practices/austin.yml": sub("interval: 60s", "interval: 2m")},
        [
            "bright-smiles-austin: moved practices/bright-smiles-austin.yaml -> practices/austin.yml",
            "bright-smiles-austin: appointments poll interval 60s -> 2m (0.5x PMS read load)",
        ],
    ),
    Case(
        "resource renamed, same practice id",
        {A: sub("  name: bright-smiles-austin\n", "  name: bsa\n")},
        ["bsa: resource renamed dental/bright-smiles-austin -> dental/bsa"],
    ),
    Case("reformatting, comments, key order, quoting and defaults", {A: AUSTIN_REFORMATTED}, [], 0),
    Case(
        "documents reordered inside a multi-document file",
        {T: "# two practices\n" + MESA + "---\n" + ELPASO + "...\n"},
        [],
        0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_diff_against_main_says_what_the_working_tree_change_does(repo, capsys, case):
    write(repo, case.edit)
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.err == ""
    assert run.code == case.code, run.out
    for line in case.lines:
        assert line in run.out, run.out
    if not case.lines:
        assert "no changes (3 practices unchanged)" in run.out


def test_the_default_base_is_the_merge_base_with_main(repo, capsys):
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, {A: sub('providerId: "7"', 'providerId: "12"')})
    commit_all(repo, "provider 12")
    git(repo, "checkout", "-q", "main")
    write(repo, {T: ELPASO})  # main moves on after the branch: not part of the feature's diff
    commit_all(repo, "drop mesa")
    git(repo, "checkout", "-q", "feature")
    run = pmsctl_diff(capsys)
    assert run.code == 1
    assert "# merge-base(main)" in run.out
    assert "bright-smiles-austin: provider 7 -> 12" in run.out
    assert "mesa-family-dental" not in run.out


def test_the_default_base_prefers_origin_head(repo, tmp_path, capsys):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    git(clone, "checkout", "-q", "-b", "feature")
    write(clone, {A: None})
    os.chdir(clone)
    run = pmsctl_diff(capsys)
    assert run.code == 1
    assert "# merge-base(origin/main)" in run.out
    assert "bright-smiles-austin: removed" in run.out


def test_head_ref_compares_two_commits_without_checking_out(repo, capsys):
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo, {A: sub("interval: 60s", "interval: 30s")})
    commit_all(repo, "faster")
    write(repo, {A: None})  # the working tree is ignored with --head
    run = pmsctl_diff(capsys, "--base", "main", "--head", "feature")
    assert run.code == 1
    assert "appointments poll interval 60s -> 30s (2x PMS read load)" in run.out
    assert "removed" not in run.out


def test_a_path_argument_limits_both_sides(repo, capsys):
    write(repo, {A: sub('providerId: "7"', 'providerId: "12"'), T: ELPASO})
    run = pmsctl_diff(capsys, "--base", "main", A)
    assert run.code == 1
    assert "provider 7 -> 12" in run.out
    assert "mesa" not in run.out


def test_an_invalid_working_tree_file_fails_with_the_validators_message(repo, capsys):
    write(repo, {A: sub("type: OpenDental", "type: OpenDentl")})
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.code == 2
    assert run.out == ""
    assert "invalid files at working tree" in run.err
    assert "practices/bright-smiles-austin.yaml:11:" in run.err
    assert "Traceback" not in run.err


def test_a_yaml_syntax_error_fails_with_its_position(repo, capsys):
    write(repo, {T: ELPASO + "  sync: [unclosed\n"})
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.code == 2
    assert "practices/texas.yaml:" in run.err
    assert "Traceback" not in run.err


def test_an_invalid_base_file_is_reported_with_the_base_label(repo, capsys):
    write(repo, {A: sub("interval: 60s", "interval: 2s")})
    commit_all(repo, "broken")
    write(repo, {A: AUSTIN})
    run = pmsctl_diff(capsys, "--base", "HEAD")
    assert run.code == 2
    assert "invalid files at HEAD (" in run.err
    assert "practices/bright-smiles-austin.yaml:" in run.err
    assert "spec.sync.appointments.interval" in run.err


def test_the_same_identity_in_two_files_is_an_error(repo, capsys):
    write(repo, {"practices/copy.yaml": AUSTIN})
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.code == 2
    assert "dental/bright-smiles-austin" in run.err


def test_a_new_file_reusing_the_practice_id_of_an_untouched_file_is_an_error(repo, capsys):
    # bright-smiles-austin.yaml is byte-identical on both sides, so it is only parsed because
    # the new resource's practice id appears in it.
    write(repo, {"practices/other.yaml": sub("  name: bright-smiles-austin\n", "  name: other\n")})
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.code == 2
    assert "practiceId 'bright-smiles-austin' is also used at" in run.err


def test_untouched_files_count_as_unchanged_practices(repo, capsys):
    write(repo, {A: sub('providerId: "7"', 'providerId: "12"')})
    run = pmsctl_diff(capsys, "--base", "main")
    assert "1 practice differs (1 changed), 2 unchanged; 1 risky" in run.out


def test_an_unknown_base_ref_is_a_clear_error(repo, capsys):
    run = pmsctl_diff(capsys, "--base", "no-such-branch")
    assert run.code == 2
    assert "unknown git ref 'no-such-branch'" in run.err


def test_cluster_flags_without_live_are_a_usage_error(repo, capsys):
    run = pmsctl_diff(capsys, "--prune")
    assert run.code == 2
    assert "need --live" in run.err


def test_outside_a_git_repository_the_error_says_so(tmp_path, capsys, monkeypatch):
    (tmp_path / "practices").mkdir()
    monkeypatch.chdir(tmp_path)
    run = pmsctl_diff(capsys, "--base", "main")
    assert run.code == 2
    assert "not inside a git repository" in run.err


def _risky_edit(repo: Path) -> None:
    write(
        repo,
        {
            A: sub("      allow: true\n      noteType: Text Message", "      allow: false"),
            "practices/new.yaml": MESA.replace("mesa-family-dental", "mesa-north"),
        },
    )


def test_json_output_lists_typed_changes(repo, capsys):
    _risky_edit(repo)
    run = pmsctl_diff(capsys, "--base", "main", "-o", "json")
    assert run.code == 1
    data = json.loads(run.out)
    assert data["summary"]["added"] == 1 and data["summary"]["changed"] == 1
    austin = next(p for p in data["practices"] if p["name"] == "bright-smiles-austin")
    assert austin["headFile"] == A
    assert austin["changes"][0]["kind"] == "writeback_disabled"
    assert austin["changes"][0]["risk"] == "writeback_off"


def test_markdown_output_is_a_pull_request_comment(repo, capsys):
    _risky_edit(repo)
    run = pmsctl_diff(capsys, "--base", "main", "-o", "markdown")
    assert run.code == 1
    assert run.out.startswith("<!-- pmsctl-diff -->\n### pmsctl diff")
    assert "| writeback disabled | 1 |" in run.out
    assert "| :warning: writeback turned off | 1 |" in run.out
    assert run.out.count("<details>") == 2


def test_the_installed_script_exits_like_kubectl_diff(repo):
    pmsctl = Path(sys.executable).with_name("pmsctl")
    same = subprocess.run([pmsctl, "diff", "--base", "main"], capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    write(repo, {A: sub("interval: 60s", "interval: 30s")})
    changed = subprocess.run([pmsctl, "diff", "--base", "main"], capture_output=True, text=True)
    assert changed.returncode == 1, changed.stderr
    assert "2x PMS read load" in changed.stdout
