"""The simulated practices' data in SQLite (a file or `:memory:`): real SQL, real indexes.

One database holds every practice; each table's rows carry the practice id `p`. A practice is
registered cheaply and seeded on first use (`ensure_seeded`): providers, note types, document
categories, 300 patients (some with a photo document), the first day's appointments and the
planned events of that day (`clock.plan_day`), then caught up to the current simulated clock, so
the data a practice shows at a given clock does not depend on when it was seeded.

Change bookkeeping, so readers can poll:
- `stamp`: the simulated time of a row's last change at second resolution (Open Dental's
  DateTStamp). A reader filtering `stamp >= last serverDateTime` and de-duplicating by key loses
  nothing: every later change is stamped at or after the clock it read.
- `seq`: a per-practice, strictly increasing change sequence shared by all kinds (the bridge
  cursors). A row changed again moves to a higher seq.
- `changes`: the ground truth of every change made, for tests' "none lost, none doubled" checks.
  With `record_rows` set (the adversarial runs), each appointment and patient change also keeps
  the row as it was right after the change, so `pms_simulator.checker` can tell states apart.
- `adversary`: None for a well-behaved PMS; a `pms_simulator.adversary.Adversary` makes reads
  hostile (changes in the same second and between pages, undefined order, 429s, dropped
  connections). `act()` applies one change now, as the office would.

Thread safety: every public method takes `lock` (an RLock); `serve_in_thread` callers and the
server thread share one connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pms_simulator import catalog, clock
from pms_simulator.errors import DriftError, UnknownPracticeError
from reconciler import private

if TYPE_CHECKING:
    from pms_simulator.adversary import Adversary

SEED_PATIENTS = 300
#: Changes `act()` makes besides the planned ones: a visible patient edit, a new time for an
#: appointment, a new booking.
RENAME_PATIENT = "rename_patient"
RESCHEDULE = "reschedule"
BOOK = "book"
#: The columns a recorded row keeps (what a reader can see of it).
_ROW_COLUMNS = {
    "appointments": ("id", "pat", "start", "status", "prov", "confirmed", "arrived", "seated",
                     "dismissed", "stamp", "seq"),
    "patients": ("id", "fname", "lname", "stamp", "seq"),
}  # fmt: skip
PHOTO_SHARE = 0.3
_MARKER = re.compile(r"\[pmsctl provider=(\S+) writeback=([^\]\s]+)\]")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS practices (
  id TEXT PRIMARY KEY, pms TEXT NOT NULL, seeded INTEGER NOT NULL DEFAULT 0,
  seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS providers (
  p TEXT, id TEXT, abbr TEXT, fname TEXT, lname TEXT, suffix TEXT, name TEXT,
  active INTEGER, hidden INTEGER, status TEXT, ord INTEGER, stamp TEXT,
  PRIMARY KEY (p, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS defs (
  p TEXT, category INTEGER, id TEXT, name TEXT, item_value TEXT, hidden INTEGER,
  target TEXT, type TEXT, type_id INTEGER, ord INTEGER, stamp TEXT,
  PRIMARY KEY (p, category, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS patients (
  p TEXT, id INTEGER, fname TEXT, lname TEXT, gender TEXT, birthdate TEXT, phone TEXT,
  email TEXT, prov TEXT, photo_doc INTEGER, stamp TEXT, seq INTEGER,
  PRIMARY KEY (p, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS appointments (
  p TEXT, id INTEGER, pat INTEGER, start TEXT, status TEXT, prov TEXT, confirmed INTEGER,
  arrived TEXT, seated TEXT, dismissed TEXT, stamp TEXT, seq INTEGER,
  PRIMARY KEY (p, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flow (
  p TEXT, seq INTEGER, apt INTEGER, pat INTEGER, status TEXT, at TEXT,
  PRIMARY KEY (p, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS planned (
  p TEXT, at TEXT, action TEXT, target INTEGER, n INTEGER,
  PRIMARY KEY (at, p, n)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notes (
  p TEXT, id INTEGER, pat INTEGER, note_type_id TEXT, mode TEXT, sor TEXT, text TEXT,
  occurred TEXT, prov TEXT, kind TEXT, target TEXT, writeback_id TEXT, idem_key TEXT,
  body_hash TEXT, stamp TEXT, seq INTEGER, PRIMARY KEY (p, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notes_pat ON notes (p, pat);
CREATE INDEX IF NOT EXISTS notes_key ON notes (p, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS documents (
  p TEXT, id INTEGER, pat INTEGER, category_id TEXT, prov TEXT, filename TEXT,
  description TEXT, img_type TEXT, content_type TEXT, size INTEGER, occurred TEXT,
  writeback_id TEXT, idem_key TEXT, body_hash TEXT, stamp TEXT, seq INTEGER,
  PRIMARY KEY (p, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_pat ON documents (p, pat);
CREATE INDEX IF NOT EXISTS documents_key ON documents (p, idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
  p TEXT, kind TEXT, record_id TEXT, stamp TEXT, seq INTEGER, source TEXT, detail TEXT,
  PRIMARY KEY (p, kind, seq)) WITHOUT ROWID;
"""


@dataclass
class Practice:
    """A registered practice: its PMS type, whether it is seeded, its change sequence."""

    id: str
    pms: str
    seeded: bool = False
    seq: int = 0

    def next_seq(self) -> int:
        """The practice's next change sequence number."""
        self.seq += 1
        return self.seq


class State:
    """All practices' rows, the simulated clock and the planned activity, behind one lock."""

    def __init__(self, db: str = ":memory:", start: datetime | None = None) -> None:
        self.lock = threading.RLock()
        if db != ":memory:" and not db.startswith("file:"):
            # Simulated, but patient-shaped data: kept like the real thing (0600 in 0700).
            private.private_dir(os.path.dirname(os.path.abspath(db)))
            private.private_file(db)
        self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=OFF")
        if db != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        # The undefined order of the adversarial mode: a row's place depends on a salt that
        # changes with the data, the way a query plan's order can.
        self._db.create_function("shuffled", 2, _shuffled, deterministic=True)
        #: Keep each appointment/patient change's row in the change log (see the module doc).
        self.record_rows = False
        #: Hostile read behaviour, or None (see `pms_simulator.adversary`).
        self.adversary: Adversary | None = None
        row = self._db.execute("SELECT value FROM meta WHERE key='clock'").fetchone()
        if row is None:
            self._clock = (start or clock.DEFAULT_START).replace(microsecond=0)
            self._db.execute("INSERT INTO meta VALUES ('clock', ?)", (clock.fmt(self._clock),))
            self._db.execute("INSERT INTO meta VALUES ('start', ?)", (clock.fmt(self._clock),))
        else:
            self._clock = clock.parse(row[0])
        start_row = self._db.execute("SELECT value FROM meta WHERE key='start'").fetchone()
        self.start = clock.parse(start_row[0])
        self._practices: dict[str, Practice] = {
            r["id"]: Practice(r["id"], r["pms"], bool(r["seeded"]), r["seq"])
            for r in self._db.execute("SELECT * FROM practices")
        }

    # ---- clock and registration -------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The simulated office-local time."""
        return self._clock

    @property
    def now_text(self) -> str:
        """The simulated time as Open Dental prints it."""
        return clock.fmt(self._clock)

    def close(self) -> None:
        """Close the database connection."""
        with self.lock:
            self._db.close()

    def practice(self, pid: str) -> Practice:
        """The registered practice `pid`, seeded (seeding it now if this is its first use)."""
        with self.lock:
            p = self._practices.get(pid)
            if p is None:
                raise UnknownPracticeError(f"no practice {pid!r} in this simulator")
            if not p.seeded:
                self._seed(p)
            return p

    def get(self, pid: str) -> Practice | None:
        """The registered practice `pid` as it is (not seeded by this call), or None."""
        return self._practices.get(pid)

    def practices(self) -> list[Practice]:
        """Every registered practice, seeded or not."""
        with self.lock:
            return list(self._practices.values())

    def register(self, pid: str, pms: str) -> Practice:
        """Add a practice (idempotent). Seeding happens lazily on first use."""
        if pms not in catalog.PMS_TYPES:
            raise ValueError(f"pms {pms!r} is not one of {', '.join(catalog.PMS_TYPES)}")
        if not pid:
            raise ValueError("practice id must not be empty")
        with self.lock:
            p = self._practices.get(pid)
            if p is not None:
                if p.pms != pms:
                    raise ValueError(
                        f"practice {pid!r} is already registered as {p.pms}, not {pms}"
                    )
                return p
            p = Practice(pid, pms)
            self._db.execute("INSERT INTO practices (id, pms) VALUES (?, ?)", (pid, pms))
            self._practices[pid] = p
            return p

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _save_seq(self, p: Practice) -> None:
        self._db.execute(
            "UPDATE practices SET seq=?, seeded=? WHERE id=?", (p.seq, int(p.seeded), p.id)
        )

    def _log(
        self, p: Practice, kind: str, rid: object, stamp: str, seq: int, source: str, **detail: Any
    ) -> None:
        if self.record_rows and kind in _ROW_COLUMNS:
            detail["row"] = self._row(kind, p.id, rid)
        self._db.execute(
            "INSERT INTO changes VALUES (?,?,?,?,?,?,?)",
            (p.id, kind, str(rid), stamp, seq, source, json.dumps(detail) if detail else None),
        )

    def _row(self, table: str, pid: str, rid: object) -> dict[str, Any] | None:
        cols = _ROW_COLUMNS[table]
        found = self._db.execute(
            f"SELECT {', '.join(cols)} FROM {table} WHERE p=? AND id=?", (pid, int(str(rid)))
        ).fetchone()
        return None if found is None else dict(zip(cols, found, strict=True))

    def _record_bulk(self, p: Practice, kind: str) -> None:
        """Give the bulk-logged changes of `kind` (seed, booking) their rows when recording."""
        if not self.record_rows:
            return
        cols = _ROW_COLUMNS[kind]
        pairs = ", ".join(f"'{c}', t.{c}" for c in cols)
        self._db.execute(
            f"UPDATE changes SET detail = (SELECT json_object('row', json_object({pairs})) "
            f"FROM {kind} t WHERE t.p=changes.p AND t.id=CAST(changes.record_id AS INTEGER)) "
            "WHERE p=? AND kind=? AND detail IS NULL",
            (p.id, kind),
        )

    # ---- seeding ----------------------------------------------------------------------------

    def _seed(self, p: Practice) -> None:
        rng = clock.rng_for(p.id, "seed")
        start = self.start
        old = clock.fmt(start - timedelta(days=800))
        with self._tx():
            self._db.executemany(
                "INSERT INTO providers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (p.id, s.id, s.abbr, s.fname, s.lname, s.suffix, s.name, int(s.active),
                     int(s.hidden), s.status, i, old)
                    for i, s in enumerate(catalog.PROVIDERS[p.pms])
                ],
            )  # fmt: skip
            self._db.executemany(
                "INSERT INTO defs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (p.id, d.category, d.id, d.name, d.item_value, int(d.hidden), d.target, d.type,
                     d.type_id, i, old)
                    for i, d in enumerate(catalog.DEFINITIONS[p.pms])
                ],
            )  # fmt: skip
            photo_cat = self._def_id_by_name(
                p, catalog.CAT_DOCUMENTS, catalog.PHOTO_CATEGORY[p.pms]
            )
            active = [s.id for s in catalog.PROVIDERS[p.pms] if s.active]
            # One 64-bit draw per patient, sliced into its fields: seeding 1,000 practices must
            # take seconds, and per-field randint calls cost most of that.
            offsets = sorted(
                rng.getrandbits(26) % (700 * 86400) + 86400 for _ in range(SEED_PATIENTS)
            )
            patients: list[tuple[Any, ...]] = []
            docs: list[tuple[Any, ...]] = []
            start_seconds = clock.ordinal_seconds(start)
            for pat_id, offset in enumerate(offsets, start=1):
                stamp = clock.fmt_ordinal_seconds(start_seconds - offset)
                seq = p.next_seq()
                bits = rng.getrandbits(64)
                photo = None
                if bits % 10 < PHOTO_SHARE * 10:
                    photo = len(docs) + 1
                    docs.append(self._photo_row(p, photo, pat_id, photo_cat, active[0], stamp, seq))
                bits //= 10
                prov = active[bits % len(active)]
                person = _person_from_bits(bits // len(active))
                patients.append((p.id, pat_id, *person, prov, photo, stamp, seq))
            self._db.executemany("INSERT INTO patients VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", patients)
            self._db.executemany(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", docs
            )
            # The seed is logged as changes too: a reader starting from nothing sees it as such.
            self._db.execute(
                "INSERT INTO changes SELECT p, 'patients', CAST(id AS TEXT), stamp, seq, 'seed', "
                "NULL FROM patients WHERE p=?",
                (p.id,),
            )
            self._record_bulk(p, "patients")
            booked = clock.fmt(start - timedelta(days=rng.randint(1, 20)))
            self._plan_day(p, start.date(), booked, "seed")
            p.seeded = True
            self._apply_due(self._clock, p.id)
            self._save_seq(p)

    def _photo_row(
        self, p: Practice, doc_id: int, pat: int, cat: str | None, prov: str, stamp: str, seq: int
    ) -> tuple[Any, ...]:
        return (p.id, doc_id, pat, cat, prov, f"photo_{pat}.jpg", "Profile photo", "Photo",
                "image/jpeg", 2048, stamp, None, None, "seed", stamp, seq)  # fmt: skip

    def _def_id_by_name(self, p: Practice, category: int, name: str) -> str | None:
        row = self._db.execute(
            "SELECT id FROM defs WHERE p=? AND category=? AND name=?", (p.id, category, name)
        ).fetchone()
        return None if row is None else str(row[0])

    def _plan_day(self, p: Practice, day: date, stamp: str, source: str) -> None:
        first = self._next_id("appointments", p.id)
        active = [s.id for s in catalog.PROVIDERS[p.pms] if s.active]
        plan = clock.plan_day(p.id, day, active, SEED_PATIENTS, first)
        rows = []
        for a in plan.appointments:
            seq = p.next_seq()
            confirmed = catalog.CONFIRMED_DEFNUM if a.confirmed else catalog.UNCONFIRMED_DEFNUM
            rows.append((p.id, a.id, a.patient_id, a.start, "Scheduled", a.provider_id, confirmed,
                         clock.EMPTY_TIME, clock.EMPTY_TIME, clock.EMPTY_TIME, stamp, seq))  # fmt: skip
        self._db.executemany("INSERT INTO appointments VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        self._db.executemany(
            "INSERT INTO changes VALUES (?,'appointments',?,?,?,?,NULL)",
            [(p.id, str(r[1]), stamp, r[11], source) for r in rows],
        )
        self._db.executemany(
            "INSERT INTO planned VALUES (?,?,?,?,?)",
            [(p.id, e.at, e.action, e.target, n) for n, e in enumerate(plan.events)],
        )
        self._record_bulk(p, "appointments")

    def _next_id(self, table: str, pid: str) -> int:
        row = self._db.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table} WHERE p=?", (pid,))
        return int(row.fetchone()[0])

    # ---- activity ---------------------------------------------------------------------------

    def advance(self, minutes: float) -> int:
        """Move the clock on by `minutes` and apply every planned event now due, in time order.

        Only seeded practices have planned events; the others catch up when first used.
        Returns the number of events applied.
        """
        if minutes < 0:
            raise ValueError("the simulated clock only moves forward")
        with self.lock:
            target = (self._clock + timedelta(minutes=minutes)).replace(microsecond=0)
            with self._tx():
                applied = self._apply_due(target, None)
                self._clock = target
                self._db.execute("UPDATE meta SET value=? WHERE key='clock'", (clock.fmt(target),))
                for p in self._practices.values():
                    if p.seeded:
                        self._save_seq(p)
            return applied

    def _apply_due(self, until: datetime, pid: str | None) -> int:
        limit = clock.fmt(until)
        applied = 0
        while True:
            if pid is None:
                rows = self._db.execute(
                    "SELECT * FROM planned WHERE at <= ? ORDER BY at, p, n LIMIT 5000",
                    (limit,),
                ).fetchall()
            else:
                # Every due event of an already seeded practice was applied when the clock
                # passed it, so the due rows are all this (newly seeded) practice's.
                rows = self._db.execute(
                    "SELECT * FROM planned WHERE at <= ? ORDER BY at, p, n LIMIT 5000", (limit,)
                ).fetchall()
            if not rows:
                return applied
            for r in rows:
                self._apply(self._practices[r["p"]], r["at"], r["action"], int(r["target"]))
            self._db.executemany(
                "DELETE FROM planned WHERE at=? AND p=? AND n=?",
                [(r["at"], r["p"], r["n"]) for r in rows],
            )
            applied += len(rows)

    def _apply(
        self, p: Practice, at: str, action: str, target: int, source: str = "activity"
    ) -> None:
        src = source
        if action == clock.PLAN_DAY:
            self._plan_day(p, date.fromordinal(target), at, src)
            return
        if action == clock.NEW_PATIENT:
            rng = clock.rng_for(p.id, "new", target)
            pat_id = self._next_id("patients", p.id)
            seq = p.next_seq()
            active = [s.id for s in catalog.PROVIDERS[p.pms] if s.active]
            photo = None
            if rng.random() < PHOTO_SHARE:
                cat = self._def_id_by_name(p, catalog.CAT_DOCUMENTS, catalog.PHOTO_CATEGORY[p.pms])
                photo = self._next_id("documents", p.id)
                self._db.execute(
                    "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    self._photo_row(p, photo, pat_id, cat, active[0], at, seq),
                )
            self._db.execute(
                "INSERT INTO patients VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.id, pat_id, *_person(rng), rng.choice(active), photo, at, seq),
            )
            self._log(p, "patients", pat_id, at, seq, src, new=True)
            return
        if action == clock.EDIT_PATIENT:
            rng = clock.rng_for(p.id, "edit", at, target)
            seq = p.next_seq()
            cur = self._db.execute(
                "UPDATE patients SET phone=?, email=?, stamp=?, seq=? WHERE p=? AND id=?",
                (
                    _phone(rng),
                    f"patient{target}.{rng.randint(1, 999)}@example.com",
                    at,
                    seq,
                    p.id,
                    target,
                ),
            )
            if cur.rowcount:
                self._log(p, "patients", target, at, seq, src)
            return
        if action == RENAME_PATIENT:
            rng = clock.rng_for(p.id, "rename", at, target)
            seq = p.next_seq()
            cur = self._db.execute(
                "UPDATE patients SET lname=?, stamp=?, seq=? WHERE p=? AND id=?",
                (rng.choice(catalog.LAST_NAMES) + f"-{rng.randint(1, 999)}", at, seq, p.id, target),
            )
            if cur.rowcount:
                self._log(p, "patients", target, at, seq, src)
            return
        if action == BOOK:
            active = [s.id for s in catalog.PROVIDERS[p.pms] if s.active]
            apt_id = self._next_id("appointments", p.id)
            seq = p.next_seq()
            start = clock.parse(at).replace(minute=0, second=0) + timedelta(hours=2)
            self._db.execute(
                "INSERT INTO appointments VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.id, apt_id, target, clock.fmt(start), "Scheduled", active[target % len(active)],
                 catalog.UNCONFIRMED_DEFNUM, clock.EMPTY_TIME, clock.EMPTY_TIME, clock.EMPTY_TIME,
                 at, seq),
            )  # fmt: skip
            self._log(p, "appointments", apt_id, at, seq, src)
            return
        apt = self._db.execute(
            "SELECT pat, status, start, confirmed, arrived, seated FROM appointments "
            "WHERE p=? AND id=?",
            (p.id, target),
        ).fetchone()
        if apt is None or apt["status"] != "Scheduled":
            return
        done = {
            clock.CONFIRM: apt["confirmed"] == catalog.CONFIRMED_DEFNUM,
            clock.ARRIVE: apt["arrived"] != clock.EMPTY_TIME,
            clock.SEAT: apt["seated"] != clock.EMPTY_TIME,
        }
        if done.get(action, False):
            return  # a step that already happened (the adversary got there first) is no change
        sets: dict[str, object]
        flow: str | None = action
        if action == clock.CONFIRM:
            sets, flow = {"confirmed": catalog.CONFIRMED_DEFNUM}, "confirmed"
        elif action == clock.ARRIVE:
            sets, flow = {"arrived": at}, "arrived"
        elif action == clock.SEAT:
            sets, flow = {"seated": at}, "seated"
        elif action == clock.DISMISS:
            sets, flow = {"dismissed": at, "status": "Complete"}, "dismissed"
        elif action == clock.BREAK:
            sets, flow = {"status": "Broken"}, None
        elif action == RESCHEDULE:
            sets, flow = (
                {"start": clock.fmt(clock.parse(apt["start"]) + timedelta(minutes=10))},
                None,
            )
        else:  # pragma: no cover - plan_day only makes the actions above
            raise ValueError(f"unknown planned action {action!r}")
        seq = p.next_seq()
        assignments = ", ".join(f"{k}=?" for k in sets)
        self._db.execute(
            f"UPDATE appointments SET {assignments}, stamp=?, seq=? WHERE p=? AND id=?",
            (*sets.values(), at, seq, p.id, target),
        )
        self._log(p, "appointments", target, at, seq, src)
        if flow is not None:
            fseq = p.next_seq()
            self._db.execute(
                "INSERT INTO flow VALUES (?,?,?,?,?,?)", (p.id, fseq, target, apt["pat"], flow, at)
            )
            self._log(p, "appointmentStatus", fseq, at, fseq, src,
                      appointment_id=str(target), patient_id=str(apt["pat"]), status=flow)  # fmt: skip

    def act(self, pid: str, action: str, target: int, *, backdate: int = 0) -> None:
        """Make one change now, as the office would: a planned action (`clock.CONFIRM`, ARRIVE,
        SEAT, DISMISS, BREAK, NEW_PATIENT, EDIT_PATIENT) or RENAME_PATIENT, RESCHEDULE, BOOK.

        The change is stamped with the current clock, or `backdate` seconds before it: a row
        committed late carries a stamp from when its transaction began.
        """
        p = self.practice(pid)
        with self.lock, self._tx():
            at = clock.fmt(self._clock - timedelta(seconds=backdate))
            self._apply(p, at, action, target, source="adversary")
            self._save_seq(p)

    def set_confirmation(self, pid: str, appointment_id: int, defnum: int) -> None:
        """Set an appointment's `Confirmed` definition now (any category 2 DefNum)."""
        p = self.practice(pid)
        with self.lock, self._tx():
            seq = p.next_seq()
            cur = self._db.execute(
                "UPDATE appointments SET confirmed=?, stamp=?, seq=? WHERE p=? AND id=?",
                (defnum, self.now_text, seq, p.id, appointment_id),
            )
            if not cur.rowcount:
                raise DriftError(f"practice {pid!r} has no appointment {appointment_id}")
            self._log(p, "appointments", appointment_id, self.now_text, seq, "adversary")
            self._save_seq(p)

    def add_patients(self, pid: str, count: int) -> None:
        """Add `count` patients at once, stamped now (a large practice for first-read tests)."""
        p = self.practice(pid)
        with self.lock, self._tx():
            first = self._next_id("patients", p.id)
            active = [s.id for s in catalog.PROVIDERS[p.pms] if s.active]
            now = self.now_text
            rows = []
            for pat_id in range(first, first + count):
                person = _person_from_bits(pat_id * 2654435761)
                rows.append((p.id, pat_id, *person, active[0], None, now, p.next_seq()))
            self._db.executemany("INSERT INTO patients VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self._db.executemany(
                "INSERT INTO changes VALUES (?,'patients',?,?,?,'bulk',NULL)",
                [(p.id, str(r[1]), now, r[11]) for r in rows],
            )
            self._record_bulk(p, "patients")
            self._save_seq(p)

    def order_by(self, p: Practice, column: str) -> str:
        """The ORDER BY a list read uses: by `column`, or undefined under an adversary."""
        if self.adversary is None or not self.adversary.config.shuffle:
            return f"ORDER BY {column}"
        return f"ORDER BY shuffled({column}, {self.adversary.order_salt(p)})"

    # ---- reads ------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a read-only query under the lock (the protocol modules own their SQL)."""
        with self.lock:
            return self._db.execute(sql, params).fetchall()

    def cursor_read(
        self, p: Practice, table: str, since: int, limit: int, columns: str = "*"
    ) -> tuple[list[sqlite3.Row], int, bool]:
        """Rows of `table` with seq > since in change order: (rows, next cursor, has more)."""
        with self.lock:
            rows = self._db.execute(
                f"SELECT {columns} FROM {table} WHERE p=? AND seq>? ORDER BY seq LIMIT ?",
                (p.id, since, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            nxt = rows[-1]["seq"] if more else max(p.seq, since)
            if self.adversary is not None:
                self.adversary.shuffle(rows)  # type: ignore[arg-type]
            return rows, nxt, more

    def definitions(
        self, p: Practice, category: int | None, include_hidden: bool
    ) -> list[sqlite3.Row]:
        """A practice's definitions of a category (all categories when None)."""
        sql = "SELECT * FROM defs WHERE p=?"
        params: list[Any] = [p.id]
        if category is not None:
            sql += " AND category=?"
            params.append(category)
        if not include_hidden:
            sql += " AND hidden=0"
        return self.query(sql + " ORDER BY category, ord", params)

    def definition(self, p: Practice, category: int, def_id: str) -> sqlite3.Row | None:
        """One definition by category and id, or None."""
        rows = self.query(
            "SELECT * FROM defs WHERE p=? AND category=? AND id=?", (p.id, category, def_id)
        )
        return rows[0] if rows else None

    def exists(self, table: str, p: Practice, rid: object) -> bool:
        """Whether `table` has a row `rid` for the practice."""
        return bool(self.query(f"SELECT 1 FROM {table} WHERE p=? AND id=?", (p.id, rid)))

    # ---- writes -----------------------------------------------------------------------------

    def by_key(self, table: str, p: Practice, key: str) -> sqlite3.Row | None:
        """The note/document written with this Idempotency-Key (id, body hash), or None."""
        rows = self.query(
            f"SELECT id, body_hash FROM {table} WHERE p=? AND idem_key=?", (p.id, key)
        )
        return rows[0] if rows else None

    def insert_note(self, p: Practice, **f: Any) -> sqlite3.Row:
        """Store a note/commlog stamped now; returns the stored row."""
        with self.lock, self._tx():
            nid = self._next_id("notes", p.id)
            seq = p.next_seq()
            marker = _MARKER.search(f.get("text") or "")
            prov = f.get("prov") or (marker.group(1) if marker else None)
            wid = f.get("writeback_id") or (marker.group(2) if marker else None)
            self._db.execute(
                "INSERT INTO notes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.id, nid, f["pat"], f["note_type_id"], f.get("mode"), f.get("sor"), f["text"],
                 f["occurred"], prov, f.get("kind"), f.get("target"), wid, f.get("idem_key"),
                 f.get("body_hash"), self.now_text, seq),
            )  # fmt: skip
            self._log(p, "notes", nid, self.now_text, seq, "write")
            self._save_seq(p)
            row: sqlite3.Row = self._db.execute(
                "SELECT * FROM notes WHERE p=? AND id=?", (p.id, nid)
            ).fetchone()
            return row

    def insert_document(self, p: Practice, **f: Any) -> sqlite3.Row:
        """Store an uploaded document's metadata (not its bytes) stamped now; returns the row."""
        with self.lock, self._tx():
            did = self._next_id("documents", p.id)
            seq = p.next_seq()
            marker = _MARKER.search(f.get("description") or "")
            wid = f.get("writeback_id") or (marker.group(2) if marker else None)
            self._db.execute(
                "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (p.id, did, f["pat"], f["category_id"], f.get("prov"), f["filename"],
                 f.get("description") or "", f.get("img_type") or "Document",
                 f.get("content_type") or "application/octet-stream", f["size"], f["occurred"],
                 wid, f.get("idem_key"), f.get("body_hash"), self.now_text, seq),
            )  # fmt: skip
            self._log(p, "documents", did, self.now_text, seq, "write")
            self._save_seq(p)
            row: sqlite3.Row = self._db.execute(
                "SELECT * FROM documents WHERE p=? AND id=?", (p.id, did)
            ).fetchone()
            return row

    # ---- drift ------------------------------------------------------------------------------

    def update_def(self, pid: str, category: int, name: str, *, new_name: str | None = None,
                   hide: bool = False, delete: bool = False) -> None:  # fmt: skip
        """Rename, hide or delete the definition called `name` in `category`."""
        p = self.practice(pid)
        with self.lock, self._tx():
            def_id = self._def_id_by_name(p, category, name)
            if def_id is None:
                what = "note type" if category == catalog.CAT_NOTES else "document category"
                raise DriftError(f"practice {pid!r} has no {what} named {name!r}")
            if delete:
                self._db.execute(
                    "DELETE FROM defs WHERE p=? AND category=? AND id=?", (pid, category, def_id)
                )
            else:
                self._db.execute(
                    "UPDATE defs SET name=?, hidden=MAX(hidden, ?), stamp=? WHERE p=? AND category=? AND id=?",
                    (new_name or name, int(hide), self.now_text, pid, category, def_id),
                )

    def inactivate_provider(self, pid: str, provider_id: str) -> None:
        """Make a provider inactive (Open Dental: hidden; bridge: active=false)."""
        p = self.practice(pid)
        with self.lock, self._tx():
            hidden = 1 if p.pms == catalog.OPEN_DENTAL else 0
            cur = self._db.execute(
                "UPDATE providers SET active=0, hidden=MAX(hidden, ?), stamp=? WHERE p=? AND id=?",
                (hidden, self.now_text, pid, provider_id),
            )
            if not cur.rowcount:
                raise DriftError(f"practice {pid!r} has no provider {provider_id!r}")

    # ---- assertions' views ------------------------------------------------------------------

    def notes(self, pid: str) -> list[dict[str, Any]]:
        """The practice's written notes, normalized across PMS types."""
        p = self.practice(pid)
        rows = self.query(
            "SELECT n.*, d.name AS type_name FROM notes n LEFT JOIN defs d ON d.p=n.p "
            "AND d.category=? AND d.id=n.note_type_id WHERE n.p=? ORDER BY n.id",
            (catalog.CAT_NOTES, p.id),
        )
        return [
            {
                "id": str(r["id"]),
                "patient_id": str(r["pat"]),
                "note_type_id": r["note_type_id"],
                "note_type_name": r["type_name"],
                "mode": r["mode"],
                "direction": r["sor"],
                "kind": r["kind"],
                "target": r["target"],
                "provider_id": r["prov"],
                "text": r["text"],
                "writeback_id": r["writeback_id"],
                "occurred_at": r["occurred"],
                "stamp": r["stamp"],
            }
            for r in rows
        ]

    def documents(self, pid: str, include_seeded: bool = False) -> list[dict[str, Any]]:
        """The practice's documents (written ones; seeded photos too when asked)."""
        p = self.practice(pid)
        sql = (
            "SELECT x.*, d.name AS cat_name FROM documents x LEFT JOIN defs d ON d.p=x.p "
            "AND d.category=? AND d.id=x.category_id WHERE x.p=?"
        )
        if not include_seeded:
            sql += " AND x.body_hash IS NOT 'seed'"
        rows = self.query(sql + " ORDER BY x.id", (catalog.CAT_DOCUMENTS, p.id))
        return [
            {
                "id": str(r["id"]),
                "patient_id": str(r["pat"]),
                "category_id": r["category_id"],
                "category_name": r["cat_name"],
                "provider_id": r["prov"],
                "filename": r["filename"],
                "description": r["description"],
                "content_type": r["content_type"],
                "size": r["size"],
                "writeback_id": r["writeback_id"],
                "occurred_at": r["occurred"],
                "stamp": r["stamp"],
            }
            for r in rows
        ]

    def changes(self, pid: str, kind: str) -> list[dict[str, Any]]:
        """Every change of `kind` the simulator made to the practice, in change order."""
        p = self.practice(pid)
        rows = self.query("SELECT * FROM changes WHERE p=? AND kind=? ORDER BY seq", (p.id, kind))
        out = []
        for r in rows:
            item: dict[str, Any] = {
                "kind": r["kind"],
                "id": r["record_id"],
                "stamp": r["stamp"],
                "changed_at": clock.iso(r["stamp"]),
                "seq": r["seq"],
                "source": r["source"],
            }
            if r["detail"]:
                item.update(json.loads(r["detail"]))
            out.append(item)
        return out


def _shuffled(key: object, salt: int) -> int:
    """A row's place in the undefined order: a hash of its key and the salt."""
    digest = hashlib.blake2b(f"{key}|{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _phone(rng: Any) -> str:
    return f"512-555-{rng.randint(0, 9999):04d}"


_PEOPLE: list[tuple[str, str, str, str, str, str]] = []


def _person_from_bits(bits: int) -> tuple[str, str, str, str, str, str]:
    """A person from a fixed pool of 4,096 (built once), picked by `bits`: cheap to seed with."""
    if not _PEOPLE:
        rng = clock.rng_for("people")
        _PEOPLE.extend(_person(rng) for _ in range(4096))
    return _PEOPLE[bits & 4095]


def _person(rng: Any) -> tuple[str, str, str, str, str, str]:
    fname = rng.choice(catalog.FIRST_NAMES)
    lname = rng.choice(catalog.LAST_NAMES)
    birth = date(1940, 1, 1) + timedelta(days=rng.randint(0, 30000))
    email = f"{fname}.{lname}{rng.randint(1, 99)}@example.com".lower()
    return fname, lname, rng.choice("MF"), birth.isoformat(), _phone(rng), email
