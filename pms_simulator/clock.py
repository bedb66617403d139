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
    # fromisoformat is C and several times faster than strptime; a zone or fraction is cut off
    # (office-local times, second resolution).
    return datetime.fromisoformat(text.strip()[:19])


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
    rand = rng.random

    def between(low: int, high: int) -> int:  # randint's range, a third of its cost
        return low + int(rand() * (high - low + 1))

    prefix = day.isoformat() + " "

    def at(second_of_day: int) -> str:  # times of this day, formatted without datetime
        h, rest = divmod(second_of_day, 3600)
        m, s = divmod(rest, 60)
        return f"{prefix}{h:02d}:{m:02d}:{s:02d}"

    opens = 7 * 3600 + 5 * 60
    patients = max(1, patient_ids)
    apts: list[AppointmentSeed] = []
    events: list[PlannedEvent] = []
    for i in range(between(36, 44)):
        start = 8 * 3600 + 600 * between(0, 51)
        apt_id = first_appointment_id + i
        pre_confirmed = rand() < 0.4
        provider = provider_ids[int(rand() * len(provider_ids))]
        apts.append(
            AppointmentSeed(apt_id, between(1, patients), at(start), provider, pre_confirmed)
        )
        if not pre_confirmed and rand() < 0.85:
            confirm = max(opens, start - 60 * between(45, 240)) + between(1, 59)
            events.append(PlannedEvent(at(confirm), CONFIRM, apt_id))
        if rand() < 0.05:
            events.append(PlannedEvent(at(start + 1200 + between(1, 59)), BREAK, apt_id))
            continue
        arrive = start - 60 * between(0, 12) + between(1, 59)
        seat = arrive + 60 * between(2, 15) + between(0, 59)
        dismiss = seat + 60 * between(30, 75) + between(0, 59)
        events += [
            PlannedEvent(at(arrive), ARRIVE, apt_id),
            PlannedEvent(at(seat), SEAT, apt_id),
            PlannedEvent(at(dismiss), DISMISS, apt_id),
        ]
    for _ in range(between(4, 8)):
        when = 8 * 3600 + 60 * between(0, 540) + between(1, 59)
        events.append(PlannedEvent(at(when), NEW_PATIENT, between(1, 2**31)))
    for _ in range(between(4, 8)):
        when = 8 * 3600 + 60 * between(0, 540) + between(1, 59)
        events.append(PlannedEvent(at(when), EDIT_PATIENT, between(1, patients)))
    booked = at(BOOKING_HOUR * 3600)
    events.append(PlannedEvent(booked, PLAN_DAY, (day + timedelta(days=1)).toordinal()))
    return DayPlan(tuple(apts), tuple(sorted(events, key=lambda e: e.at)))


_DAY_TEXT: dict[int, str] = {}


def fmt_ordinal_seconds(seconds: int) -> str:
    """Format seconds since 0001-01-01 00:00 (day ordinal * 86400 + second of day), fast."""
    days, rest = divmod(seconds, 86400)
    text = _DAY_TEXT.get(days)
    if text is None:
        text = _DAY_TEXT[days] = date.fromordinal(days).isoformat()
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{text} {h:02d}:{m:02d}:{s:02d}"


def ordinal_seconds(dt: datetime) -> int:
    """The inverse of `fmt_ordinal_seconds`' input: seconds since 0001-01-01 00:00."""
    return dt.toordinal() * 86400 + dt.hour * 3600 + dt.minute * 60 + dt.second
