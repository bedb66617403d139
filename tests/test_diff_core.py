"""The pure diff core: `reconciler.review.diff.diff_practices` and its renderers, over plain specs.

Nothing is faked: specs are built with the real `PracticeSpec.from_spec` (product defaults
included) and compared by the real core. Git and files are covered in test_diff_cli.py.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.api.spec import PracticeSpec
from reconciler.review.diff import (
    ChangeKind,
    DiffStatus,
    Resource,
    Risk,
    diff_practices,
    render_json,
    render_markdown,
    render_text,
)

BASE_SPEC: dict[str, Any] = {
    "practiceId": "bright-smiles-austin",
    "displayName": "Bright Smiles Austin",
    "pms": {
        "type": "OpenDental",
        "url": "https://od.bright-smiles.example/api/v1",
        "credentialsSecretRef": {"name": "bright-smiles-od"},
    },
    "providerId": "7",
    "writeback": {
        "outgoingSms": {"allow": True, "noteType": "Text Message"},
        "missedCall": {"allow": True, "noteType": "Missed Call"},
    },
    "documents": {"insuranceVerification": {"writeTo": "Insurance Verification"}},
    "sync": {
        "appointments": {"enabled": True, "interval": "60s"},
        "patients": {"enabled": True},
    },
}


def spec(edit: Callable[[dict[str, Any]], None] | None = None) -> PracticeSpec:
    body = copy.deepcopy(BASE_SPEC)
    if edit:
        edit(body)
    return PracticeSpec.from_spec(body)


def side(s: PracticeSpec, name: str = "bright-smiles-austin", file: str | None = "p/a.yaml"):
    r = Resource("dental", name, s, file=file)
    return {r.key: r}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = body
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = body
        for p in parents:
            node = node[p]
        del node[last]

    return edit


# (id, edit, expected kind, expected message, expected risk)
CHANGES = [
    (
        "writeback enabled",
        _set("writeback.outgoingEmail", {"allow": True, "noteType": "Email"}),
        ChangeKind.WRITEBACK_ENABLED,
        "outgoing email writeback enabled (note type 'Email')",
        None,
    ),
    (
        "writeback disabled",
        _set("writeback.outgoingSms", {"allow": False}),
        ChangeKind.WRITEBACK_DISABLED,
        "outgoing SMS writeback disabled (was note type 'Text Message')",
        Risk.WRITEBACK_OFF,
    ),
    (
        "writeback key removed counts as disabled",
        _delete("writeback.missedCall"),
        ChangeKind.WRITEBACK_DISABLED,
        "missed call writeback disabled (was note type 'Missed Call')",
        Risk.WRITEBACK_OFF,
    ),
    (
        "note type changed",
        _set("writeback.outgoingSms.noteType", "SMS"),
        ChangeKind.WRITEBACK_NOTE_TYPE,
        "outgoing SMS writeback note type 'Text Message' -> 'SMS'",
        None,
    ),
    (
        "document write-to changed",
        _set("documents.insuranceVerification.writeTo", "Insurance Cards"),
        ChangeKind.DOCUMENTS,
        "insurance verification documents written to 'Insurance Verification' -> 'Insurance Cards'",
        None,
    ),
    (
        "document read-from added",
        _set("documents.accountStatement", {"readFrom": "Statements"}),
        ChangeKind.DOCUMENTS,
        "account statement documents now read from 'Statements'",
        None,
    ),
    (
        "document mapping removed",
        _delete("documents.insuranceVerification"),
        ChangeKind.DOCUMENTS,
        "insurance verification documents no longer written to 'Insurance Verification'",
        None,
    ),
    (
        "provider changed",
        _set("providerId", "12"),
        ChangeKind.PROVIDER,
        "provider 7 -> 12",
        Risk.PROVIDER_CHANGED,
    ),
    (
        "pms type changed",
        _set("pms.type", "Dentrix"),
        ChangeKind.PMS_TYPE,
        "PMS type 'OpenDental' -> 'Dentrix'",
        None,
    ),
    (
        "pms url changed",
        _set("pms.url", "https://od2.bright-smiles.example/api/v1"),
        ChangeKind.PMS_URL,
        "PMS URL 'https://od.bright-smiles.example/api/v1' -> 'https://od2.bright-smiles.example/api/v1'",
        Risk.PMS_URL_CHANGED,
    ),
    (
        "secret changed",
        _set("pms.credentialsSecretRef.name", "bright-smiles-od-2"),
        ChangeKind.PMS_SECRET,
        "credentials Secret 'bright-smiles-od' -> 'bright-smiles-od-2'",
        None,
    ),
    (
        "timeout changed",
        _set("pms.timeoutSeconds", 30),
        ChangeKind.PMS_TIMEOUT,
        "PMS timeout 10s -> 30s",
        None,
    ),
    (
        "interval halved doubles the load and is below the default",
        _set("sync.appointments.interval", "30s"),
        ChangeKind.SYNC_INTERVAL,
        "appointments poll interval 60s -> 30s (2x PMS read load)",
        Risk.INTERVAL_BELOW_DEFAULT,
    ),
    (
        "interval lengthened halves the load",
        _set("sync.appointments.interval", "2m"),
        ChangeKind.SYNC_INTERVAL,
        "appointments poll interval 60s -> 2m (0.5x PMS read load)",
        None,
    ),
    (
        "sync enabled",
        _set("sync.appointmentStatus", {"enabled": True}),
        ChangeKind.SYNC_ENABLED,
        "appointment status sync enabled (every 15s)",
        None,
    ),
    (
        "sync enabled below the default is risky",
        _set("sync.appointmentStatus", {"enabled": True, "interval": "5s"}),
        ChangeKind.SYNC_ENABLED,
        "appointment status sync enabled (every 5s)",
        Risk.INTERVAL_BELOW_DEFAULT,
    ),
    (
        "sync disabled",
        _set("sync.patients.enabled", False),
        ChangeKind.SYNC_DISABLED,
        "patients sync disabled (was every 30s)",
        None,
    ),
    (
        "photos enabled",
        _set("patientProfilePhotos", True),
        ChangeKind.PHOTOS_ENABLED,
        "patient profile photos enabled",
        None,
    ),
    ("suspended", _set("suspend", True), ChangeKind.SUSPENDED, "suspended", None),
    (
        "display name changed",
        _set("displayName", "Bright Smiles (Austin)"),
        ChangeKind.DISPLAY_NAME,
        "display name 'Bright Smiles Austin' -> 'Bright Smiles (Austin)'",
        None,
    ),
    (
        "practice id changed",
        _set("practiceId", "bsa-1"),
        ChangeKind.PRACTICE_ID,
        "practice id 'bright-smiles-austin' -> 'bsa-1'",
        None,
    ),
]


@pytest.mark.parametrize(
    ("edit", "kind", "message", "risk"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
def test_each_setting_change_is_named_with_its_meaning(edit, kind, message, risk):
    report = diff_practices(side(spec()), side(spec(edit)))
    assert report.has_changes
    [practice] = report.practices
    assert practice.status is DiffStatus.CHANGED
    [change] = practice.changes
    assert (change.kind, change.message, change.risk) == (kind, message, risk)
    assert report.kind_counts == {kind: 1}


def test_resuming_a_suspended_practice_is_named_resumed():
    report = diff_practices(side(spec(_set("suspend", True))), side(spec()))
    [change] = report.practices[0].changes
    assert (change.kind, change.message) == (ChangeKind.RESUMED, "resumed")


NO_OPS = [
    ("default timeout spelled out", _set("pms.timeoutSeconds", 10)),
    ("default interval spelled out", _set("sync.patients.interval", "30s")),
    ("same interval in another unit", _set("sync.appointments.interval", "1m")),
    ("disabled sync spelled out", _set("sync.appointmentStatus", {"enabled": False})),
    (
        "interval of a disabled sync",
        _set("sync.appointmentStatus", {"enabled": False, "interval": "5s"}),
    ),
    ("disallowed writeback spelled out", _set("writeback.taskNote", {"allow": False})),
    (
        "note type under a disallowed writeback",
        _set("writeback.taskNote", {"allow": False, "noteType": "Task"}),
    ),
    ("photos off spelled out", _set("patientProfilePhotos", False)),
    ("suspend off spelled out", _set("suspend", False)),
]


@pytest.mark.parametrize("edit", [n[1] for n in NO_OPS], ids=[n[0] for n in NO_OPS])
def test_spelling_out_a_default_or_an_inert_setting_is_no_change(edit):
    report = diff_practices(side(spec()), side(spec(edit)))
    assert not report.practices
    assert report.unchanged == 1
    assert not report.has_changes


def test_a_move_alone_is_reported_but_changes_nothing():
    report = diff_practices(side(spec(), file="p/a.yaml"), side(spec(), file="p/b.yaml"))
    [p] = report.practices
    assert p.status is DiffStatus.MOVED
    assert p.changes[0].message == "moved p/a.yaml -> p/b.yaml"
    assert not report.has_changes


def test_a_live_side_has_no_file_so_nothing_is_moved():
    report = diff_practices(side(spec(), file=None), side(spec(), file="p/b.yaml"))
    assert not report.practices and report.unchanged == 1


def test_added_and_removed_practices_describe_what_they_do():
    other = spec(_set("practiceId", "other"))
    report = diff_practices(side(spec()), side(other, name="other"))
    statuses = {p.name: p for p in report.practices}
    assert statuses["other"].status is DiffStatus.ADDED
    assert statuses["bright-smiles-austin"].status is DiffStatus.REMOVED
    assert statuses["bright-smiles-austin"].risks == (Risk.PRACTICE_REMOVED,)
    added = statuses["other"].changes[0].message
    assert added.startswith("added: OpenDental at https://od.bright-smiles.example/api/v1")
    assert "writes back missed call, outgoing SMS" in added
    assert "polls appointments every 60s, patients every 30s" in added


def test_a_new_name_with_the_same_practice_id_is_a_rename_with_its_changes():
    report = diff_practices(side(spec()), side(spec(_set("providerId", "12")), name="bsa"))
    [p] = report.practices
    assert p.status is DiffStatus.RENAMED
    assert (p.base_key, p.key) == ("dental/bright-smiles-austin", "dental/bsa")
    assert [c.kind for c in p.changes] == [ChangeKind.RENAMED, ChangeKind.PROVIDER]


def test_several_changes_of_one_practice_collect_every_risk():
    def edit(body):
        body["providerId"] = "12"
        body["writeback"]["outgoingSms"]["allow"] = False
        body["sync"]["appointments"]["interval"] = "15s"

    report = diff_practices(side(spec()), side(spec(edit)))
    [p] = report.practices
    assert set(p.risks) == {Risk.PROVIDER_CHANGED, Risk.WRITEBACK_OFF, Risk.INTERVAL_BELOW_DEFAULT}
    assert "appointments poll interval 60s -> 15s (4x PMS read load)" in [
        c.message for c in p.changes
    ]
    assert report.risk_counts == {
        Risk.WRITEBACK_OFF: 1,
        Risk.PROVIDER_CHANGED: 1,
        Risk.INTERVAL_BELOW_DEFAULT: 1,
    }


def _mixed_report():
    base = {**side(spec()), **side(spec(_set("practiceId", "gone")), name="gone", file="p/g.yaml")}
    head = {
        **side(spec(_set("providerId", "12"))),
        **side(spec(_set("practiceId", "new")), name="new", file="p/n.yaml"),
    }
    return diff_practices(base, head, base_label="main", head_label="working tree")


def test_text_output_has_one_line_per_change_and_a_summary():
    text = render_text(_mixed_report())
    assert "bright-smiles-austin: provider 7 -> 12  [RISK: provider changed]" in text
    assert "3 practices differ (1 added, 1 removed, 1 changed), 0 unchanged; 2 risky" in text


def test_markdown_output_has_a_summary_table_and_details_per_practice():
    md = render_markdown(_mixed_report())
    assert "| provider changed | 1 |" in md
    assert "| :warning: provider changed | 1 |" in md
    assert md.count("<details>") == 3
    assert "- provider 7 -> 12 — :warning: **provider changed**" in md


def test_markdown_escapes_what_the_yaml_author_wrote():
    edit = _set("displayName", "A|B <script>")
    md = render_markdown(diff_practices(side(spec()), side(spec(edit))))
    assert "A\\|B \\<script>" in md
    assert re.search(r"(?<!\\)<script", md) is None


def test_markdown_stops_before_the_comment_size_limit_and_says_how_many_are_left():
    base, head = {}, {}
    for i in range(50):
        s = spec(_set("practiceId", f"p{i}"))
        base.update(side(s, name=f"p{i}"))
        head.update(
            side(
                PracticeSpec.from_spec({**BASE_SPEC, "practiceId": f"p{i}", "providerId": "1"}),
                name=f"p{i}",
            )
        )
    md = render_markdown(diff_practices(base, head), limit=3000)
    assert len(md) < 3300
    assert "more practices not shown" in md


def test_json_output_carries_typed_changes():
    data = json.loads(render_json(_mixed_report()))
    assert data["summary"]["changed"] == 1 and data["summary"]["risky"] == 2
    changed = next(p for p in data["practices"] if p["status"] == "changed")
    assert changed["changes"] == [
        {
            "kind": "provider",
            "field": "spec.providerId",
            "before": "7",
            "after": "12",
            "message": "provider 7 -> 12",
            "risk": "provider_changed",
            "loadFactor": None,
        }
    ]


def test_an_empty_diff_renders_as_no_changes():
    report = diff_practices(side(spec()), side(spec()))
    assert "no changes (1 practices unchanged)" in render_text(report)
    assert "<details>" not in render_markdown(report)
