"""Table tests for the pure core (`reconciler.engine.core.decide`).

Everything is real: plain specs and observed snapshots in, a Decision out. Nothing is faked
because nothing here does I/O. The catalogs are the simulator's Open Dental and Dentrix seeds
(see the shared catalog), so the messages read as an operator would see them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pms_drivers.base import DocumentCategory, NoteType, Provider
from reconciler.api.spec import DocumentType, PracticeSpec, SyncKind, WritebackType
from reconciler.engine.core import (
    ConditionType,
    Observed,
    PollerState,
    ReachError,
    ReachFailure,
    Reason,
    decide,
)

NOW = datetime(2026, 11, 26, 9, 15, tzinfo=UTC)

OD_PROVIDERS = (
    Provider("1", "Dr. Maria Alvarez", True),
    Provider("2", "Sam Lee, RDH", True),
    Provider("3", "Dr. John Park", True),
    Provider("4", "Dr. Ruth Gold", False),
    Provider("5", "Dr. Tom Berg", False),
    Provider("7", "Dr. Priya Shah", True),
    Provider("12", "Dr. Ken Ito", True),
)
OD_NOTE_TYPES = tuple(
    NoteType(str(200 + i), name, hidden=(name == "Legacy Fax"))
    for i, name in enumerate(
        [
            "Appt Related", "Financial", "Insurance", "Misc", "Recall", "Text Message", "Email",
            "Phone Call", "Missed Call", "Patient Note", "Task", "Insurance Verification",
            "Legacy Fax",
        ]
    )
)  # fmt: skip
OD_DOCS = tuple(
    DocumentCategory(str(300 + i), name, hidden=(name == "Old Scans"))
    for i, name in enumerate(
        [
            "Patient Information", "X-Rays", "Insurance Cards", "Insurance Verification",
            "Statements", "Patient Pictures", "Old Scans",
        ]
    )
)  # fmt: skip


def od_spec(**over: object) -> PracticeSpec:
    spec = {
        "practiceId": "acme-smiles",
        "pms": {
            "type": "OpenDental",
            "url": "http://127.0.0.1:8830/api/v1",
            "credentialsSecretRef": {"name": "acme-od"},
        },
        "providerId": "1",
        "writeback": {
            "outgoingSms": {"allow": True, "noteType": "Text Message"},
            "missedCall": {"allow": True, "noteType": "Missed Call"},
            "outgoingEmail": {"allow": False, "noteType": "Nope"},
        },
        "documents": {
            "insuranceVerification": {
                "writeTo": "Insurance Verification",
                "readFrom": "Insurance Cards",
            },
            "accountStatement": {"writeTo": "Statements"},
        },
        "sync": {
            "appointmentStatus": {"enabled": True, "interval": "15s"},
            "patients": {"enabled": True},
            "appointments": {"enabled": False},
        },
    }
    spec.update(over)
    return PracticeSpec.from_spec(spec)


def seen(**over: object) -> Observed:
    base: dict[str, object] = {
        "now": NOW,
        "generation": 2,
        "pms_version": "24.3.1",
        "checked_at": NOW,
        "providers": OD_PROVIDERS,
        "note_types": OD_NOTE_TYPES,
        "document_categories": OD_DOCS,
        "pollers": {
            SyncKind.APPOINTMENT_STATUS: PollerState(15),
            SyncKind.PATIENTS: PollerState(30),
        },
    }
    base.update(over)
    return Observed(**base)  # type: ignore[arg-type]


def cond(decision, ctype):  # type: ignore[no-untyped-def]
    c = decision.status.condition(ctype)
    assert c is not None
    return c


def test_a_fully_resolved_practice_is_ready_with_ids_in_status() -> None:
    d = decide(od_spec(), seen())
    assert d.status.ready
    assert cond(d, ConditionType.READY).reason == Reason.READY
    assert d.provider_id == "1"
    assert d.note_type_ids == {WritebackType.OUTGOING_SMS: "205", WritebackType.MISSED_CALL: "208"}
    assert d.document_category_ids == {
        DocumentType.INSURANCE_VERIFICATION: "303",
        DocumentType.ACCOUNT_STATEMENT: "304",
    }
    assert d.read_from_ids == {DocumentType.INSURANCE_VERIFICATION: "302"}
    assert d.pollers == {SyncKind.APPOINTMENT_STATUS: 15.0, SyncKind.PATIENTS: 30.0}
    s = d.status.to_dict()
    assert s["observedGeneration"] == 2
    assert s["provider"] == {"id": "1", "name": "Dr. Maria Alvarez", "active": True}
    assert s["noteTypes"]["outgoingSms"] == {"name": "Text Message", "id": "205"}
    assert "outgoingEmail" not in s["noteTypes"]  # not allowed: not resolved, not reported
    assert s["documentTypes"]["insuranceVerification"] == {
        "writeTo": {"name": "Insurance Verification", "id": "303"},
        "readFrom": {"name": "Insurance Cards", "id": "302"},
    }
    assert s["pollers"]["appointmentStatus"]["interval"] == "15s"
    assert s["pms"] == {"version": "24.3.1", "checkedAt": "2026-11-26T09:15:00Z"}
    assert {c["type"] for c in s["conditions"]} == set(ConditionType)
    assert all(c["observedGeneration"] == 2 for c in s["conditions"])


def test_unknown_note_type_message_lists_the_names_that_exist() -> None:
    spec = od_spec(writeback={"outgoingSms": {"allow": True, "noteType": "SMS"}})
    d = decide(spec, seen())
    c = cond(d, ConditionType.NOTE_TYPES_RESOLVED)
    assert (c.status, c.reason) == ("False", Reason.NOTE_TYPE_NOT_FOUND)
    assert c.message.startswith(
        "outgoingSms: commlog type 'SMS' not found in Open Dental; available: Appt Related, Email,"
    )
    assert "Legacy Fax" not in c.message  # hidden types are not offered
    ready = cond(d, ConditionType.READY)
    assert (ready.status, ready.reason) == ("False", Reason.NOTE_TYPE_NOT_FOUND)
    assert ready.message.startswith("NoteTypesResolved: outgoingSms:")


def test_hidden_note_type_says_unhide_or_pick_another() -> None:
    spec = od_spec(writeback={"taskNote": {"allow": True, "noteType": "Legacy Fax"}})
    c = cond(decide(spec, seen()), ConditionType.NOTE_TYPES_RESOLVED)
    assert (c.status, c.reason) == ("False", Reason.NOTE_TYPE_HIDDEN)
    assert "taskNote: commlog type 'Legacy Fax' is hidden in Open Dental; unhide it" in c.message


@pytest.mark.parametrize(
    ("provider_id", "reason", "fragment"),
    [
        ("99", Reason.PROVIDER_NOT_FOUND, "provider '99' not found in Open Dental; active providers: 1 (Dr. Maria Alvarez)"),
        ("4", Reason.PROVIDER_INACTIVE, "provider '4' (Dr. Ruth Gold) is inactive in Open Dental; set providerId to an active provider"),
        ("5", Reason.PROVIDER_INACTIVE, "(Dr. Tom Berg) is inactive"),
    ],
)  # fmt: skip
def test_wrong_provider_flips_provider_verified(
    provider_id: str, reason: Reason, fragment: str
) -> None:
    d = decide(od_spec(providerId=provider_id), seen())
    c = cond(d, ConditionType.PROVIDER_VERIFIED)
    assert (c.status, c.reason) == ("False", reason)
    assert fragment in c.message
    assert d.provider_id is None
    assert not d.status.ready


def test_unknown_and_hidden_document_categories_name_the_field() -> None:
    spec = od_spec(
        documents={
            "insuranceVerification": {"writeTo": "Old Scans"},
            "accountStatement": {"writeTo": "Statments", "readFrom": "Statements"},
        }
    )
    d = decide(spec, seen())
    c = cond(d, ConditionType.DOCUMENT_TYPES_RESOLVED)
    assert (c.status, c.reason) == ("False", Reason.DOCUMENT_TYPE_NOT_FOUND)
    assert (
        "documents.insuranceVerification.writeTo: image category 'Old Scans' is hidden" in c.message
    )
    assert (
        "documents.accountStatement.writeTo: image category 'Statments' not found in Open Dental; available: Insurance Cards,"
        in c.message
    )
    assert d.read_from_ids == {DocumentType.ACCOUNT_STATEMENT: "304"}
    assert d.document_category_ids == {}


def test_unreachable_pms_keeps_last_known_catalogs_and_reports_why() -> None:
    err = ReachError(
        ReachFailure.UNREACHABLE, "Open Dental list providers: connection refused (http://x)"
    )
    d = decide(od_spec(), seen(reach_error=err, reconcile_error=err.message))
    reach = cond(d, ConditionType.PMS_REACHABLE)
    assert (reach.status, reach.reason, reach.message) == ("False", Reason.UNREACHABLE, err.message)
    assert cond(d, ConditionType.PROVIDER_VERIFIED).status == "True"  # last known, not flipped
    assert cond(d, ConditionType.SYNCED).status == "False"
    assert cond(d, ConditionType.READY).reason == Reason.UNREACHABLE
    assert d.pollers  # pollers keep trying; they are how recovery is noticed


def test_never_reached_pms_leaves_resolution_unknown() -> None:
    err = ReachError(ReachFailure.UNREACHABLE, "timeout")
    d = decide(od_spec(), Observed(now=NOW, reach_error=err, reconcile_error="timeout"))
    for ctype in (ConditionType.PROVIDER_VERIFIED, ConditionType.NOTE_TYPES_RESOLVED):
        c = cond(d, ctype)
        assert (c.status, c.reason) == ("Unknown", Reason.NOT_CHECKED)
        assert "until the PMS answers" in c.message


def test_missing_secret_means_no_pollers_and_says_so() -> None:
    err = ReachError(ReachFailure.SECRET_NOT_FOUND, "Secret clinics/acme-od not found")
    d = decide(od_spec(), Observed(now=NOW, reach_error=err, reconcile_error=err.message))
    assert d.pollers == {}
    c = cond(d, ConditionType.PMS_REACHABLE)
    assert (c.status, c.reason) == ("False", Reason.SECRET_NOT_FOUND)
    assert cond(d, ConditionType.READY).reason == Reason.SECRET_NOT_FOUND


def test_a_duplicate_practice_id_means_no_pollers_and_names_the_resource_that_has_it() -> None:
    d = decide(od_spec(), Observed(now=NOW, duplicate_of="clinic-a/acme"))
    assert d.pollers == {}
    for ctype in (ConditionType.READY, ConditionType.SYNCED, ConditionType.POLLERS_RUNNING):
        c = cond(d, ctype)
        assert (c.status, c.reason) == ("False", Reason.DUPLICATE_PRACTICE_ID), ctype
    msg = cond(d, ConditionType.READY).message
    assert "spec.practiceId: 'acme-smiles' is already managed by clinic-a/acme" in msg
    assert cond(d, ConditionType.PMS_REACHABLE).reason == Reason.NOT_CHECKED
    # Suspended too: still not Ready for the duplicate's reason, the more urgent fix.
    d = decide(od_spec(suspend=True), Observed(now=NOW, duplicate_of="clinic-a/acme"))
    assert cond(d, ConditionType.READY).reason == Reason.DUPLICATE_PRACTICE_ID
    assert cond(d, ConditionType.POLLERS_RUNNING).reason == Reason.POLLERS_STOPPED


def test_suspend_stops_every_poller_and_says_how_to_resume() -> None:
    d = decide(od_spec(suspend=True), seen(pollers={}))
    assert d.pollers == {}
    s = cond(d, ConditionType.SUSPENDED)
    assert (s.status, s.reason) == ("True", Reason.SUSPENDED)
    assert "set it to false to resume" in s.message
    assert cond(d, ConditionType.POLLERS_RUNNING).reason == Reason.POLLERS_STOPPED
    assert (cond(d, ConditionType.READY).status, cond(d, ConditionType.READY).reason) == (
        "False",
        Reason.SUSPENDED,
    )


def test_disabled_kinds_get_no_poller_and_intervals_follow_the_spec() -> None:
    spec = od_spec(
        sync={
            "appointments": {"enabled": True, "interval": "1m30s"},
            "patients": {"enabled": False},
        }
    )
    d = decide(spec, seen(pollers={SyncKind.APPOINTMENTS: PollerState(90)}))
    assert d.pollers == {SyncKind.APPOINTMENTS: 90.0}
    assert cond(d, ConditionType.POLLERS_RUNNING).message == "appointments every 1m30s"
    assert d.status.to_dict()["pollers"] == {
        "appointments": {
            "interval": "1m30s",
            "running": True,
            "consecutiveFailures": 0,
            "eventsEmitted": 0,
        }
    }


def test_pollers_not_started_yet_are_unknown_then_failing_pollers_are_false() -> None:
    d = decide(od_spec(), seen(pollers={}))
    assert cond(d, ConditionType.POLLERS_RUNNING).reason == Reason.POLLERS_STARTING
    failing = {
        SyncKind.APPOINTMENT_STATUS: PollerState(15, consecutive_failures=3, last_error="HTTP 503"),
        SyncKind.PATIENTS: PollerState(30),
    }
    c = cond(decide(od_spec(), seen(pollers=failing)), ConditionType.POLLERS_RUNNING)
    assert (c.status, c.reason) == ("False", Reason.POLLER_FAILING)
    assert "appointmentStatus (3 failures in a row: HTTP 503)" in c.message


def test_last_transition_time_is_kept_while_status_is_unchanged() -> None:
    first = decide(od_spec(), seen())
    later = NOW + timedelta(minutes=5)
    second = decide(od_spec(), seen(now=later, previous_conditions=first.status.conditions))
    assert second.transitions == ()
    assert cond(second, ConditionType.READY).last_transition_time == "2026-11-26T09:15:00Z"
    renamed = tuple(
        t if t.name != "Text Message" else NoteType(t.id, "Texting") for t in OD_NOTE_TYPES
    )
    third = decide(
        od_spec(),
        seen(now=later, note_types=renamed, previous_conditions=second.status.conditions),
    )
    flipped = {t.type: t for t in third.transitions}
    assert set(flipped) == {ConditionType.NOTE_TYPES_RESOLVED, ConditionType.READY}
    t = flipped[ConditionType.NOTE_TYPES_RESOLVED]
    assert (t.old_status, t.new_status, t.reason, t.warning) == (
        "True",
        "False",
        Reason.NOTE_TYPE_NOT_FOUND,
        True,
    )
    assert (
        cond(third, ConditionType.NOTE_TYPES_RESOLVED).last_transition_time
        == "2026-11-26T09:20:00Z"
    )
    assert (
        cond(third, ConditionType.PROVIDER_VERIFIED).last_transition_time == "2026-11-26T09:15:00Z"
    )


def test_first_decision_reports_every_condition_as_a_transition() -> None:
    d = decide(od_spec(), seen())
    assert {t.type for t in d.transitions} == set(ConditionType)
    assert all(t.old_status is None for t in d.transitions)


def test_reconcile_token_is_echoed_and_writeback_counts_are_reported() -> None:
    s = decide(
        od_spec(), seen(reconcile_token="2026-11-26T09:00:00Z", writebacks={"sent": 4})
    ).status.to_dict()
    assert s["lastHandledReconcileAt"] == "2026-11-26T09:00:00Z"
    assert s["writebacks"] == {"sent": 4, "skipped": 0, "pending": 0, "failed": 0}
    assert s["lastReconcileTime"] == "2026-11-26T09:15:00Z"


def test_dentrix_messages_use_dentrix_words() -> None:
    spec = PracticeSpec.from_spec(
        {
            "practiceId": "bright",
            "pms": {
                "type": "Dentrix",
                "url": "http://x/bridge/v1",
                "credentialsSecretRef": {"name": "s"},
            },
            "providerId": "DOC9",
            "documents": {"accountStatement": {"writeTo": "Billing"}},
        }
    )
    obs = Observed(
        now=NOW,
        checked_at=NOW,
        providers=(
            Provider("DDS1", "Dr. Alan Moss", True),
            Provider("DOC9", "Dr. Paul Hart", False),
        ),
        note_types=(),
        document_categories=(
            DocumentCategory("1", "Statements"),
            DocumentCategory("2", "Archive", hidden=True),
        ),
    )
    d = decide(spec, obs)
    assert (
        "provider 'DOC9' (Dr. Paul Hart) is inactive in Dentrix; set providerId to an active provider: DDS1 (Dr. Alan Moss)"
        in cond(d, ConditionType.PROVIDER_VERIFIED).message
    )
    assert cond(d, ConditionType.DOCUMENT_TYPES_RESOLVED).message == (
        "documents.accountStatement.writeTo: document type 'Billing' not found in Dentrix; available: Statements"
    )
    assert cond(d, ConditionType.NOTE_TYPES_RESOLVED).reason == Reason.NO_NOTE_TYPES
