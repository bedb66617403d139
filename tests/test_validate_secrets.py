"""A Secret committed next to the practices: `pmsctl validate` refuses one holding values.

Real: the validator (`reconciler.api.validate`), libyaml and the CLI entry point, on files in a
temporary folder; nothing is faked. Credentials in git stay readable in its history, so a
Secret with `data` or `stringData` is an error even under `--skip-other-kinds`; a Secret
without values and a SOPS-encrypted one are skipped like any other kind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.api import validate
from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
FILE = "practices/acme.yaml"
#: The full valid case without its `# case:` line, so that apiVersion is on line 1 (25 lines).
BASE = (
    (ROOT / "tests" / "cases" / "valid" / "full-base.yaml")
    .read_text(encoding="utf-8")
    .split("\n", 1)[1]
)
SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: valid-full-base-pms
type: Opaque
stringData:
  developerKey: dev-123
  customerKey: cust-456
"""


@pytest.mark.parametrize("skip_other_kinds", [False, True])
def test_a_committed_secret_with_values_is_an_error_naming_the_document_and_the_fix(
    skip_other_kinds: bool,
) -> None:
    docs, problems = validate.validate_text(
        BASE + "---\n" + SECRET, FILE, skip_other_kinds=skip_other_kinds
    )
    assert len(docs) == 1
    (problem,) = problems
    assert (problem.line, problem.col, problem.path) == (32, 1, "stringData")
    assert str(problem).startswith(
        f"{FILE}:32:1: stringData: document 2, Secret 'valid-full-base-pms', holds values in plain text"
    )
    for fix in ("SealedSecret", "ExternalSecret", "SOPS", "keep the Secret out of git"):
        assert fix in problem.message
    assert "dev-123" not in str(problem) and "cust-456" not in str(problem)


def test_a_secret_with_base64_data_is_an_error_too() -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  token: dG9r\n"
    _, problems = validate.validate_text(secret, FILE, skip_other_kinds=True)
    (problem,) = problems
    assert (problem.line, problem.path) == (4, "data")
    assert "base64 is not encryption" in problem.message and "dG9r" not in str(problem)


@pytest.mark.parametrize(
    "secret",
    [
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {}\ndata: {}\n",
        # SOPS keeps the Secret's shape and encrypts the values; its `sops` block marks it.
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        "stringData: {token: 'ENC[AES256_GCM,data:x,type:str]'}\nsops: {version: 3.8.1}\n",
    ],
    ids=["no-values", "empty-values", "sops-encrypted"],
)
def test_an_empty_or_encrypted_secret_is_skipped_like_any_other_kind(secret: str) -> None:
    docs, problems = validate.validate_text(BASE + "---\n" + secret, FILE, skip_other_kinds=True)
    assert problems == [] and len(docs) == 1


def test_pmsctl_validate_fails_on_a_folder_with_a_committed_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "acme.yaml").write_text(BASE, encoding="utf-8")
    (tmp_path / "acme-pms.yaml").write_text(SECRET, encoding="utf-8")
    assert main(["validate", "--skip-other-kinds", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'acme-pms.yaml'}:6:1: stringData: document 1, Secret" in out
    assert "all valid" not in out and "1 problem(s)" in out


@pytest.mark.parametrize(
    "values",
    ["  token: s3cr3t: more\n", "  password:s3cr3t\n  other: x\n"],
    ids=["colon-in-value", "no-space-after-colon"],
)
def test_the_fix_for_a_syntax_error_in_a_secret_never_shows_its_value(values: str) -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n" + values
    _, problems = validate.validate_text(text, FILE, skip_other_kinds=True)
    (problem,) = problems
    assert problem.path == "<file>"
    assert problem.message.endswith(('token: "..."', "password: ..."))
    assert "s3cr3t" not in str(problem)
