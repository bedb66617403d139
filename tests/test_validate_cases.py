"""The acceptance table: every file under tests/cases/ through the real validator.

Real: the packaged schema, jsonschema, libyaml and `reconciler.api.validate`; nothing is faked.
Each invalid case declares `# expect: <path> @ <line>` (see tests/cases/README.md) and the test
asserts that exact problem is reported; valid cases must produce no problem. The fast boolean
checker compiled from the schema must give jsonschema's verdict on every case, on the examples
in practices/ and on a few hundred seeded random mutations of them.
"""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path
from typing import Any

import pytest

from reconciler.api import validate
from reconciler.api.yamlsource import load_documents

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "cases"
EXPECT = re.compile(r"^# expect: (\S+) @ (\d+)$", re.MULTILINE)


def _cases(folder: str) -> list[Path]:
    return sorted((CASES / folder).glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_the_table_has_cases_in_every_folder() -> None:
    assert len(_cases("valid")) >= 10
    assert len(_cases("invalid")) >= 40
    assert len(_cases("files")) >= 6


@pytest.mark.parametrize("path", _cases("valid"), ids=_ids(_cases("valid")))
def test_valid_case_has_no_problem(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not EXPECT.search(text), "valid cases carry no expect line"
    docs, problems = validate.validate_text(text, str(path))
    assert problems == []
    assert len(docs) == 1
    docs[0].spec()  # the engine's model accepts every valid document


@pytest.mark.parametrize(
    "path", _cases("invalid") + _cases("files"), ids=_ids(_cases("invalid") + _cases("files"))
)
def test_invalid_case_reports_the_expected_path_and_line(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    expected = EXPECT.findall(text)
    assert expected, f"{path.name} declares no '# expect: path @ line'"
    _, problems = validate.validate_text(text, str(path))
    found = {(p.path, p.line) for p in problems}
    for field_path, line in expected:
        assert (field_path, int(line)) in found, (
            f"missing {field_path} @ {line}; got {[str(p) for p in problems]}"
        )
    for problem in problems:
        assert str(problem).startswith(f"{path}:{problem.line}:{problem.col}: {problem.path}: ")
        assert problem.message
    shown = [str(p) for p in problems]
    assert len(shown) == len(set(shown)), f"a problem is reported twice: {shown}"


@pytest.mark.parametrize("path", _cases("invalid"), ids=_ids(_cases("invalid")))
def test_single_document_invalid_cases_make_the_whole_file_invalid(path: Path) -> None:
    docs, problems = validate.validate_text(path.read_text(encoding="utf-8"), str(path))
    assert docs == [] and problems


def _bodies() -> list[tuple[str, Any]]:
    out = []
    for path in [
        *_cases("valid"),
        *_cases("invalid"),
        *sorted((ROOT / "practices").glob("*.yaml")),
    ]:
        docs, error = load_documents(path.read_text(encoding="utf-8"))
        assert error is None
        out.extend((path.stem, d.value) for d in docs)
    return out


def _jsonschema_verdict(body: Any) -> bool:
    return not any(True for _ in validate._jsonschema().iter_errors(body))


@pytest.mark.parametrize(("name", "body"), _bodies(), ids=[n for n, _ in _bodies()])
def test_fast_checker_agrees_with_jsonschema_on_every_case(name: str, body: Any) -> None:
    assert validate.is_valid_body(body) == _jsonschema_verdict(body)


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ("/api/v1$", True),  # `$` is a literal inside the path's character class
        ("/api/v1\n", False),  # ... and the pattern's final `$` is the end of the text
    ],
)
def test_fast_checker_reads_dollar_signs_as_the_api_server_does(path: str, valid: bool) -> None:
    body = copy.deepcopy(next(b for n, b in _bodies() if n == "full-base"))
    body["spec"]["pms"]["url"] = "https://pms.example.com" + path
    assert validate.is_valid_body(body) is valid
    assert _jsonschema_verdict(body) is valid


_REPLACEMENTS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    61,
    10.0,
    "",
    "x",
    "5s",
    "4s",
    "1h",
    "61m",
    "DDS1",
    "0",
    "1",
    [],
    {},
    {"allow": True},
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    return out


def test_fast_checker_agrees_with_jsonschema_on_random_mutations() -> None:
    rng = random.Random(20261126)
    bases = [b for _, b in _bodies() if isinstance(b, dict) and validate.is_valid_body(b)]
    disagreements = []
    verdicts = set()
    for _ in range(400):
        body = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(_paths(body)[1:])
            parent = body
            for step in path[:-1]:
                parent = parent[step]
            action = rng.random()
            if action < 0.3:
                del parent[path[-1]]
            elif action < 0.4:
                parent["unknownField"] = 1
            else:
                parent[path[-1]] = copy.deepcopy(rng.choice(_REPLACEMENTS))
            if not isinstance(body, dict):
                break
        verdict = validate.is_valid_body(body)
        verdicts.add(verdict)
        if verdict != _jsonschema_verdict(body):
            disagreements.append(body)
    assert disagreements == []
    assert verdicts == {True, False}, "the mutations must produce both valid and invalid bodies"
