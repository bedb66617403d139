"""The live status table of `pmsctl up`: pure rendering, no I/O.

Input is what the engine reports per practice (the CRD `status` dict, as
`PracticeStatus.to_dict()` gives it) plus the practice's name, PMS type and provider id from the
spec. Output is text:

- `render_table(rows, now)` -> kubectl-style lines (PRACTICE, PMS, PROVIDER, READY, REASON, one
  column per sync kind with its interval and the age of its last success, EVENTS);
- `redraw(lines, previous_height)` -> the ANSI string that repaints a table in place on a terminal;
- `change_line(row, now)` / `json_line(row, now)` -> one plain or JSON line per status change when
  output is not a terminal (or `-o json`); `signature(row)` says what counts as a change (the
  ticking ages and event counts do not, so a quiet practice prints nothing).

Kept pure so every branch is a table test (`tests/test_up_table.py`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.api.spec import SyncKind

#: Poller columns, in display order, with their headers.
POLLER_COLUMNS: tuple[tuple[SyncKind, str], ...] = (
    (SyncKind.APPOINTMENT_STATUS, "APPT-STATUS"),
    (SyncKind.APPOINTMENTS, "APPOINTMENTS"),
    (SyncKind.PATIENTS, "PATIENTS"),
)
HEADERS = (
    "PRACTICE",
    "PMS",
    "PROVIDER",
    "READY",
    "REASON",
    *(h for _, h in POLLER_COLUMNS),
    "EVENTS",
)


@dataclass(frozen=True)
class PollerCell:
    """One poller's state as shown in the table."""

    kind: str
    interval: str
    running: bool
    last_success: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    events: int = 0


@dataclass(frozen=True)
class Row:
    """One practice's line in the table."""

    name: str
    pms: str
    provider: str
    ready: str = "Unknown"
    reason: str = "Pending"
    message: str = ""
    pollers: tuple[PollerCell, ...] = ()
    #: Events emitted before the practice was last removed and added back (the engine's counters
    #: start over with the practice; the events are still in the sink).
    earlier_events: int = 0

    @property
    def events(self) -> int:
        return self.earlier_events + sum(p.events for p in self.pollers)

    def poller(self, kind: str) -> PollerCell | None:
        return next((p for p in self.pollers if p.kind == kind), None)


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond
    return {}


def row_from_status(
    name: str,
    pms: str,
    provider: str,
    status: Mapping[str, Any] | None,
    earlier_events: int = 0,
) -> Row:
    """Build a row from the engine's CRD-shaped status dict (None: not reconciled yet);
    `earlier_events` counts the events of the practice's earlier life (see `Row`)."""
    if not status:
        return Row(name=name, pms=pms, provider=provider, earlier_events=earlier_events)
    ready = _ready_condition(status)
    cells = []
    for kind, p in sorted((status.get("pollers") or {}).items()):
        cells.append(
            PollerCell(
                kind=str(kind),
                interval=str(p.get("interval") or "-"),
                running=bool(p.get("running")),
                last_success=p.get("lastSuccessTime") or None,
                last_error=p.get("lastError") or None,
                consecutive_failures=int(p.get("consecutiveFailures") or 0),
                events=int(p.get("eventsEmitted") or 0),
            )
        )
    return Row(
        name=name,
        pms=pms,
        provider=provider,
        ready=str(ready.get("status") or "Unknown"),
        reason=str(ready.get("reason") or "Pending"),
        message=str(ready.get("message") or ""),
        pollers=tuple(cells),
        earlier_events=earlier_events,
    )


def parse_time(text: str | None) -> datetime | None:
    """Parse an RFC 3339 time as the status carries it; None when absent or unreadable."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def format_age(seconds: float) -> str:
    """kubectl-style short age: 4s, 95s, 12m, 3h, 2d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 120 * 60:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def format_time(now: datetime) -> str:
    """RFC 3339 UTC with a Z, second resolution (the change lines' timestamp)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def poller_cell_text(cell: PollerCell | None, now: datetime) -> str:
    """`15s (4s ago)`; `15s (never)` before a first success; `15s (failing x3)`; `-` if off."""
    if cell is None:
        return "-"
    if not cell.running:
        return f"{cell.interval} (stopped)"
    if cell.consecutive_failures:
        return f"{cell.interval} (failing x{cell.consecutive_failures})"
    when = parse_time(cell.last_success)
    if when is None:
        return f"{cell.interval} (never)"
    return f"{cell.interval} ({format_age((now - when).total_seconds())} ago)"


def table_cells(row: Row, now: datetime) -> tuple[str, ...]:
    """The row's cells in HEADERS order."""
    return (
        row.name,
        row.pms,
        row.provider,
        row.ready,
        row.reason,
        *(poller_cell_text(row.poller(kind), now) for kind, _ in POLLER_COLUMNS),
        str(row.events),
    )


def render_table(rows: Iterable[Row], now: datetime) -> list[str]:
    """Header plus one line per row (sorted by name), columns padded like kubectl (3 spaces)."""
    body = [table_cells(r, now) for r in sorted(rows, key=lambda r: r.name)]
    grid = [HEADERS, *body]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADERS))]
    return [
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    ]


def render_not_ready(rows: Iterable[Row]) -> list[str]:
    """The block under a one-shot table saying why each practice is not Ready (empty if all are)."""
    lines = [
        f"  {r.name}: {r.reason}: {r.message}" if r.message else f"  {r.name}: {r.reason}"
        for r in sorted(rows, key=lambda r: r.name)
        if r.ready != "True"
    ]
    return ["", "Not ready:", *lines] if lines else []


KEEP_RUNNING_HEADER = "Not applied (fix the file; the last good version keeps running):"


def render_problems(problems: Sequence[str], header: str = KEEP_RUNNING_HEADER) -> list[str]:
    """The block under the table that lists files not applied (empty when there are none)."""
    if not problems:
        return []
    return ["", header, *(f"  {p}" for p in problems)]


def redraw(lines: Sequence[str], previous_height: int, width: int | None = None) -> str:
    """ANSI text that moves up over the previous frame, rewrites each line and clears the rest.
    Lines are cut to `width` columns: a wrapped line would make the next frame's move-up short."""
    up = f"\x1b[{previous_height}F" if previous_height else ""
    if width:
        lines = [line if len(line) < width else line[: max(width - 2, 0)] + "…" for line in lines]
    return up + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J"


def signature(row: Row) -> tuple[object, ...]:
    """What counts as a change worth a line: readiness, reason, message, the pollers' settings,
    running flags and errors. Ages and event counts tick all the time and do not count."""
    return (
        row.pms,
        row.provider,
        row.ready,
        row.reason,
        row.message,
        tuple((p.kind, p.interval, p.running, p.last_error) for p in row.pollers),
    )


def change_line(row: Row, now: datetime) -> str:
    """`2026-11-26T19:01:02Z bright-smiles-austin Ready=True Reconciled appointmentStatus=15s ...`"""
    parts = [format_time(now), row.name, f"Ready={row.ready}", row.reason]
    for p in row.pollers:
        text = f"{p.kind}={p.interval}"
        if not p.running:
            text += "(stopped)"
        parts.append(text)
    parts.append(f"events={row.events}")
    if row.ready != "True" and row.message:
        parts.append(f"message={json.dumps(row.message)}")
    for p in row.pollers:
        if p.last_error:
            parts.append(f"{p.kind}.lastError={json.dumps(p.last_error)}")
    return " ".join(parts)


def removed_line(name: str, now: datetime) -> str:
    """The line printed when a practice's file is gone and its pollers were stopped."""
    return f"{format_time(now)} {name} removed"


def problem_line(problem: str, now: datetime) -> str:
    """The line printed for each problem of a file that is invalid and was not applied."""
    return f"{format_time(now)} invalid {problem}"


def kept_line(path: str, names: Sequence[str], now: datetime) -> str:
    """The line after a file's problems: not applied, and which practices keep running."""
    running = (
        f"{', '.join(names)} keep{'s' if len(names) == 1 else ''} running at the last good version"
        if names
        else "nothing from it is running"
    )
    return f"{format_time(now)} {path} not applied; {running}"


def fixed_line(path: str, now: datetime) -> str:
    """The line printed when a file that was invalid validates again."""
    return f"{format_time(now)} valid {path}"


def json_line(kind: str, now: datetime, **fields: Any) -> str:
    """One JSON object per line for `-o json`: {"time", "type", ...fields}."""
    return json.dumps({"time": format_time(now), "type": kind, **fields}, sort_keys=True)
