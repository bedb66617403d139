"""The writeback request and record: the wire shapes, the request JSON schema, and plain values.

A platform service POSTs a `WritebackRequestBody` (JSON) per communication event. It is checked
against `REQUEST_SCHEMA` (draft 2020-12) and turned into a frozen `WritebackRequest`. Once stored,
the queue keeps a `WritebackRecord` per request; `record_json()` renders it for the API and the CLI.

Everything here is pure: no I/O, no clocks (callers pass times in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from reconciler.api.spec import DocumentType, WritebackType

#: Where the queue lives when nothing says otherwise (`--db`, `PMSCTL_WRITEBACK_DB`).
DEFAULT_DB_PATH = ".pmsctl/writebacks.db"
DB_PATH_ENV = "PMSCTL_WRITEBACK_DB"
#: The default request body limit: a 7.5 MiB document, base64-encoded, plus the JSON around it.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 65_536
MAX_ID_CHARS = 200
#: The largest queue sequence number (`after`): SQLite integers are signed 64-bit.
MAX_SEQ = 2**63 - 1
DOCUMENT_CONTENT_TYPES = ("application/pdf", "image/jpeg", "image/png", "image/tiff", "text/plain")


class Kind(StrEnum):
    """Whether a writeback becomes a PMS note or a PMS document."""

    NOTE = "note"
    DOCUMENT = "document"


class Status(StrEnum):
    """Where a writeback is. `sending` is `pending` with an attempt under way (or interrupted)."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"
    FAILED = "failed"


#: Statuses the drainer still has to deliver.
OPEN_STATUSES = (Status.PENDING, Status.SENDING)


class SkipReason(StrEnum):
    """Why a writeback was recorded but not written (CamelCase, like condition reasons)."""

    PRACTICE_UNKNOWN = "PracticeUnknown"
    SUSPENDED = "Suspended"
    NOT_ALLOWED = "NotAllowed"
    PROVIDER_NOT_VERIFIED = "ProviderNotVerified"
    NOTE_TYPE_UNRESOLVED = "NoteTypeUnresolved"
    DOCUMENT_TYPE_UNRESOLVED = "DocumentTypeUnresolved"


#: Skips that depend on what the PMS answered, not on the spec alone: `retry` by id puts such a
#: record back undecided, to be decided again once the practice is checked.
RETRYABLE_SKIPS = (
    SkipReason.PROVIDER_NOT_VERIFIED,
    SkipReason.NOTE_TYPE_UNRESOLVED,
    SkipReason.DOCUMENT_TYPE_UNRESOLVED,
)


class FailReason(StrEnum):
    """Why a writeback ended `failed` (kept with the record; `pmsctl writebacks retry` resends)."""

    REJECTED = "PmsRejected"  # the PMS answered 400/404: retrying the same write will not help
    AUTH = "PmsAuthFailed"  # the PMS refused the credentials
    RETRIES_EXHAUSTED = "RetriesExhausted"  # temporary errors until the attempt cap
    PRACTICE_GONE = "PracticeUnknown"  # the practice was removed before delivery


_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
# No NUL anywhere (no PMS stores one, and C code downstream truncates at it); an id neither
# starts nor ends with whitespace and has no line break.
_ID_PATTERN = r"^[^\s\u0000]([^\n\u0000]*[^\s\u0000])?$"
_NO_NUL = r"^[^\u0000]*$"
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": _ID_PATTERN}

#: The request body, as JSON Schema (draft 2020-12). `docs/writeback.md` shows it with examples.
REQUEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://writeback.dental.dev/schemas/writeback-request.json",
    "title": "WritebackRequest",
    "type": "object",
    "additionalProperties": False,
    "required": ["callerId", "patientId", "occurredAt"],
    "properties": {
        "callerId": {**_ID, "description": "The caller's id for this writeback (idempotency key)."},
        "type": {"enum": [t.value for t in WritebackType], "description": "The note kind."},
        "document": {"enum": [d.value for d in DocumentType], "description": "The document kind."},
        "patientId": {**_ID, "description": "The PMS patient id (PatNum, bridge id)."},
        "occurredAt": {"type": "string", "pattern": _RFC3339, "description": "RFC 3339 time."},
        "text": {"type": "string", "maxLength": MAX_TEXT_CHARS, "pattern": _NO_NUL},
        "filename": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": r"^[^/\\\u0000]+$",
        },
        "contentType": {"enum": list(DOCUMENT_CONTENT_TYPES)},
        "contentBase64": {"type": "string", "minLength": 1},
    },
    # A note has `type` and non-empty `text`; a document has `document` and the file.
    "if": {"required": ["document"]},
    "then": {
        "required": ["filename", "contentType", "contentBase64"],
        "not": {"required": ["type"]},
    },
    "else": {"required": ["type", "text"], "properties": {"text": {"minLength": 1}}},
    "dependentRequired": {
        "filename": ["document"],
        "contentType": ["document"],
        "contentBase64": ["document"],
    },
}


class WritebackRequestBody(TypedDict):
    """The POSTed JSON body (see `REQUEST_SCHEMA`)."""

    callerId: str
    patientId: str
    occurredAt: str
    type: NotRequired[str]
    document: NotRequired[str]
    text: NotRequired[str]
    filename: NotRequired[str]
    contentType: NotRequired[str]
    contentBase64: NotRequired[str]


class RequestError(ValueError):
    """A request body the API refuses; `status` is 400 (not JSON, bad value) or 422 (schema)."""

    def __init__(self, field: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.status = status


#: How much of a refused value an error message shows: errors stay small whatever was sent.
SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """`repr(value)`, cut to `SHOWN_CHARS` (with the full length said), for error messages."""
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}… ({len(value)} characters)"
    text = repr(value) if isinstance(value, str | int | float | bool | None) else _json_type(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


_JSON_TYPE_NAMES = {
    str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null",
    dict: "an object", list: "an array",
}  # fmt: skip


def _schema_error(error: Any) -> RequestError:
    """Turn one jsonschema error into a message naming the field and what it should be.

    Messages never carry the whole refused value (jsonschema's own do): at most `SHOWN_CHARS`.
    """
    path = ".".join(str(p) for p in error.absolute_path)[:MAX_ID_CHARS]
    kind = error.validator
    if kind == "required" or kind == "dependentRequired":
        instance = error.instance if isinstance(error.instance, dict) else {}
        wanted = error.validator_value
        if kind == "dependentRequired":
            wanted = [d for deps in wanted.values() for d in deps]
        missing = [k for k in wanted if k not in instance] or list(wanted)
        name = missing[0]
        if kind == "dependentRequired":
            others = [k for k in error.validator_value if k in instance]
            return RequestError(
                name,
                f"is required with {', '.join(others)} (file fields are for documents)",
                status=422,
            )
        return RequestError(name, "is required", status=422)
    if kind == "not" and not path:
        return RequestError("type", "give either type (a note) or document, not both", status=422)
    if kind == "additionalProperties":
        extra = sorted(set(error.instance) - set(REQUEST_SCHEMA["properties"]))
        known = ", ".join(REQUEST_SCHEMA["properties"])
        name = extra[0] if extra else path
        if len(name) > MAX_ID_CHARS or not is_safe_path_id(name):
            return RequestError(
                "", f"{shown(name)} is not a known field (known: {known})", status=422
            )
        return RequestError(name, f"is not a known field (known: {known})", status=422)
    if kind == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        return RequestError(path, f"{shown(error.instance)} is not one of {allowed}", status=422)
    if kind == "pattern" and isinstance(error.instance, str) and "\x00" in error.instance:
        return RequestError(
            path, "contains a NUL character (\\u0000); remove it: a PMS cannot store it", status=422
        )
    if kind == "pattern" and path == "occurredAt":
        return RequestError(
            path,
            f"{shown(error.instance)} is not an RFC 3339 time like 2026-11-26T09:15:00-05:00",
            status=422,
        )
    if kind == "pattern" and path == "filename":
        return RequestError(path, "must not contain / or \\", status=422)
    if kind == "pattern":
        return RequestError(
            path, "must not start or end with whitespace nor contain a line break", status=422
        )
    if kind == "type" and not path:
        return RequestError("", "the body must be a JSON object", status=422)
    if kind == "type":
        return RequestError(
            path,
            f"must be a {error.validator_value}, not "
            f"{_JSON_TYPE_NAMES.get(type(error.instance), _json_type(error.instance))}",
            status=422,
        )
    if kind == "maxLength":
        n = len(error.instance) if isinstance(error.instance, str) else 0
        return RequestError(
            path, f"is {n} characters; at most {error.validator_value} are allowed", status=422
        )
    if kind == "minLength":
        return RequestError(path, "must not be empty", status=422)
    message = error.message
    if len(message) > 2 * SHOWN_CHARS:
        message = f"{message[: 2 * SHOWN_CHARS]}…"
    return RequestError(path, message, status=422)


_validator: Any = None
_ID_RE = re.compile(_ID_PATTERN)
_TIME_RE = re.compile(_RFC3339)
_FILENAME_RE = re.compile(REQUEST_SCHEMA["properties"]["filename"]["pattern"])
_NOTE_TYPES = frozenset(t.value for t in WritebackType)
_DOC_TYPES = frozenset(d.value for d in DocumentType)
_KNOWN = frozenset(REQUEST_SCHEMA["properties"])
_FILE_FIELDS = ("filename", "contentType", "contentBase64")


def _id_ok(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and bool(_ID_RE.search(value))


def fast_valid(body: Any) -> bool:
    """True only for bodies `REQUEST_SCHEMA` accepts, in a few microseconds (jsonschema takes
    most of a millisecond). A False sends the body to jsonschema, which names the problem;
    `tests/test_writeback_decide.py` checks that the two agree."""
    if not isinstance(body, dict) or not _KNOWN.issuperset(body):
        return False
    if not (_id_ok(body.get("callerId")) and _id_ok(body.get("patientId"))):
        return False
    occurred = body.get("occurredAt")
    if not isinstance(occurred, str) or not _TIME_RE.search(occurred):
        return False
    text = body.get("text")
    if "text" in body and (
        not isinstance(text, str) or len(text) > MAX_TEXT_CHARS or "\x00" in text
    ):
        return False
    if "document" in body:
        filename, ctype, content = (body.get(k) for k in _FILE_FIELDS)
        return (
            "type" not in body
            and isinstance(body["document"], str)
            and body["document"] in _DOC_TYPES
            and isinstance(filename, str)
            and 0 < len(filename) <= 255
            and bool(_FILENAME_RE.search(filename))
            and ctype in DOCUMENT_CONTENT_TYPES
            and isinstance(content, str)
            and len(content) > 0
        )
    return (
        isinstance(body.get("type"), str)
        and body["type"] in _NOTE_TYPES
        and isinstance(text, str)
        and len(text) > 0
        and not any(k in body for k in _FILE_FIELDS)
    )


def schema_errors(body: Any) -> list[Any]:
    """Every jsonschema error for `body`, the most specific first."""
    global _validator
    if _validator is None:
        from jsonschema import Draft202012Validator

        _validator = Draft202012Validator(REQUEST_SCHEMA)
    return sorted(
        _validator.iter_errors(body),
        key=lambda e: (len(e.absolute_path) == 0, str(e.absolute_path)),
    )


def is_unicode(value: str) -> bool:
    """False for a string with a lone surrogate (JSON lets `"\\ud800"` through; UTF-8 cannot
    encode it, so SQLite and the PMS could not take it)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_request(practice_id: str, body: Any) -> WritebackRequest:
    """Check a decoded JSON body against `REQUEST_SCHEMA` and build the request (RequestError if not)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if not is_unicode(key):
                raise RequestError("", "a field name is not valid Unicode (a lone surrogate)",
                                   status=422)  # fmt: skip
            if isinstance(value, str) and not is_unicode(value):
                raise RequestError(
                    key if key in _KNOWN else "",
                    "is not valid Unicode: it contains a lone surrogate (\\ud800-\\udfff)",
                    status=422,
                )
    if not fast_valid(body):
        errors = schema_errors(body)
        if errors:
            raise _schema_error(errors[0])
    return WritebackRequest.from_body(practice_id, body)


@dataclass(frozen=True)
class WritebackRequest:
    """One validated writeback request for one practice."""

    practice_id: str
    caller_id: str
    kind: Kind
    type: str  # a WritebackType value for notes, a DocumentType value for documents
    patient_id: str
    occurred_at: str  # as sent (RFC 3339)
    text: str = ""
    filename: str | None = None
    content_type: str | None = None
    content: bytes | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """The writeback id: stable for (practice, caller id), so it is the PMS idempotency key too."""
        return writeback_id(self.practice_id, self.caller_id)

    def fingerprint(self) -> str:
        """A digest of what was asked, so a replay with a different body is told apart."""
        h = hashlib.sha256()
        for part in (self.kind, self.type, self.patient_id, self.occurred_at, self.text):
            h.update(part.encode() + b"\x00")
        for opt in (self.filename, self.content_type):
            h.update((opt or "").encode() + b"\x00")
        h.update(self.content or b"")
        return h.hexdigest()

    @classmethod
    def from_body(cls, practice_id: str, body: Mapping[str, Any]) -> WritebackRequest:
        """Build from a body that passed `REQUEST_SCHEMA`; RequestError for what a schema cannot say."""
        occurred = str(body["occurredAt"])
        try:
            datetime.fromisoformat(occurred.replace("z", "Z"))
        except ValueError:
            raise RequestError(
                "occurredAt", f"{occurred!r} is not a real date and time (RFC 3339)"
            ) from None
        if "document" in body:
            try:
                content = base64.b64decode(body["contentBase64"], validate=True)
            except (binascii.Error, ValueError):
                raise RequestError("contentBase64", "is not valid base64") from None
            if not content:
                raise RequestError("contentBase64", "decodes to an empty file")
            return cls(
                practice_id=practice_id,
                caller_id=str(body["callerId"]),
                kind=Kind.DOCUMENT,
                type=str(body["document"]),
                patient_id=str(body["patientId"]),
                occurred_at=occurred,
                text=str(body.get("text", "")),
                filename=str(body["filename"]),
                content_type=str(body["contentType"]),
                content=content,
            )
        return cls(
            practice_id=practice_id,
            caller_id=str(body["callerId"]),
            kind=Kind.NOTE,
            type=str(body["type"]),
            patient_id=str(body["patientId"]),
            occurred_at=occurred,
            text=str(body["text"]),
        )


def writeback_id(practice_id: str, caller_id: str) -> str:
    """`wb-` + 32 hex digits of sha256(practice id, caller id)."""
    digest = hashlib.sha256(f"{practice_id}\x00{caller_id}".encode()).hexdigest()
    return f"wb-{digest[:32]}"


@dataclass(frozen=True)
class WritebackRecord:
    """A stored writeback: the request, the decision, and where delivery stands."""

    seq: int
    request: WritebackRequest
    status: Status
    fingerprint: str
    created_at: float
    updated_at: float
    reason: str | None = None
    message: str | None = None
    target_type_id: str | None = None  # note type id, or document category id
    provider_id: str | None = None
    pms_id: str | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    sent_at: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def practice_id(self) -> str:
        return self.request.practice_id


class WritebackJson(TypedDict):
    """A record as the API and `pmsctl writebacks list -o json` show it."""

    id: str
    practiceId: str
    callerId: str
    kind: str
    type: str
    patientId: str
    occurredAt: str
    status: str
    reason: str | None
    message: str | None
    attempts: int
    noteTypeId: NotRequired[str | None]
    categoryId: NotRequired[str | None]
    providerId: str | None
    pmsId: str | None
    createdAt: str
    updatedAt: str
    sentAt: str | None


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC with milliseconds."""
    if ts is None:
        return None
    from datetime import UTC

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_json(r: WritebackRecord) -> WritebackJson:
    """Render a record for the API (content is never included)."""
    out: WritebackJson = {
        "id": r.id,
        "practiceId": r.practice_id,
        "callerId": r.request.caller_id,
        "kind": r.request.kind.value,
        "type": r.request.type,
        "patientId": r.request.patient_id,
        "occurredAt": r.request.occurred_at,
        "status": r.status.value,
        "reason": r.reason,
        "message": r.message,
        "attempts": r.attempts,
        "providerId": r.provider_id,
        "pmsId": r.pms_id,
        "createdAt": iso(r.created_at) or "",
        "updatedAt": iso(r.updated_at) or "",
        "sentAt": iso(r.sent_at),
    }
    if r.request.kind is Kind.NOTE:
        out["noteTypeId"] = r.target_type_id
    else:
        out["categoryId"] = r.target_type_id
    return out


def dumps(value: Any) -> str:
    """Compact JSON for answers."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_PATH_SAFE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def is_safe_path_id(value: str) -> bool:
    """Whether a path parameter looks like an id (guards the error messages that echo it)."""
    return bool(_PATH_SAFE.match(value))
