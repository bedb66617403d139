"""The engine's pure decisions (`reconciler.engine.decisions`), as tables.

Nothing runs and nothing is faked: every function takes plain values and returns plain values.
The errors are the drivers' real exception classes, built the way the drivers build them.
"""

from __future__ import annotations

from typing import Any

import pytest

from pms_drivers.errors import (
    PermanentPmsError,
    PmsAuthError,
    PmsNotFoundError,
    RateLimitedError,
    TemporaryPmsError,
)
from reconciler.engine.core import ReachError, ReachFailure
from reconciler.engine.decisions import (
    DRIFT,
    Claimant,
    PollAction,
    Unwritten,
    after_poll,
    backoff_delay,
    classify,
    drops_client,
    first_poll_delay,
    next_start_after_success,
    plan_counter_writes,
    plan_pollers,
    rescheduled_due,
    roles,
)
from reconciler.engine.errors import SecretNotFoundError

KW: dict[str, Any] = {"pms": "Open Dental", "url": "http://pms.example/api/v1/x"}

# ----- errors -> conditions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "failure", "message_has"),
    [
        (
            SecretNotFoundError("Secret c/acme-pms not found"),
            ReachFailure.SECRET_NOT_FOUND,
            "not found",
        ),
        (
            PmsAuthError("customerKey is missing", operation="configure", **KW),
            ReachFailure.SECRET_INCOMPLETE,
            "customerKey is missing",
        ),
        (
            PmsAuthError("401 Unauthorized", operation="server_info", status=401, **KW),
            ReachFailure.AUTH,
            "fix the credentials in the practice's Secret",
        ),
        (
            RateLimitedError("429", operation="patients_since", status=429, retry_after=3, **KW),
            ReachFailure.RATE_LIMITED,
            "429",
        ),
        (
            RateLimitedError("503 busy", operation="patients_since", status=503, **KW),
            ReachFailure.UNREACHABLE,
            "503",
        ),
        (
            TemporaryPmsError("connection refused", operation="server_info", **KW),
            ReachFailure.UNREACHABLE,
            "connection refused",
        ),
        (
            PermanentPmsError("400 bad request", operation="list_providers", status=400, **KW),
            ReachFailure.PMS_ERROR,
            "400",
        ),
        (
            PmsNotFoundError("404", operation="list_note_types", status=404, **KW),
            ReachFailure.PMS_ERROR,
            "404",
        ),
    ],
)
def test_an_error_becomes_the_reach_failure_that_says_what_to_fix(
    error: Exception, failure: ReachFailure, message_has: str
) -> None:
    reach = classify(error)
    assert reach.failure == failure
    assert message_has in reach.message


@pytest.mark.parametrize(
    ("error", "drops"),
    [
        (SecretNotFoundError("gone"), True),
        (PmsAuthError("no key", operation="configure", **KW), True),
        (PmsAuthError("401", operation="server_info", status=401, **KW), False),
        (TemporaryPmsError("down", operation="server_info", **KW), False),
    ],
)
def test_only_missing_or_incomplete_credentials_drop_the_client(
    error: Exception, drops: bool
) -> None:
    assert drops_client(error) is drops


# ----- the poll state machine -----------------------------------------------------------------

DOWN = ReachError(ReachFailure.UNREACHABLE, "503 from Open Dental")
THROTTLED = ReachError(ReachFailure.RATE_LIMITED, "429 from Open Dental")


@pytest.mark.parametrize(
    ("case", "facts", "action", "reach_after"),
    [
        ("the drift check's own result", {"kind": DRIFT, "failed": True, "pms_error": DOWN}, PollAction.NONE, None),
        ("a removed practice", {"removed": True, "failed": True, "pms_error": DOWN}, PollAction.NONE, None),
        ("a success while healthy moves counters only", {}, PollAction.MARK_DIRTY, None),
        ("a first PMS error is written at once", {"failed": True, "pms_error": DOWN, "failures": 1}, PollAction.PUBLISH, DOWN),
        ("the same PMS error again moves counters only", {"failed": True, "pms_error": DOWN, "failures": 2, "reach": DOWN}, PollAction.MARK_DIRTY, DOWN),
        ("the same PMS error reaching the threshold is written", {"failed": True, "pms_error": DOWN, "failures": 3, "reach": DOWN}, PollAction.PUBLISH, DOWN),
        ("a different PMS error is written", {"failed": True, "pms_error": THROTTLED, "failures": 2, "reach": DOWN}, PollAction.PUBLISH, THROTTLED),
        ("the first success after a PMS error reconciles", {"reach": DOWN}, PollAction.RECOVER, DOWN),
        ("a success while a recovery runs moves counters only", {"reach": DOWN, "recovering": True}, PollAction.MARK_DIRTY, DOWN),
        ("a non-PMS failure below the threshold moves counters only", {"failed": True, "failures": 2}, PollAction.MARK_DIRTY, None),
        ("a non-PMS failure reaching the threshold is written", {"failed": True, "failures": 3}, PollAction.PUBLISH, None),
        ("a non-PMS failure past the threshold moves counters only", {"failed": True, "failures": 4}, PollAction.MARK_DIRTY, None),
    ],
)  # fmt: skip
def test_the_poll_state_machine(
    case: str, facts: dict[str, Any], action: PollAction, reach_after: ReachError | None
) -> None:
    verdict = after_poll(
        kind=facts.get("kind", "patients"),
        removed=facts.get("removed", False),
        failed=facts.get("failed", False),
        pms_error=facts.get("pms_error"),
        consecutive_failures=facts.get("failures", 0),
        failure_threshold=3,
        reach_error=facts.get("reach"),
        recovering=facts.get("recovering", False),
    )
    assert (verdict.action, verdict.reach_error) == (action, reach_after), case


# ----- poller timing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "first_jitter", "u", "delay"),
    [
        (60.0, 1.0, 0.0, 0.0),
        (60.0, 1.0, 0.5, 15.0),  # capped at max_jitter (30 s), not 30 s of a 60 s interval
        (10.0, 1.0, 0.5, 5.0),
        (10.0, 0.0, 0.9, 0.0),  # first_jitter 0: at once
        (10.0, 0.5, 1.0, 5.0),
    ],
)
def test_a_new_pollers_first_run_is_spread_over_its_interval_at_most_max_jitter(
    interval: float, first_jitter: float, u: float, delay: float
) -> None:
    assert first_poll_delay(interval, first_jitter, 30.0, u) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("interval", "jitter", "u", "due"),
    [
        (10.0, 0.1, 0.0, 110.0),  # never closer than the interval
        (10.0, 0.1, 0.5, 110.5),
        (600.0, 0.1, 1.0, 730.0),  # 10 % of 600 s capped at 30 s
        (10.0, 0.0, 0.7, 110.0),
    ],
)
def test_after_a_success_the_next_start_is_an_interval_plus_capped_jitter_after_the_last(
    interval: float, jitter: float, u: float, due: float
) -> None:
    assert next_start_after_success(100.0, interval, jitter, 30.0, u) == pytest.approx(due)


@pytest.mark.parametrize(
    ("interval", "failures", "max_backoff", "retry_after", "delay"),
    [
        (1.0, 1, 300.0, None, 1.0),
        (1.0, 2, 300.0, None, 2.0),
        (1.0, 3, 300.0, None, 4.0),
        (1.0, 10, 300.0, None, 300.0),  # capped
        (0.1, 4, 0.4, None, 0.4),
        (600.0, 3, 300.0, None, 600.0),  # never faster than the interval
        (1.0, 1, 300.0, 7, 7.0),  # Retry-After wins when longer
        (1.0, 3, 300.0, 2.5, 4.0),  # and not when shorter
        (1.0, 1, 300.0, "soon", 1.0),  # not a number: ignored
        (5.0, 200, 300.0, None, 300.0),  # no overflow after many failures
    ],
)
def test_failures_back_off_exponentially_capped_honouring_retry_after_never_below_the_interval(
    interval: float, failures: int, max_backoff: float, retry_after: object, delay: float
) -> None:
    assert backoff_delay(interval, failures, max_backoff, retry_after) == pytest.approx(delay)


@pytest.mark.parametrize(
    ("now", "last_start", "interval", "due"),
    [
        (100.0, 95.0, 10.0, 105.0),  # one new interval after the last start
        (100.0, 50.0, 10.0, 100.0),  # already past: now
        (100.0, None, 10.0, 110.0),  # never ran: one interval from now
    ],
)
def test_an_interval_change_reschedules_from_the_last_start(
    now: float, last_start: float | None, interval: float, due: float
) -> None:
    assert rescheduled_due(now, last_start, interval) == due


# ----- which pollers, and the drift check -----------------------------------------------------

WANTED = {"patients": 60.0, "appointments": 30.0}


@pytest.mark.parametrize(
    ("running", "facts", "stop", "run", "drift_in"),
    [
        ([], {}, (), WANTED, 30.0),
        (["patients", "appointmentStatus", DRIFT], {}, ("appointmentStatus",), WANTED, 30.0),
        (["patients", "appointments", DRIFT], {"connected": False}, ("patients", "appointments"), {}, 30.0),
        (["patients", DRIFT], {"suspended": True, "wanted": {}}, ("patients",), {}, None),
        (["patients", DRIFT], {"duplicate": True, "wanted": {}}, ("patients",), {}, None),
    ],
)  # fmt: skip
def test_pollers_follow_the_decision_and_the_drift_check_runs_one_period_after_a_reconcile(
    running: list[str],
    facts: dict[str, Any],
    stop: tuple[str, ...],
    run: dict[str, float],
    drift_in: float | None,
) -> None:
    plan = plan_pollers(
        running,
        facts.get("wanted", WANTED),
        connected=facts.get("connected", True),
        suspended=facts.get("suspended", False),
        duplicate=facts.get("duplicate", False),
        drift_interval=30.0,
    )
    assert (plan.stop, dict(plan.run), plan.drift_in) == (stop, run, drift_in)


# ----- one resource per practiceId ------------------------------------------------------------

OLD, NEW = "2026-11-01T08:00:00Z", "2026-11-20T08:00:00Z"


@pytest.mark.parametrize(
    ("claimants", "expected"),
    [
        ([], {}),
        ([Claimant("a/x", NEW)], {"a/x": None}),
        ([Claimant("b/x", NEW), Claimant("a/x", OLD)], {"a/x": None, "b/x": "a/x"}),
        ([Claimant("b/x", OLD), Claimant("a/x", NEW)], {"b/x": None, "a/x": "b/x"}),
        ([Claimant("b/x", OLD), Claimant("a/x", OLD)], {"a/x": None, "b/x": "a/x"}),  # tie: smaller key
        ([Claimant("a/x", ""), Claimant("b/x", NEW)], {"b/x": None, "a/x": "b/x"}),  # unknown: newest
        ([Claimant("c/x", NEW), Claimant("a/x", OLD), Claimant("b/x", NEW)], {"a/x": None, "b/x": "a/x", "c/x": "a/x"}),
    ],
)  # fmt: skip
def test_the_oldest_resource_manages_a_practice_id_and_the_others_are_duplicates(
    claimants: list[Claimant], expected: dict[str, str | None]
) -> None:
    assert roles(claimants) == expected
    assert roles(list(reversed(claimants))) == expected  # arrival order does not matter


# ----- the status budget ----------------------------------------------------------------------


def test_counter_writes_go_longest_unwritten_first_in_batches_of_one_seconds_worth() -> None:
    unwritten = [Unwritten(f"c/p{n}", published_at=float(10 - n)) for n in range(10)]
    plan = plan_counter_writes(unwritten, qps=4.0)
    assert plan.keys == [f"c/p{n}" for n in reversed(range(10))]
    assert [len(b) for b in plan.batches] == [4, 4, 2]
    assert plan.spacing == pytest.approx(1.0)  # 4 writes, then the next 4 one second later


@pytest.mark.parametrize(
    ("n", "qps", "max_batch", "sizes", "spacing"),
    [
        (0, 20.0, 100, [], 1.0),
        (250, 0.0, 100, [100, 100, 50], 0.0),  # no cap: batches back to back
        (250, 500.0, 100, [100, 100, 50], 0.2),  # a batch is capped at max_batch
        (3, 0.5, 100, [1, 1, 1], 2.0),  # below one a second: one write every 2 s
        (5, 2.0, 100, [2, 2, 1], 1.0),
    ],
)
def test_the_status_budget_paces_batches_to_the_qps_cap(
    n: int, qps: float, max_batch: int, sizes: list[int], spacing: float
) -> None:
    plan = plan_counter_writes(
        [Unwritten(f"k{i}", 0.0) for i in range(n)], qps=qps, max_batch=max_batch
    )
    assert [len(b) for b in plan.batches] == sizes
    assert plan.spacing == pytest.approx(spacing)
    assert plan.keys == [f"k{i}" for i in range(n)]  # ties keep their order


def test_a_practice_never_written_goes_before_every_written_one() -> None:
    plan = plan_counter_writes(
        [Unwritten("c/old", 50.0), Unwritten("c/never", 0.0), Unwritten("c/new", 90.0)], qps=20.0
    )
    assert plan.keys == ["c/never", "c/old", "c/new"]
