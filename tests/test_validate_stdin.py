"""`pmsctl validate -`: a multi-document stream on stdin, as `kubectl kustomize DIR` prints it.

Real: the validator, libyaml and the CLI entry point (`reconciler.cli.main`) with stdin replaced
by the stream. The streams are written here the way kustomize renders (its origin and
transformer annotations included); `tests/test_fleet.py` pipes the real kubectl's output.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from reconciler.api.validate import is_valid_body, validate_stream
from reconciler.cli import main
from reconciler.review.rendered import StreamCache, _read, _valid, read_document, split_documents

DOC = """\
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  annotations:
    alpha.config.kubernetes.io/transformations: |
      - configuredIn: practices/{name}/kustomization.yaml
        configuredBy:
          apiVersion: builtin
          kind: PatchTransformer
    config.kubernetes.io/origin: |
      path: base/{base}/practice.yaml
  name: {name}
  namespace: dental
spec:
  pms:
    credentialsSecretRef:
      name: {name}-pms
    type: OpenDental
    url: https://{name}.example.com/api/v1
  practiceId: {name}
  providerId: "{provider}"
  sync:
    appointments:
      enabled: true
      interval: {interval}
"""


def doc(name: str, *, base: str = "opendental", provider: str = "1", interval: str = "60s") -> str:
    return DOC.format(name=name, base=base, provider=provider, interval=interval)


def run(stdin: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(stdin))
        code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_stream_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    stream = "---\n".join(doc(n) for n in ("a", "b", "c"))
    code, out, _ = run(stream, "-", capsys=capsys)
    assert code == 0
    assert "3 valid PracticeWriteback document(s): all valid" in out


def test_a_problem_names_the_stream_line_the_document_and_the_source_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = doc("a") + "---\n" + doc("b", base="dentrix", interval="60") + "---\n" + doc("c")
    code, out, _ = run(stream, "-", capsys=capsys)
    assert code == 1
    [problem] = [x for x in out.splitlines() if x.startswith("<stdin>:")]
    line = stream.splitlines().index("      interval: 60") + 1
    assert problem.startswith(f"<stdin>:{line}:7: spec.sync.appointments.interval: ")
    assert problem.endswith(
        "[document 2 (PracticeWriteback dental/b, from base/dentrix/practice.yaml, "
        "patched by practices/b/kustomization.yaml)]"
    )

    code, out, _ = run(stream, "-", "-o", "json", capsys=capsys)
    assert code == 1
    [found] = json.loads(out)["problems"]
    assert found["file"] == "<stdin>" and found["line"] == line
    assert found["document"].startswith("document 2 (PracticeWriteback dental/b")


def test_without_annotations_the_document_is_named_by_index_kind_and_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain = doc("z", provider="01")
    plain = plain[: plain.index("  annotations:")] + plain[plain.index("  name: z") :]
    report = validate_stream(doc("y") + "---\n" + plain)
    [problem] = report.problems
    assert problem.path == "spec.providerId"
    assert problem.document == "document 2 (PracticeWriteback dental/z)"


def test_a_syntax_error_names_the_document_it_is_in() -> None:
    report = validate_stream(doc("a") + "---\n" + doc("b") + "---\nkind: [oops\n")
    [problem] = report.problems
    assert problem.document == "document 3"
    assert problem.line >= doc("a").count("\n") * 2


def test_the_same_name_twice_in_a_stream_is_a_problem() -> None:
    report = validate_stream(doc("a") + "---\n" + doc("a"))
    assert any("also defined" in p.message for p in report.problems)


def test_a_stream_may_be_larger_than_the_file_size_cap() -> None:
    names = [f"practice-{i:05d}" for i in range(2_500)]
    stream = "---\n".join(doc(n) for n in names)
    assert len(stream) > 1 << 20
    report = validate_stream(stream)
    assert report.ok and len(report.documents) == 2_500


def test_stdin_with_other_paths_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("", "-", "practices", capsys=capsys)
    assert code == 2
    assert "cannot be combined" in err


def test_reading_in_pieces_equals_reading_whole_documents() -> None:
    tricky = [
        doc("a"),
        "# a comment first\n" + doc("b"),
        "kind: PracticeWriteback\nspec: {practiceId: x}\n",
        "- a list\n- at the top\n",
        "a: &x {k: 1}\nb: *x\n",
        "spec:\n  a: 1\n  a: 2\n",
        "spec:\n  writeback:\n    outgoingSms: {allow: true}\n  sync: null\n",
        "__pmsctl_pieces__: 1\nspec:\n  a: 1\n  b: 2\n",
        "kind: X\nspec:\n  a: |\n    text\n  b: [1, 2]\nstatus: {}\n",
        "spec:\n  a: 1\nspec:\n  b: 2\n",
        'spec:\n  "": 1\n  b: 2\n',
    ]
    cache = StreamCache()
    for text in tricky:
        assert read_document(text, cache) == yaml.safe_load(text), text


def test_split_documents_keeps_line_numbers() -> None:
    stream = "a: 1\n---\nb: 2\nc: 3\n--- # comment\n\n---\nd: 4\n"
    assert split_documents(stream) == [(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (8, "d: 4\n")]


CASES = Path(__file__).resolve().parent / "cases"


def test_the_piecewise_schema_verdict_equals_the_whole_documents_on_every_case() -> None:
    """The fast path of a rendered stream checks a document's parts (cached by text); on every
    case in tests/cases/ its verdict is the compiled validator's verdict on the whole."""
    cache = StreamCache()
    checked = {True: 0, False: 0}
    for path in sorted(CASES.glob("*/*.yaml")):
        for _, chunk in split_documents(path.read_text()):
            try:
                body, texts = _read(chunk, cache)
            except yaml.YAMLError:
                continue
            if not isinstance(body, dict):
                continue
            whole = is_valid_body(body)
            assert _valid(body, texts, cache) is whole, path
            checked[whole] += 1
    assert checked[True] >= 5 and checked[False] >= 50


def test_the_piecewise_verdict_sees_the_provider_rule_and_unknown_keys() -> None:
    cache = StreamCache()
    good = doc("a")
    variants = {
        good: True,
        good.replace('providerId: "1"', "providerId: DDS1"): False,  # not a ProvNum
        good.replace("type: OpenDental", "type: Dentrix").replace(
            'providerId: "1"', "providerId: DDS1"
        ): True,
        good.replace("  practiceId: a\n", "  practiceId: a\n  colour: blue\n"): False,
        good.replace("interval: 60s", "interval: 60"): False,
        good.replace("  name: a\n", ""): False,
    }
    for text, valid in variants.items():
        body, texts = _read(text, cache)
        assert texts is not None
        assert is_valid_body(body) is valid
        assert _valid(body, texts, cache) is valid, text
