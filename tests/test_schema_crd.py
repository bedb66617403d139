"""The one schema and the CRD generated from it.

Real: the schema file in schemas/, the generator, jsonschema's metaschema check, files written
to a temporary checkout for the drift check. The API server's verdicts are compared with
`pmsctl validate` in the kube tests (another module); here the CRD's shape is checked offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pms_drivers import records
from reconciler.api import crdgen, validate

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / crdgen.SCHEMA_FILENAME
CRD_PATH = ROOT / "crds" / crdgen.CRD_FILENAME


def _crd() -> dict[str, Any]:
    docs = list(yaml.safe_load_all(CRD_PATH.read_text(encoding="utf-8")))
    assert len(docs) == 1
    crd: dict[str, Any] = docs[0]
    return crd


def _openapi() -> dict[str, Any]:
    schema: dict[str, Any] = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, sub in node.get("properties", {}).items():
        out.extend(_walk(sub, f"{path}.{key}"))
    if isinstance(node.get("additionalProperties"), dict):
        out.extend(_walk(node["additionalProperties"], f"{path}.*"))
    if "items" in node:
        out.extend(_walk(node["items"], f"{path}[]"))
    return out


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_the_package_reads_the_one_schema_in_schemas() -> None:
    assert validate.load_schema() == json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_checked_in_crd_is_what_the_generator_writes() -> None:
    assert crdgen.main(["--check"]) == 0


def test_check_fails_when_the_crd_drifts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for part in ("schemas", "crds"):
        shutil.copytree(ROOT / part, tmp_path / part)
    crd = tmp_path / "crds" / crdgen.CRD_FILENAME
    crd.write_text(
        crd.read_text(encoding="utf-8").replace("shortNames:\n    - pwb", "shortNames:\n    - pw"),
        encoding="utf-8",
    )
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "make crds" in capsys.readouterr().err
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0


def test_check_fails_when_a_generated_schema_node_is_edited_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for part in ("schemas", "crds"):
        shutil.copytree(ROOT / part, tmp_path / part)
    schema = tmp_path / "schemas" / crdgen.SCHEMA_FILENAME
    text = schema.read_text(encoding="utf-8")
    edited = text.replace(
        '"enum": ["OpenDental", "Eaglesoft", "Dentrix"]', '"enum": ["OpenDental"]'
    )
    assert edited != text
    schema.write_text(edited, encoding="utf-8")
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"schemas/{crdgen.SCHEMA_FILENAME} is not what the generator writes" in (
        capsys.readouterr().err
    )
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert schema.read_text(encoding="utf-8") == text  # only the generated node changed back


def test_regenerating_keeps_the_hand_written_rest_of_the_schema_byte_for_byte() -> None:
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    assert crdgen.regenerate_schema(text, records.RECORDS) == text


def test_a_schema_without_a_generated_node_is_refused() -> None:
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    unmarked = text.replace(crdgen.GENERATED + "pms-type", "hand-written")
    with pytest.raises(crdgen.GeneratorError, match="pms-type"):
        crdgen.regenerate_schema(unmarked, records.RECORDS)


def test_every_schema_node_has_a_type_and_a_description_and_no_json_schema_only_keyword() -> None:
    forbidden = {
        "$ref",
        "allOf",
        "anyOf",
        "oneOf",
        "if",
        "then",
        "const",
        "x-rule",
        "x-duration",
        "x-messages",
        "unevaluatedProperties",
    }
    for path, node in _walk(_openapi()):
        assert "type" in node, path
        assert not forbidden & set(node), (path, forbidden & set(node))
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if path.startswith((".spec", ".status")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows it)"


def test_crd_names_scope_subresource_and_printer_columns() -> None:
    spec = _crd()["spec"]
    assert spec["group"] == "writeback.dental.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["pwb"]
    assert spec["names"]["categories"] == ["dental"]
    alpha, v1 = spec["versions"]
    assert alpha["name"] == "v1alpha1" and alpha["served"] and not alpha["storage"]
    assert (
        alpha["deprecated"] is True and "use writeback.dental.dev/v1" in alpha["deprecationWarning"]
    )
    assert v1["name"] == "v1" and v1["served"] and v1["storage"] and "deprecated" not in v1
    assert spec["conversion"]["strategy"] == "Webhook"
    assert spec["conversion"]["webhook"]["clientConfig"]["service"]["path"] == "/convert"
    for version in (alpha, v1):
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns == {
            "PMS": ".spec.pms.type",
            "Provider": ".spec.providerId",
            "Ready": '.status.conditions[?(@.type=="Ready")].status',
            "Reason": '.status.conditions[?(@.type=="Ready")].reason',
            "Age": ".metadata.creationTimestamp",
        }


def test_defaults_come_from_the_schema() -> None:
    spec = _openapi()["properties"]["spec"]["properties"]
    assert spec["pms"]["properties"]["timeoutSeconds"]["default"] == 10
    assert spec["patientProfilePhotos"]["default"] is False
    assert spec["suspend"]["default"] is False
    sync = spec["sync"]["properties"]
    assert {k: v["properties"]["interval"]["default"] for k, v in sync.items()} == {
        "appointmentStatus": "15s",
        "appointments": "60s",
        "patients": "30s",
    }


def test_cross_field_rules_become_cel_with_messages() -> None:
    spec = _openapi()["properties"]["spec"]
    rules = spec["x-kubernetes-validations"]
    assert len(rules) == 3
    for rule, pms, pattern in zip(
        rules,
        ("OpenDental", "Eaglesoft", "Dentrix"),
        ("^[1-9][0-9]{0,9}$", "^[A-Za-z0-9]{1,10}$", "^[A-Za-z0-9_-]{4,10}$"),
        strict=True,
    ):
        assert f'self.pms.type == "{pms}"' in rule["rule"]
        assert f"self.providerId.matches({json.dumps(pattern)})" in rule["rule"]
        assert rule["fieldPath"] == ".providerId" and rule["message"].startswith(f"for {pms}")
    for name, setting in spec["properties"]["writeback"]["properties"].items():
        (rule,) = setting["x-kubernetes-validations"]
        assert rule["rule"] == "!(has(self.allow) && self.allow == true) || (has(self.noteType))", (
            name
        )
    for name, kind in spec["properties"]["sync"]["properties"].items():
        interval = kind["properties"]["interval"]
        assert (
            interval["x-kubernetes-validations"][0]["rule"]
            == 'duration(self) >= duration("5s") && duration(self) <= duration("1h")'
        ), name
        assert interval["maxLength"] <= 64  # keeps the CEL cost estimate small
    for mapping in spec["properties"]["documents"]["properties"].values():
        assert mapping["minProperties"] == 1


def test_generator_refuses_a_rule_it_cannot_translate() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    schema["$defs"]["spec"]["allOf"].append(
        {"x-rule": {"message": "m"}, "if": {"not": {}}, "then": {"required": ["x"]}}
    )
    with pytest.raises(crdgen.GeneratorError):
        crdgen.build_crd(schema)


def test_status_conditions_are_a_map_list_keyed_by_type() -> None:
    conditions = _openapi()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
