"""The desired state of one practice, as frozen values with the product defaults applied.

`PracticeSpec.from_resource()` takes a resource body of either served version (v1alpha1 or v1)
that already passed schema validation (`reconciler.api.validate`) and returns plain values the core, the diff renderer and the local mode
share. Defaults live here and in the schema (the CRD defaults are generated from the schema);
they are never written back into a resource's `spec`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pms_drivers import records
from reconciler.api.convert import V1ALPHA1, spec_as_v1
from reconciler.api.durations import parse_duration


class _Registered(type):
    """Iterating over `PmsType` (or `in`) goes over the registered names, as over an enum."""

    def __iter__(cls) -> Iterator[PmsType]:
        return (PmsType(name) for name in list(records.RECORDS))

    def __contains__(cls, value: object) -> bool:
        return value in records.RECORDS


class PmsType(str, metaclass=_Registered):
    """A `spec.pms.type` with a registered PMS (`pms_drivers.records`); anything else is a
    ValueError. The set is the registry's rather than a fixed enum's, so a PMS registered at run
    time (a plug-in, a test's toy PMS) is accepted exactly like the built-in ones."""

    __slots__ = ()

    def __new__(cls, value: object) -> PmsType:
        text = str(value)
        if text not in records.RECORDS:
            known = ", ".join(records.RECORDS)
            raise ValueError(f"{text!r} is not a registered PMS type ({known})")
        return super().__new__(cls, text)

    @property
    def value(self) -> str:
        """The name as a plain string (as an enum member's value)."""
        return str(self)


class WritebackType(StrEnum):
    """The nine communications that can be written back into the PMS as notes."""

    OUTGOING_SMS = "outgoingSms"
    INCOMING_SMS = "incomingSms"
    OUTGOING_EMAIL = "outgoingEmail"
    INCOMING_CALL = "incomingCall"
    OUTGOING_CALL = "outgoingCall"
    MISSED_CALL = "missedCall"
    PATIENT_NOTE = "patientNote"
    TASK_NOTE = "taskNote"
    INSURANCE_VERIFICATION = "insuranceVerification"


class DocumentType(StrEnum):
    INSURANCE_VERIFICATION = "insuranceVerification"
    ACCOUNT_STATEMENT = "accountStatement"


class SyncKind(StrEnum):
    APPOINTMENT_STATUS = "appointmentStatus"
    APPOINTMENTS = "appointments"
    PATIENTS = "patients"


#: The product defaults for sync intervals, in seconds (the schema carries the same values).
DEFAULT_INTERVALS: dict[SyncKind, int] = {
    SyncKind.APPOINTMENT_STATUS: 15,
    SyncKind.APPOINTMENTS: 60,
    SyncKind.PATIENTS: 30,
}
MIN_INTERVAL_SECONDS = 5
MAX_INTERVAL_SECONDS = 3600
DEFAULT_TIMEOUT_SECONDS = 10


def format_duration(seconds: float) -> str:
    """Render seconds the way Go prints a duration (`90` -> `1m30s`), for messages and tables."""
    s = int(seconds)
    if s != seconds:
        return f"{seconds:g}s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    out = (
        (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec or not (h or m) else "")
    )
    return out


@dataclass(frozen=True)
class PmsConnection:
    type: PmsType
    url: str
    credentials_secret: str
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class WritebackSetting:
    allow: bool
    note_type: str | None = None


@dataclass(frozen=True)
class DocumentMapping:
    """Where one document kind is written and read. `read_from` is the first category to read
    from; `read_from_more` the further ones a v1 resource lists (a v1alpha1 resource names one)."""

    write_to: str | None = None
    read_from: str | None = None
    read_from_more: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncSetting:
    enabled: bool
    interval_seconds: float


def _default_sync() -> dict[SyncKind, SyncSetting]:
    return {k: SyncSetting(enabled=False, interval_seconds=v) for k, v in DEFAULT_INTERVALS.items()}


@dataclass(frozen=True)
class PracticeSpec:
    """One practice's desired settings. Absent sync kinds are disabled at their default interval;
    absent writeback keys are not allowed."""

    practice_id: str
    pms: PmsConnection
    provider_id: str
    display_name: str | None = None
    writeback: Mapping[WritebackType, WritebackSetting] = field(default_factory=dict)
    documents: Mapping[DocumentType, DocumentMapping] = field(default_factory=dict)
    sync: Mapping[SyncKind, SyncSetting] = field(default_factory=_default_sync)
    patient_profile_photos: bool = False
    suspend: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PracticeSpec:
        """Build from a validated v1alpha1 `spec` mapping (defaults applied here, not in the
        input)."""
        return cls.from_resource({"apiVersion": V1ALPHA1, "spec": spec})

    @classmethod
    def from_resource(cls, body: Mapping[str, Any]) -> PracticeSpec:
        """Build from a validated resource of any served version: converted to v1 first, so
        both versions give the same PracticeSpec for the same practice."""
        return cls._from_v1_spec(spec_as_v1(body))

    @classmethod
    def _from_v1_spec(cls, spec: Mapping[str, Any]) -> PracticeSpec:
        pms = spec["pms"]
        sync = _default_sync()
        sync_spec = spec.get("sync") or {}
        for key, value in sync_spec.items():
            kind = SyncKind(key)
            interval = value.get("interval")
            sync[kind] = SyncSetting(
                enabled=bool(value["enabled"]),
                interval_seconds=parse_duration(interval) if interval else DEFAULT_INTERVALS[kind],
            )
        return cls(
            practice_id=str(spec["practiceId"]),
            display_name=spec.get("displayName"),
            pms=PmsConnection(
                type=PmsType(pms["type"]),
                url=str(pms["url"]),
                credentials_secret=str(pms["credentialsSecretRef"]["name"]),
                timeout_seconds=int(pms.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)),
            ),
            provider_id=str(spec["providerId"]),
            writeback={
                WritebackType(k): WritebackSetting(
                    allow=bool(v["allow"]), note_type=v.get("noteType")
                )
                for k, v in (spec.get("writeback") or {}).items()
            },
            documents={
                DocumentType(k): DocumentMapping(
                    write_to=v.get("writeTo"),
                    read_from=(v.get("readFrom") or [None])[0],
                    read_from_more=tuple(v.get("readFrom") or ())[1:],
                )
                for k, v in (spec.get("documents") or {}).items()
            },
            sync=sync,
            patient_profile_photos=bool(
                (sync_spec.get("patients") or {}).get("profilePhotos", False)
            ),
            suspend=bool(spec.get("suspend", False)),
        )

    def enabled_sync(self) -> dict[SyncKind, float]:
        """The sync kinds that should have a poller, with their intervals in seconds."""
        return {k: s.interval_seconds for k, s in self.sync.items() if s.enabled}

    def allowed_note_types(self) -> dict[WritebackType, str]:
        """Writeback type -> note type name, for every allowed writeback."""
        return {k: s.note_type for k, s in self.writeback.items() if s.allow and s.note_type}

    def document_category_names(self) -> set[str]:
        """Every document category name the spec refers to (write-to and read-from)."""
        names: set[str] = set()
        for m in self.documents.values():
            names.update(n for n in (m.write_to, m.read_from, *m.read_from_more) if n)
        return names
