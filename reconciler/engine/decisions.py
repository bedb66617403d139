"""The engine's decisions as plain functions over plain values: no I/O, no event loop, no clock.

`Engine` and `Scheduler` gather the facts (what the scheduler knows, what the PMS answered, the
time on their `Clock`), call one of these and carry out the answer; `tests/test_decisions.py`
tests them with tables.

- `classify`: a PMS or Secret error -> `ReachError` (the PMSReachable reason and message).
- `after_poll`: the poll state machine: what one poll's result means for the practice's status
  (write it now, reconcile fully, or only mark the counters unwritten).
- `first_poll_delay`, `next_start_after_success`, `backoff_delay`, `rescheduled_due`: when the
  scheduler runs a poller next (jitter, capped exponential backoff, `Retry-After`).
- `plan_pollers`: which pollers to stop and to (re)start, and when the drift check runs next.
- `roles`: of the resources naming one practiceId, which manages it and which are duplicates.
- `plan_counter_writes`: the status budget: counter-only writes, longest-unwritten first, in
  batches paced to at most `qps` a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pms_drivers.errors import PmsAuthError, RateLimitedError, TemporaryPmsError
from reconciler.engine.core import ReachError, ReachFailure
from reconciler.engine.errors import SecretNotFoundError

#: The scheduler kind of the per-practice drift re-check (not a sync kind).
DRIFT = "drift"
#: Counter-only status writes per batch when there is no qps cap (and the most with one): the
#: engine recomputes one batch per event-loop pass, so thousands never stall the polls due.
FLUSH_SLICE = 100


# ----- errors -> conditions -------------------------------------------------------------------


def classify(exc: BaseException) -> ReachError:
    """The PMSReachable failure an error stands for, with a message that says what to fix."""
    msg = str(exc)
    if isinstance(exc, SecretNotFoundError):
        return ReachError(ReachFailure.SECRET_NOT_FOUND, msg)
    if isinstance(exc, PmsAuthError):
        if exc.operation == "configure":
            return ReachError(ReachFailure.SECRET_INCOMPLETE, msg)
        return ReachError(ReachFailure.AUTH, f"{msg}; fix the credentials in the practice's Secret")
    if isinstance(exc, RateLimitedError) and exc.status == 429:
        return ReachError(ReachFailure.RATE_LIMITED, msg)
    if isinstance(exc, TemporaryPmsError):
        return ReachError(ReachFailure.UNREACHABLE, msg)
    return ReachError(ReachFailure.PMS_ERROR, msg)


def drops_client(exc: BaseException) -> bool:
    """True when the practice's client is useless until its Secret changes (missing or
    incomplete credentials): the engine closes it instead of keeping a connection pool."""
    return isinstance(exc, SecretNotFoundError) or (
        isinstance(exc, PmsAuthError) and exc.operation == "configure"
    )


# ----- the poll state machine -----------------------------------------------------------------


class PollAction(StrEnum):
    """What the engine does with the practice after one poll."""

    #: Nothing (the drift check's own result, or a practice already removed).
    NONE = "none"
    #: Only counters changed: the next counter flush writes them, within the status budget.
    MARK_DIRTY = "mark-dirty"
    #: A condition may change (PMSReachable, PollersRunning): recompute and write now.
    PUBLISH = "publish"
    #: The PMS answers again after an error: reconcile fully so every condition recovers.
    RECOVER = "recover"


@dataclass(frozen=True)
class PollVerdict:
    """`after_poll`'s answer: the action and the practice's reach error from now on."""

    action: PollAction
    reach_error: ReachError | None


def after_poll(
    *,
    kind: str,
    removed: bool,
    failed: bool,
    pms_error: ReachError | None,
    consecutive_failures: int,
    failure_threshold: int,
    reach_error: ReachError | None,
    recovering: bool,
) -> PollVerdict:
    """Decide what a finished poll means for its practice.

    `failed`: the poll raised; `pms_error`: `classify(error)` when it was a PMS error (None for
    other failures); `consecutive_failures`: the poller's count including this poll;
    `reach_error`: the practice's current one; `recovering`: a recovery reconcile is running.
    A new PMS error (or the same one reaching the threshold) is written at once; an error already
    reported only moves counters; the first success after a PMS error reconciles everything;
    any failure reaching `failure_threshold` flips PollersRunning at once.
    """
    if removed or kind == DRIFT:
        return PollVerdict(PollAction.NONE, reach_error)
    if pms_error is not None:
        if pms_error != reach_error or consecutive_failures == failure_threshold:
            return PollVerdict(PollAction.PUBLISH, pms_error)
        return PollVerdict(PollAction.MARK_DIRTY, reach_error)
    if not failed and reach_error is not None and not recovering:
        return PollVerdict(PollAction.RECOVER, reach_error)
    if failed and consecutive_failures == failure_threshold:
        return PollVerdict(PollAction.PUBLISH, reach_error)
    return PollVerdict(PollAction.MARK_DIRTY, reach_error)


# ----- poller timing --------------------------------------------------------------------------


def first_poll_delay(interval: float, first_jitter: float, max_jitter: float, u: float) -> float:
    """Delay before a new poller's first run: U(0, min(first_jitter * interval, max_jitter)),
    `u` being the uniform draw in [0, 1), so pollers created together do not fire together."""
    return u * min(interval * first_jitter, max_jitter)


def next_start_after_success(
    start: float, interval: float, jitter: float, max_jitter: float, u: float
) -> float:
    """When a poller that succeeded runs next: `start + interval + U(0, jitter * interval)`
    (at most `max_jitter`): never closer than the interval, and periods drift apart."""
    return start + interval + u * min(interval * jitter, max_jitter)


def backoff_delay(
    interval: float, consecutive_failures: int, max_backoff: float, retry_after: object = None
) -> float:
    """Delay from a failed run's start to the next: `interval * 2**(failures-1)` capped at
    `max(interval, max_backoff)`, never less than the error's `retry_after` (when it is a
    number) nor the interval."""
    delay = min(interval * 2.0 ** (consecutive_failures - 1), max(interval, max_backoff))
    if isinstance(retry_after, int | float) and not isinstance(retry_after, bool):
        delay = max(delay, float(retry_after))
    return max(delay, interval)


def rescheduled_due(now: float, last_start: float | None, interval: float) -> float:
    """The next start of a poller whose interval changed: one new interval after its last
    start (or now), and not in the past."""
    base = last_start if last_start is not None else now
    return max(now, base + interval)


# ----- which pollers, and the drift check -----------------------------------------------------


@dataclass(frozen=True)
class PollerPlan:
    """What to do with a practice's pollers after a reconcile."""

    #: Sync kinds whose poller must stop.
    stop: tuple[str, ...]
    #: Sync kind -> interval of every poller that must run (started, or rescheduled in place).
    run: Mapping[str, float]
    #: Seconds until the next drift check (restarted by every reconcile); None: no drift check.
    drift_in: float | None


def plan_pollers(
    running: Iterable[str],
    wanted: Mapping[str, float],
    *,
    connected: bool,
    suspended: bool,
    duplicate: bool,
    drift_interval: float,
) -> PollerPlan:
    """Match the running pollers (`running`: kinds, DRIFT included) to the wanted ones.

    Without a PMS client (the reconcile failed) no poller runs; the drift check goes on so the
    practice heals by itself. A suspended practice and a duplicate (re-checked when its owner
    goes) have no drift check. The drift check runs one whole `drift_interval` after this
    reconcile, not jittered like a new poller: the reconcile has just re-read the PMS, and a
    change the PMS makes afterwards must show within one period.
    """
    run = dict(wanted) if connected else {}
    stop = tuple(kind for kind in running if kind != DRIFT and kind not in run)
    drift_in = None if suspended or duplicate else drift_interval
    return PollerPlan(stop=stop, run=run, drift_in=drift_in)


# ----- one resource per practiceId ------------------------------------------------------------


@dataclass(frozen=True)
class Claimant:
    """A resource whose spec names a practiceId."""

    key: str
    #: metadata.creationTimestamp (RFC 3339, sorts as text); "" when unknown.
    created: str = ""


def roles(claimants: Sequence[Claimant]) -> dict[str, str | None]:
    """key -> the key of the resource that manages the practice instead (None for the manager).

    The oldest resource manages it (an unknown creation time counts as newest), then the
    smaller key, so every replica and every restart elects the same one whatever the order in
    which the resources arrive.
    """
    if not claimants:
        return {}
    winner = min(claimants, key=lambda c: (c.created or "~", c.key)).key
    return {c.key: None if c.key == winner else winner for c in claimants}


# ----- the status budget ----------------------------------------------------------------------


@dataclass(frozen=True)
class Unwritten:
    """A practice whose status has changes (counters) not yet handed to the listener."""

    key: str
    #: Clock time of the last status handed over (0.0: never).
    published_at: float


@dataclass(frozen=True)
class WritePlan:
    """Counter-only status writes: `batches` in order, one starting every `spacing` seconds."""

    batches: tuple[tuple[str, ...], ...]
    spacing: float

    @property
    def keys(self) -> list[str]:
        """Every key, in write order."""
        return [k for batch in self.batches for k in batch]


def plan_counter_writes(
    unwritten: Iterable[Unwritten], *, qps: float, max_batch: int = FLUSH_SLICE
) -> WritePlan:
    """Order and pace the counter-only status writes of one flush.

    The longest-unwritten practice goes first (ties keep their order), so under a cap every
    practice gets its turn. With `qps > 0` a batch is one second's worth of writes (at most
    `max_batch`) and batches start `batch / qps` seconds apart; without a cap (0) batches of
    `max_batch` go out back to back, yielding to the event loop in between.
    """
    order = sorted(unwritten, key=lambda u: u.published_at)
    step = max(1, min(max_batch, int(qps))) if qps > 0 else max(1, max_batch)
    batches = tuple(
        tuple(u.key for u in order[start : start + step]) for start in range(0, len(order), step)
    )
    return WritePlan(batches=batches, spacing=step / qps if qps > 0 else 0.0)
