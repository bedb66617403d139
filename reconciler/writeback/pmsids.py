"""Which patient ids can exist in each PMS: checked at intake, so a request that can never be
written is a 422 and never waits at the head of its practice's queue.

One record per PMS type in `PATIENT_ID_RULES`: a description (for the error message and the
docs) and a check. Pure; no I/O.

- Open Dental: the PatNum, a positive integer key (a signed 64-bit column).
- Eaglesoft, Dentrix (through the bridge agent): the agent's patient id, a string. Kept loose
  (letters, digits, `.`, `_`, `-`, up to 64), since the agents' id formats are not published;
  an id made of digits only must still fit a 64-bit integer, as every numeric database key does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.api.spec import PmsType

_MAX_KEY = 2**63 - 1  # the largest signed 64-bit integer: SQL keys are at most that
_DIGITS = re.compile(r"^[0-9]+$")
_BRIDGE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _numeric_key_ok(value: str) -> bool:
    return bool(_DIGITS.match(value)) and len(value) <= 19 and 0 < int(value) <= _MAX_KEY


def _bridge_id_ok(value: str) -> bool:
    if not _BRIDGE_ID.match(value):
        return False
    return not _DIGITS.match(value) or (len(value.lstrip("0")) <= 19 and int(value) <= _MAX_KEY)


@dataclass(frozen=True)
class PatientIdRule:
    """What a patient id looks like in one PMS."""

    description: str
    check: Callable[[str], bool]


#: Keyed by `spec.pms.type` name; a registered PMS without a rule here gets no intake check.
PATIENT_ID_RULES: dict[str, PatientIdRule] = {
    "OpenDental": PatientIdRule(
        f"an Open Dental PatNum: a whole number from 1 to {_MAX_KEY}", _numeric_key_ok
    ),
    "Eaglesoft": PatientIdRule(
        "an Eaglesoft patient id: 1-64 letters, digits, '.', '_' or '-' (a number fits 64 bits)",
        _bridge_id_ok,
    ),
    "Dentrix": PatientIdRule(
        "a Dentrix patient id: 1-64 letters, digits, '.', '_' or '-' (a number fits 64 bits)",
        _bridge_id_ok,
    ),
}


def patient_id_problem(pms: PmsType, patient_id: str) -> str | None:
    """None when `patient_id` can exist in `pms`; else what it should be."""
    rule = PATIENT_ID_RULES.get(pms)
    if rule is None or rule.check(patient_id):
        return None
    return f"is not {rule.description}"
