"""Conversion between writeback.dental.dev/v1alpha1 and v1 (reconciler.api.convert).

Real: the conversion functions, both hand-written schemas (through `validate.is_valid_body`, the
same check `pmsctl validate` runs) and PracticeSpec. A table of hand-picked cases, then a
property test over generated resources of both versions: every conversion gives a valid object
of the target version, and both round trips give back the very same object.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.api import convert, validate
from reconciler.api.convert import V1, V1_FIELDS, V1ALPHA1, V1ALPHA1_FIELDS, ConversionError
from reconciler.api.spec import PracticeSpec


def _alpha(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": V1ALPHA1,
        "kind": "PracticeWriteback",
        "metadata": {"name": "acme", "namespace": "dental"},
        "spec": {
            "practiceId": "acme",
            "pms": {
                "type": "OpenDental",
                "url": "https://pms.acme.example/api/v1",
                "credentialsSecretRef": {"name": "acme-pms"},
            },
            "providerId": "1",
            **spec,
        },
    }


def _v1(**spec: Any) -> dict[str, Any]:
    return {**_alpha(**spec), "apiVersion": V1}


PATIENTS = {"enabled": True, "interval": "30s"}

# (name, v1alpha1 object, the v1 object it converts to)
TABLE: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("nothing to move", _alpha(), _v1()),
    (
        "photos move under sync.patients",
        _alpha(patientProfilePhotos=True, sync={"patients": PATIENTS}),
        _v1(sync={"patients": {**PATIENTS, "profilePhotos": True}}),
    ),
    (
        "photos false move too",
        _alpha(patientProfilePhotos=False, sync={"patients": PATIENTS}),
        _v1(sync={"patients": {**PATIENTS, "profilePhotos": False}}),
    ),
    (
        "photos without a patient sync are kept in an annotation",
        _alpha(patientProfilePhotos=True, sync={"appointments": {"enabled": True}}),
        {
            **_v1(sync={"appointments": {"enabled": True}}),
            "metadata": {
                "name": "acme",
                "namespace": "dental",
                "annotations": {V1ALPHA1_FIELDS: '{"patientProfilePhotos":true}'},
            },
        },
    ),
    (
        "readFrom becomes a list of one",
        _alpha(documents={"accountStatement": {"readFrom": "Statements", "writeTo": "Out"}}),
        _v1(documents={"accountStatement": {"readFrom": ["Statements"], "writeTo": "Out"}}),
    ),
    (
        "the further readFrom names come back from the v1-fields annotation",
        {
            **_alpha(documents={"accountStatement": {"readFrom": "A"}}),
            "metadata": {
                "name": "acme",
                "namespace": "dental",
                "annotations": {
                    "owner": "desk",
                    V1_FIELDS: '{"readFrom":{"accountStatement":["B","C"]}}',
                },
            },
        },
        {
            **_v1(documents={"accountStatement": {"readFrom": ["A", "B", "C"]}}),
            "metadata": {"name": "acme", "namespace": "dental", "annotations": {"owner": "desk"}},
        },
    ),
]


@pytest.mark.parametrize(("name", "alpha", "v1"), TABLE, ids=[t[0] for t in TABLE])
def test_table_converts_both_ways(name: str, alpha: dict[str, Any], v1: dict[str, Any]) -> None:
    before = copy.deepcopy(alpha)
    assert convert.convert(alpha, V1) == v1
    assert alpha == before  # the input is not modified
    assert convert.convert(v1, V1ALPHA1) == alpha
    assert validate.is_valid_body(convert.convert(alpha, V1))
    assert PracticeSpec.from_resource(alpha) == PracticeSpec.from_resource(v1)


def test_v1_only_data_survives_a_trip_through_v1alpha1() -> None:
    v1 = _v1(
        documents={"insuranceVerification": {"readFrom": ["Cards", "Old Cards"]}},
        sync={"patients": {"enabled": False, "profilePhotos": True}},
    )
    alpha = convert.convert(v1, V1ALPHA1)
    assert alpha["spec"]["documents"]["insuranceVerification"] == {"readFrom": "Cards"}
    assert alpha["spec"]["patientProfilePhotos"] is True
    assert json.loads(alpha["metadata"]["annotations"][V1_FIELDS]) == {
        "readFrom": {"insuranceVerification": ["Old Cards"]}
    }
    assert validate.is_valid_body(alpha)
    assert convert.convert(alpha, V1) == v1


def test_a_v1_change_to_the_patient_sync_wins_over_the_kept_v1alpha1_photos() -> None:
    stored = convert.convert(_alpha(patientProfilePhotos=True), V1)
    stored["spec"]["sync"] = {"patients": {"enabled": True, "profilePhotos": False}}
    alpha = convert.convert(stored, V1ALPHA1)
    assert alpha["spec"]["patientProfilePhotos"] is False


def test_the_same_version_is_a_copy_and_unknown_versions_are_refused() -> None:
    alpha = _alpha()
    same = convert.convert(alpha, V1ALPHA1)
    assert same == alpha and same is not alpha
    with pytest.raises(ConversionError, match="v2"):
        convert.convert(alpha, "writeback.dental.dev/v2")
    with pytest.raises(ConversionError, match="v0"):
        convert.convert({**alpha, "apiVersion": "writeback.dental.dev/v0"}, V1)
    with pytest.raises(ConversionError, match="not JSON"):
        convert.convert({**alpha, "metadata": {"name": "a", "annotations": {V1_FIELDS: "{"}}}, V1)


def test_both_versions_give_the_same_practice_spec_for_the_examples() -> None:
    from pathlib import Path

    import yaml

    for path in sorted((Path(__file__).parent.parent / "practices").glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if body.get("kind") != "PracticeWriteback":
                continue
            v1 = convert.convert(body, V1)
            assert validate.is_valid_body(v1), path
            assert PracticeSpec.from_resource(v1) == PracticeSpec.from_resource(body)


# --- generated resources -----------------------------------------------------------------------

_names = st.text(alphabet="ABCDEFGHIJ abcdef", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s
)
_sync_item = st.fixed_dictionaries(
    {"enabled": st.booleans()}, optional={"interval": st.sampled_from(["5s", "30s", "1m30s"])}
)
_annotations = st.dictionaries(
    st.sampled_from(["owner", "team.example/contact", "note"]), st.text(max_size=8), max_size=2
)


@st.composite
def _metadata(draw: st.DrawFn) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "acme"}
    if draw(st.booleans()):
        meta["namespace"] = "dental"
    annotations = draw(_annotations)
    if annotations:  # the API server never stores an empty map
        meta["annotations"] = annotations
    return meta


@st.composite
def alpha_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj = _alpha()
    obj["metadata"] = draw(_metadata())
    spec = obj["spec"]
    documents = draw(
        st.dictionaries(
            st.sampled_from(["insuranceVerification", "accountStatement"]),
            st.fixed_dictionaries({}, optional={"writeTo": _names, "readFrom": _names}).filter(
                bool
            ),
        )
    )
    if documents:
        spec["documents"] = documents
    sync = draw(
        st.dictionaries(
            st.sampled_from(["appointmentStatus", "appointments", "patients"]), _sync_item
        )
    )
    if sync or draw(st.booleans()):
        spec["sync"] = sync
    if draw(st.booleans()):
        spec["patientProfilePhotos"] = draw(st.booleans())
    if draw(st.booleans()):
        obj["status"] = {"observedGeneration": draw(st.integers(0, 9))}
    return obj


@st.composite
def v1_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj = _v1()
    obj["metadata"] = draw(_metadata())
    spec = obj["spec"]
    lists = st.lists(_names, min_size=1, max_size=4, unique=True)
    documents = draw(
        st.dictionaries(
            st.sampled_from(["insuranceVerification", "accountStatement"]),
            st.fixed_dictionaries({}, optional={"writeTo": _names, "readFrom": lists}).filter(bool),
        )
    )
    if documents:
        spec["documents"] = documents
    sync = draw(st.dictionaries(st.sampled_from(["appointmentStatus", "appointments"]), _sync_item))
    if draw(st.booleans()):
        patients = draw(_sync_item)
        if draw(st.booleans()):
            patients["profilePhotos"] = draw(st.booleans())
        sync["patients"] = patients
    elif draw(st.booleans()):
        # what a v1alpha1 client left: photos on a practice without a patient sync
        photos = json.dumps({"patientProfilePhotos": draw(st.booleans())}, separators=(",", ":"))
        obj["metadata"].setdefault("annotations", {})[V1ALPHA1_FIELDS] = photos
    if sync or draw(st.booleans()):
        spec["sync"] = sync
    return obj


@settings(max_examples=150, deadline=None)
@given(alpha_objects())
def test_v1alpha1_to_v1_and_back_is_the_same_object(alpha: dict[str, Any]) -> None:
    assert validate.is_valid_body(alpha)
    v1 = convert.convert(alpha, V1)
    assert validate.is_valid_body(v1)
    assert convert.convert(v1, V1ALPHA1) == alpha
    assert PracticeSpec.from_resource(v1) == PracticeSpec.from_resource(alpha)


@settings(max_examples=150, deadline=None)
@given(v1_objects())
def test_v1_to_v1alpha1_and_back_is_the_same_object(v1: dict[str, Any]) -> None:
    assert validate.is_valid_body(v1)
    alpha = convert.convert(v1, V1ALPHA1)
    assert validate.is_valid_body(alpha)
    assert convert.convert(alpha, V1) == v1


def test_a_pure_version_bump_is_no_change_in_pmsctl_diff_and_a_further_category_is_one() -> None:
    from pathlib import Path

    from reconciler.review.diff import Resource, diff_practices
    from reconciler.review.migrate import migrate_text

    path = Path(__file__).parent.parent / "practices" / "dentrix-lakeside.yaml"
    text = path.read_text(encoding="utf-8")

    def side(source: str) -> dict[str, Resource]:
        docs, problems = validate.validate_text(source, "p.yaml")
        assert problems == []
        return {
            f"{d.namespace}/{d.name}": Resource(d.namespace or "", d.name, d.spec(), file="p.yaml")
            for d in docs
        }

    bumped = migrate_text(text).text
    report = diff_practices(side(text), side(bumped))
    assert report.practices == () and report.unchanged == 1

    more = bumped.replace("readFrom: [Insurance Cards]", "readFrom: [Insurance Cards, Old Cards]")
    assert more != bumped
    (practice,) = diff_practices(side(text), side(more)).practices
    assert [c.field for c in practice.changes] == ["spec.documents.insuranceVerification.readFrom"]
    assert "also read from 'Old Cards'" in practice.changes[0].message


def test_the_v1_schema_is_valid_packaged_and_its_pms_part_generated() -> None:
    from pathlib import Path

    import jsonschema

    from pms_drivers import records
    from reconciler.api import crdgen

    path = Path(__file__).parent.parent / "schemas" / "practicewriteback.v1.schema.json"
    text = path.read_text(encoding="utf-8")
    jsonschema.Draft202012Validator.check_schema(json.loads(text))
    assert validate.load_schema(V1) == json.loads(text)
    assert crdgen.regenerate_schema(text, records.RECORDS) == text
    assert crdgen.schema_version(json.loads(text)) == "v1"
    spec = json.loads(text)["$defs"]["spec"]["properties"]
    assert "patientProfilePhotos" not in spec
