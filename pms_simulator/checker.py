"""Compare what a change reader delivered with the simulator's ground truth: lost and doubled.

Pure functions over plain values, no I/O. The ground truth is the simulator's change log with
rows (`State.record_rows`); what was delivered is the records the reader handed on, in order.

Record kinds (appointments, patients) carry a row's state, not the change that made it, and a
reader only sees rows as they are when it reads. So:

- a version is a row's state between two changes, projected onto what the driver emits
  (`PROJECTIONS`); consecutive changes that project to the same state are one version;
- a version is *required* when it was current during a whole successful poll (it was there from
  before the poll's first request to after its last), or is the row's final state (the harness
  ends with quiet polls); a version that lived only between polls, or only inside one, may be
  skipped (a later version of the row supersedes it) but may not be delivered twice;
- lost = required versions no record carries, unless the reader already showed that very state
  and every version between was skipped (A -> B -> A with B never visible to a poll);
  doubled = records that carry a version another record already carried; phantom = records that
  carry a state the row never had.

Patient-flow kinds (appointment status) are changes, not states: every flow change the log holds
is required, exactly once.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pms_simulator import catalog

State = tuple[Any, ...]
Projection = Callable[[Mapping[str, Any]], State]

_CONFIRM_NAMES = {n: name for n, name in catalog.OD_CONFIRM_DEFS}


def _t(text: object) -> str:
    """A time as text, `T` or space separated alike."""
    return "" if text is None else str(text).replace("T", " ", 1)


def _od_appointment(row: Mapping[str, Any]) -> State:
    prov = str(row["prov"] or "")
    return (
        str(row["id"]), str(row["pat"]), _t(row["start"]), row["status"],
        prov if prov not in ("", "0") else None, _t(row["stamp"]),
        _CONFIRM_NAMES.get(int(row["confirmed"])) if row["confirmed"] else None,
    )  # fmt: skip


def _bridge_appointment(row: Mapping[str, Any]) -> State:
    return (
        str(row["id"]), str(row["pat"]), _t(row["start"]), row["status"], row["prov"] or None,
        _t(row["stamp"]), "confirmed" if row["confirmed"] == catalog.CONFIRMED_DEFNUM else None,
        str(row["seq"]),
    )  # fmt: skip


def _od_patient(row: Mapping[str, Any]) -> State:
    return (str(row["id"]), row["fname"], row["lname"], _t(row["stamp"]))


def _bridge_patient(row: Mapping[str, Any]) -> State:
    return (*_od_patient(row), str(row["seq"]))


#: (driver family, kind) -> the state a logged row shows through that family's driver.
PROJECTIONS: dict[tuple[str, str], Projection] = {
    ("OpenDental", "appointments"): _od_appointment,
    ("Bridge", "appointments"): _bridge_appointment,
    ("OpenDental", "patients"): _od_patient,
    ("Bridge", "patients"): _bridge_patient,
}


def record_state(family: str, kind: str, record: Any) -> State:
    """The state a driver record (`Appointment`, `Patient`) carries, as `PROJECTIONS` shape it."""
    if kind == "appointments":
        state: State = (
            record.id, record.patient_id, _t(record.start), record.status, record.provider_id,
            _t(record.changed_at), record.confirmed,
        )  # fmt: skip
    else:
        state = (record.id, record.first_name, record.last_name, _t(record.changed_at))
    return (*state, record.version) if family == "Bridge" else state


@dataclass(frozen=True)
class Version:
    """One state of one row, current from change `born` until change `died` (None: still)."""

    record_id: str
    state: State
    born: int
    died: int | None


@dataclass(frozen=True)
class Poll:
    """A successful poll's window: the practice's change sequence before and after it."""

    start: int
    end: int


@dataclass
class Verdict:
    """The checker's count for one kind."""

    kind: str
    versions: int = 0  # versions (or flow changes) in the ground truth
    required: int = 0
    delivered: int = 0  # records handed on
    lost: int = 0
    doubled: int = 0
    phantom: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.phantom == 0

    def line(self) -> str:
        return (
            f"{self.kind}: {self.versions} changes, {self.required} required, "
            f"{self.delivered} delivered, lost {self.lost}, doubled {self.doubled}, "
            f"phantom {self.phantom}"
        )

    def _note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)


def versions_from_log(
    changes: Iterable[Mapping[str, Any]], project: Projection
) -> dict[str, list[Version]]:
    """Each row's versions from the change log (entries need their `row`), oldest first."""
    by_row: dict[str, list[tuple[int, State]]] = {}
    for change in sorted(changes, key=lambda c: int(c["seq"])):
        row = change.get("row")
        if row is None:
            raise ValueError(f"change {change['seq']} has no row: set State.record_rows first")
        by_row.setdefault(str(change["id"]), []).append((int(change["seq"]), project(row)))
    out: dict[str, list[Version]] = {}
    for rid, items in by_row.items():
        merged: list[tuple[int, State]] = []
        for seq, state in items:
            if not merged or merged[-1][1] != state:
                merged.append((seq, state))
        out[rid] = [
            Version(rid, state, born, merged[i + 1][0] if i + 1 < len(merged) else None)
            for i, (born, state) in enumerate(merged)
        ]
    return out


def check_records(
    kind: str,
    versions: Mapping[str, Sequence[Version]],
    delivered: Sequence[tuple[str, State]],
    polls: Sequence[Poll],
) -> Verdict:
    """Lost, doubled and phantom records of one record kind (see the module doc)."""
    verdict = Verdict(kind, versions=sum(len(v) for v in versions.values()))
    verdict.delivered = len(delivered)
    matched: set[tuple[str, int]] = set()
    cursor: dict[str, int] = {}
    for rid, state in delivered:
        rows = versions.get(rid, ())
        start = cursor.get(rid, 0)
        hit = next((i for i in range(start, len(rows)) if rows[i].state == state), None)
        if hit is None:
            if any(v.state == state for v in rows):
                verdict.doubled += 1
                verdict._note(f"doubled {kind} {rid} {state}")
            else:
                verdict.phantom += 1
                verdict._note(f"phantom {kind} {rid} {state}")
            continue
        matched.add((rid, hit))
        cursor[rid] = hit + 1
    # Polls run one after another, so sorted by start their ends rise too: the first poll that
    # starts after a version was born is the one most likely to end before it died.
    ordered = sorted(polls, key=lambda p: (p.start, p.end))
    starts = [p.start for p in ordered]

    def needed(v: Version) -> bool:
        i = bisect.bisect_left(starts, v.born)
        return i < len(ordered) and (v.died is None or v.died > ordered[i].end)

    for rid, rows in versions.items():
        # The state the reader last showed for this row, as far as it could have known it.
        shown: State | None = None
        for i, v in enumerate(rows):
            required = needed(v)
            if (rid, i) in matched:
                shown = v.state
                verdict.required += required
            elif required:
                verdict.required += 1
                # A -> B -> A where B lived only between polls: the reader never saw B, so the
                # second A is the state it already showed, not a change it could know of.
                if v.state != shown:
                    verdict.lost += 1
                    verdict._note(f"lost {kind} {rid} {v.state}")
                shown = v.state
    return verdict


def check_flow(
    kind: str, truth: Sequence[tuple[str, str]], delivered: Sequence[tuple[str, str]]
) -> Verdict:
    """Lost and doubled patient-flow changes: every (appointment, status) in `truth` once."""
    want, got = Counter(truth), Counter(delivered)
    verdict = Verdict(kind, versions=len(truth), required=len(truth), delivered=len(delivered))
    for key, n in want.items():
        if got[key] < n:
            verdict.lost += n - got[key]
            verdict._note(f"lost {kind} {key}")
    for key, n in got.items():
        extra = n - want[key]
        if extra > 0 and want[key]:
            verdict.doubled += extra
            verdict._note(f"doubled {kind} {key}")
        elif extra > 0:
            verdict.phantom += extra
            verdict._note(f"phantom {kind} {key}")
    return verdict
