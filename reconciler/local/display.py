"""`Display`: writes what `reconciler.local.table` renders: the table repainted in place on a
terminal, one line per change otherwise, or JSON lines (`-o json`). The terminal is the local
adapter's own: nothing here reaches the runtime.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TextIO

from reconciler.local import table as uptable

OutputMode = Literal["auto", "table", "lines", "json"]


class Display:
    """Writes the table (TTY: repainted in place), change lines (not a TTY) or JSON lines."""

    def __init__(
        self, out: TextIO, mode: OutputMode = "auto", heartbeat_seconds: float = 30.0
    ) -> None:
        if mode == "auto":
            mode = "table" if out.isatty() else "lines"
        self.out = out
        self.mode = mode
        #: In `lines` mode, a practice whose event count moved gets a line at least this often,
        #: so a log shows events flowing even when nothing else changes.
        self.heartbeat_seconds = heartbeat_seconds
        self._signatures: dict[str, tuple[object, ...]] = {}
        self._printed: dict[str, tuple[datetime, int]] = {}
        self._problems: dict[str, tuple[str, ...]] = {}
        self._height = 0

    def _emit(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def update(
        self,
        rows: Sequence[uptable.Row],
        statuses: Mapping[str, Mapping[str, Any]],
        problems: Mapping[str, tuple[str, ...]],
        now: datetime,
        present: Iterable[str] = (),
        kept: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Show the current state; only changes print in `lines` and `json` modes. `present` is
        the files in the folder now; `kept` the practices still running from each invalid file."""
        in_folder = set(present)
        kept = kept or {}
        names = {r.name for r in rows}
        out: list[str] = []
        for name in sorted(set(self._signatures) - names):
            out.append(
                uptable.json_line("removed", now, practice=name)
                if self.mode == "json"
                else uptable.removed_line(name, now)
            )
            del self._signatures[name]
            self._printed.pop(name, None)
        for path in sorted(set(self._problems) | set(problems)):
            before, after = self._problems.get(path, ()), problems.get(path, ())
            if before == after:
                continue
            if not after:
                if path in in_folder:  # fixed; a deleted file needs no line of its own
                    out.append(
                        uptable.json_line("valid", now, file=path)
                        if self.mode == "json"
                        else uptable.fixed_line(path, now)
                    )
                continue
            running = list(kept.get(path, ()))
            if self.mode == "json":
                out.extend(
                    uptable.json_line("invalid", now, file=path, problem=p, running=running)
                    for p in after
                )
            else:
                out.extend(uptable.problem_line(p, now) for p in after)
                out.append(uptable.kept_line(path, running, now))
        self._problems = dict(problems)
        for row in sorted(rows, key=lambda r: r.name):
            sig = uptable.signature(row)
            if self._signatures.get(row.name) == sig:
                when, events = self._printed.get(row.name, (now, row.events))
                due = (now - when).total_seconds() >= self.heartbeat_seconds
                if not (self.mode == "lines" and due and events != row.events):
                    continue
            self._signatures[row.name] = sig
            self._printed[row.name] = (now, row.events)
            if self.mode == "json":
                out.append(
                    uptable.json_line(
                        "status",
                        now,
                        practice=row.name,
                        pms=row.pms,
                        provider=row.provider,
                        status=dict(statuses.get(row.name) or {}),
                    )
                )
            else:
                out.append(uptable.change_line(row, now))
        if self.mode == "table":
            flat = [p for path in sorted(problems) for p in problems[path]]
            frame = [*uptable.render_table(rows, now), *uptable.render_problems(flat)]
            width = shutil.get_terminal_size().columns
            self.out.write(uptable.redraw(frame, self._height, width))
            self.out.flush()
            self._height = len(frame)
        else:
            self._emit(out)

    def table_once(
        self, rows: Sequence[uptable.Row], problems: Mapping[str, tuple[str, ...]], now: datetime
    ) -> None:
        """Print the table once, plainly (for `--once`)."""
        flat = [p for path in sorted(problems) for p in problems[path]]
        if self.mode == "json":
            self._emit(
                uptable.json_line("status", now, practice=r.name, ready=r.ready, reason=r.reason)
                for r in rows
            )
            self._emit(uptable.json_line("invalid", now, problem=p) for p in flat)
            return
        self._emit(
            [
                *uptable.render_table(rows, now),
                *uptable.render_not_ready(rows),
                *uptable.render_problems(flat, "Not applied:"),
            ]
        )
