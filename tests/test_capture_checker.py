"""The change-capture checker on hand-made histories: it counts what it should (pure, no I/O).

The property test and the soak are only as good as this count, so each rule of
`pms_simulator.checker` has a case here that must come out non-zero.
"""

from __future__ import annotations

from pms_simulator.checker import Poll, Version, check_flow, check_records, versions_from_log


def _log(*entries: tuple[int, str, str]) -> list[dict[str, object]]:
    return [
        {"seq": seq, "id": rid, "row": {"id": rid, "fname": "A", "lname": name, "stamp": "t"}}
        for seq, rid, name in entries
    ]


def _project(row: object) -> tuple[object, ...]:
    assert isinstance(row, dict)
    return (row["id"], row["lname"])


def test_consecutive_changes_with_the_same_visible_state_are_one_version() -> None:
    versions = versions_from_log(
        _log((1, "7", "Diaz"), (2, "7", "Diaz"), (5, "7", "Ruiz")), _project
    )
    assert versions == {
        "7": [Version("7", ("7", "Diaz"), 1, 5), Version("7", ("7", "Ruiz"), 5, None)]
    }


def test_a_version_current_through_a_poll_and_not_delivered_is_lost() -> None:
    versions = versions_from_log(_log((1, "7", "Diaz"), (5, "7", "Ruiz")), _project)
    verdict = check_records("patients", versions, [("7", ("7", "Ruiz"))], [Poll(2, 3), Poll(6, 6)])
    assert (verdict.required, verdict.lost, verdict.doubled) == (2, 1, 0)


def test_a_version_replaced_during_every_poll_may_be_skipped() -> None:
    versions = versions_from_log(_log((1, "7", "Diaz"), (5, "7", "Ruiz")), _project)
    verdict = check_records("patients", versions, [("7", ("7", "Ruiz"))], [Poll(0, 6), Poll(7, 7)])
    assert verdict.ok and verdict.required == 1


def test_a_version_delivered_twice_is_doubled_and_a_state_never_held_is_phantom() -> None:
    versions = versions_from_log(_log((1, "7", "Diaz")), _project)
    delivered = [("7", ("7", "Diaz")), ("7", ("7", "Diaz")), ("7", ("7", "Nope"))]
    verdict = check_records("patients", versions, delivered, [Poll(1, 1)])
    assert (verdict.lost, verdict.doubled, verdict.phantom) == (0, 1, 1)
    assert not verdict.ok


def test_a_row_back_in_an_earlier_state_is_a_new_version_to_deliver() -> None:
    versions = versions_from_log(_log((1, "7", "A"), (2, "7", "B"), (3, "7", "A")), _project)
    delivered = [("7", ("7", "A")), ("7", ("7", "B")), ("7", ("7", "A"))]
    polls = [Poll(1, 1), Poll(2, 2), Poll(3, 3)]
    verdict = check_records("patients", versions, delivered, polls)
    assert verdict.ok and verdict.required == 3


def test_flow_changes_are_each_required_once() -> None:
    truth = [("1", "arrived"), ("1", "seated"), ("2", "arrived")]
    verdict = check_flow(
        "appointmentStatus", truth, [("1", "arrived"), ("1", "arrived"), ("9", "seated")]
    )
    assert (verdict.lost, verdict.doubled, verdict.phantom) == (2, 1, 1)
    assert check_flow("appointmentStatus", truth, list(reversed(truth))).ok


def test_a_state_the_reader_already_showed_comes_back_after_an_unseen_one_is_not_lost() -> None:
    log = _log((1, "7", "A"), (4, "7", "B"), (5, "7", "A"))
    versions = versions_from_log(log, _project)
    # B lived from change 4 to 5, between the polls: nobody could see it.
    verdict = check_records("patients", versions, [("7", ("7", "A"))], [Poll(2, 3), Poll(6, 6)])
    assert verdict.ok and verdict.required == 2
    # Had a poll seen B, B and the second A are changes to deliver.
    verdict = check_records(
        "patients", versions, [("7", ("7", "A"))], [Poll(2, 3), Poll(4, 4), Poll(6, 6)]
    )
    assert verdict.lost == 2
