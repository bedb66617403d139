"""The suggestions behind the validator's messages (`reconciler.api.hints`), as tables.

Pure functions over plain values: nothing to fake.
"""

from __future__ import annotations

import pytest

from reconciler.api import hints


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("interval", "interval", 0),
        ("intervall", "interval", 1),
        ("inetrval", "interval", 1),  # a transposition is one edit
        ("OpenDentl", "OpenDental", 1),
        ("kitten", "sitting", 3),
        ("", "abc", 3),
    ],
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert hints.edit_distance(a, b) == distance
    assert hints.edit_distance(b, a) == distance


@pytest.mark.parametrize(
    ("word", "options", "expected"),
    [
        ("OpenDentl", ["OpenDental", "Eaglesoft", "Dentrix"], "OpenDental"),
        ("opendental", ["OpenDental", "Eaglesoft", "Dentrix"], "OpenDental"),
        ("dentrix", ["OpenDental", "Eaglesoft", "Dentrix"], "Dentrix"),
        ("Curve", ["OpenDental", "Eaglesoft", "Dentrix"], None),
        ("outgoingSMS", ["incomingSms", "outgoingSms", "outgoingEmail"], "outgoingSms"),
        ("colour", ["enabled", "interval"], None),
        ("interval", ["enabled", "interval"], None),  # the word itself is no suggestion
        ("x", [], None),
    ],
)
def test_closest_suggests_only_a_likely_typo(
    word: str, options: list[str], expected: str | None
) -> None:
    assert hints.closest(word, options) == expected


@pytest.mark.parametrize(
    ("source", "value", "lost"),
    [("0042", 34, True), ("007", 7, True), ("42", 42, False), ("0", 0, False), ("0.5", 0.5, False)],
)
def test_leading_zeros_lost(source: str, value: object, lost: bool) -> None:
    assert hints.leading_zeros_lost(source, value) is lost


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("30 sec", "30s"),
        ("30S", "30s"),
        ("1 minute 30 seconds", "1m30s"),
        ("1 Hour", "1h"),
        ("500 ms", "500ms"),
        ("1m30s", None),  # already a Go duration
        ("30", None),  # no unit to translate
        ("thirty seconds", None),
        ("30 fortnights", None),
    ],
)
def test_duration_reads_unit_words(text: str, meant: str | None) -> None:
    assert hints.duration(text) == meant


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Acme_Dental", "acme-dental"),
        ("Bright Smiles!", "bright-smiles"),
        ("--a..b--", "a.b"),
        ("___", None),
    ],
)
def test_dns_name(text: str, name: str | None) -> None:
    assert hints.dns_name(text) == name


@pytest.mark.parametrize(
    ("line", "pair"),
    [
        ("    type:OpenDental", ("type", "OpenDental")),
        ("name:case-pms", ("name", "case-pms")),
        ("  - key:value", ("key", "value")),
        ("    type: OpenDental", None),
        ("url: http://x", None),
        ("http://pms.example.com", None),
        ("plain text", None),
    ],
)
def test_missing_space_after_colon(line: str, pair: tuple[str, str] | None) -> None:
    assert hints.missing_space_after_colon(line) == pair


def test_quoted_escapes_what_a_double_quoted_yaml_string_needs() -> None:
    assert hints.quoted("noteType", 'Say "hi" \\o/') == 'noteType: "Say \\"hi\\" \\\\o/"'


def test_a_credential_looking_key_never_has_its_value_shown() -> None:
    assert hints.quoted("apiKey", "12345") == 'apiKey: "..."'
    assert hints.missing_space_after_colon("  password:hunter2") == ("password", "...")
