"""The pure core: given a practice's spec and what its PMS reported, decide pollers, ids and status.

No I/O happens here (no Kopf, no httpx, no clock reads): the engine gathers an `Observed` snapshot
(what the PMS answered, the pollers' state, the previous conditions and the time) and `decide()`
returns a `Decision`: which pollers should run at which interval, the ids every name resolved to,
the full `PracticeStatus` (the CRD's `status`, conditions in metav1.Condition shape) and the list of
condition transitions the adapters turn into Kubernetes Events.

Condition rules, in the order `Ready` reports the first failure:

    Suspended              True when spec.suspend; pollers and writebacks are stopped
    PMSReachable           the last PMS call (reconcile, drift check or poll) answered
    ProviderVerified       spec.providerId is an active provider of this PMS
    NoteTypesResolved      every allowed writeback's noteType names a visible note type
    DocumentTypesResolved  every document writeTo/readFrom names a visible category
    PollersRunning         one poller per enabled sync kind, none failing repeatedly
    Synced                 the last reconcile attempt succeeded
    Ready                  all of the above are good

`lastTransitionTime` only moves when a condition's status changes; a changed reason or message
with the same status updates in place (and is still reported as a transition when the reason
changes, so an Event names the new cause).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pms_drivers import records
from pms_drivers.base import DocumentCategory, NoteType, Provider
from reconciler.api.spec import (
    DocumentType,
    PracticeSpec,
    SyncKind,
    WritebackType,
    format_duration,
)

#: What messages call each PMS, and its note types and document categories (from its record).
PMS_LABEL: Mapping[str, str] = records.RecordView(lambda r: r.display_name)
_NOTE_NOUN: Mapping[str, str] = records.RecordView(lambda r: r.catalog.note_type)
_DOC_NOUN: Mapping[str, str] = records.RecordView(lambda r: r.catalog.document_category)


class ConditionType(StrEnum):
    """The condition types the engine writes, in the order `Ready` looks for a failure."""

    READY = "Ready"
    SUSPENDED = "Suspended"
    PMS_REACHABLE = "PMSReachable"
    PROVIDER_VERIFIED = "ProviderVerified"
    NOTE_TYPES_RESOLVED = "NoteTypesResolved"
    DOCUMENT_TYPES_RESOLVED = "DocumentTypesResolved"
    POLLERS_RUNNING = "PollersRunning"
    SYNCED = "Synced"


class Reason(StrEnum):
    """Stable CamelCase reasons. Tools and alerts match on these: never rename one."""

    # Ready / Synced
    READY = "Ready"
    RECONCILED = "ReconcileSucceeded"
    RECONCILE_FAILED = "ReconcileFailed"
    #: Another resource already manages this spec.practiceId; this one does nothing.
    DUPLICATE_PRACTICE_ID = "DuplicatePracticeId"
    # Suspended
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    # PMSReachable (and the credentials that precede it)
    REACHABLE = "PMSReachable"
    UNREACHABLE = "PMSUnreachable"
    RATE_LIMITED = "PMSRateLimited"
    CREDENTIALS_REJECTED = "CredentialsRejected"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_INCOMPLETE = "SecretIncomplete"
    PMS_ERROR = "PMSError"
    # Anything not yet checked because something before it failed
    NOT_CHECKED = "NotChecked"
    # ProviderVerified
    PROVIDER_ACTIVE = "ProviderActive"
    PROVIDER_NOT_FOUND = "ProviderNotFound"
    PROVIDER_INACTIVE = "ProviderInactive"
    # NoteTypesResolved / DocumentTypesResolved
    NOTE_TYPES_RESOLVED = "NoteTypesResolved"
    NOTE_TYPE_NOT_FOUND = "NoteTypeNotFound"
    NOTE_TYPE_HIDDEN = "NoteTypeHidden"
    NO_NOTE_TYPES = "NoWritebacksAllowed"
    DOCUMENT_TYPES_RESOLVED = "DocumentTypesResolved"
    DOCUMENT_TYPE_NOT_FOUND = "DocumentTypeNotFound"
    DOCUMENT_TYPE_HIDDEN = "DocumentTypeHidden"
    NO_DOCUMENT_TYPES = "NoDocumentMappings"
    # PollersRunning
    POLLERS_RUNNING = "PollersRunning"
    NO_SYNC_ENABLED = "NoSyncEnabled"
    POLLERS_STOPPED = "PollersStopped"
    POLLER_FAILING = "PollerFailing"
    POLLERS_STARTING = "PollersStarting"


class ReachFailure(StrEnum):
    """Why the PMS could not be used: decides the PMSReachable reason."""

    UNREACHABLE = "unreachable"
    RATE_LIMITED = "rate-limited"
    AUTH = "auth"
    SECRET_NOT_FOUND = "secret-not-found"
    SECRET_INCOMPLETE = "secret-incomplete"
    PMS_ERROR = "pms-error"


_REACH_REASON = {
    ReachFailure.UNREACHABLE: Reason.UNREACHABLE,
    ReachFailure.RATE_LIMITED: Reason.RATE_LIMITED,
    ReachFailure.AUTH: Reason.CREDENTIALS_REJECTED,
    ReachFailure.SECRET_NOT_FOUND: Reason.SECRET_NOT_FOUND,
    ReachFailure.SECRET_INCOMPLETE: Reason.SECRET_INCOMPLETE,
    ReachFailure.PMS_ERROR: Reason.PMS_ERROR,
}


def rfc3339(t: datetime) -> str:
    """Render a timezone-aware time the way metav1.Time does (`2026-11-26T09:15:00Z`)."""
    text = t.isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Condition:
    """One metav1.Condition."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedGeneration": self.observed_generation,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(d.get("type", "")),
            status=str(d.get("status", "Unknown")),
            reason=str(d.get("reason", "")),
            message=str(d.get("message", "")),
            last_transition_time=str(d.get("lastTransitionTime", "")),
            observed_generation=int(d.get("observedGeneration", 0) or 0),
        )


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed: one Kubernetes Event."""

    type: str
    old_status: str | None  # None: the condition did not exist before
    new_status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """True when the change is bad news (Event type Warning)."""
        if self.type == ConditionType.SUSPENDED:
            return False
        return self.new_status != "True"


@dataclass(frozen=True)
class PollerState:
    """What the scheduler knows about one poller (input to the core, rendered in status)."""

    interval_seconds: float
    running: bool = True
    last_success: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    events_emitted: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "interval": format_duration(self.interval_seconds),
            "running": self.running,
            "consecutiveFailures": self.consecutive_failures,
            "eventsEmitted": self.events_emitted,
        }
        if self.last_success is not None:
            d["lastSuccessTime"] = rfc3339(self.last_success)
        if self.last_error:
            d["lastError"] = self.last_error
        return d


@dataclass(frozen=True)
class ReachError:
    """The last PMS call failed; `message` is the driver's (credential-free) message."""

    failure: ReachFailure
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything the core needs besides the spec; `None` catalogs mean 'never observed'."""

    now: datetime
    generation: int = 1
    reach_error: ReachError | None = None
    reconcile_error: str | None = None
    pms_version: str | None = None
    checked_at: datetime | None = None
    providers: Sequence[Provider] | None = None
    note_types: Sequence[NoteType] | None = None
    document_categories: Sequence[DocumentCategory] | None = None
    pollers: Mapping[SyncKind, PollerState] = field(default_factory=dict)
    previous_conditions: Sequence[Condition] = ()
    reconcile_token: str | None = None
    writebacks: Mapping[str, int] = field(default_factory=dict)
    #: Consecutive poll failures before PollersRunning turns False.
    failure_threshold: int = 3
    #: "namespace/name" of the resource that manages the same practiceId (it came first); this
    #: one then contacts no PMS, runs no poller and takes no writeback.
    duplicate_of: str | None = None


@dataclass(frozen=True)
class NameId:
    name: str
    id: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "id": self.id}


@dataclass(frozen=True)
class DocumentResolution:
    write_to: NameId | None = None
    read_from: NameId | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.write_to:
            d["writeTo"] = self.write_to.to_dict()
        if self.read_from:
            d["readFrom"] = self.read_from.to_dict()
        return d


@dataclass(frozen=True)
class PracticeStatus:
    """The CRD `status` of one practice, as a frozen value; `to_dict()` is what gets patched."""

    observed_generation: int
    conditions: tuple[Condition, ...]
    provider: Provider | None = None
    note_types: Mapping[str, NameId] = field(default_factory=dict)
    document_types: Mapping[str, DocumentResolution] = field(default_factory=dict)
    pollers: Mapping[str, PollerState] = field(default_factory=dict)
    writebacks: Mapping[str, int] = field(default_factory=dict)
    pms_version: str | None = None
    checked_at: str | None = None
    last_handled_reconcile_at: str | None = None
    last_reconcile_time: str | None = None

    def condition(self, type: str) -> Condition | None:
        """The condition of that type, or None."""
        return next((c for c in self.conditions if c.type == type), None)

    @property
    def ready(self) -> bool:
        c = self.condition(ConditionType.READY)
        return c is not None and c.status == "True"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "observedGeneration": self.observed_generation,
            "conditions": [c.to_dict() for c in self.conditions],
            "noteTypes": {k: v.to_dict() for k, v in self.note_types.items()},
            "documentTypes": {k: v.to_dict() for k, v in self.document_types.items()},
            "pollers": {k: v.to_dict() for k, v in self.pollers.items()},
            "writebacks": {
                k: int(self.writebacks.get(k, 0)) for k in ("sent", "skipped", "pending", "failed")
            },
        }
        if self.provider is not None:
            d["provider"] = {
                "id": self.provider.id,
                "name": self.provider.name,
                "active": self.provider.active,
            }
        if self.pms_version is not None or self.checked_at is not None:
            pms: dict[str, str] = {}
            if self.pms_version is not None:
                pms["version"] = self.pms_version
            if self.checked_at is not None:
                pms["checkedAt"] = self.checked_at
            d["pms"] = pms
        if self.last_handled_reconcile_at is not None:
            d["lastHandledReconcileAt"] = self.last_handled_reconcile_at
        if self.last_reconcile_time is not None:
            d["lastReconcileTime"] = self.last_reconcile_time
        return d


@dataclass(frozen=True)
class Decision:
    """What to do and what to report, for one practice."""

    #: sync kind -> interval seconds; exactly the pollers that should run now.
    pollers: Mapping[SyncKind, float]
    #: The verified active provider id, or None.
    provider_id: str | None
    note_type_ids: Mapping[WritebackType, str]
    #: writeTo category ids per document type.
    document_category_ids: Mapping[DocumentType, str]
    #: readFrom category ids per document type.
    read_from_ids: Mapping[DocumentType, str]
    status: PracticeStatus
    transitions: tuple[Transition, ...]


@dataclass(frozen=True)
class _Verdict:
    status: str
    reason: Reason
    message: str


def _available(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "(none)"


def _check_provider(spec: PracticeSpec, obs: Observed) -> tuple[_Verdict, Provider | None]:
    pms = PMS_LABEL[spec.pms.type]
    if obs.providers is None:
        return _not_checked(obs, "the provider"), None
    found = next((p for p in obs.providers if p.id == spec.provider_id), None)
    active = [f"{p.id} ({p.name})" for p in obs.providers if p.active]
    if found is None:
        return (
            _Verdict(
                "False",
                Reason.PROVIDER_NOT_FOUND,
                f"providerId: provider '{spec.provider_id}' not found in {pms}; "
                f"active providers: {_available(active)}",
            ),
            None,
        )
    if not found.active:
        return (
            _Verdict(
                "False",
                Reason.PROVIDER_INACTIVE,
                f"providerId: provider '{spec.provider_id}' ({found.name}) is inactive in {pms}; "
                f"set providerId to an active provider: {_available(active)}",
            ),
            found,
        )
    return (
        _Verdict("True", Reason.PROVIDER_ACTIVE, f"provider '{found.id}' ({found.name}) is active"),
        found,
    )


def _not_checked(obs: Observed, what: str) -> _Verdict:
    if obs.reach_error is not None:
        return _Verdict(
            "Unknown", Reason.NOT_CHECKED, f"{what} cannot be checked until the PMS answers"
        )
    return _Verdict("Unknown", Reason.NOT_CHECKED, f"{what} has not been checked yet")


def _resolve_note_types(
    spec: PracticeSpec, obs: Observed
) -> tuple[_Verdict, dict[WritebackType, NameId]]:
    wanted = spec.allowed_note_types()
    pms = PMS_LABEL[spec.pms.type]
    noun = _NOTE_NOUN[spec.pms.type]
    if not wanted:
        return _Verdict("True", Reason.NO_NOTE_TYPES, "no writeback is allowed"), {}
    if obs.note_types is None:
        return _not_checked(obs, "note types"), {}
    visible = {t.name: t for t in obs.note_types if not t.hidden}
    hidden = {t.name for t in obs.note_types if t.hidden}
    names = sorted(visible)
    resolved: dict[WritebackType, NameId] = {}
    problems: list[str] = []
    reason = Reason.NOTE_TYPES_RESOLVED
    for kind in WritebackType:
        name = wanted.get(kind)
        if name is None:
            continue
        t = visible.get(name)
        if t is not None:
            resolved[kind] = NameId(name=t.name, id=t.id)
        elif name in hidden:
            reason = Reason.NOTE_TYPE_HIDDEN if reason != Reason.NOTE_TYPE_NOT_FOUND else reason
            problems.append(
                f"{kind}: {noun} '{name}' is hidden in {pms}; unhide it or pick one of: "
                f"{_available(names)}"
            )
        else:
            reason = Reason.NOTE_TYPE_NOT_FOUND
            problems.append(
                f"{kind}: {noun} '{name}' not found in {pms}; available: {_available(names)}"
            )
    if problems:
        return _Verdict("False", reason, "; ".join(problems)), resolved
    return _Verdict("True", reason, f"{len(resolved)} note type(s) resolved"), resolved


def _resolve_documents(
    spec: PracticeSpec, obs: Observed
) -> tuple[_Verdict, dict[DocumentType, DocumentResolution]]:
    pms = PMS_LABEL[spec.pms.type]
    noun = _DOC_NOUN[spec.pms.type]
    if not spec.document_category_names():
        return _Verdict("True", Reason.NO_DOCUMENT_TYPES, "no document mapping is set"), {}
    if obs.document_categories is None:
        return _not_checked(obs, "document types"), {}
    visible = {c.name: c for c in obs.document_categories if not c.hidden}
    hidden = {c.name for c in obs.document_categories if c.hidden}
    names = sorted(visible)
    out: dict[DocumentType, DocumentResolution] = {}
    problems: list[str] = []
    reason = Reason.DOCUMENT_TYPES_RESOLVED
    for kind in DocumentType:
        mapping = spec.documents.get(kind)
        if mapping is None:
            continue
        ends: dict[str, NameId | None] = {}
        for field_name, name in (("writeTo", mapping.write_to), ("readFrom", mapping.read_from)):
            if not name:
                ends[field_name] = None
                continue
            c = visible.get(name)
            if c is not None:
                ends[field_name] = NameId(name=c.name, id=c.id)
                continue
            ends[field_name] = None
            if name in hidden:
                if reason != Reason.DOCUMENT_TYPE_NOT_FOUND:
                    reason = Reason.DOCUMENT_TYPE_HIDDEN
                problems.append(
                    f"documents.{kind}.{field_name}: {noun} '{name}' is hidden in {pms}; "
                    f"unhide it or pick one of: {_available(names)}"
                )
            else:
                reason = Reason.DOCUMENT_TYPE_NOT_FOUND
                problems.append(
                    f"documents.{kind}.{field_name}: {noun} '{name}' not found in {pms}; "
                    f"available: {_available(names)}"
                )
        out[kind] = DocumentResolution(write_to=ends["writeTo"], read_from=ends["readFrom"])
    if problems:
        return _Verdict("False", reason, "; ".join(problems)), out
    return _Verdict("True", reason, f"{len(out)} document mapping(s) resolved"), out


def _check_pollers(spec: PracticeSpec, obs: Observed, wanted: Mapping[SyncKind, float]) -> _Verdict:
    if spec.suspend:
        return _Verdict(
            "False", Reason.POLLERS_STOPPED, "spec.suspend is true: every poller is stopped"
        )
    if not wanted:
        return _Verdict("True", Reason.NO_SYNC_ENABLED, "no sync kind is enabled")
    missing = [k for k in wanted if k not in obs.pollers or not obs.pollers[k].running]
    if missing:
        return _Verdict(
            "Unknown",
            Reason.POLLERS_STARTING,
            f"waiting for the poller(s) to start: {', '.join(sorted(missing))}",
        )
    failing = [
        f"{k} ({obs.pollers[k].consecutive_failures} failures in a row: {obs.pollers[k].last_error})"
        for k in sorted(wanted)
        if obs.pollers[k].consecutive_failures >= obs.failure_threshold
    ]
    if failing:
        return _Verdict("False", Reason.POLLER_FAILING, "; ".join(failing))
    running = ", ".join(f"{k} every {format_duration(wanted[k])}" for k in sorted(wanted))
    return _Verdict("True", Reason.POLLERS_RUNNING, running)


def _next_conditions(
    verdicts: Mapping[ConditionType, _Verdict], obs: Observed
) -> tuple[tuple[Condition, ...], tuple[Transition, ...]]:
    previous = {c.type: c for c in obs.previous_conditions}
    stamp = rfc3339(obs.now)
    conditions: list[Condition] = []
    transitions: list[Transition] = []
    for ctype in ConditionType:
        v = verdicts[ctype]
        old = previous.get(ctype)
        changed = old is None or old.status != v.status
        conditions.append(
            Condition(
                type=ctype,
                status=v.status,
                reason=v.reason,
                message=v.message,
                last_transition_time=stamp if changed or old is None else old.last_transition_time,
                observed_generation=obs.generation,
            )
        )
        if changed or (old is not None and old.reason != v.reason):
            transitions.append(
                Transition(
                    type=ctype,
                    old_status=old.status if old else None,
                    new_status=v.status,
                    reason=v.reason,
                    message=v.message,
                )
            )
    return tuple(conditions), tuple(transitions)


def wanted_pollers(spec: PracticeSpec) -> dict[SyncKind, float]:
    """The pollers a spec asks for right now: none when suspended."""
    return {} if spec.suspend else spec.enabled_sync()


def decide(spec: PracticeSpec, obs: Observed) -> Decision:
    """Decide pollers, resolved ids and the full status for one practice."""
    wanted = wanted_pollers(spec)
    if obs.reach_error is not None and obs.reach_error.failure in (
        ReachFailure.SECRET_NOT_FOUND,
        ReachFailure.SECRET_INCOMPLETE,
    ):
        # Without credentials there is no client to poll with.
        wanted = {}
    if obs.duplicate_of is not None:
        wanted = {}

    v: dict[ConditionType, _Verdict] = {}
    v[ConditionType.SUSPENDED] = (
        _Verdict(
            "True",
            Reason.SUSPENDED,
            "spec.suspend is true: pollers and writebacks are stopped; set it to false to resume",
        )
        if spec.suspend
        else _Verdict("False", Reason.NOT_SUSPENDED, "pollers and writebacks are active")
    )
    if obs.reach_error is None:
        if obs.checked_at is None:
            v[ConditionType.PMS_REACHABLE] = _Verdict(
                "Unknown", Reason.NOT_CHECKED, "the PMS has not been contacted yet"
            )
        else:
            version = f" ({obs.pms_version})" if obs.pms_version else ""
            v[ConditionType.PMS_REACHABLE] = _Verdict(
                "True",
                Reason.REACHABLE,
                f"{PMS_LABEL[spec.pms.type]}{version} answered at {spec.pms.url}",
            )
    else:
        v[ConditionType.PMS_REACHABLE] = _Verdict(
            "False", _REACH_REASON[obs.reach_error.failure], obs.reach_error.message
        )
    v[ConditionType.PROVIDER_VERIFIED], provider = _check_provider(spec, obs)
    v[ConditionType.NOTE_TYPES_RESOLVED], notes = _resolve_note_types(spec, obs)
    v[ConditionType.DOCUMENT_TYPES_RESOLVED], docs = _resolve_documents(spec, obs)
    if obs.duplicate_of is not None:
        duplicate = _Verdict(
            "False",
            Reason.DUPLICATE_PRACTICE_ID,
            f"spec.practiceId: '{spec.practice_id}' is already managed by {obs.duplicate_of}, "
            "which was created first; this resource contacts no PMS, runs no poller and takes "
            "no writeback. Give it its own practiceId or delete one of the two",
        )
        v[ConditionType.POLLERS_RUNNING] = (
            _check_pollers(spec, obs, wanted)
            if spec.suspend or not spec.enabled_sync()
            else _Verdict("False", Reason.DUPLICATE_PRACTICE_ID, duplicate.message)
        )
        v[ConditionType.SYNCED] = duplicate
        v[ConditionType.READY] = duplicate
    else:
        v[ConditionType.POLLERS_RUNNING] = (
            _not_checked(obs, "the pollers")
            if obs.reach_error is not None
            and not wanted
            and not spec.suspend
            and spec.enabled_sync()
            else _check_pollers(spec, obs, wanted)
        )
        v[ConditionType.SYNCED] = (
            _Verdict("False", Reason.RECONCILE_FAILED, obs.reconcile_error)
            if obs.reconcile_error
            else _Verdict("True", Reason.RECONCILED, "the last reconcile succeeded")
        )
        v[ConditionType.READY] = _ready(spec, v)

    conditions, transitions = _next_conditions(v, obs)
    provider_ok = v[ConditionType.PROVIDER_VERIFIED].status == "True"
    status = PracticeStatus(
        observed_generation=obs.generation,
        conditions=conditions,
        provider=provider,
        note_types={str(k): n for k, n in notes.items()},
        document_types={str(k): d for k, d in docs.items()},
        pollers={str(k): s for k, s in sorted(obs.pollers.items()) if k in wanted},
        writebacks=dict(obs.writebacks),
        pms_version=obs.pms_version,
        checked_at=rfc3339(obs.checked_at) if obs.checked_at else None,
        last_handled_reconcile_at=obs.reconcile_token,
        last_reconcile_time=rfc3339(obs.now),
    )
    return Decision(
        pollers=wanted,
        provider_id=provider.id if provider is not None and provider_ok else None,
        note_type_ids={k: n.id for k, n in notes.items()},
        document_category_ids={k: d.write_to.id for k, d in docs.items() if d.write_to},
        read_from_ids={k: d.read_from.id for k, d in docs.items() if d.read_from},
        status=status,
        transitions=transitions,
    )


def _ready(spec: PracticeSpec, v: Mapping[ConditionType, _Verdict]) -> _Verdict:
    if spec.suspend:
        return _Verdict("False", Reason.SUSPENDED, v[ConditionType.SUSPENDED].message)
    for ctype in (
        ConditionType.PMS_REACHABLE,
        ConditionType.PROVIDER_VERIFIED,
        ConditionType.NOTE_TYPES_RESOLVED,
        ConditionType.DOCUMENT_TYPES_RESOLVED,
        ConditionType.POLLERS_RUNNING,
        ConditionType.SYNCED,
    ):
        verdict = v[ctype]
        if verdict.status != "True":
            status = "Unknown" if verdict.status == "Unknown" else "False"
            return _Verdict(status, verdict.reason, f"{ctype}: {verdict.message}")
    return _Verdict("True", Reason.READY, "provider verified, names resolved, pollers running")


def events_for(transitions: Sequence[Transition]) -> list[Transition]:
    """The transitions worth a Kubernetes Event.

    A condition's first appearance is only news when it is not good (a practice created healthy
    gets one `Ready` event, not eight); every later change of status or reason is news.
    """
    out: list[Transition] = []
    for t in transitions:
        if t.old_status is None and t.type != ConditionType.READY and not t.warning:
            continue
        if t.old_status is None and t.type == ConditionType.SUSPENDED and t.new_status == "False":
            continue
        out.append(t)
    return out
