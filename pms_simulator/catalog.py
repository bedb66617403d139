"""The seed catalogs every simulated practice starts from, per PMS type (see /docs/simulator.md).

Plain constants: the providers, note types and document categories the shared catalog names, plus
the name lists the deterministic patient generator draws from. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN_DENTAL = "OpenDental"
EAGLESOFT = "Eaglesoft"
DENTRIX = "Dentrix"
#: Every PMS with a seed below; `pms_simulator.personality.register` adds to these tables.
PMS_TYPES: tuple[str, ...] = (OPEN_DENTAL, EAGLESOFT, DENTRIX)
BRIDGE_TYPES = (EAGLESOFT, DENTRIX)

#: Definition categories (Open Dental numbers; the bridge flavours reuse them internally).
CAT_CONFIRMED = 2
CAT_DOCUMENTS = 18
CAT_NOTES = 27


@dataclass(frozen=True)
class ProviderSeed:
    """One provider: id (ProvNum as text for Open Dental), abbreviation and name parts."""

    id: str
    abbr: str
    fname: str
    lname: str
    suffix: str
    name: str
    active: bool = True
    hidden: bool = False
    status: str = "Active"


@dataclass(frozen=True)
class DefSeed:
    """One definition: a note type, document category or confirmation status."""

    category: int
    id: str
    name: str
    item_value: str = ""
    hidden: bool = False
    target: str | None = None
    type: str | None = None
    type_id: int | None = None


PROVIDERS: dict[str, tuple[ProviderSeed, ...]] = {
    OPEN_DENTAL: (
        ProviderSeed("1", "DOC1", "Maria", "Alvarez", "DDS", "Dr. Maria Alvarez"),
        ProviderSeed("2", "HYG1", "Sam", "Lee", "RDH", "Sam Lee, RDH"),
        ProviderSeed("3", "DOC2", "John", "Park", "DDS", "Dr. John Park"),
        ProviderSeed("4", "DOC3", "Ruth", "Gold", "DDS", "Dr. Ruth Gold", False, True),
        ProviderSeed("5", "DOC4", "Tom", "Berg", "DDS", "Dr. Tom Berg", False, False, "Deleted"),
        ProviderSeed("7", "DOC7", "Priya", "Shah", "DDS", "Dr. Priya Shah"),
        ProviderSeed("12", "DOC12", "Ken", "Ito", "DDS", "Dr. Ken Ito"),
    ),
    DENTRIX: (
        ProviderSeed("DDS1", "DDS1", "Alan", "Moss", "DDS", "Dr. Alan Moss"),
        ProviderSeed("DDS2", "DDS2", "Nina", "Cole", "DDS", "Dr. Nina Cole"),
        ProviderSeed("HYG1", "HYG1", "Kim", "Ruiz", "RDH", "Kim Ruiz, RDH"),
        ProviderSeed("HYG2", "HYG2", "Lee", "Wong", "RDH", "Lee Wong, RDH"),
        ProviderSeed("DOC9", "DOC9", "Paul", "Hart", "DDS", "Dr. Paul Hart", False),
    ),
    EAGLESOFT: (
        ProviderSeed("DCM", "DCM", "Diane", "Mercer", "DDS", "Dr. Diane Mercer"),
        ProviderSeed("GGY", "GGY", "Greg", "Young", "DDS", "Dr. Greg Young"),
        ProviderSeed("HYG", "HYG", "Ana", "Diaz", "RDH", "Ana Diaz, RDH"),
        ProviderSeed("AB1", "AB1", "Amy", "Brooks", "DDS", "Dr. Amy Brooks"),
        ProviderSeed("XRT", "XRT", "Rex", "Toll", "DDS", "Dr. Rex Toll", False),
    ),
}

_OD_NOTE_NAMES = (
    "Appt Related",
    "Financial",
    "Insurance",
    "Misc",
    "Recall",
    "Text Message",
    "Email",
    "Phone Call",
    "Missed Call",
    "Patient Note",
    "Task",
    "Insurance Verification",
)
_OD_DOC_CATS = (
    ("Patient Information", ""),
    ("X-Rays", "X"),
    ("Insurance Cards", ""),
    ("Insurance Verification", ""),
    ("Statements", "S"),
    ("Patient Pictures", "P"),
)
#: Open Dental's ApptConfirmed definitions; CONFIRMED_DEFNUM is "Appointment Confirmed".
OD_CONFIRM_DEFS = (
    (19, "Not Called"),
    (20, "Unconfirmed"),
    (21, "Appointment Confirmed"),
    (22, "Left Msg"),
    (23, "Texted"),
)
UNCONFIRMED_DEFNUM = 20
CONFIRMED_DEFNUM = 21

_DENTRIX_NOTES = (
    ("Text Message", "OfficeJournal"),
    ("Email", "OfficeJournal"),
    ("Phone Call", "OfficeJournal"),
    ("Missed Call", "OfficeJournal"),
    ("Task", "OfficeJournal"),
    ("Insurance Verification", "OfficeJournal"),
    ("Patient Note", "PatientNotes"),
)
_DENTRIX_DOCS = (
    "Insurance Verification",
    "Statements",
    "Insurance Cards",
    "Patient Photos",
    "Clinical",
)
_EAGLESOFT_NOTES = (
    ("Text Message", "CM", 1),
    ("Email", "CM", 2),
    ("Phone Call", "CM", 3),
    ("Missed Call", "CM", 4),
    ("Patient Note", "PN", 1),
    ("Task", "TK", 1),
    ("Insurance Verification", "IV", 1),
)
_EAGLESOFT_DOCS = ("Insurance Verification", "Statements", "Insurance", "Photos", "Correspondence")


def _od_defs() -> tuple[DefSeed, ...]:
    out = [DefSeed(CAT_CONFIRMED, str(n), name) for n, name in OD_CONFIRM_DEFS]
    out += [DefSeed(CAT_DOCUMENTS, str(80 + i), n, v) for i, (n, v) in enumerate(_OD_DOC_CATS)]
    out.append(DefSeed(CAT_DOCUMENTS, "86", "Old Scans", "", True))
    out += [DefSeed(CAT_NOTES, str(221 + i), n) for i, n in enumerate(_OD_NOTE_NAMES)]
    out.append(DefSeed(CAT_NOTES, "233", "Legacy Fax", "", True))
    return tuple(out)


def _dentrix_defs() -> tuple[DefSeed, ...]:
    out = [DefSeed(CAT_NOTES, str(201 + i), n, target=t) for i, (n, t) in enumerate(_DENTRIX_NOTES)]
    out.append(DefSeed(CAT_NOTES, "208", "Fax", hidden=True, target="OfficeJournal"))
    out += [DefSeed(CAT_DOCUMENTS, str(301 + i), n) for i, n in enumerate(_DENTRIX_DOCS)]
    out.append(DefSeed(CAT_DOCUMENTS, "306", "Archive", hidden=True))
    return tuple(out)


def _eaglesoft_defs() -> tuple[DefSeed, ...]:
    out = [DefSeed(CAT_NOTES, f"{t}:{i}", n, type=t, type_id=i) for n, t, i in _EAGLESOFT_NOTES]
    out.append(DefSeed(CAT_NOTES, "ON:1", "Old Notes", hidden=True, type="ON", type_id=1))
    out += [DefSeed(CAT_DOCUMENTS, str(11 + i), n) for i, n in enumerate(_EAGLESOFT_DOCS)]
    out.append(DefSeed(CAT_DOCUMENTS, "16", "Retired", hidden=True))
    return tuple(out)


DEFINITIONS: dict[str, tuple[DefSeed, ...]] = {
    OPEN_DENTAL: _od_defs(),
    DENTRIX: _dentrix_defs(),
    EAGLESOFT: _eaglesoft_defs(),
}

#: The document category that holds patient photos, per PMS type.
PHOTO_CATEGORY = {OPEN_DENTAL: "Patient Pictures", DENTRIX: "Patient Photos", EAGLESOFT: "Photos"}

#: Version strings the simulated servers report.
PMS_VERSIONS = {OPEN_DENTAL: "24.3.36.0", DENTRIX: "G7.3.1", EAGLESOFT: "22.10"}
AGENT_VERSION = "1.0.0-sim"

FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "James", "Isabella", "Lucas",
    "Mia", "Mateo", "Amelia", "Ethan", "Harper", "Aiden", "Evelyn", "Logan", "Abigail", "Jackson",
    "Ella", "Levi", "Aria", "Sebastian", "Chloe", "Henry", "Layla", "Owen", "Nora", "Daniel",
    "Zoe", "Samuel", "Riley", "Jack", "Lily", "Wyatt", "Grace", "Leo", "Hannah", "Julian",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores",
)  # fmt: skip
