"""The bridge driver: Eaglesoft and Dentrix through the on-premises agent's HTTP contract.

Neither PMS has an HTTP API a cloud service can call, so a practice runs an agent that reads and
writes the local database and serves the contract in docs/bridge-agent.openapi.yaml (bearer token,
JSON, cursor paging with `nextCursor`/`hasMore`, `Idempotency-Key` on writes). The simulator serves
the same contract. One driver class speaks it; the two flavours keep each PMS's real shape:

- Dentrix: provider ids are exactly 4 letters or digits (DDS1, HYG1; Enterprise allows 4-10 with
  `_`/`-`) and providers are never deleted, only inactivated, so a provider missing from the list
  is an unknown id, not a deleted one. Note types carry a `target` (OfficeJournal: calls, texts,
  emails, tasks; PatientNotes: personal info); Document Center types.
- Eaglesoft: provider ids are short practice-chosen codes (DCM), checked loosely; note types are
  (type, typeId) pairs whose id is `"type:typeId"`; document groups.

Writes send the writeback id as `Idempotency-Key`: the agent answers a replay with 200 and the
original id (`created=False`) and writes nothing, so `with_retry` may retry a write safely.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final

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
from pms_drivers.wire import call, json_of, redact_url

log = logging.getLogger(__name__)

PAGE_LIMIT: Final = 500  # the contract's maximum `limit`
MAX_PAGES: Final = 1000


def _s(value: object) -> str:
    return "" if value is None else str(value)


class BridgeDriver:
    """`PmsDriver` for the bridge agent. Use a flavour (`EaglesoftDriver`, `DentrixDriver`)."""

    pms: str = "Bridge"
    #: Which provider ids this PMS can have; writes with any other id are refused before sending.
    provider_id_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^\S{1,32}$")
    provider_id_rule: ClassVar[str] = "1-32 characters without spaces"

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        credentials: Credentials,
        *,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        token = credentials.require("token", self.pms)
        self._client = client
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._secrets = (token,)
        if not 1 <= page_limit <= PAGE_LIMIT:
            raise ValueError(f"page_limit must be within 1..{PAGE_LIMIT}, got {page_limit}")
        self._page_limit = page_limit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base!r})"

    # ---- HTTP -------------------------------------------------------------------------------

    async def _request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, Any]:
        headers = dict(self._headers)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = await call(
            self._client,
            method,
            f"{self._base}{path}",
            pms=self.pms,
            operation=operation,
            headers=headers,
            params=params,
            json_body=body,
            secrets=self._secrets,
        )
        return response.status_code, json_of(response, pms=self.pms, operation=operation)

    def _shape_error(self, operation: str, path: str, what: str) -> TemporaryPmsError:
        return TemporaryPmsError(
            f"the agent's answer has {what}",
            pms=self.pms,
            operation=operation,
            url=redact_url(f"{self._base}{path}"),
        )

    async def _items(self, operation: str, path: str) -> list[dict[str, Any]]:
        _, body = await self._request(operation, "GET", path)
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise self._shape_error(operation, path, "no `items` list")
        return [i for i in body["items"] if isinstance(i, dict)]

    async def _since(
        self, operation: str, path: str, cursor: str | None, extra: Mapping[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Page while `hasMore`; return every item and the last `nextCursor`.

        The agent's cursors are exact, so a page that fails temporarily (429, a dropped
        connection) after others succeeded ends the read there: what was read is returned with
        the cursor reached, and the next poll goes on from it instead of reading it all again.
        """
        items: list[dict[str, Any]] = []
        since = cursor
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {"limit": self._page_limit, **(extra or {})}
            if since is not None:
                params["since"] = since
            try:
                _, body = await self._request(operation, "GET", path, params=params)
            except TemporaryPmsError as exc:
                if not items or since is None:
                    raise
                log.info(
                    "%s: stopping after %d items (%s); next poll goes on",
                    operation,
                    len(items),
                    exc,
                )
                return items, since
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise self._shape_error(operation, path, "no `items` list")
            next_cursor = body.get("nextCursor")
            if not isinstance(next_cursor, str):
                raise self._shape_error(operation, path, "no `nextCursor`")
            items.extend(i for i in body["items"] if isinstance(i, dict))
            since = next_cursor
            if not body.get("hasMore"):
                return items, next_cursor
        # Enough for one call: hand back what we have; the caller continues from this cursor.
        assert since is not None
        return items, since

    # ---- reads --------------------------------------------------------------------------------

    async def server_info(self) -> ServerInfo:
        """The agent's /info; a PermanentPmsError when the agent fronts a different PMS."""
        operation = "server info"
        _, body = await self._request(operation, "GET", "/info")
        if not isinstance(body, dict):
            raise self._shape_error(operation, "/info", "no JSON object")
        reported = _s(body.get("pms"))
        if reported and reported != self.pms:
            raise PermanentPmsError(
                f"the bridge agent fronts {reported}, but spec.pms.type is {self.pms}; fix spec.pms.type or the URL",
                pms=self.pms,
                operation=operation,
                url=redact_url(f"{self._base}/info"),
            )
        version = _s(body.get("pmsVersion"))
        agent = _s(body.get("agentVersion"))
        return ServerInfo(
            pms=self.pms,
            version=f"{version} (agent {agent})" if agent else version,
            server_time=_s(body.get("serverTime")),
        )

    async def list_providers(self) -> list[Provider]:
        return [
            Provider(id=_s(i.get("id")), name=_s(i.get("name")), active=bool(i.get("active")))
            for i in await self._items("list providers", "/providers")
        ]

    def _note_type(self, item: Mapping[str, Any]) -> NoteType:
        return NoteType(
            id=_s(item.get("id")),
            name=_s(item.get("name")),
            hidden=bool(item.get("hidden")),
            target=_s(item.get("target")) or None,
        )

    async def list_note_types(self) -> list[NoteType]:
        return [self._note_type(i) for i in await self._items("list note types", "/note-types")]

    async def list_document_categories(self) -> list[DocumentCategory]:
        return [
            DocumentCategory(
                id=_s(i.get("id")), name=_s(i.get("name")), hidden=bool(i.get("hidden"))
            )
            for i in await self._items("list document types", "/document-types")
        ]

    async def appointments_since(self, cursor: str | None) -> Page[Appointment]:
        items, after = await self._since("read changed appointments", "/appointments", cursor)
        records = [
            Appointment(
                id=_s(i.get("id")),
                patient_id=_s(i.get("patientId")),
                start=_s(i.get("start")),
                status=_s(i.get("status")),
                provider_id=_s(i.get("providerId")) or None,
                changed_at=_s(i.get("changedAt")),
                confirmed=_confirmed(i.get("confirmed")),
                version=_s(i.get("version")),
            )
            for i in items
        ]
        return Page(records=records, cursor=after)

    async def appointment_status_since(self, cursor: str | None) -> Page[AppointmentStatusChange]:
        items, after = await self._since(
            "read appointment status changes", "/appointment-status-changes", cursor
        )
        records = [
            AppointmentStatusChange(
                appointment_id=_s(i.get("appointmentId")),
                patient_id=_s(i.get("patientId")),
                status=_s(i.get("status")),
                at=_s(i.get("at")),
            )
            for i in items
        ]
        return Page(records=records, cursor=after)

    async def patients_since(self, cursor: str | None, *, photos: bool = False) -> Page[Patient]:
        items, after = await self._since(
            "read changed patients",
            "/patients",
            cursor,
            {"includePhotos": "true" if photos else "false"},
        )
        records = [
            Patient(
                id=_s(i.get("id")),
                first_name=_s(i.get("firstName")),
                last_name=_s(i.get("lastName")),
                changed_at=_s(i.get("changedAt")),
                photo_ref=_s(i.get("photoRef")) or None,
                version=_s(i.get("version")),
            )
            for i in items
        ]
        return Page(records=records, cursor=after)

    # ---- writes -------------------------------------------------------------------------------

    def _check_provider(self, provider_id: str, operation: str) -> None:
        if not self.provider_id_pattern.match(provider_id):
            raise PermanentPmsError(
                f"provider id {provider_id!r} is not a {self.pms} provider id ({self.provider_id_rule})",
                pms=self.pms,
                operation=operation,
            )

    def _check_note_type(self, note_type_id: str, operation: str) -> None:
        """Flavour hook: refuse note type ids this PMS cannot have."""

    async def _write(
        self, operation: str, path: str, body: Mapping[str, Any], writeback_id: str
    ) -> WriteResult:
        if not writeback_id:
            raise PermanentPmsError(
                "a write needs a writeback id (the Idempotency-Key)",
                pms=self.pms,
                operation=operation,
            )
        status, answer = await self._request(
            operation, "POST", path, body=dict(body), idempotency_key=writeback_id
        )
        if not isinstance(answer, dict) or answer.get("id") in (None, ""):
            raise self._shape_error(operation, path, "no `id`")
        # 201: written now. 200: a replay of an earlier write with this key; nothing new written.
        return WriteResult(id=_s(answer["id"]), created=status == 201)

    async def write_note(self, note: NoteWrite) -> WriteResult:
        operation = "write note"
        self._check_provider(note.provider_id, operation)
        self._check_note_type(note.note_type_id, operation)
        body = {
            "patientId": note.patient_id,
            "noteTypeId": note.note_type_id,
            "providerId": note.provider_id,
            "occurredAt": note.occurred_at,
            "text": note.text,
            "kind": note.kind,
        }
        return await self._write(operation, "/notes", body, note.writeback_id)

    async def upload_document(self, doc: DocumentUpload) -> WriteResult:
        operation = "upload document"
        self._check_provider(doc.provider_id, operation)
        body = {
            "patientId": doc.patient_id,
            "documentTypeId": doc.category_id,
            "providerId": doc.provider_id,
            "occurredAt": doc.occurred_at,
            "filename": doc.filename,
            "contentType": doc.content_type,
            "contentBase64": base64.b64encode(doc.content).decode("ascii"),
        }
        return await self._write(operation, "/documents", body, doc.writeback_id)


def _confirmed(value: object) -> str | None:
    """The bridge's `confirmed` (a boolean, or a status name) as the `Appointment.confirmed` text."""
    if value is None or value is False:
        return None
    if value is True:
        return "confirmed"
    return str(value) or None


class DentrixDriver(BridgeDriver):
    """Dentrix G-series through the agent: 4-character provider ids, Office Journal / Patient Notes."""

    pms = "Dentrix"
    # G-series ids are exactly 4; Enterprise allows 4-10 letters, digits, `_` and `-`.
    provider_id_pattern = re.compile(r"^[A-Za-z0-9_-]{4,10}$")
    provider_id_rule = "4 letters or digits (Enterprise: 4-10, also _ and -)"


class EaglesoftDriver(BridgeDriver):
    """Eaglesoft through the agent: short provider codes, note types as `type:typeId` pairs."""

    pms = "Eaglesoft"
    provider_id_pattern = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
    provider_id_rule = "a short code such as DCM (letters, digits, _ . -)"

    def _note_type(self, item: Mapping[str, Any]) -> NoteType:
        note_type = super()._note_type(item)
        if not note_type.id and item.get("type") is not None:
            note_type = dataclasses.replace(
                note_type, id=f"{item['type']}:{_s(item.get('typeId'))}"
            )
        return note_type

    def _check_note_type(self, note_type_id: str, operation: str) -> None:
        kind, sep, type_id = note_type_id.partition(":")
        if not (sep and kind and type_id):
            raise PermanentPmsError(
                f"note type id {note_type_id!r} is not an Eaglesoft (type, typeId) pair like 'Text Message:3'",
                pms=self.pms,
                operation=operation,
            )
