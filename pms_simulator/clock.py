"""The simulated clock's time formats and the deterministic activity plan of a practice's day.

Pure functions, no I/O: `plan_day()` decides, from the practice id and the date alone, which
appointments the day has and when each is confirmed, the patient arrives, is seated and dismissed
(or does not show), when new patients register and when existing ones are edited. `state.State`
stores the plan as timed events and applies them as `Simulator.advance()` moves the clock, so two
simulators given the same practice id and the same clock see exactly the same changes.

Times are naive office-local datetimes at second resolution, stored as Open Dental prints them
(`yyyy-MM-dd HH:mm:ss`), which also sorts correctly as text.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta

OD_FORMAT = "%Y-%m-%d %H:%M:%S"
EMPTY_TIME = "0001-01-01 00:00:00"
#: The default first instant of the simulated clock (office local time).
DEFAULT_START = datetime(2026, 11, 26, 7, 0, 0)
#: When the next day's appointments are booked (the evening before).
BOOKING_HOUR = 18

# Planned event actions.
CONFIRM = "confirm"
ARRIVE = "arrive"
SEAT = "seat"
DISMISS = "dismiss"
BREAK = "break"
NEW_PATIENT = "new_patient"
EDIT_PATIENT = "edit_patient"
PLAN_DAY = "plan_day"


def fmt(dt: datetime) -> str:
    """Render a datetime as Open Dental does: `yyyy-MM-dd HH:mm:ss`."""
    return dt.isoformat(" ", "seconds")


def parse(text: str) -> datetime:
    """Parse `yyyy-MM-dd HH:mm:ss` (or ISO with a `T`, or a bare date); ValueError otherwise."""
    text = text.strip()
    if len(text) == 10:
        return datetime.strptime(text, "%Y-%m-%d")
    return datetime.strptime(text.replace("T", " ")[:19], OD_FORMAT)


def iso(stored: str) -> str:
    """Turn a stored `yyyy-MM-dd HH:mm:ss` into ISO 8601 (`yyyy-MM-ddTHH:mm:ss`), as the bridge speaks."""
    return stored.replace(" ", "T", 1)


def rng_for(*parts: object) -> random.Random:
    """A random generator seeded from the parts' text only (never Python's salted hash)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class AppointmentSeed:
    """One appointment of a planned day (times as stored text)."""

    id: int
    patient_id: int
    start: str
    provider_id: str
    confirmed: bool


@dataclass(frozen=True)
class PlannedEvent:
    """Something that will happen at `at`: an action on an appointment or patient, or a booking."""

    at: str
    action: str
    target: int  # appointment id, patient id, new-patient seed or date ordinal (PLAN_DAY)


@dataclass(frozen=True)
class DayPlan:
    """A day's appointments and the events that move them (and the patients) along."""

    appointments: tuple[AppointmentSeed, ...]
    events: tuple[PlannedEvent, ...]


def plan_day(
    practice_id: str,
    day: date,
    provider_ids: list[str],
    patient_ids: int,
    first_appointment_id: int,
) -> DayPlan:
    """Plan `day` for a practice: ~40 appointments 08:00-16:30 and their flow, deterministically.

    `patient_ids` is how many seeded patients (ids 1..n) there are to book; `provider_ids` are the
    active providers to book with. Appointments already confirmed when booked have no confirm event.
    """
    rng = rng_for(practice_id, day.isoformat())
    base = datetime(day.year, day.month, day.day)
    opens = base + timedelta(hours=7, minutes=5)
    apts: list[AppointmentSeed] = []
    events: list[PlannedEvent] = []
    count = rng.randint(36, 44)
    for i in range(count):
        start = base + timedelta(hours=8, minutes=10 * rng.randint(0, 51))
        apt_id = first_appointment_id + i
        pre_confirmed = rng.random() < 0.4
        apts.append(
            AppointmentSeed(
                apt_id,
                rng.randint(1, max(1, patient_ids)),
                fmt(start),
                rng.choice(provider_ids),
                pre_confirmed,
            )
        )
        if not pre_confirmed and rng.random() < 0.85:
            at = max(opens, start - timedelta(minutes=rng.randint(45, 240)))
            events.append(PlannedEvent(fmt(at + _secs(rng)), CONFIRM, apt_id))
        if rng.random() < 0.05:
            events.append(
                PlannedEvent(fmt(start + timedelta(minutes=20) + _secs(rng)), BREAK, apt_id)
            )
            continue
        arrive = start - timedelta(minutes=rng.randint(0, 12)) + _secs(rng)
        seat = arrive + timedelta(minutes=rng.randint(2, 15), seconds=rng.randint(0, 59))
        dismiss = seat + timedelta(minutes=rng.randint(30, 75), seconds=rng.randint(0, 59))
        events += [
            PlannedEvent(fmt(arrive), ARRIVE, apt_id),
            PlannedEvent(fmt(seat), SEAT, apt_id),
            PlannedEvent(fmt(dismiss), DISMISS, apt_id),
        ]
    for _ in range(rng.randint(4, 8)):
        at = base + timedelta(hours=8, minutes=rng.randint(0, 540)) + _secs(rng)
        events.append(PlannedEvent(fmt(at), NEW_PATIENT, rng.randint(1, 2**31)))
    for _ in range(rng.randint(4, 8)):
        at = base + timedelta(hours=8, minutes=rng.randint(0, 540)) + _secs(rng)
        events.append(PlannedEvent(fmt(at), EDIT_PATIENT, rng.randint(1, max(1, patient_ids))))
    booking = base + timedelta(hours=BOOKING_HOUR)
    events.append(PlannedEvent(fmt(booking), PLAN_DAY, (day + timedelta(days=1)).toordinal()))
    return DayPlan(tuple(apts), tuple(sorted(events, key=lambda e: e.at)))


def _secs(rng: random.Random) -> timedelta:
    return timedelta(seconds=rng.randint(1, 59))
