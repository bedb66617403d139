"""The `pmsctl up` status table (`reconciler.local.table`): pure rendering, tested with tables.

Nothing is faked: the inputs are CRD-shaped status dicts like the engine's `to_dict()` gives,
the outputs are the exact text a person or a machine reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from reconciler.local import table as uptable
from reconciler.local.table import PollerCell, Row

NOW = datetime(2026, 11, 26, 19, 1, 2, tzinfo=UTC)


def status(
    ready: str = "True", reason: str = "Reconciled", message: str = "", **pollers: dict
) -> dict:
    return {
        "observedGeneration": 1,
        "conditions": [
            {"type": "PMSReachable", "status": "True", "reason": "Reachable", "message": ""},
            {"type": "Ready", "status": ready, "reason": reason, "message": message},
        ],
        "pollers": pollers,
    }


def poller(
    interval: str, *, ok: str | None = "2026-11-26T19:00:58Z", events: int = 0, **extra
) -> dict:
    return {
        "interval": interval,
        "running": True,
        "lastSuccessTime": ok,
        "lastError": None,
        "consecutiveFailures": 0,
        "eventsEmitted": events,
        **extra,
    }


def test_row_reads_ready_condition_and_pollers_from_status() -> None:
    row = uptable.row_from_status(
        "bright-smiles-austin",
        "OpenDental",
        "7",
        status(appointmentStatus=poller("15s", events=3), patients=poller("30s", events=4)),
    )
    assert row.ready == "True"
    assert row.reason == "Reconciled"
    assert [p.kind for p in row.pollers] == ["appointmentStatus", "patients"]
    assert row.events == 7


def test_row_without_status_is_pending() -> None:
    row = uptable.row_from_status("a", "Dentrix", "DDS1", None)
    assert (row.ready, row.reason, row.pollers) == ("Unknown", "Pending", ())


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        (None, "-"),
        (
            PollerCell("patients", "30s", running=True, last_success="2026-11-26T19:00:58Z"),
            "30s (4s ago)",
        ),
        (
            PollerCell("patients", "30s", running=True, last_success="2026-11-26T18:51:02Z"),
            "30s (10m ago)",
        ),
        (
            PollerCell("patients", "30s", running=True, last_success="2026-11-26T16:01:02Z"),
            "30s (3h ago)",
        ),
        (PollerCell("patients", "30s", running=True), "30s (never)"),
        (PollerCell("patients", "1m", running=False), "1m (stopped)"),
        (
            PollerCell("patients", "30s", running=True, last_error="503", consecutive_failures=3),
            "30s (failing x3)",
        ),
    ],
)
def test_poller_cell_shows_interval_and_last_success_age(
    cell: PollerCell | None, text: str
) -> None:
    assert uptable.poller_cell_text(cell, NOW) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (119, "119s"),
        (120, "2m"),
        (7199, "119m"),
        (7200, "2h"),
        (172800, "2d"),
    ],
)
def test_ages_are_kubectl_short(seconds: float, text: str) -> None:
    assert uptable.format_age(seconds) == text


def test_table_has_kubectl_columns_sorted_by_name_and_aligned() -> None:
    rows = [
        uptable.row_from_status(
            "smile-denver",
            "Eaglesoft",
            "DCM",
            status(
                appointmentStatus=poller("15s", events=10),
                appointments=poller("1m", events=2),
                patients=poller("30s", ok=None),
            ),
        ),
        uptable.row_from_status(
            "alpine-dental",
            "Dentrix",
            "DDS1",
            status("False", "ProviderNotFound", "provider 'X' not found"),
        ),
    ]
    lines = uptable.render_table(rows, NOW)
    assert lines == [
        "PRACTICE        PMS         PROVIDER   READY   REASON             APPT-STATUS    APPOINTMENTS   PATIENTS      EVENTS",
        "alpine-dental   Dentrix     DDS1       False   ProviderNotFound   -              -              -             0",
        "smile-denver    Eaglesoft   DCM        True    Reconciled         15s (4s ago)   1m (4s ago)    30s (never)   12",
    ]


def test_problems_block_is_empty_without_problems_and_lists_them_otherwise() -> None:
    assert uptable.render_problems([]) == []
    block = uptable.render_problems(["p/a.yaml:3:5: spec.pms.type: 'X' is not one of ..."])
    assert block[-1] == "  p/a.yaml:3:5: spec.pms.type: 'X' is not one of ..."
    assert "last good version keeps running" in block[1]
    assert uptable.render_problems(["x"], header="Not applied:")[1] == "Not applied:"


def test_redraw_moves_up_over_the_previous_frame_and_clears_below() -> None:
    assert uptable.redraw(["a", "b"], 0) == "\x1b[2Ka\n\x1b[2Kb\n\x1b[J"
    assert uptable.redraw(["a"], 3) == "\x1b[3F\x1b[2Ka\n\x1b[J"


def test_redraw_cuts_lines_that_would_wrap() -> None:
    assert uptable.redraw(["abcdef", "abc"], 0, width=5) == "\x1b[2Kabc…\n\x1b[2Kabc\n\x1b[J"


def test_signature_ignores_ticking_ages_and_event_counts() -> None:
    before = uptable.row_from_status(
        "a", "OpenDental", "1", status(patients=poller("30s", events=1))
    )
    later = uptable.row_from_status(
        "a", "OpenDental", "1", status(patients=poller("30s", events=9, ok="2026-11-26T19:01:01Z"))
    )
    assert uptable.signature(before) == uptable.signature(later)


@pytest.mark.parametrize(
    "changed",
    [
        status("False", "PMSUnreachable", patients=poller("30s")),
        status(patients=poller("45s")),
        status(patients=poller("30s", running=False)),
        status(patients=poller("30s", lastError="HTTP 503")),
        status(),
    ],
)
def test_signature_changes_with_readiness_intervals_running_and_errors(changed: dict) -> None:
    base = uptable.row_from_status("a", "OpenDental", "1", status(patients=poller("30s")))
    assert uptable.signature(base) != uptable.signature(
        uptable.row_from_status("a", "OpenDental", "1", changed)
    )


def test_change_line_is_one_greppable_line() -> None:
    row = uptable.row_from_status(
        "bright-smiles-austin",
        "OpenDental",
        "7",
        status(appointmentStatus=poller("15s", events=5), patients=poller("30s", running=False)),
    )
    assert uptable.change_line(row, NOW) == (
        "2026-11-26T19:01:02Z bright-smiles-austin Ready=True Reconciled "
        "appointmentStatus=15s patients=30s(stopped) events=5"
    )


def test_change_line_of_a_not_ready_practice_carries_the_message_and_errors() -> None:
    row = Row(
        "a",
        "Dentrix",
        "DDS9",
        ready="False",
        reason="ProviderNotFound",
        message='provider "DDS9" not found; active: DDS1, DDS2',
        pollers=(PollerCell("patients", "30s", True, last_error="HTTP 503 from /patients"),),
    )
    line = uptable.change_line(row, NOW)
    assert line.startswith(
        "2026-11-26T19:01:02Z a Ready=False ProviderNotFound patients=30s events=0"
    )
    assert 'message="provider \\"DDS9\\" not found; active: DDS1, DDS2"' in line
    assert line.endswith('patients.lastError="HTTP 503 from /patients"')


def test_removed_problem_and_fixed_lines() -> None:
    assert uptable.removed_line("a", NOW) == "2026-11-26T19:01:02Z a removed"
    assert (
        uptable.problem_line("p/a.yaml:1:1: x", NOW)
        == "2026-11-26T19:01:02Z invalid p/a.yaml:1:1: x"
    )
    assert uptable.kept_line("p/a.yaml", ["a"], NOW) == (
        "2026-11-26T19:01:02Z p/a.yaml not applied; a keeps running at the last good version"
    )
    assert uptable.kept_line("p/ab.yaml", ["a", "b"], NOW).endswith(
        "a, b keep running at the last good version"
    )
    assert uptable.kept_line("p/new.yaml", [], NOW).endswith(
        "p/new.yaml not applied; nothing from it is running"
    )
    assert uptable.fixed_line("p/a.yaml", NOW) == "2026-11-26T19:01:02Z valid p/a.yaml"


def test_json_line_is_one_object_with_time_and_type() -> None:
    line = uptable.json_line("status", NOW, practice="a", status={"x": 1})
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2026-11-26T19:01:02Z",
        "type": "status",
        "practice": "a",
        "status": {"x": 1},
    }


def test_not_ready_block_gives_each_reason_and_message() -> None:
    rows = [
        Row("b", "Dentrix", "DDS1", ready="False", reason="SecretNotFound", message="set X"),
        Row("a", "Dentrix", "DDS1", ready="True", reason="Ready"),
        Row("c", "Dentrix", "DDS1"),
    ]
    assert uptable.render_not_ready(rows) == [
        "",
        "Not ready:",
        "  b: SecretNotFound: set X",
        "  c: Pending",
    ]
    assert uptable.render_not_ready(rows[1:2]) == []


def test_events_of_a_practice_removed_and_added_back_keep_counting() -> None:
    status = {"pollers": {"patients": {"interval": "30s", "running": True, "eventsEmitted": 4}}}
    row = uptable.row_from_status("p", "OpenDental", "1", status, earlier_events=300)
    assert row.events == 304
    assert uptable.table_cells(row, NOW)[-1] == "304"
    assert uptable.row_from_status("p", "OpenDental", "1", None, earlier_events=300).events == 300
