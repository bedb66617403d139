"""The writeback decision and the request schema, as tables over plain values.

Real: `decide()`, `parse_request()` and `PracticeSpec.from_spec()`. Nothing is faked: the
decision is pure, so a `WritebackTarget` built from a spec mapping is the whole input.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from reconciler.api.spec import DocumentType, PracticeSpec, WritebackType
from reconciler.writeback.decide import Skip, Wait, Write, decide
from reconciler.writeback.model import (
    Kind,
    RequestError,
    SkipReason,
    parse_request,
    writeback_id,
)
from reconciler.writeback.target import WritebackTarget


def spec(**over: Any) -> PracticeSpec:
    body: dict[str, Any] = {
        "practiceId": "p1",
        "pms": {"type": "OpenDental", "url": "http://x", "credentialsSecretRef": {"name": "s"}},
        "providerId": "1",
        "writeback": {
            "outgoingSms": {"allow": True, "noteType": "Text Message"},
            "incomingSms": {"allow": False, "noteType": "Text Message"},
            "missedCall": {"allow": True},
        },
        "documents": {"insuranceVerification": {"writeTo": "Insurance Verification"}},
    }
    body.update(over)
    return PracticeSpec.from_spec(body)


def target(
    s: PracticeSpec | None = None,
    provider: str | None = "1",
    notes: dict[WritebackType, str] | None = None,
    docs: dict[DocumentType, str] | None = None,
    checked: bool = True,
) -> WritebackTarget:
    return WritebackTarget(
        key="default/p1",
        spec=s or spec(),
        provider_id=provider,
        checked=checked,
        note_type_ids={WritebackType.OUTGOING_SMS: "221"} if notes is None else notes,
        document_category_ids={DocumentType.INSURANCE_VERIFICATION: "305"}
        if docs is None
        else docs,
    )


def note(kind: str = "outgoingSms") -> Any:
    return parse_request(
        "p1",
        {
            "callerId": "c1",
            "type": kind,
            "patientId": "12",
            "occurredAt": "2026-11-26T09:15:00-05:00",
            "text": "hello",
        },
    )


def document(kind: str = "insuranceVerification") -> Any:
    return parse_request(
        "p1",
        {
            "callerId": "c2",
            "document": kind,
            "patientId": "12",
            "occurredAt": "2026-11-26T09:15:00Z",
            "filename": "iv.pdf",
            "contentType": "application/pdf",
            "contentBase64": base64.b64encode(b"%PDF-1.4 hi").decode(),
        },
    )


DECISIONS = [
    ("allowed and resolved", note(), target(), Write("221", "1")),
    ("practice unknown", note(), None, SkipReason.PRACTICE_UNKNOWN),
    ("suspended", note(), target(spec(suspend=True)), SkipReason.SUSPENDED),
    ("allow false", note("incomingSms"), target(), SkipReason.NOT_ALLOWED),
    ("absent from spec", note("taskNote"), target(), SkipReason.NOT_ALLOWED),
    ("allowed without noteType", note("missedCall"), target(), SkipReason.NOTE_TYPE_UNRESOLVED),
    ("provider not verified", note(), target(provider=None), SkipReason.PROVIDER_NOT_VERIFIED),
    ("note type not resolved", note(), target(notes={}), SkipReason.NOTE_TYPE_UNRESOLVED),
    ("document mapped and resolved", document(), target(), Write("305", "1")),
    ("document not mapped", document("accountStatement"), target(), SkipReason.NOT_ALLOWED),
    ("document unresolved", document(), target(docs={}), SkipReason.DOCUMENT_TYPE_UNRESOLVED),
    (
        "document, provider missing",
        document(),
        target(provider=None),
        SkipReason.PROVIDER_NOT_VERIFIED,
    ),
    ("document, suspended", document(), target(spec(suspend=True)), SkipReason.SUSPENDED),
]

#: A practice whose PMS has not answered since start (`checked` False: down, credentials refused).
UNCHECKED = target(provider=None, notes={}, docs={}, checked=False)
WAITS = [
    ("note, PMS not read yet", note(), UNCHECKED, Wait),
    ("document, PMS not read yet", document(), UNCHECKED, Wait),
    ("provider known, note types not read", note(), target(notes={}, checked=False), Wait),
    ("document categories not read", document(), target(docs={}, checked=False), Wait),
    # What the spec alone decides does not wait for the PMS.
    ("not allowed, PMS not read", note("incomingSms"), UNCHECKED, SkipReason.NOT_ALLOWED),
    ("suspended, PMS not read", note(), target(spec(suspend=True), checked=False),
     SkipReason.SUSPENDED),
    ("no noteType, PMS not read", note("missedCall"), UNCHECKED, SkipReason.NOTE_TYPE_UNRESOLVED),
    ("not mapped, PMS not read", document("accountStatement"), UNCHECKED, SkipReason.NOT_ALLOWED),
    # Ids already resolved are used even before the next check.
    ("resolved, not re-read", note(), target(checked=False), Write("221", "1")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "target_", "expected"), WAITS,
                         ids=[w[0] for w in WAITS])  # fmt: skip
def test_a_practice_whose_pms_has_not_answered_yet_makes_allowed_requests_wait_not_skip(
    case: str, request_: Any, target_: WritebackTarget, expected: Any
) -> None:
    got = decide(request_, target_)
    if expected is Wait:
        assert isinstance(got, Wait) and "default/p1" in got.message
    elif isinstance(expected, Write):
        assert got == expected
    else:
        assert isinstance(got, Skip) and got.reason is expected


@pytest.mark.parametrize(
    ("case", "request_", "target_", "expected"), DECISIONS, ids=[d[0] for d in DECISIONS]
)
def test_decision_table_writes_allowed_resolved_requests_and_skips_the_rest_with_a_reason(
    case: str, request_: Any, target_: WritebackTarget | None, expected: Any
) -> None:
    got = decide(request_, target_)
    if isinstance(expected, Write):
        assert got == expected
    else:
        assert isinstance(got, Skip)
        assert got.reason is expected
        assert got.message  # always says why, naming the spec field or the practice


def test_skip_messages_name_the_spec_field_to_change() -> None:
    got = decide(note("incomingSms"), target())
    assert isinstance(got, Skip)
    assert "spec.writeback.incomingSms.allow" in got.message
    got = decide(note(), target(notes={}))
    assert isinstance(got, Skip) and "'Text Message'" in got.message


BAD_BODIES = [
    ("not an object", [], 422, ""),
    ("unknown type", {"type": "smsOut"}, 422, "type"),
    ("missing patient", {"patientId": None}, 422, "patientId"),
    ("empty patient", {"patientId": ""}, 422, "patientId"),
    ("missing callerId", {"callerId": None}, 422, "callerId"),
    ("no type nor document", {"type": None}, 422, "type"),
    ("empty text", {"text": ""}, 422, "text"),
    ("local time without offset", {"occurredAt": "2026-11-26T09:15:00"}, 422, "occurredAt"),
    ("impossible date", {"occurredAt": "2026-02-30T09:15:00Z"}, 400, "occurredAt"),
    ("unknown field", {"color": "red"}, 422, "color"),
    ("file on a note", {"filename": "a.pdf"}, 422, "document"),
    (
        "both type and document",
        {
            "document": "accountStatement",
            "filename": "a.pdf",
            "contentType": "application/pdf",
            "contentBase64": "aGk=",
        },
        422,
        "type",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "status", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
def test_bad_bodies_are_refused_naming_the_field(
    case: str, change: Any, status: int, field: str
) -> None:
    body: Any = {
        "callerId": "c1",
        "type": "outgoingSms",
        "patientId": "12",
        "occurredAt": "2026-11-26T09:15:00Z",
        "text": "hello",
    }
    if isinstance(change, dict):
        body.update(change)
        body = {k: v for k, v in body.items() if v is not None}
    else:
        body = change
    with pytest.raises(RequestError) as err:
        parse_request("p1", body)
    assert err.value.status == status
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:" if field else "the body")


def test_documents_decode_their_content_and_reject_bad_base64() -> None:
    doc = document()
    assert doc.kind is Kind.DOCUMENT and doc.content == b"%PDF-1.4 hi"
    with pytest.raises(RequestError, match="contentBase64: is not valid base64"):
        parse_request(
            "p1",
            {"callerId": "c", "document": "accountStatement", "patientId": "1",
             "occurredAt": "2026-11-26T09:15:00Z", "filename": "s.pdf",
             "contentType": "application/pdf", "contentBase64": "###"},
        )  # fmt: skip


def test_writeback_id_is_stable_per_practice_and_caller_id() -> None:
    assert note().id == writeback_id("p1", "c1")
    assert writeback_id("p1", "c1") != writeback_id("p2", "c1")
    assert note().fingerprint() == note().fingerprint()
    assert note().fingerprint() != note("incomingSms").fingerprint()


def _variants() -> list[Any]:
    note_ok = {"callerId": "c1", "type": "outgoingSms", "patientId": "12",
               "occurredAt": "2026-11-26T09:15:00Z", "text": "hello"}  # fmt: skip
    doc_ok = {"callerId": "c2", "document": "accountStatement", "patientId": "12",
              "occurredAt": "2026-11-26T09:15:00.123+01:00", "filename": "s.pdf",
              "contentType": "application/pdf", "contentBase64": "aGk=", "text": "desc"}  # fmt: skip
    changes: list[dict[str, Any]] = [
        {}, {"callerId": " c1"}, {"callerId": "a\nb"}, {"callerId": "x" * 201},
        {"callerId": "x" * 200}, {"patientId": 12}, {"text": "x" * 65_537},
        {"text": "x" * 65_536}, {"text": None}, {"occurredAt": "2026-11-26t09:15:00z"},
        {"occurredAt": "2026-11-26T09:15Z"}, {"type": "fax"}, {"extra": 1},
        {"contentType": "application/zip"}, {"filename": "a/b.pdf"}, {"contentBase64": ""},
        {"type": "outgoingSms"}, {"document": "insuranceVerification"}, {"filename": ""},
        {"callerId": "c\x001"}, {"patientId": "\x00"}, {"text": "a\x00b"},
        {"filename": "a\x00.pdf"}, {"callerId": "c1\n"}, {"document": {}}, {"type": []},
        {"document": ["accountStatement"]},
    ]  # fmt: skip
    out: list[Any] = [[], "x", None, 1]
    for base in (note_ok, doc_ok):
        for change in changes:
            b = {**base, **change}
            out.append({k: v for k, v in b.items() if v is not None})
            for key in base:
                out.append({k: v for k, v in base.items() if k != key})
    return out


def test_the_fast_validity_check_agrees_with_the_json_schema_on_every_variant() -> None:
    from reconciler.writeback.model import fast_valid, schema_errors

    for body in _variants():
        assert fast_valid(body) == (not schema_errors(body)), body
