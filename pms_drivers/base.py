"""The driver interface every PMS module implements, and the plain values it speaks in.

A driver is built per practice by a factory in `pms_drivers.registry` from an injected
`httpx.AsyncClient` (one per practice, shared by reconcile, pollers and writes), the PMS base URL
and the practice's `Credentials`. Drivers do no retrying and no rate limiting of their own: the
client's transport (`pms_drivers.transport`) holds the practice's token bucket, and
`pms_drivers.retry` is the one place that retries.

Cursor reads return a `Page`: the records changed since the cursor and the cursor to pass next
time. Cursors are opaque strings to callers; `None` means "from the beginning".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")

#: The nine writeback (note) kinds, by the spec's key names.
NOTE_KINDS = (
    "outgoingSms",
    "incomingSms",
    "outgoingEmail",
    "incomingCall",
    "outgoingCall",
    "missedCall",
    "patientNote",
    "taskNote",
    "insuranceVerification",
)
#: The two document kinds, by the spec's key names.
DOCUMENT_KINDS = ("insuranceVerification", "accountStatement")
#: Patient-flow statuses an appointment-status change can carry.
FLOW_STATUSES = ("confirmed", "arrived", "seated", "dismissed")


class Credentials:
    """A practice's PMS secrets (the Secret's data). Never printed: repr and str are redacted."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    def require(self, key: str, pms: str) -> str:
        value = self._values.get(key)
        if not value:
            from pms_drivers.errors import PmsAuthError

            raise PmsAuthError(
                f"the credentials Secret has no '{key}' key", pms=pms, operation="configure"
            )
        return value

    def keys(self) -> list[str]:
        return sorted(self._values)

    def __repr__(self) -> str:
        return f"Credentials(<redacted: {', '.join(self.keys())}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and other._values == self._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))


@dataclass(frozen=True)
class ServerInfo:
    pms: str
    version: str
    server_time: str


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    active: bool


@dataclass(frozen=True)
class NoteType:
    id: str
    name: str
    hidden: bool = False
    #: Where the PMS files notes of this type, when it has more than one place (Dentrix:
    #: "OfficeJournal" or "PatientNotes"); None elsewhere.
    target: str | None = None


@dataclass(frozen=True)
class DocumentCategory:
    id: str
    name: str
    hidden: bool = False
    flags: str = ""


@dataclass(frozen=True)
class Appointment:
    id: str
    patient_id: str
    start: str  # ISO 8601 local date-time as the PMS reports it
    status: str  # the PMS's appointment status name (Scheduled, Complete, Broken, ...)
    provider_id: str | None
    changed_at: str  # the PMS's change stamp, ISO 8601
    confirmed: str | None = None
    #: Which version of the row this is: two different states of one row never share it, even
    #: in the same second (Open Dental: a digest of the fields above; bridge: the agent's
    #: change sequence). Stable across restarts, so a consumer can de-duplicate on it.
    version: str = ""


@dataclass(frozen=True)
class AppointmentStatusChange:
    appointment_id: str
    patient_id: str
    status: str  # one of FLOW_STATUSES
    at: str  # ISO 8601, when it happened in the office


@dataclass(frozen=True)
class Patient:
    id: str
    first_name: str
    last_name: str
    changed_at: str
    photo_ref: str | None = None  # a reference (URL or document id) to the profile photo
    version: str = ""  # as `Appointment.version`


@dataclass(frozen=True)
class Page(Generic[T]):
    records: Sequence[T]
    cursor: str


@dataclass(frozen=True)
class NoteWrite:
    """One note to write. `writeback_id` is stable across retries and is the idempotency key."""

    writeback_id: str
    kind: str  # one of NOTE_KINDS
    patient_id: str
    note_type_id: str
    provider_id: str
    occurred_at: str  # ISO 8601
    text: str


@dataclass(frozen=True)
class DocumentUpload:
    writeback_id: str
    kind: str  # one of DOCUMENT_KINDS
    patient_id: str
    category_id: str
    provider_id: str
    occurred_at: str
    filename: str
    content: bytes = field(repr=False)
    content_type: str = "application/pdf"


@dataclass(frozen=True)
class WriteResult:
    """Where the PMS put it; `created` is False when an earlier attempt already had."""

    id: str
    created: bool


@runtime_checkable
class PmsDriver(Protocol):
    """What the engine needs from a PMS. Every method may raise a `pms_drivers.errors.PmsError`."""

    pms: str

    async def server_info(self) -> ServerInfo: ...

    async def list_providers(self) -> list[Provider]: ...

    async def list_note_types(self) -> list[NoteType]: ...

    async def list_document_categories(self) -> list[DocumentCategory]: ...

    async def appointments_since(self, cursor: str | None) -> Page[Appointment]: ...

    async def appointment_status_since(
        self, cursor: str | None
    ) -> Page[AppointmentStatusChange]: ...

    async def patients_since(
        self, cursor: str | None, *, photos: bool = False
    ) -> Page[Patient]: ...

    async def write_note(self, note: NoteWrite) -> WriteResult: ...

    async def upload_document(self, doc: DocumentUpload) -> WriteResult: ...


class DriverFactory(Protocol):
    def __call__(self, client: Any, base_url: str, credentials: Credentials) -> PmsDriver: ...
