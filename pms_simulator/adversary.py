"""A hostile PMS for change-capture tests: every way a poll can meet a change, on purpose.

Set `sim.state.adversary = Adversary(sim.state, AdversaryConfig(seed=...))` and every GET of a
practice's API goes through `before_read()` first (the gateway calls it), which may:

(a) change rows in the same second as the read: the changes are stamped with the simulated clock,
    which only the test moves, so they share the second of the reads around them; some are
    stamped up to a second earlier (a transaction committed late);
(b) insert and update rows between the pages of one read (the same hook, on every page);
(c) return list pages in an undefined order: Open Dental list reads order rows by a hash of the
    key and a salt that changes with every change of the practice (`State.order_by`), so a
    change between pages reshuffles every later page; bridge pages come shuffled too;
(d) answer 429 with Retry-After, or drop the connection half way through a page's body.

Restarting the reader mid-read (e) is the harness's part (`pms_simulator.checker`); so is
moving the clock. Every change the adversary makes lands in the simulator's change log (with the
row when `State.record_rows` is on): the ground truth `pms_simulator.checker` compares with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pms_simulator import catalog, clock
from pms_simulator.state import BOOK, RENAME_PATIENT, RESCHEDULE, Practice

if TYPE_CHECKING:
    from pms_simulator.state import State


@dataclass(frozen=True)
class AdversaryConfig:
    """How hostile reads are. Rates are per read request, in [0, 1]."""

    seed: int = 0
    change_rate: float = 0.5  # a read is preceded by changes
    max_changes: int = 3  # at most this many changes before one read
    backdate_rate: float = 0.1  # a change stamped a second before the clock (late commit)
    throttle_rate: float = 0.03  # 429 with Retry-After
    drop_rate: float = 0.03  # the connection drops half way through the body
    shuffle: bool = True  # undefined list order (see the module doc)
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("change_rate", "backdate_rate", "throttle_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")


@dataclass(frozen=True)
class ReadVerdict:
    """What happens to one read: answered normally, throttled (429) or cut off mid-body."""

    throttle: bool = False
    drop: bool = False
    retry_after: int = 1


@dataclass
class Adversary:
    """The hostile behaviour of one simulator's reads; see the module doc."""

    state: State
    config: AdversaryConfig = field(default_factory=AdversaryConfig)
    #: Changes made, by action name (for the harness's report).
    made: dict[str, int] = field(default_factory=dict)
    enabled: bool = True

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def order_salt(self, p: Practice) -> int:
        """The undefined order's salt: any change of the practice reshuffles its lists."""
        return p.seq

    def before_read(self, p: Practice, path: str) -> ReadVerdict:
        """Called by the gateway before a GET is answered: maybe change rows, maybe fail it."""
        if not self.enabled or path.endswith(("/info", "/definitions", "/providers")):
            return ReadVerdict()
        cfg = self.config
        if self.rng.random() < cfg.change_rate:
            self.change(p, self.rng.randint(1, cfg.max_changes))
        if self.rng.random() < cfg.throttle_rate:
            return ReadVerdict(throttle=True, retry_after=cfg.retry_after)
        return ReadVerdict(drop=self.rng.random() < cfg.drop_rate)

    def shuffle(self, rows: list[object]) -> None:
        """Shuffle a bridge page in place when the order is undefined."""
        if self.enabled and self.config.shuffle:
            self.rng.shuffle(rows)

    def change(self, p: Practice, count: int) -> int:
        """Make up to `count` random changes now; returns how many were made."""
        made = 0
        for _ in range(count):
            action, target = self._pick(p)
            if action is None:
                continue
            backdate = 1 if self.rng.random() < self.config.backdate_rate else 0
            before = p.seq
            self.state.act(p.id, action, target, backdate=backdate)
            if p.seq != before:  # a step that had already happened changes nothing
                self.made[action] = self.made.get(action, 0) + 1
                made += 1
        return made

    def _pick(self, p: Practice) -> tuple[str | None, int]:
        roll = self.rng.random()
        if roll < 0.55:
            return self._flow_step(p)
        if roll < 0.65:
            target = self._scheduled(p)
            return (RESCHEDULE, target) if target is not None else (None, 0)
        if roll < 0.7:
            return BOOK, self.rng.randint(1, self._patients(p))
        if roll < 0.8:
            return clock.NEW_PATIENT, self.rng.randint(1, 2**31)
        if roll < 0.92:
            return RENAME_PATIENT, self.rng.randint(1, self._patients(p))
        return clock.EDIT_PATIENT, self.rng.randint(1, self._patients(p))

    def _patients(self, p: Practice) -> int:
        rows = self.state.query("SELECT COALESCE(MAX(id), 1) FROM patients WHERE p=?", (p.id,))
        return int(rows[0][0])

    def _scheduled(self, p: Practice) -> int | None:
        rows = self.state.query(
            "SELECT id FROM appointments WHERE p=? AND status='Scheduled'", (p.id,)
        )
        return int(self.rng.choice(rows)[0]) if rows else None

    def _flow_step(self, p: Practice) -> tuple[str | None, int]:
        """The next patient-flow step of a random scheduled appointment (never a repeat)."""
        rows = self.state.query(
            "SELECT id, confirmed, arrived, seated FROM appointments "
            "WHERE p=? AND status='Scheduled'",
            (p.id,),
        )
        if not rows:
            return None, 0
        r = self.rng.choice(rows)
        if r["confirmed"] != catalog.CONFIRMED_DEFNUM and self.rng.random() < 0.5:
            return clock.CONFIRM, int(r["id"])
        if r["arrived"] == clock.EMPTY_TIME:
            return clock.ARRIVE, int(r["id"])
        if r["seated"] == clock.EMPTY_TIME:
            return clock.SEAT, int(r["id"])
        if self.rng.random() < 0.1:
            return clock.BREAK, int(r["id"])
        return clock.DISMISS, int(r["id"])
