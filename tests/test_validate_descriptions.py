"""The schema's descriptions are the help a newcomer reads: `kubectl explain` and editors show them.

Real: the hand-written schema (through `validate.load_schema()`), the generated CRD, jsonschema
(with the validator's own keywords), and for the last test the real kube-apiserver and kubectl
from the testenv. Every field of the resource (status aside) says its format and gives an
example, every field with a default names it, every duration says it is a Go duration; each
example is itself valid for its field, so the help cannot drift from the rules.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import testenv
import yaml
from timing import wait_until

from reconciler.api import validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = re.compile(r"Example: `([^`]+)`\.")
DURATION_REF = "#/$defs/duration"


def _fields(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(dotted path, the node as kubectl explain sees it, is a duration) for every property
    below `node`; a `$ref`'s siblings (description, default) win over its target, as in the
    CRD."""
    defs = validate.load_schema()["$defs"]
    for name, raw in node.get("properties", {}).items():
        if name == "status":
            continue
        merged = dict(raw)
        is_duration = raw.get("$ref") == DURATION_REF
        while "$ref" in merged:
            target = defs[merged.pop("$ref").removeprefix("#/$defs/")]
            merged = {**target, **merged}
        where = f"{path}.{name}" if path else name
        yield where, merged, is_duration
        yield from _fields(merged, where)


FIELDS = list(_fields(validate.load_schema()))
LEAVES = [(p, n, d) for p, n, d in FIELDS if n.get("type") != "object"]


def _yaml_word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_the_walk_sees_every_leaf_including_the_three_intervals() -> None:
    paths = {p for p, _, _ in LEAVES}
    assert {
        f"spec.sync.{k}.interval" for k in ("appointmentStatus", "appointments", "patients")
    } <= paths
    assert {"spec.pms.timeoutSeconds", "spec.providerId", "metadata.name"} <= paths
    assert len(LEAVES) >= 20


@pytest.mark.parametrize(("path", "node", "duration"), LEAVES, ids=[p for p, _, _ in LEAVES])
def test_every_leaf_gives_an_example_and_its_default(
    path: str, node: dict[str, Any], duration: bool
) -> None:
    description = node["description"]
    assert EXAMPLE.search(description), f"{path}: no 'Example: `...`.' in {description!r}"
    if "default" in node:
        assert f"Default: {_yaml_word(node['default'])}." in description, path
    if duration:
        assert "Go duration" in description and "h, m, s or ms" in description, path


@pytest.mark.parametrize(
    ("path", "node"),
    [(p, n) for p, n, _ in FIELDS if EXAMPLE.search(n["description"])],
    ids=[p for p, n, _ in FIELDS if EXAMPLE.search(n["description"])],
)
def test_every_example_is_valid_for_its_field(path: str, node: dict[str, Any]) -> None:
    (example,) = EXAMPLE.findall(node["description"])
    value = yaml.safe_load(example)
    checker = validate._jsonschema().evolve(
        schema={**node, "$defs": validate.load_schema()["$defs"]}
    )
    assert [e.message for e in checker.iter_errors(value)] == [], (path, example)


def test_the_crd_carries_the_same_descriptions() -> None:
    crd = yaml.safe_load(
        (ROOT / "crds" / "writeback.dental.dev_practicewritebacks.yaml").read_text(encoding="utf-8")
    )
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    interval = spec["properties"]["sync"]["properties"]["patients"]["properties"]["interval"]
    assert "Go duration" in interval["description"] and "Default: 30s." in interval["description"]
    assert interval["default"] == "30s"


@pytest.mark.kube
def test_kubectl_explain_shows_format_default_and_example_of_an_interval(
    kube: testenv.Cluster, crd_installed: list[str]
) -> None:
    # kubectl explain reads the OpenAPI v3 document, which the API server republishes a moment
    # after a CRD becomes Established; allow it that moment.
    answers: list[Any] = []

    def explained() -> bool:
        answers.append(
            kube.kubectl("explain", "practicewriteback.spec.sync.patients.interval", check=False)
        )
        return answers[-1].returncode == 0

    with contextlib.suppress(AssertionError):  # the assertion below says why, with stderr
        wait_until(explained, 20, "kubectl explain", step=0.5)
    answer = answers[-1]
    assert answer.returncode == 0, answer.stderr
    shown = " ".join(answer.stdout.split())
    for part in ("Go duration", "from 5s to 1h", "Default: 30s.", "Example: `1m30s`."):
        assert part in shown, (part, shown)
