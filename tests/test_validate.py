"""`pmsctl validate` and the `reconciler.api.validate` API from the outside.

Real: the CLI entry point (`reconciler.cli.main`, in-process), files in a temporary folder, the
packaged schema, libyaml. Nothing is faked. The alias-bomb test bounds its own time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from reconciler import API_VERSION, KIND
from reconciler.api import validate
from reconciler.api.spec import PmsType, SyncKind, parse_duration
from reconciler.api.yamlsource import Limits, load_documents
from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
PRACTICES = ROOT / "practices"
#: The full valid case without its `# case:` line, so that apiVersion is on line 1.
BASE = (
    (ROOT / "tests" / "cases" / "valid" / "full-base.yaml")
    .read_text(encoding="utf-8")
    .split("\n", 1)[1]
)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_examples_in_practices_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(PRACTICES)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("all valid")
    assert len(out.strip().splitlines()) == 1


def test_every_example_names_the_schema_and_a_namespace_and_one_of_each_pms_exists() -> None:
    docs = validate.load_practices([PRACTICES])
    assert {d.spec().pms.type for d in docs} == set(PmsType)
    for doc in docs:
        text = Path(doc.file).read_text(encoding="utf-8")
        assert text.startswith(
            "# yaml-language-server: $schema=../schemas/practicewriteback.v1alpha1.schema.json\n"
        )
        assert doc.namespace == "dental-practices"
        spec = doc.spec()
        assert spec.enabled_sync() == {
            SyncKind.APPOINTMENT_STATUS: 15,
            SyncKind.APPOINTMENTS: 60,
            SyncKind.PATIENTS: 30,
        }
        assert spec.pms.credentials_secret == f"{doc.name}-pms"


def test_a_broken_file_prints_file_line_col_path_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "acme.yaml",
        BASE.replace(
            "patients: {enabled: true, interval: 30s}", "patients: {enabled: true, interval: 2s}"
        ),
    )
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{path}:23:31: spec.sync.patients.interval: '2s' is below the minimum of 5s"
    assert lines[-1].endswith("1 problem(s)")


def test_an_enum_error_lists_the_allowed_values(tmp_path: Path) -> None:
    _, problems = validate.validate_text(
        BASE.replace("type: OpenDental", "type: OpenDentl"), "acme.yaml"
    )
    assert [str(p) for p in problems] == [
        "acme.yaml:9:5: spec.pms.type: 'OpenDentl' is not one of OpenDental, Eaglesoft, Dentrix"
        " (did you mean OpenDental?)"
    ]


def test_each_missing_field_is_reported_once_even_when_several_are_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = BASE.replace("    url: https://pms.example.com/api/v1\n", "").replace(
        "    credentialsSecretRef:\n      name: case-pms\n", ""
    )
    path = _write(tmp_path, "acme.yaml", text)
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{path}:8:3: spec.pms.credentialsSecretRef: is required",
        f"{path}:8:3: spec.pms.url: is required",
        "1 file(s), 0 valid PracticeWriteback document(s), 2 problem(s)",
    ]
    problems = validate.validate_body({"apiVersion": API_VERSION, "kind": KIND})
    assert [p.path for p in problems] == ["metadata", "spec"]


def test_inline_credentials_point_to_the_secret_reference() -> None:
    text = BASE.replace(
        "    timeoutSeconds: 10\n",
        "    timeoutSeconds: 10\n    developerKey: abc\n    token: xyz\n",
    )
    _, problems = validate.validate_text(text, "acme.yaml")
    assert {p.path for p in problems} == {"spec.pms.developerKey", "spec.pms.token"}
    for p in problems:
        assert p.message == validate.CREDENTIALS_MESSAGE
        assert "abc" not in str(p) and "xyz" not in str(p)


def test_json_output_lists_problems_and_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "a.yaml", BASE.replace("NAME", "a"))
    _write(
        tmp_path,
        "sub/b.yml",
        BASE.replace("practiceId: valid-full-base", "practiceId: b")
        .replace("name: valid-full-base", "name: b")
        .replace('"1"', "DOC1"),
    )
    assert main(["validate", "-o", "json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False and report["files"] == 2
    assert [d["name"] for d in report["documents"]] == ["valid-full-base"]
    (problem,) = report["problems"]
    assert (
        problem["path"] == "spec.providerId"
        and problem["file"].endswith("b.yml")
        and problem["line"] == 14
    )


def test_github_output_is_workflow_annotations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "a.yaml", BASE.replace("timeoutSeconds: 10", "timeoutSeconds: 0"))
    assert main(["validate", "--output", "github", str(path)]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        first
        == f"::error file={path},line=13,col=5,title=spec.pms.timeoutSeconds::spec.pms.timeoutSeconds: 0 is below the minimum of 1"
    )


def test_missing_path_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["validate", str(tmp_path)]) == 2  # a folder without YAML files
    with pytest.raises(SystemExit) as info:
        main(["validate", "-o", "xml", str(PRACTICES)])
    assert info.value.code == 2


def test_other_kinds_are_errors_unless_skipped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A SealedSecret: what belongs next to the practices (a Secret with values does not, see
    # tests/test_validate_secrets.py).
    sealed = (
        "apiVersion: bitnami.com/v1alpha1\nkind: SealedSecret\nmetadata:\n  name: s\n"
        "spec:\n  encryptedData:\n    token: AgBy3i4OJSWK\n"
    )
    path = _write(tmp_path, "bundle.yaml", BASE + "---\n" + sealed)
    assert main(["validate", str(path)]) == 1
    assert f"{path}:28:1: kind: 'SealedSecret' is not PracticeWriteback" in capsys.readouterr().out
    assert main(["validate", "--skip-other-kinds", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"note: {path}:27:1: skipped SealedSecret (bitnami.com/v1alpha1)" in out
    assert "1 skipped" in out


def test_duplicates_across_files_are_reported_on_the_second(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.yaml", BASE)
    b = _write(tmp_path, "b.yaml", "# copy\n" + BASE)
    report = validate.validate_paths([a, b])
    assert {(p.file, p.path, p.line) for p in report.problems} == {
        (str(b), "spec.practiceId", 7),
        (str(b), "metadata.name", 5),
    }
    assert [d.file for d in report.documents] == [str(a)]
    assert f"also used at {a}:6" in str(report.problems[0]) + str(report.problems[1])


def test_same_name_in_different_namespaces_is_fine() -> None:
    a = BASE.replace("  name: valid-full-base\n", "  name: x\n  namespace: one\n").replace(
        "practiceId: valid-full-base", "practiceId: p1"
    )
    b = BASE.replace("  name: valid-full-base\n", "  name: x\n  namespace: two\n").replace(
        "practiceId: valid-full-base", "practiceId: p2"
    )
    docs, problems = validate.validate_text(a + "---\n" + b, "multi.yaml")
    assert problems == [] and [(d.namespace, d.name, d.line) for d in docs] == [
        ("one", "x", 1),
        ("two", "x", 28),
    ]


def test_billion_laughs_fails_fast_with_a_clear_error() -> None:
    lines = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]"
        for i in range(9)
    ]
    start = time.monotonic()
    _, problems = validate.validate_text("\n".join(lines) + "\n", "bomb.yaml")
    assert time.monotonic() - start < 2
    (problem,) = problems
    assert problem.path == "<file>" and "expands to more than" in problem.message


def test_recursive_alias_and_deep_nesting_are_refused() -> None:
    _, recursive = validate.validate_text("a: &x [1, *x]\n", "r.yaml")
    assert "recursive alias" in recursive[0].message
    _, deep = load_documents("a: " + "[" * 80 + "]" * 80 + "\n", limits=Limits(max_depth=64))
    assert deep is not None and "deeper than 64" in deep.message


def test_file_size_cap(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.yaml", BASE + "#" + "x" * 2000 + "\n")
    report = validate.validate_paths([path], limits=Limits(max_bytes=1000))
    (problem,) = report.problems
    assert problem.path == "<file>" and "more than the limit of 1000 bytes" in problem.message


def test_not_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.replace("Case Practice", "Caf\xe9").encode("latin-1"))
    (problem,) = validate.validate_paths([path]).problems
    assert (problem.line, problem.message) == (7, "the file is not UTF-8 text")


def test_a_null_document_between_separators_is_ignored_but_an_empty_file_is_not() -> None:
    docs, problems = validate.validate_text("---\n" + BASE + "---\n", "a.yaml")
    assert len(docs) == 1 and problems == []
    _, problems = validate.validate_text("", "empty.yaml")
    assert [str(p) for p in problems] == [
        "empty.yaml:1:1: <file>: the file is empty; expected a PracticeWriteback document"
    ]


def test_duplicate_keys_are_reported_not_silently_merged() -> None:
    _, problems = validate.validate_text(
        BASE.replace("  suspend: false\n", "  suspend: false\n  suspend: true\n"), "d.yaml"
    )
    assert [str(p) for p in problems] == [
        "d.yaml:26:3: spec.suspend: duplicate key 'suspend' (first at line 25); YAML keeps only one of them: delete one"
    ]


def test_a_trailing_newline_does_not_sneak_past_an_anchored_pattern() -> None:
    # Kubernetes (RE2) treats `$` as the end of the text; Python's `$` would accept "1\n".
    docs, _ = load_documents(BASE)
    value = docs[0].value
    value["spec"]["providerId"] = "1\n"
    assert not validate.is_valid_body(value)
    assert validate.validate_body(value)[0].path == "spec.providerId"


def test_validate_body_checks_objects_without_positions() -> None:
    docs, _ = load_documents(BASE)
    body = docs[0].value
    assert validate.validate_body(body) == []
    body["spec"]["sync"]["patients"]["interval"] = "2h"
    (problem,) = validate.validate_body(body)
    assert (
        str(problem) == "<object>:0:0: spec.sync.patients.interval: '2h' is above the maximum of 1h"
    )


def test_load_practices_raises_with_every_problem(tmp_path: Path) -> None:
    shutil.copytree(PRACTICES, tmp_path / "p")
    _write(tmp_path, "p/bad.yaml", BASE.replace('"1"', '"0"'))
    with pytest.raises(validate.PracticeFilesInvalid) as info:
        validate.load_practices([tmp_path / "p"])
    assert "spec.providerId" in str(info.value) and len(info.value.report.documents) == 3


@pytest.mark.parametrize(
    "text", ["5s", "15s", "1m30s", "1.5m", "59m60s", "5000ms", "1h", "0.5h30m", "4999ms", "61m"]
)
def test_exact_duration_arithmetic_agrees_with_the_spec_model(text: str) -> None:
    assert validate.duration_ns(text) / 1e9 == pytest.approx(parse_duration(text))


@pytest.mark.parametrize(
    "url",
    ["https://dev:s3cr3t@pms.example.com/api/v1", "https://pms.example.com/api/v1?key=s3cr3t"],
)
def test_a_url_with_a_user_password_or_query_is_refused_without_echoing_it(url: str) -> None:
    _, problems = validate.validate_text(
        BASE.replace("https://pms.example.com/api/v1", url), "u.yaml"
    )
    (problem,) = problems
    assert problem.path == "spec.pms.url" and problem.message.startswith(
        validate.CREDENTIALS_MESSAGE
    )
    assert "s3cr3t" not in str(problem)
