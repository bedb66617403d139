"""The pure parts of the drivers, as tables: cursors, markers, mappings, the status-to-error table.

Nothing is faked and nothing does I/O: `error_for` is fed real `httpx.Response` objects built in
memory (the same objects a client returns), and everything else is plain functions over values.
"""

from __future__ import annotations

import httpx
import pytest

from pms_drivers.base import NOTE_KINDS
from pms_drivers.errors import (
    PermanentPmsError,
    PmsAuthError,
    PmsNotFoundError,
    RateLimitedError,
    TemporaryPmsError,
)
from pms_drivers.opendental import (
    COMMLOG_MODES,
    KeyedLocks,
    find_marker,
    is_confirmed_name,
    iso_to_od,
    marker,
    note_with_marker,
    od_bool,
    od_to_iso,
    provider_active,
    provider_name,
)
from pms_drivers.stamp_cursor import (
    CursorError,
    FlowState,
    Row,
    StampCursor,
    advance,
    digest,
    flow_changes,
)
from pms_drivers.wire import error_for, redact_url, scrub, with_query

T0 = "2026-11-26 09:15:00"


def test_every_writeback_kind_has_a_commlog_mode_as_issue_4_says() -> None:
    assert set(COMMLOG_MODES) == set(NOTE_KINDS)
    assert COMMLOG_MODES == {
        "outgoingSms": ("Text", "Sent"),
        "incomingSms": ("Text", "Received"),
        "outgoingEmail": ("Email", "Sent"),
        "outgoingCall": ("Phone", "Sent"),
        "incomingCall": ("Phone", "Received"),
        "missedCall": ("Phone", "Received"),
        "patientNote": ("None", "Neither"),
        "taskNote": ("None", "Neither"),
        "insuranceVerification": ("None", "Neither"),
    }


def test_the_marker_is_a_trailer_line_and_is_found_again() -> None:
    note = note_with_marker("Called about the recall.\n\n", "7", "wb-123")
    assert note == "Called about the recall.\n[pmsctl provider=7 writeback=wb-123]"
    assert find_marker(note) == ("7", "wb-123")
    assert marker("7", "wb-1") == "[pmsctl provider=7 writeback=wb-1]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("no marker here", None),
        ("[pmsctl provider=1 writeback=a]\n[pmsctl provider=2 writeback=b]", ("2", "b")),
        ("quoted [pmsctl provider=1 writeback=wb-12]", ("1", "wb-12")),
        ("[pmsctl provider=1 writeback=wb-1] ", ("1", "wb-1")),
    ],
)
def test_find_marker_reads_the_last_marker(
    text: str | None, expected: tuple[str, str] | None
) -> None:
    assert find_marker(text) == expected


def test_a_writeback_id_that_is_a_prefix_of_another_does_not_match_it() -> None:
    assert find_marker(marker("1", "wb-12")) != ("1", "wb-1")


@pytest.mark.parametrize(
    ("name", "confirmed"),
    [
        ("Appointment Confirmed", True),
        ("Confirmed", True),
        ("Unconfirmed", False),
        ("Not Confirmed", False),
        ("Not Called", False),
        ("Left Msg", False),
        ("Texted", False),
    ],
)
def test_confirmation_definitions_are_read_by_name(name: str, confirmed: bool) -> None:
    assert is_confirmed_name(name) is confirmed


def test_open_dental_values_convert_both_ways() -> None:
    assert od_bool("true") and od_bool("True") and od_bool(True)
    assert not od_bool("false") and not od_bool(None)
    assert od_to_iso("2026-11-26 09:15:00") == "2026-11-26T09:15:00"
    assert od_to_iso("0001-01-01 00:00:00") is None
    assert od_to_iso("") is None
    assert iso_to_od("2026-11-26T09:15:00") == "2026-11-26 09:15:00"
    assert iso_to_od("2026-11-26T09:15:00Z") == "2026-11-26 09:15:00"
    assert iso_to_od("2026-11-26T09:15:00.123-05:00") == "2026-11-26 09:15:00"
    with pytest.raises(ValueError, match="not an ISO 8601"):
        iso_to_od("yesterday")


@pytest.mark.parametrize(
    ("row", "active"),
    [
        ({"IsHidden": "false", "ProvStatus": "Active"}, True),
        ({"IsHidden": "true", "ProvStatus": "Active"}, False),
        ({"IsHidden": "false", "ProvStatus": "Deleted"}, False),
        ({}, True),
    ],
)
def test_provider_activity_follows_is_hidden_and_prov_status(
    row: dict[str, str], active: bool
) -> None:
    assert provider_active(row) is active


def test_provider_names_are_built_from_the_name_columns() -> None:
    assert provider_name({"FName": "Sam", "LName": "Lee", "Suffix": "RDH"}) == "Sam Lee, RDH"
    assert provider_name({"Abbr": "DOC1"}) == "DOC1"


# ---- the DateTStamp cursor -------------------------------------------------------------------


def test_a_cursor_round_trips_through_its_string() -> None:
    cursor = StampCursor(
        server_time=T0,
        rows={"12": ("2026-11-26 09:14:59", "9f2c"), "3": ("2026-11-26 09:14:59", "")},
        flow={"40": "CA|2026-11-26"},
    )
    assert StampCursor.decode(cursor.encode()) == cursor
    assert StampCursor.decode(None) == StampCursor()
    assert cursor.since(2) == "2026-11-26 09:14:58"
    assert StampCursor().since(2) is None


@pytest.mark.parametrize(
    "text", ["", "{}", '{"v":3}', '{"v":1,"t":"yesterday"}', "abc", '{"v":1,"seen":3}']
)
def test_a_foreign_cursor_is_refused_with_the_fix(text: str) -> None:
    with pytest.raises(CursorError, match="clear the stored cursor"):
        StampCursor.decode(text)


def test_the_first_read_takes_every_row_and_remembers_the_overlap_window() -> None:
    rows = [
        Row("1", "2026-11-26 08:00:00", T0),
        Row("2", "2026-11-26 09:14:59", T0),
        Row("3", "2026-11-26 09:15:00", T0),
    ]
    fresh, after = advance(StampCursor(), rows, overlap=2)
    assert fresh == [0, 1, 2]
    assert after.server_time == T0
    assert after.rows == {
        "2": ("2026-11-26 09:14:59", ""),
        "3": ("2026-11-26 09:15:00", ""),
    }


def test_rows_read_again_in_the_overlap_are_dropped_but_new_stamps_are_kept() -> None:
    before = StampCursor(
        server_time=T0,
        rows={"2": ("2026-11-26 09:14:59", ""), "3": ("2026-11-26 09:15:00", "")},
    )
    later = "2026-11-26 09:20:00"
    rows = [
        Row("2", "2026-11-26 09:14:59", later),  # same change again: dropped
        Row("3", "2026-11-26 09:16:00", later),  # changed again: new
        Row("4", "2026-11-26 09:15:00", later),  # committed in the read's second: new
    ]
    fresh, after = advance(before, rows, overlap=2)
    assert fresh == [1, 2]
    assert after.server_time == later
    # Only stamps inside the new window are remembered.
    assert after.rows == {}


def test_duplicates_inside_one_read_are_emitted_once() -> None:
    rows = [Row("5", T0, T0), Row("5", T0, T0)]
    fresh, _ = advance(StampCursor(), rows, overlap=2)
    assert fresh == [0]


def test_a_version_1_cursor_is_read_as_keys_matched_by_stamp() -> None:
    old = '{"v":1,"t":"2026-11-26 09:15:00","seen":{"2026-11-26 09:14:59":["2","12"]}}'
    cursor = StampCursor.decode(old)
    assert cursor.rows == {"2": ("2026-11-26 09:14:59", ""), "12": ("2026-11-26 09:14:59", "")}
    fresh, _ = advance(cursor, [Row("2", "2026-11-26 09:14:59", T0, "d1")], overlap=2)
    assert fresh == []


def test_two_states_of_one_row_in_one_second_are_two_changes() -> None:
    arrived = Row("7", T0, T0, "d-arrived")
    fresh, after = advance(StampCursor(), [arrived], overlap=2)
    assert fresh == [0]
    seated = Row("7", T0, T0, "d-seated")  # same key, same stamp, other content
    fresh, after = advance(after, [seated], overlap=2)
    assert fresh == [0]
    assert after.rows == {"7": (T0, "d-seated")}
    fresh, _ = advance(after, [seated], overlap=2)
    assert fresh == []


def test_a_row_back_to_an_earlier_state_is_a_change_again() -> None:
    a, b = Row("7", T0, T0, "dA"), Row("7", T0, T0, "dB")
    _, after = advance(StampCursor(), [a], overlap=2)
    _, after = advance(after, [b], overlap=2)
    fresh, _ = advance(after, [a], overlap=2)
    assert fresh == [0]


def test_a_key_read_twice_in_one_read_counts_as_its_last_version() -> None:
    rows = [Row("5", T0, T0, "old"), Row("6", T0, T0, "x"), Row("5", T0, T0, "new")]
    fresh, after = advance(StampCursor(), rows, overlap=2)
    assert fresh == [1, 2]
    assert after.rows["5"] == (T0, "new")


def test_a_digest_covers_every_field_in_order() -> None:
    assert digest(["7", "Scheduled"]) != digest(["7", "Complete"])
    assert digest(["7", "Scheduled"]) == digest(["7", "Scheduled"])
    assert len(digest([1])) == 16


def test_an_empty_read_keeps_the_cursor() -> None:
    before = StampCursor(server_time=T0, rows={"1": (T0, "")})
    fresh, after = advance(before, [], overlap=2)
    assert fresh == [] and after == before


def test_the_earliest_server_time_of_a_paged_read_becomes_the_cursor() -> None:
    rows = [Row("1", T0, "2026-11-26 09:15:03"), Row("2", T0, T0)]
    _, after = advance(StampCursor(), rows, overlap=2)
    assert after.server_time == T0


def _flow(apt: str, **statuses: str) -> FlowState:
    return FlowState(appointment_id=apt, patient_id="p" + apt, day="2026-11-26", statuses=statuses)


def test_flow_changes_are_emitted_once_each() -> None:
    out, memory = flow_changes({}, [_flow("1", confirmed="t1")], today="2026-11-26")
    assert [(s.appointment_id, st) for s, st in out] == [("1", "confirmed")]
    out, memory = flow_changes(
        memory, [_flow("1", confirmed="t1", arrived="t2", seated="t3")], today="2026-11-26"
    )
    assert [st for _, st in out] == ["arrived", "seated"]
    out, memory = flow_changes(
        memory, [_flow("1", confirmed="t1", arrived="t2", seated="t3")], today="2026-11-26"
    )
    assert out == []
    assert memory == {"1": "CAS|2026-11-26"}


def test_an_undone_status_that_comes_back_is_a_new_change() -> None:
    _, memory = flow_changes({}, [_flow("1", arrived="t1")], today="2026-11-26")
    _, memory = flow_changes(memory, [_flow("1")], today="2026-11-26")
    assert memory == {}
    out, _ = flow_changes(memory, [_flow("1", arrived="t9")], today="2026-11-26")
    assert [st for _, st in out] == ["arrived"]


def test_flow_memory_forgets_appointments_older_than_a_day() -> None:
    _, memory = flow_changes({"9": "CASD|2026-11-20", "8": "C|2026-11-25"}, [], today="2026-11-26")
    assert memory == {"8": "C|2026-11-25"}


async def test_keyed_locks_are_dropped_when_released() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"):
        assert len(locks) == 1
    assert len(locks) == 0


# ---- HTTP status -> error ------------------------------------------------------------------


def _response(status: int, text: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://pms.test/api/v1/patients?PatNum=3&apiKey=hunter22")
    return httpx.Response(status, text=text, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (400, None, PermanentPmsError, None),
        (401, None, PmsAuthError, None),
        (403, None, PmsAuthError, None),
        (404, None, PmsNotFoundError, None),
        (409, None, PermanentPmsError, None),
        (422, None, PermanentPmsError, None),
        (429, {"Retry-After": "3"}, RateLimitedError, 3.0),
        (503, {"Retry-After": "2"}, RateLimitedError, 2.0),
        (503, None, TemporaryPmsError, None),
        (500, None, TemporaryPmsError, None),
        (504, None, TemporaryPmsError, None),
    ],
)
def test_statuses_map_onto_the_error_hierarchy(
    status: int, headers: dict[str, str] | None, kind: type[Exception], retry_after: float | None
) -> None:
    error = error_for(
        _response(status, "nope", headers), pms="OpenDental", operation="read patients"
    )
    assert type(error) is kind
    assert error.status == status
    assert getattr(error, "retry_after", None) == retry_after
    assert str(error).startswith(f"OpenDental read patients: HTTP {status} ")
    assert "hunter22" not in str(error) and "hunter22" not in repr(error)
    assert "PatNum=3" in str(error)


def test_the_bridge_json_error_and_echoed_secrets_are_handled() -> None:
    body = '{"error": {"code": "invalid", "message": "token tok-abcdef is not a practice token"}}'
    error = error_for(
        _response(400, body), pms="Dentrix", operation="write note", secrets=["tok-abcdef"]
    )
    assert "invalid: token <redacted> is not a practice token" in str(error)
    assert "tok-abcdef" not in str(error)


def test_redact_url_hides_user_info_and_secret_parameters() -> None:
    assert (
        redact_url("https://user:pw@pms.test/a?token=x&since=5&customerKey=y")
        == "https://pms.test/a?token=<redacted>&since=5&customerKey=<redacted>"
    )
    assert scrub("abc secretvalue", ["secretvalue", "", "ab"]) == "abc <redacted>"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 500, "since": "2026-11-26T08:30:00+00:00 a/b&c=é"},
        {"includePhotos": True, "deleted": False, "offset": 0},
        {},
    ],
)
def test_query_parameters_are_encoded_exactly_as_httpx_would(params: dict[str, object]) -> None:
    client = httpx.AsyncClient()
    url, rest = with_query("http://pms.test:8080/api/v1/patients", params)  # type: ignore[arg-type]
    assert rest is None
    ours = client.build_request("GET", url).url
    theirs = client.build_request("GET", "http://pms.test:8080/api/v1/patients", params=params).url
    assert ours == theirs


def test_a_url_that_already_has_a_query_leaves_the_parameters_to_httpx() -> None:
    assert with_query("http://pms.test/x?a=1", {"b": 2}) == ("http://pms.test/x?a=1", {"b": 2})
