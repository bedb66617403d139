"""The Open Dental driver: the documented REST API (`/api/v1`), as the simulator serves it too.

Wire facts it relies on (docs/vendor-facts.md has them with the vendor pages): `Authorization: ODFHIR dev/customer`, PascalCase fields (lowercase ones
are derived, such as an appointment's `confirmed` name), booleans as "true"/"false", times
`yyyy-MM-dd HH:mm:ss` in office local time, JSON arrays with `serverDateTime` on every list item
(definitions excepted: they are settings and carry none), Limit/Offset paging capped at 100 rows
(first call without them; page while a full page comes back) in an order the API does not
document, `DateTStamp` change filters.

Decisions (docs/change-capture.md has the contract, docs/drivers.md the rest):
- Change reads keep a `pms_drivers.stamp_cursor.StampCursor`: re-read with a 2 s overlap and drop
  a row only when it is the version already emitted (same content digest); the cursor string
  carries that memory. Each emitted record's `version` is that digest.
- A change read is complete only when it can prove it: the list's order is undefined and rows
  change between pages, so the driver pages through the whole list again until the distinct keys
  it holds number what the last page's offset says the list holds (see `_read_changed`).
- Patient flow (confirmed/arrived/seated/dismissed) is derived from changed appointments: the
  row's own `confirmed` name (definition category 2 only when a row lacks it), and
  DateTimeArrived/Seated/Dismissed. The cursor remembers what was already emitted per appointment.
- The office clock is the `serverDateTime` of a list item (providers: a short list).
- Commlogs have no provider column and no idempotency key. The note ends with the trailer line
  `[pmsctl provider=<ProvNum> writeback=<id>]`; before POSTing, the driver reads the patient's
  commlogs and returns the existing one when the marker is there. Documents carry ProvNum and the
  same marker at the end of `Description`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Final, TypedDict

import httpx

from pms_drivers.base import (
    Appointment,
    AppointmentStatusChange,
    Credentials,
    DocumentCategory,
    DocumentUpload,
    NoteType,
    NoteWrite,
    Page,
    Patient,
    Provider,
    ServerInfo,
    WriteResult,
)
from pms_drivers.errors import PermanentPmsError, TemporaryPmsError
from pms_drivers.retry import RetryPolicy, with_retry
from pms_drivers.stamp_cursor import (
    EMPTY_TIME,
    OD_TIME,
    CursorError,
    FlowState,
    Row,
    StampCursor,
    advance,
    digest,
    flow_changes,
)
from pms_drivers.wire import call, json_of

log = logging.getLogger(__name__)

PMS: Final = "OpenDental"
PAGE_CAP: Final = 100  # the Remote API's row cap per call
MAX_PAGES: Final = 1000  # a runaway guard for settings lists (providers, definitions, commlogs)
#: Whole passes over a change list before a read gives up for this poll (the cursor stays).
MAX_PASSES: Final = 8
PROGRESS_EVERY: Final = 100  # pages between progress lines of a long change read
#: A page of a change read after its first that meets a 429 (or a dropped connection) waits and
#: asks again, so a first read of a large practice is not thrown away by one throttled page.
PAGE_RETRY: Final = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=60.0)
DEFAULT_OVERLAP_SECONDS: Final = 2.0
PICTURE_CATEGORY_TTL: Final = 600.0  # seconds a patient-pictures category lookup is reused

CATEGORY_APPT_CONFIRMED: Final = 2
CATEGORY_IMAGE_CATS: Final = 18
CATEGORY_COMMLOG_TYPES: Final = 27

#: Writeback kind -> the commlog's (Mode_, SentOrReceived): the channel and its direction.
COMMLOG_MODES: Final[Mapping[str, tuple[str, str]]] = {
    "outgoingSms": ("Text", "Sent"),
    "incomingSms": ("Text", "Received"),
    "outgoingEmail": ("Email", "Sent"),
    "outgoingCall": ("Phone", "Sent"),
    "incomingCall": ("Phone", "Received"),
    "missedCall": ("Phone", "Received"),
    "patientNote": ("None", "Neither"),
    "taskNote": ("None", "Neither"),
    "insuranceVerification": ("None", "Neither"),
}

_MARKER_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
_MARKER = re.compile(
    r"\[pmsctl provider=(?P<provider>[^\s\]]+) writeback=(?P<writeback>[^\s\]]+)\]"
)


def marker(provider_id: str, writeback_id: str) -> str:
    """The idempotency/provider marker Open Dental notes and document descriptions end with."""
    return f"[pmsctl provider={provider_id} writeback={writeback_id}]"


def find_marker(text: str | None) -> tuple[str, str] | None:
    """The (provider, writeback id) of the last marker in `text`, if any."""
    found = list(_MARKER.finditer(text or ""))
    if not found:
        return None
    last = found[-1]
    return last["provider"], last["writeback"]


def note_with_marker(text: str, provider_id: str, writeback_id: str) -> str:
    """The commlog `Note`: the text, then the marker on a line of its own."""
    body = text.rstrip()
    return (
        f"{body}\n{marker(provider_id, writeback_id)}"
        if body
        else marker(provider_id, writeback_id)
    )


def is_confirmed_name(name: str) -> bool:
    """Whether an ApptConfirmed definition (category 2) means the patient confirmed."""
    n = name.lower()
    return "confirmed" in n and "unconfirmed" not in n and "not confirmed" not in n


def od_bool(value: object) -> bool:
    """Open Dental's "true"/"false" strings (real booleans tolerated)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


def od_to_iso(value: object) -> str | None:
    """`yyyy-MM-dd HH:mm:ss` -> ISO 8601 (`T` separator); the empty time `0001-01-01...` -> None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text or text.startswith("0001-01-01"):
        return None
    return text.replace(" ", "T", 1)


def iso_to_od(value: str) -> str:
    """An ISO 8601 date-time -> Open Dental's `yyyy-MM-dd HH:mm:ss` (office local; an offset is dropped)."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from exc
    return when.replace(tzinfo=None).strftime(OD_TIME)


@dataclass(frozen=True)
class StoredDocument:
    """A document Open Dental holds for a patient (`GET /documents`)."""

    id: str  # DocNum
    patient_id: str
    category_id: str  # DocCategory: a DefNum of definition category 18
    description: str
    created: str  # DateCreated, ISO 8601
    provider_id: str | None
    filename: str
    image_type: str  # ImgType: Document, Radiograph, Photo, File, Attachment
    writeback: str | None  # the writeback id of our marker in Description, when we wrote it


class ODDefinition(TypedDict, total=False):
    DefNum: int | str
    Category: int | str
    ItemName: str
    ItemValue: str
    isHidden: str
    serverDateTime: str


def provider_name(row: Mapping[str, Any]) -> str:
    """A provider's display name from FName/LName (and Suffix), falling back to Abbr."""
    name = " ".join(
        p for p in (str(row.get("FName") or "").strip(), str(row.get("LName") or "").strip()) if p
    )
    suffix = str(row.get("Suffix") or "").strip()
    if name and suffix:
        name = f"{name}, {suffix}"
    return name or str(row.get("Abbr") or row.get("ProvNum") or "")


def provider_active(row: Mapping[str, Any]) -> bool:
    """Active unless hidden or not `ProvStatus` Active (Deleted, ...)."""
    status = str(row.get("ProvStatus") or "Active")
    return not od_bool(row.get("IsHidden", "false")) and status.lower() == "active"


def _id(value: object) -> str:
    return "" if value is None else str(value)


def _pk_sort(pk: str) -> tuple[int, str]:
    return (int(pk), "") if pk.isdigit() else (0, pk)


def _fields(record: Appointment | Patient) -> list[object]:
    """The emitted fields a version's digest covers (not `version`, not the photo reference)."""
    values = dataclasses.asdict(record)
    values.pop("version", None)
    values.pop("photo_ref", None)
    return [values[k] for k in sorted(values)]


def _keyed(
    rows: Sequence[Mapping[str, Any]], records: Sequence[Appointment | Patient], pk: str
) -> list[Row]:
    return [
        Row(
            pk=_id(r.get(pk)),
            stamp=str(r.get("DateTStamp") or ""),
            server_time=r.get("serverDateTime"),
            digest=record.version,
        )
        for r, record in zip(rows, records, strict=True)
    ]


def _int_id(value: str, what: str, *, operation: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PermanentPmsError(
            f"{what} {value!r} is not an Open Dental number", pms=PMS, operation=operation
        ) from None


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it.

    Two tasks writing the same writeback id at once must not both miss the marker and both POST.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class OpenDentalDriver:
    """`PmsDriver` for Open Dental's REST API. One per practice, on the practice's shared client."""

    pms: str = PMS

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        credentials: Credentials,
        *,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        page_retry: RetryPolicy = PAGE_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`page_retry` and `sleep` (the clock of its waits) apply to the pages of change reads."""
        developer = credentials.require("developerKey", PMS)
        customer = credentials.require("customerKey", PMS)
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {
            "Authorization": f"ODFHIR {developer}/{customer}",
            "Accept": "application/json",
        }
        self._secrets = (developer, customer)
        self._overlap = overlap_seconds
        self._page_retry = page_retry
        self._sleep = sleep
        self._confirm_names: dict[str, str] = {}
        self._confirm_misses: set[str] = set()
        self._pictures: tuple[str | None, float] | None = None
        self._write_locks = KeyedLocks()

    def __repr__(self) -> str:
        return f"OpenDentalDriver(base_url={self._base!r})"

    # ---- HTTP -------------------------------------------------------------------------------

    async def _get(
        self, operation: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> Any:
        response = await call(
            self._client,
            "GET",
            f"{self._base}{path}",
            pms=PMS,
            operation=operation,
            headers=self._headers,
            params=params,
            secrets=self._secrets,
        )
        return json_of(response, pms=PMS, operation=operation)

    async def _get_all(
        self, operation: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> list[dict[str, Any]]:
        """Every row of a list call: first without Limit/Offset, then Offset=100, 200, ... until a short page."""
        rows: list[dict[str, Any]] = []
        base = dict(params or {})
        for page in range(MAX_PAGES):
            query = base if page == 0 else {**base, "Limit": PAGE_CAP, "Offset": page * PAGE_CAP}
            body = await self._get(operation, path, query)
            if not isinstance(body, list):
                raise TemporaryPmsError(
                    f"expected a JSON array from {path}, got {type(body).__name__}",
                    pms=PMS,
                    operation=operation,
                )
            rows.extend(item for item in body if isinstance(item, dict))
            if len(body) < PAGE_CAP:
                return rows
        raise TemporaryPmsError(
            f"{path} still had full pages after {MAX_PAGES * PAGE_CAP} rows",
            pms=PMS,
            operation=operation,
        )

    async def _post(self, operation: str, path: str, body: Mapping[str, Any]) -> Any:
        response = await call(
            self._client,
            "POST",
            f"{self._base}{path}",
            pms=PMS,
            operation=operation,
            headers=self._headers,
            json_body=dict(body),
            secrets=self._secrets,
        )
        return json_of(response, pms=PMS, operation=operation)

    async def _definitions(self, operation: str, category: int) -> list[ODDefinition]:
        rows = await self._get_all(
            operation, "/definitions", {"Category": category, "includeHidden": "true"}
        )
        return [ODDefinition(**r) for r in rows]  # type: ignore[typeddict-item]

    # ---- reads --------------------------------------------------------------------------------

    async def server_info(self) -> ServerInfo:
        """Reachability and the office clock: the `serverDateTime` of the (short) provider list.

        The REST API has no version resource, so `version` says which API this is.
        """
        body = await self._get("server info", "/providers")
        items = body if isinstance(body, list) else []
        server_time = next(
            (
                i.get("serverDateTime")
                for i in items
                if isinstance(i, dict) and i.get("serverDateTime")
            ),
            None,
        )
        return ServerInfo(
            pms=PMS,
            version="Open Dental API v1",
            server_time=od_to_iso(server_time) or "",
        )

    async def list_providers(self) -> list[Provider]:
        rows = await self._get_all("list providers", "/providers")
        return [
            Provider(id=_id(r.get("ProvNum")), name=provider_name(r), active=provider_active(r))
            for r in rows
            if r.get("ProvNum") is not None
        ]

    async def list_note_types(self) -> list[NoteType]:
        defs = await self._definitions("list note types", CATEGORY_COMMLOG_TYPES)
        return [
            NoteType(
                id=_id(d.get("DefNum")),
                name=str(d.get("ItemName", "")),
                hidden=od_bool(d.get("isHidden", "false")),
            )
            for d in defs
        ]

    async def list_document_categories(self) -> list[DocumentCategory]:
        defs = await self._definitions("list document categories", CATEGORY_IMAGE_CATS)
        return [
            DocumentCategory(
                id=_id(d.get("DefNum")),
                name=str(d.get("ItemName", "")),
                hidden=od_bool(d.get("isHidden", "false")),
                flags=str(d.get("ItemValue") or ""),
            )
            for d in defs
        ]

    def _remember_confirm_names(self, defs: Sequence[ODDefinition]) -> None:
        self._confirm_names = {_id(d.get("DefNum")): str(d.get("ItemName", "")) for d in defs}

    async def _confirm_name(self, defnum: str, operation: str) -> str | None:
        if defnum in ("", "0"):
            return None
        if defnum not in self._confirm_names and defnum not in self._confirm_misses:
            # A confirmation status added since we last looked: read the list again, once per
            # unknown DefNum (a deleted definition must not cost a request per row).
            self._confirm_misses.add(defnum)
            self._remember_confirm_names(
                await self._definitions(operation, CATEGORY_APPT_CONFIRMED)
            )
        return self._confirm_names.get(defnum)

    def _cursor(self, text: str | None, operation: str) -> StampCursor:
        try:
            return StampCursor.decode(text)
        except CursorError as exc:
            raise PermanentPmsError(str(exc), pms=PMS, operation=operation) from exc

    async def _read_changed(
        self, operation: str, path: str, pk: str, params: Mapping[str, str | int]
    ) -> list[dict[str, Any]]:
        """Every row the change query matches, each once, as last read.

        The list's order is undefined and may change whenever the data does, so offset pages can
        skip a row that moved. A pass pages until a short page; the last page's offset plus its
        length is how many rows the query matched then. Rows only join a `DateTStamp` query (a
        change moves a row's stamp up, never out of `>= X`), so once the distinct keys gathered
        over the passes number that count, they are all the rows: done. Otherwise pass again,
        keeping what was gathered; after MAX_PASSES a TemporaryPmsError leaves the cursor as it was.
        """
        gathered: dict[str, dict[str, Any]] = {}
        pages = 0
        for attempt in range(1, MAX_PASSES + 1):
            offset = 0
            while True:
                query = (
                    dict(params) if offset == 0 else {**params, "Limit": PAGE_CAP, "Offset": offset}
                )
                body = await self._page(operation, path, query, retry=pages > 0)
                if not isinstance(body, list):
                    raise TemporaryPmsError(
                        f"expected a JSON array from {path}, got {type(body).__name__}",
                        pms=PMS,
                        operation=operation,
                    )
                for item in body:
                    if isinstance(item, dict):
                        # A later answer shows a row as it is at least as late (a late commit
                        # can even lower its stamp): the last one read wins.
                        gathered[_id(item.get(pk))] = item
                pages += 1
                if pages % PROGRESS_EVERY == 0:
                    log.info("%s: %d rows so far (%d pages)", operation, len(gathered), pages)
                if len(body) < PAGE_CAP:
                    matched = offset + len(body)
                    break
                offset += PAGE_CAP
            if len(gathered) == matched:
                if pages >= PROGRESS_EVERY:
                    log.info("%s: done, %d rows in %d pages", operation, matched, pages)
                return list(gathered.values())
            if len(gathered) > matched:
                # Rows left the query (deleted): what was gathered may hold rows that are gone,
                # so only this pass can be counted; read again from scratch.
                gathered = {}
            log.info(
                "%s: the list changed under pass %d (%d rows held, %d matched); reading it again",
                operation,
                attempt,
                len(gathered),
                matched,
            )
        raise TemporaryPmsError(
            f"{path} kept changing under {MAX_PASSES} passes; the next poll reads it again",
            pms=PMS,
            operation=operation,
        )

    async def _page(
        self, operation: str, path: str, query: Mapping[str, str | int], *, retry: bool
    ) -> Any:
        """One page of a change read; with `retry`, asked again after a temporary failure (see
        PAGE_RETRY). The first page of a read is not: with nothing read yet there is nothing to
        keep, and a PMS that is down must show as down at once."""

        async def once() -> Any:
            return await self._get(operation, path, query)

        if not retry:
            return await once()
        return await with_retry(once, policy=self._page_retry, sleep=self._sleep)

    async def _changed(
        self,
        operation: str,
        path: str,
        pk: str,
        cursor: StampCursor,
    ) -> list[dict[str, Any]]:
        query: dict[str, str | int] = {}
        since = cursor.since(self._overlap)
        if since is not None:
            query["DateTStamp"] = since
        rows = await self._read_changed(operation, path, pk, query)
        # A stable emission order: by stamp, then key (the list's own order is undefined).
        return sorted(
            rows, key=lambda r: (str(r.get("DateTStamp") or ""), _pk_sort(_id(r.get(pk))))
        )

    async def _confirmation(self, row: Mapping[str, Any], operation: str) -> str | None:
        """The appointment's confirmation name: the row's own (derived) `confirmed`, else the
        definition its `Confirmed` DefNum names (older API versions), else the DefNum."""
        name = str(row.get("confirmed") or "").strip()
        if name:
            return name
        defnum = _id(row.get("Confirmed"))
        return (await self._confirm_name(defnum, operation)) or (
            defnum if defnum not in ("", "0") else None
        )

    async def _appointment(self, r: Mapping[str, Any], operation: str) -> Appointment:
        record = Appointment(
            id=_id(r.get("AptNum")),
            patient_id=_id(r.get("PatNum")),
            start=od_to_iso(r.get("AptDateTime")) or "",
            status=str(r.get("AptStatus") or ""),
            provider_id=_id(r.get("ProvNum")) if _id(r.get("ProvNum")) not in ("", "0") else None,
            changed_at=od_to_iso(r.get("DateTStamp")) or "",
            confirmed=await self._confirmation(r, operation),
        )
        return dataclasses.replace(record, version=digest(_fields(record)))

    async def appointments_since(self, cursor: str | None) -> Page[Appointment]:
        operation = "read changed appointments"
        before = self._cursor(cursor, operation)
        rows = await self._changed(operation, "/appointments", "AptNum", before)
        records = [await self._appointment(r, operation) for r in rows]
        fresh, after = advance(before, _keyed(rows, records, "AptNum"), overlap=self._overlap)
        return Page(records=[records[i] for i in fresh], cursor=after.encode())

    async def appointment_status_since(self, cursor: str | None) -> Page[AppointmentStatusChange]:
        """Patient-flow changes derived from changed appointments; each change is emitted once.

        Every row read goes through the flow memory (it, not a row digest, decides what is new),
        so a second status set in the same second as the first is still seen.
        """
        operation = "read appointment status changes"
        before = self._cursor(cursor, operation)
        rows = await self._changed(operation, "/appointments", "AptNum", before)
        states = []
        for r in rows:
            statuses: dict[str, str] = {}
            name = await self._confirmation(r, operation)
            if name is not None and is_confirmed_name(name):
                statuses["confirmed"] = od_to_iso(r.get("DateTStamp")) or ""
            for status, column in (
                ("arrived", "DateTimeArrived"),
                ("seated", "DateTimeSeated"),
                ("dismissed", "DateTimeDismissed"),
            ):
                when = od_to_iso(r.get(column))
                if when is not None:
                    statuses[status] = when
            states.append(
                FlowState(
                    appointment_id=_id(r.get("AptNum")),
                    patient_id=_id(r.get("PatNum")),
                    day=str(r.get("AptDateTime") or EMPTY_TIME)[:10],
                    statuses=statuses,
                )
            )
        keyed = [
            Row(pk=_id(r.get("AptNum")), stamp="", server_time=r.get("serverDateTime"))
            for r in rows
        ]
        _, after = advance(StampCursor(server_time=before.server_time), keyed, overlap=0)
        today = (after.server_time or EMPTY_TIME)[:10]
        changes, flow = flow_changes(before.flow, states, today=today)
        records = sorted(
            (
                AppointmentStatusChange(
                    appointment_id=state.appointment_id,
                    patient_id=state.patient_id,
                    status=status,
                    at=state.statuses[status],
                )
                for state, status in changes
            ),
            key=lambda c: (c.at, _pk_sort(c.appointment_id), c.status),
        )
        cursor_after = StampCursor(server_time=after.server_time, flow=flow)
        return Page(records=records, cursor=cursor_after.encode())

    async def _picture_category(self) -> str | None:
        """The DefNum of the patient-pictures category (flag `P`), re-read every few minutes."""
        now = time.monotonic()
        if self._pictures is None or now - self._pictures[1] > PICTURE_CATEGORY_TTL:
            categories = await self.list_document_categories()
            found = next((c.id for c in categories if "P" in c.flags and not c.hidden), None)
            self._pictures = (found, now)
        return self._pictures[0]

    async def patients_since(self, cursor: str | None, *, photos: bool = False) -> Page[Patient]:
        """Changed patients. With `photos`, `photo_ref` is the documents query for the patient's
        pictures (the category flagged `P`); the REST API cannot say cheaply whether one exists."""
        operation = "read changed patients"
        before = self._cursor(cursor, operation)
        rows = await self._changed(operation, "/patients/Simple", "PatNum", before)
        records = []
        for r in rows:
            record = Patient(
                id=_id(r.get("PatNum")),
                first_name=str(r.get("FName") or ""),
                last_name=str(r.get("LName") or ""),
                changed_at=od_to_iso(r.get("DateTStamp")) or "",
            )
            records.append(dataclasses.replace(record, version=digest(_fields(record))))
        fresh, after = advance(before, _keyed(rows, records, "PatNum"), overlap=self._overlap)
        out = [records[i] for i in fresh]
        picture_category = await self._picture_category() if photos and out else None
        if picture_category:
            out = [
                dataclasses.replace(
                    p, photo_ref=f"/documents?PatNum={p.id}&DocCategory={picture_category}"
                )
                for p in out
            ]
        return Page(records=out, cursor=after.encode())

    # ---- writes -------------------------------------------------------------------------------

    def _check_marker_inputs(self, writeback_id: str, provider_id: str, operation: str) -> None:
        for what, value in (("writeback id", writeback_id), ("provider id", provider_id)):
            if not _MARKER_ID.match(value):
                raise PermanentPmsError(
                    f"{what} {value!r} cannot go in the note marker (use letters, digits and . _ : / -)",
                    pms=PMS,
                    operation=operation,
                )

    async def write_note(self, note: NoteWrite) -> WriteResult:
        """POST /commlogs, unless a commlog of this patient already carries the writeback's marker."""
        operation = "write note"
        try:
            mode, direction = COMMLOG_MODES[note.kind]
        except KeyError:
            raise PermanentPmsError(
                f"unknown writeback kind {note.kind!r}; expected one of {', '.join(COMMLOG_MODES)}",
                pms=PMS,
                operation=operation,
            ) from None
        self._check_marker_inputs(note.writeback_id, note.provider_id, operation)
        patnum = _int_id(note.patient_id, "patient id", operation=operation)
        try:
            when = iso_to_od(note.occurred_at)
        except ValueError as exc:
            raise PermanentPmsError(str(exc), pms=PMS, operation=operation) from exc
        async with self._write_locks.hold(note.writeback_id):
            existing = await self._get_all(operation, "/commlogs", {"PatNum": patnum})
            for row in existing:
                found = find_marker(str(row.get("Note") or ""))
                if found is not None and found[1] == note.writeback_id:
                    log.info(
                        "commlog %s already carries writeback %s; not writing again",
                        row.get("CommlogNum"),
                        note.writeback_id,
                    )
                    return WriteResult(id=_id(row.get("CommlogNum")), created=False)
            body = {
                "PatNum": patnum,
                "CommDateTime": when,
                "CommType": _int_id(note.note_type_id, "note type id", operation=operation),
                "Mode_": mode,
                "SentOrReceived": direction,
                "Note": note_with_marker(note.text, note.provider_id, note.writeback_id),
            }
            created = await self._post(operation, "/commlogs", body)
        if not isinstance(created, dict) or created.get("CommlogNum") is None:
            raise TemporaryPmsError(
                "created a commlog but did not say its CommlogNum", pms=PMS, operation=operation
            )
        return WriteResult(id=_id(created["CommlogNum"]), created=True)

    async def list_documents(
        self, patient_id: str, category_ids: Sequence[str] = ()
    ) -> list[StoredDocument]:
        """A patient's documents (`GET /documents?PatNum=`), only those in `category_ids` when
        given (the read-from categories: one `DocCategory=` read per category), in DocNum order."""
        operation = "list documents"
        patnum = _int_id(patient_id, "patient id", operation=operation)
        queries: list[dict[str, str | int]] = (
            [
                {
                    "PatNum": patnum,
                    "DocCategory": _int_id(c, "document category id", operation=operation),
                }
                for c in category_ids
            ]
            if category_ids
            else [{"PatNum": patnum}]
        )
        rows: dict[str, dict[str, Any]] = {}
        for query in queries:
            for r in await self._get_all(operation, "/documents", query):
                rows[_id(r.get("DocNum"))] = r
        return [
            StoredDocument(
                id=doc_id,
                patient_id=_id(r.get("PatNum")),
                category_id=_id(r.get("DocCategory")),
                description=str(r.get("Description") or ""),
                created=od_to_iso(r.get("DateCreated")) or "",
                provider_id=_id(r.get("ProvNum"))
                if _id(r.get("ProvNum")) not in ("", "0")
                else None,
                filename=str(r.get("FileName") or ""),
                image_type=str(r.get("ImgType") or ""),
                writeback=(find_marker(str(r.get("Description") or "")) or (None, None))[1],
            )
            for doc_id, r in sorted(rows.items(), key=lambda kv: _pk_sort(kv[0]))
        ]

    async def upload_document(self, doc: DocumentUpload) -> WriteResult:
        """POST /documents/Upload with ProvNum and the marker in Description, unless already there."""
        operation = "upload document"
        self._check_marker_inputs(doc.writeback_id, doc.provider_id, operation)
        patnum = _int_id(doc.patient_id, "patient id", operation=operation)
        try:
            when = iso_to_od(doc.occurred_at)
        except ValueError as exc:
            raise PermanentPmsError(str(exc), pms=PMS, operation=operation) from exc
        suffix = PurePosixPath(doc.filename).suffix or (
            mimetypes.guess_extension(doc.content_type) or ".bin"
        )
        async with self._write_locks.hold(doc.writeback_id):
            existing = await self._get_all(operation, "/documents", {"PatNum": patnum})
            for row in existing:
                found = find_marker(str(row.get("Description") or ""))
                if found is not None and found[1] == doc.writeback_id:
                    return WriteResult(id=_id(row.get("DocNum")), created=False)
            body = {
                "PatNum": patnum,
                "rawBase64": base64.b64encode(doc.content).decode("ascii"),
                "extension": suffix,
                "Description": f"{PurePosixPath(doc.filename).stem} {marker(doc.provider_id, doc.writeback_id)}",
                "DateCreated": when,
                "DocCategory": _int_id(
                    doc.category_id, "document category id", operation=operation
                ),
                "ImgType": "Photo" if doc.content_type.startswith("image/") else "Document",
                "ProvNum": _int_id(doc.provider_id, "provider id", operation=operation),
            }
            created = await self._post(operation, "/documents/Upload", body)
        if not isinstance(created, dict) or created.get("DocNum") is None:
            raise TemporaryPmsError(
                "uploaded a document but did not say its DocNum", pms=PMS, operation=operation
            )
        return WriteResult(id=_id(created["DocNum"]), created=True)
