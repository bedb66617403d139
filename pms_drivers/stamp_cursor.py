"""Change cursors over Open Dental's `DateTStamp` filter: read with an overlap, emit each change once.

Open Dental reports changes by stamp: `GET /appointments?DateTStamp=X` returns the rows changed at
or after X, each carrying the office server's clock as `serverDateTime` (second resolution). A row
committed in the same second as a read (or committed late, stamped when its transaction began) can
carry a stamp at or before that read's server time without having been in it, so the next read
starts `overlap` seconds before the stored server time, and rows that come back again are dropped
when they are the version already emitted: the same content digest (a hash of the fields the
driver emits). A stamp cannot tell versions apart: a row changed twice in one second keeps its
stamp and changes its content.

The cursor is this whole memory, as a string, so a reader that restarts from the stored cursor
alone neither loses nor repeats a change (docs/change-capture.md has the argument):

    {"v":2,"t":"2026-11-26 09:15:00","rows":{"40":["2026-11-26 09:14:59","9f2c..."]},"flow":{...}}

- `t`     the earliest `serverDateTime` of the last read; the next read asks for `t - overlap`.
- `rows`  per primary key, the stamp and digest of the version last emitted, only while the stamp
          is inside the overlap window (`>= t - overlap`): older rows cannot come back unchanged.
- `flow`  appointment-status cursors only: the patient-flow statuses already emitted per
          appointment (`"CASD|2026-11-26"`: Confirmed/Arrived/Seated/Dismissed, appointment day),
          pruned a day after the appointment.

Version 1 cursors (`seen`: keys by stamp, no digests) are still read: their rows match by stamp
until the window moves past them.

Everything here is pure: no I/O, tested with tables.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

OD_TIME = "%Y-%m-%d %H:%M:%S"
EMPTY_TIME = "0001-01-01 00:00:00"

#: Patient-flow statuses and their letters in the `flow` memory, in the order they happen.
FLOW_LETTERS = {"confirmed": "C", "arrived": "A", "seated": "S", "dismissed": "D"}


class CursorError(ValueError):
    """A cursor string this module did not write (or from an unknown format)."""


def od_time_minus(stamp: str, seconds: float) -> str:
    """`stamp` (`yyyy-MM-dd HH:mm:ss`) moved back by `seconds`, in the same format."""
    return (datetime.strptime(stamp, OD_TIME) - timedelta(seconds=seconds)).strftime(OD_TIME)


def digest(values: Sequence[object]) -> str:
    """The content digest of one emitted version: 16 hex digits of SHA-256 over its fields."""
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class StampCursor:
    """Where a `DateTStamp` reader stands; `encode()`/`decode()` make it the opaque cursor string."""

    server_time: str | None = None
    #: primary key -> (DateTStamp, digest) of the version last emitted (digest "" from version 1).
    rows: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    flow: Mapping[str, str] = field(default_factory=dict)

    def since(self, overlap: float) -> str | None:
        """The `DateTStamp` to ask for, or None to read everything."""
        if self.server_time is None:
            return None
        return od_time_minus(self.server_time, overlap)

    def encode(self) -> str:
        body: dict[str, object] = {"v": 2, "t": self.server_time}
        if self.rows:
            body["rows"] = {pk: list(self.rows[pk]) for pk in sorted(self.rows, key=_pk_order)}
        if self.flow:
            body["flow"] = dict(sorted(self.flow.items(), key=lambda kv: _pk_order(kv[0])))
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> StampCursor:
        """Parse a cursor this module wrote; None means from the beginning. CursorError otherwise."""
        if text is None:
            return cls()
        try:
            body = json.loads(text)
            if not isinstance(body, dict) or body.get("v") not in (1, 2):
                raise ValueError("not a version 1 or 2 Open Dental cursor")
            t = body.get("t")
            if t is not None:
                datetime.strptime(t, OD_TIME)
            rows: dict[str, tuple[str, str]] = {}
            for stamp, pks in dict(body.get("seen") or {}).items():
                for pk in pks:
                    rows[str(pk)] = (str(stamp), "")
            for pk, (stamp, dig) in dict(body.get("rows") or {}).items():
                rows[str(pk)] = (str(stamp), str(dig))
            flow = {str(k): str(v) for k, v in dict(body.get("flow") or {}).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise CursorError(
                f"{text[:60]!r} is not an Open Dental change cursor ({exc}); clear the stored cursor to read from the start"
            ) from exc
        return cls(server_time=t, rows=rows, flow=flow)


def _pk_order(pk: str) -> tuple[int, str]:
    return (int(pk), "") if pk.isdigit() else (0, pk)


@dataclass(frozen=True)
class Row:
    """What the cursor needs from a changed row."""

    pk: str
    stamp: str  # DateTStamp
    server_time: str | None  # serverDateTime
    digest: str = ""  # the content digest of the version the driver would emit


def advance(
    cursor: StampCursor, rows: Sequence[Row], *, overlap: float
) -> tuple[list[int], StampCursor]:
    """Which of `rows` are new (their indexes, in order) and the cursor after this read.

    A row is new unless its digest is the one last emitted for its key (a version 1 memory entry,
    without a digest, matches by stamp). A key read twice in one read counts once, as its last
    version read. With no rows, the cursor stays where it was (nothing says the clock moved).
    """
    last: dict[str, int] = {}
    for i, row in enumerate(rows):
        held = last.get(row.pk)
        # The last version read wins; a repeat of the same version keeps its first place.
        if held is None or (rows[held].digest, rows[held].stamp) != (row.digest, row.stamp):
            last[row.pk] = i
    fresh: list[int] = []
    for i, row in enumerate(rows):
        if last[row.pk] != i:
            continue
        known = cursor.rows.get(row.pk)
        if known is not None and (known[1] == row.digest if known[1] else known[0] == row.stamp):
            continue
        fresh.append(i)
    times = [r.server_time for r in rows if r.server_time and r.server_time != EMPTY_TIME]
    server_time = min(times) if times else cursor.server_time
    if server_time is None:
        return fresh, cursor
    floor = od_time_minus(server_time, overlap)
    memory = {pk: v for pk, v in cursor.rows.items() if v[0] >= floor}
    for pk, i in last.items():
        row = rows[i]
        if row.stamp >= floor:
            memory[pk] = (row.stamp, row.digest)
        else:
            memory.pop(pk, None)
    return fresh, StampCursor(server_time=server_time, rows=memory, flow=cursor.flow)


@dataclass(frozen=True)
class FlowState:
    """An appointment's patient-flow state as read now: which statuses hold, and since when."""

    appointment_id: str
    patient_id: str
    day: str  # yyyy-MM-dd of the appointment
    statuses: Mapping[str, str]  # status -> ISO time it happened (only statuses that hold)


def flow_changes(
    flow: Mapping[str, str], states: Iterable[FlowState], *, today: str
) -> tuple[list[tuple[FlowState, str]], dict[str, str]]:
    """The (appointment, status) pairs not emitted before, and the new `flow` memory.

    A status that no longer holds (an arrival undone) is forgotten, so if it comes back it is a new
    change. Appointments more than a day before `today` (`yyyy-MM-dd`) drop out of the memory.
    """
    memory = dict(flow)
    out: list[tuple[FlowState, str]] = []
    for state in states:
        before = memory.get(state.appointment_id, "").partition("|")[0]
        now_letters = ""
        for status, letter in FLOW_LETTERS.items():
            if status in state.statuses:
                now_letters += letter
                if letter not in before:
                    out.append((state, status))
        if now_letters:
            memory[state.appointment_id] = f"{now_letters}|{state.day}"
        else:
            memory.pop(state.appointment_id, None)
    cutoff = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=1)).strftime("%Y-%m-%d")
    memory = {k: v for k, v in memory.items() if v.partition("|")[2] >= cutoff}
    return out, memory
