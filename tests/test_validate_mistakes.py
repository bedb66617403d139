"""The mistakes people really make in a practice file, and the message each one gets.

Real: the validator (`reconciler.api.validate.validate_text`), libyaml and the packaged schema;
nothing is faked. One row per mistake: the file text (the valid full case
with one thing broken), and the substring the report must contain, which holds the file, the
line and column, the field path and the fix. A message that stops naming its fix fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.api import validate

ROOT = Path(__file__).resolve().parent.parent
FILE = "practices/acme.yaml"
#: The full valid case without its `# case:` line, so that apiVersion is on line 1 (25 lines).
BASE = (
    (ROOT / "tests" / "cases" / "valid" / "full-base.yaml")
    .read_text(encoding="utf-8")
    .split("\n", 1)[1]
)


def _swap(old: str, new: str, count: int = 1) -> str:
    assert BASE.count(old) >= count, f"{old!r} is not in the base file"
    return BASE.replace(old, new, count)


#: (mistake, file text, expected substring of one reported problem)
MISTAKES: list[tuple[str, str, str]] = [
    (
        "tab-indentation",
        _swap("    url:", "\turl:"),
        f"{FILE}:10:1: <file>: line 10 is indented with a tab; "
        "YAML does not allow tabs for indentation; indent with spaces",
    ),
    (
        "key-indented-less-than-its-siblings",
        _swap("    url:", "   url:"),
        f"{FILE}:10:4: <file>: YAML syntax error: while parsing a block mapping, did not find "
        "expected key; line 10 is indented 3 spaces and line 9 4: "
        "keys of one mapping start in the same column",
    ),
    (
        "key-indented-deeper-than-the-line-above",
        _swap("    url:", "      url:"),
        f"{FILE}:10:10: <file>: YAML syntax error: mapping values are not allowed in this context; "
        "line 10 is indented deeper than line 9, which already has a value: "
        "line it up with line 9 (or quote a value that contains ': ')",
    ),
    (
        "key-indented-into-the-wrong-mapping",
        _swap("    url: https://pms.example.com/api/v1\n", "").replace(
            "  suspend: false\n", "  suspend: false\n  url: https://pms.example.com/api/v1\n"
        ),
        f"{FILE}:25:3: spec.url: unknown field 'url'; url is a field of spec.pms: "
        "check its indentation",
    ),
    (
        "value-with-colon-space-unquoted",
        _swap("displayName: Case Practice", "displayName: Case: Practice"),
        f"{FILE}:7:20: <file>: YAML syntax error: mapping values are not allowed in this context; "
        'a value that contains ": " must be quoted: displayName: "Case: Practice"',
    ),
    (
        "no-space-after-colon-before-a-key",
        _swap("    type: OpenDental", "    type:OpenDental"),
        f"{FILE}:10:8: <file>: YAML syntax error: mapping values are not allowed in this context; "
        "put a space after the colon on line 9: type: OpenDental",
    ),
    (
        "no-space-after-colon-last-key",
        _swap("      name: case-pms", "      name:case-pms"),
        f"{FILE}:11:5: spec.pms.credentialsSecretRef: expected a mapping, got the string "
        "'name:case-pms'; put a space after the colon: name: case-pms",
    ),
    (
        "unquoted-number-with-leading-zeros",
        _swap('providerId: "1"', "providerId: 0042"),
        f"{FILE}:14:3: spec.providerId: expected a string, got the number 34 (YAML reads the "
        'unquoted 0042 as a number and drops its leading zeros); quote it: providerId: "0042"',
    ),
    (
        "unquoted-number-for-a-string",
        _swap("practiceId: valid-full-base", "practiceId: 1001"),
        f'{FILE}:6:3: spec.practiceId: expected a string, got the number 1001; quote it: practiceId: "1001"',
    ),
    (
        "unquoted-word-yaml-reads-as-a-boolean",
        _swap("noteType: Text Message", "noteType: Off"),
        f"{FILE}:16:32: spec.writeback.outgoingSms.noteType: expected a string, got the boolean "
        'false; quote it: noteType: "Off"',
    ),
    (
        "boolean-written-as-a-string",
        _swap("suspend: false", 'suspend: "yes"'),
        f"{FILE}:25:3: spec.suspend: expected a boolean (true or false), got the string 'yes'; "
        "write it without quotes: suspend: true",
    ),
    (
        "number-written-with-a-unit",
        _swap("timeoutSeconds: 10", "timeoutSeconds: 10s"),
        f"{FILE}:13:5: spec.pms.timeoutSeconds: expected an integer, got the string '10s'; "
        "write the number alone: timeoutSeconds: 10",
    ),
    (
        "misspelled-key",
        _swap("interval: 30s", "intervall: 30s"),
        f"{FILE}:23:31: spec.sync.patients.intervall: unknown field 'intervall' "
        "(did you mean 'interval'?); allowed fields: enabled, interval",
    ),
    (
        "unknown-note-type-key",
        _swap("outgoingSms:", "outgoingSMS:"),
        f"{FILE}:16:5: spec.writeback.outgoingSMS: unknown field 'outgoingSMS' "
        "(did you mean 'outgoingSms'?)",
    ),
    (
        "wrong-pms-type",
        _swap("type: OpenDental", "type: OpenDentl"),
        f"{FILE}:9:5: spec.pms.type: 'OpenDentl' is not one of OpenDental, Eaglesoft, Dentrix "
        "(did you mean OpenDental?)",
    ),
    (
        "pms-type-in-the-wrong-case",
        _swap("type: OpenDental", "type: opendental"),
        f"{FILE}:9:5: spec.pms.type: 'opendental' is not one of OpenDental, Eaglesoft, Dentrix "
        "(did you mean OpenDental?)",
    ),
    (
        "http-url-to-a-remote-host",
        _swap("https://pms.example.com", "http://pms.example.com"),
        f"{FILE}:10:5: spec.pms.url: 'http://pms.example.com/api/v1' uses http:// for a remote "
        "host; use https://pms.example.com/api/v1 (http:// only for 127.0.0.1, localhost or [::1])",
    ),
    (
        "duration-without-a-unit",
        _swap("interval: 30s", "interval: 30"),
        f"{FILE}:23:31: spec.sync.patients.interval: expected a string, got the number 30; "
        "a duration needs a unit: interval: 30s",
    ),
    (
        "quoted-duration-without-a-unit",
        _swap("interval: 30s", 'interval: "30"'),
        f"{FILE}:23:31: spec.sync.patients.interval: '30' is not a duration like 15s, 1m or 1m30s "
        "(units h, m, s, ms); a duration needs a unit: interval: 30s",
    ),
    (
        "duration-in-words",
        _swap("interval: 30s", "interval: 30 sec"),
        f"{FILE}:23:31: spec.sync.patients.interval: '30 sec' is not a duration like 15s, 1m or "
        "1m30s (units h, m, s, ms) (did you mean interval: 30s?)",
    ),
    (
        "a-value-where-a-mapping-belongs",
        _swap(
            "    credentialsSecretRef:\n      name: case-pms\n",
            "    credentialsSecretRef: case-pms\n",
        ),
        f"{FILE}:11:5: spec.pms.credentialsSecretRef: expected a mapping, got the string "
        "'case-pms'; add name indented below it",
    ),
    (
        "a-nested-key-indented-like-its-parent",
        _swap(
            "    credentialsSecretRef:\n      name: case-pms\n",
            "    credentialsSecretRef:\n    name: case-pms\n",
        ),
        f"{FILE}:12:5: spec.pms.name: unknown field 'name'; name is a field of "
        "spec.pms.credentialsSecretRef: check its indentation",
    ),
    (
        "duration-out-of-range",
        _swap("interval: 30s", "interval: 2s"),
        f"{FILE}:23:31: spec.sync.patients.interval: '2s' is below the minimum of 5s",
    ),
    (
        "missing-required-field",
        _swap("    url: https://pms.example.com/api/v1\n", ""),
        f"{FILE}:8:3: spec.pms.url: is required",
    ),
    (
        "duplicate-key",
        _swap("  suspend: false\n", "  suspend: false\n  suspend: true\n"),
        f"{FILE}:26:3: spec.suspend: duplicate key 'suspend' (first at line 25); "
        "YAML keeps only one of them: delete one",
    ),
    (
        "wrong-api-version",
        _swap("writeback.dental.dev/v1alpha1", "writeback.dental.dev/v2"),
        f"{FILE}:1:1: apiVersion: 'writeback.dental.dev/v2' is not supported; "
        "use writeback.dental.dev/v1 or writeback.dental.dev/v1alpha1",
    ),
    (
        "v1-with-a-v1alpha1-field",
        _swap("writeback.dental.dev/v1alpha1", "writeback.dental.dev/v1"),
        f"{FILE}:24:3: spec.patientProfilePhotos: unknown field 'patientProfilePhotos'; "
        "in writeback.dental.dev/v1 it is spec.sync.patients.profilePhotos "
        "(`pmsctl migrate` moves it)",
    ),
    (
        "kind-in-the-wrong-case",
        _swap("kind: PracticeWriteback", "kind: PracticeWriteBack"),
        f"{FILE}:2:1: kind: 'PracticeWriteBack' is not PracticeWriteback "
        "(did you mean PracticeWriteback? kinds are case-sensitive)",
    ),
    (
        "missing-metadata-name",
        _swap("  name: valid-full-base\n", "  namespace: dental\n"),
        f"{FILE}:3:1: metadata.name: is required",
    ),
    (
        "invalid-metadata-name",
        _swap("name: valid-full-base", "name: Acme_Dental"),
        f"{FILE}:4:3: metadata.name: 'Acme_Dental' is not a lowercase RFC 1123 subdomain "
        "(lowercase letters, digits, '-' and '.', starting and ending with a letter or digit); "
        "for example 'acme-dental'",
    ),
    (
        "provider-id-in-another-pms-format",
        _swap('providerId: "1"', "providerId: DDS1"),
        f"{FILE}:14:3: spec.providerId: 'DDS1': for OpenDental, providerId is a ProvNum: "
        '1-10 digits, not starting with 0 (for example "1")',
    ),
    (
        "document-type-without-categories",
        _swap(
            "    insuranceVerification:\n      writeTo: Insurance Verification\n",
            "    insuranceVerification:\n",
        ),
        f"{FILE}:19:5: spec.documents.insuranceVerification: expected a mapping, got null; "
        "add writeTo or readFrom indented below it",
    ),
    (
        "document-type-with-an-empty-mapping",
        _swap(
            "    insuranceVerification:\n      writeTo: Insurance Verification\n",
            "    insuranceVerification: {}\n",
        ),
        f"{FILE}:19:5: spec.documents.insuranceVerification: set at least one of writeTo and readFrom",
    ),
    (
        "writeback-allowed-without-a-note-type",
        _swap("{allow: true, noteType: Text Message}", "{allow: true}"),
        f"{FILE}:16:5: spec.writeback.outgoingSms.noteType: noteType is required when allow is true",
    ),
    (
        "inline-credentials",
        _swap("    timeoutSeconds: 10\n", "    timeoutSeconds: 10\n    customerKey: abc123\n"),
        f"{FILE}:14:5: spec.pms.customerKey: do not put credentials in the resource; "
        "reference a Secret with spec.pms.credentialsSecretRef.name",
    ),
    (
        "secret-reference-indented-one-level-too-far-out",
        _swap("    credentialsSecretRef:\n      name: case-pms\n", "").replace(
            "  providerId:", "  credentialsSecretRef:\n    name: case-pms\n  providerId:"
        ),
        f"{FILE}:12:3: spec.credentialsSecretRef: unknown field 'credentialsSecretRef'; "
        "credentialsSecretRef is a field of spec.pms: check its indentation",
    ),
    (
        "empty-file",
        "# acme\n",
        f"{FILE}:1:1: <file>: the file is empty; expected a PracticeWriteback document",
    ),
]


def test_the_table_holds_at_least_twenty_mistakes_each_once() -> None:
    names = [name for name, _, _ in MISTAKES]
    assert len(names) >= 20 and len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in MISTAKES], ids=[n for n, _, _ in MISTAKES]
)
def test_each_common_mistake_gets_a_message_with_position_and_fix(text: str, expected: str) -> None:
    docs, problems = validate.validate_text(text, FILE)
    shown = [str(p) for p in problems]
    assert docs == []
    assert any(expected in line for line in shown), f"expected {expected!r} in {shown}"


def test_the_leading_zero_note_appears_only_when_zeros_were_lost() -> None:
    _, problems = validate.validate_text(_swap('providerId: "1"', "providerId: 42"), FILE)
    (problem,) = problems
    assert problem.message == 'expected a string, got the number 42; quote it: providerId: "42"'


def test_a_suggestion_is_offered_only_for_a_close_name() -> None:
    _, problems = validate.validate_text(_swap("type: OpenDental", "type: Curve"), FILE)
    (problem,) = problems
    assert problem.message == "'Curve' is not one of OpenDental, Eaglesoft, Dentrix"
    _, problems = validate.validate_text(_swap("interval: 30s", "colour: 30s"), FILE)
    assert "did you mean" not in str(problems) and "allowed fields: enabled, interval" in str(
        problems
    )


def test_a_tab_inside_a_value_is_fine_and_a_tab_in_a_block_scalar_too() -> None:
    docs, problems = validate.validate_text(_swap("suspend: false", "suspend:\tfalse"), FILE)
    assert problems == [] and len(docs) == 1
    text = _swap("  displayName: Case Practice\n", "  displayName: |\n    Case\tPractice\n")
    docs, problems = validate.validate_text(text, FILE)
    assert problems == [] and docs[0].body["spec"]["displayName"] == "Case\tPractice\n"


def test_a_misspelled_kind_is_reported_even_when_other_kinds_are_skipped() -> None:
    text = _swap("kind: PracticeWriteback", "kind: PracticeWriteBack")
    docs, problems = validate.validate_text(text, FILE, skip_other_kinds=True)
    assert docs == [] and [p.path for p in problems] == ["kind"]


def test_a_key_every_sibling_holds_is_sent_to_those_siblings() -> None:
    text = _swap("  sync:\n", "  sync:\n    interval: 30s\n")
    _, problems = validate.validate_text(text, FILE)
    assert [str(p) for p in problems] == [
        f"{FILE}:22:5: spec.sync.interval: unknown field 'interval'; interval is a field of "
        "each entry under spec.sync: check its indentation"
    ]
