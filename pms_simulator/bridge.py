"""The bridge agent API (docs/bridge-agent.openapi.yaml) in its Dentrix and Eaglesoft flavours.

Served under `/bridge/v1`. The bearer token picks the practice and so the flavour: Dentrix
providers are 4-character ids and note types carry a `target` (OfficeJournal or PatientNotes);
Eaglesoft providers are short codes and note types are (type, typeId) pairs with id "type:typeId".
Cursor reads run over the practice's change sequence; writes need an `Idempotency-Key` and a
replay with the same key and body answers 200 with the original id (409 on a different body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sqlite3
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pms_simulator import catalog, clock
from pms_simulator.errors import ApiError
from pms_simulator.gateway import PRACTICE, gateway
from pms_simulator.state import Practice

if TYPE_CHECKING:
    from pms_simulator.server import Simulator

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
NOTE_KINDS = (
    "outgoingSms", "incomingSms", "outgoingEmail", "incomingCall", "outgoingCall", "missedCall",
    "patientNote", "taskNote", "insuranceVerification",
)  # fmt: skip


def render_error(err: ApiError) -> web.Response:
    """The bridge's JSON error envelope `{"error": {"code", "message"}}`."""
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return web.json_response(
        {"error": {"code": err.code, "message": err.message}}, status=err.status, headers=headers
    )


def build_app(sim: Simulator) -> web.Application:
    """The `/bridge/v1` sub-application."""

    def authenticate(request: web.Request) -> Practice:
        """The practice whose bearer token this is; 401 otherwise."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():
            raise ApiError(
                401, "missing bearer token: send 'Authorization: Bearer <token>'", "unauthorized"
            )
        pid = sim.practice_for_token(token.strip())
        if pid is None:
            raise ApiError(401, "the bearer token is not valid for any practice", "unauthorized")
        return sim.state.practice(pid)

    api = _Bridge(sim)
    app = web.Application(middlewares=[gateway(sim, authenticate, render_error)])
    app.router.add_get("/info", api.info)
    app.router.add_get("/providers", api.providers)
    app.router.add_get("/note-types", api.note_types)
    app.router.add_get("/document-types", api.document_types)
    app.router.add_get("/appointments", api.appointments)
    app.router.add_get("/appointment-status-changes", api.status_changes)
    app.router.add_get("/patients", api.patients)
    app.router.add_post("/notes", api.post_note)
    app.router.add_post("/documents", api.post_document)
    return app


def _cursor(request: web.Request) -> tuple[int, int]:
    since = request.query.get("since") or "0"
    if not since.isdigit():
        raise ApiError(400, f"since: {since!r} is not a cursor this agent issued", "invalid_cursor")
    raw = request.query.get("limit") or str(DEFAULT_LIMIT)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, f"limit: {raw!r} must be an integer from 1 to {MAX_LIMIT}")
    return int(since), int(raw)


def _page(items: list[dict[str, Any]], nxt: int, more: bool) -> web.Response:
    return web.json_response({"items": items, "nextCursor": str(nxt), "hasMore": more})


class _Bridge:
    """The route handlers; each reads the authenticated practice from the request."""

    def __init__(self, sim: Simulator) -> None:
        self.state = sim.state

    async def info(self, request: web.Request) -> web.Response:
        """GET /info"""
        p = request[PRACTICE]
        return web.json_response({
            "pms": p.pms, "pmsVersion": catalog.PMS_VERSIONS[p.pms],
            "agentVersion": catalog.AGENT_VERSION, "serverTime": clock.iso(self.state.now_text),
        })  # fmt: skip

    async def providers(self, request: web.Request) -> web.Response:
        """GET /providers"""
        p = request[PRACTICE]
        rows = self.state.query("SELECT * FROM providers WHERE p=? ORDER BY ord", (p.id,))
        return web.json_response(
            {
                "items": [
                    {"id": r["id"], "name": r["name"], "active": bool(r["active"])} for r in rows
                ]
            }
        )

    async def note_types(self, request: web.Request) -> web.Response:
        """GET /note-types"""
        p = request[PRACTICE]
        rows = self.state.definitions(p, catalog.CAT_NOTES, include_hidden=True)
        return web.json_response({"items": [
            {"id": r["id"], "name": r["name"], "hidden": bool(r["hidden"]), "target": r["target"],
             "type": r["type"], "typeId": r["type_id"]}
            for r in rows
        ]})  # fmt: skip

    async def document_types(self, request: web.Request) -> web.Response:
        """GET /document-types"""
        p = request[PRACTICE]
        rows = self.state.definitions(p, catalog.CAT_DOCUMENTS, include_hidden=True)
        return web.json_response(
            {
                "items": [
                    {"id": r["id"], "name": r["name"], "hidden": bool(r["hidden"])} for r in rows
                ]
            }
        )

    async def appointments(self, request: web.Request) -> web.Response:
        """GET /appointments (cursor read)."""
        p = request[PRACTICE]
        since, limit = _cursor(request)
        rows, nxt, more = self.state.cursor_read(p, "appointments", since, limit)
        return _page([
            {"id": str(r["id"]), "patientId": str(r["pat"]), "start": clock.iso(r["start"]),
             "status": r["status"], "providerId": r["prov"],
             "confirmed": r["confirmed"] == catalog.CONFIRMED_DEFNUM, "changedAt": clock.iso(r["stamp"]),
             "version": str(r["seq"])}
            for r in rows
        ], nxt, more)  # fmt: skip

    async def status_changes(self, request: web.Request) -> web.Response:
        """GET /appointment-status-changes (cursor read)."""
        p = request[PRACTICE]
        since, limit = _cursor(request)
        rows, nxt, more = self.state.cursor_read(p, "flow", since, limit)
        return _page([
            {"id": str(r["seq"]), "appointmentId": str(r["apt"]), "patientId": str(r["pat"]),
             "status": r["status"], "at": clock.iso(r["at"])}
            for r in rows
        ], nxt, more)  # fmt: skip

    async def patients(self, request: web.Request) -> web.Response:
        """GET /patients[?includePhotos=] (cursor read)."""
        p = request[PRACTICE]
        since, limit = _cursor(request)
        photos = (request.query.get("includePhotos") or "false").lower()
        if photos not in ("true", "false"):
            raise ApiError(400, f"includePhotos: {photos!r} must be true or false")
        rows, nxt, more = self.state.cursor_read(p, "patients", since, limit)
        return _page([
            {"id": str(r["id"]), "firstName": r["fname"], "lastName": r["lname"],
             "changedAt": clock.iso(r["stamp"]), "version": str(r["seq"]),
             "photoRef": f"bridge://photos/{r['photo_doc']}" if photos == "true" and r["photo_doc"] else None}
            for r in rows
        ], nxt, more)  # fmt: skip

    async def _write_prelude(
        self, request: web.Request, table: str
    ) -> tuple[str, str, dict[str, Any], web.Response | None]:
        p = request[PRACTICE]
        key = request.headers.get("Idempotency-Key", "").strip()
        if not key:
            raise ApiError(
                400, "the Idempotency-Key header is required on writes", "missing_idempotency_key"
            )
        if len(key) > 200:
            raise ApiError(400, "the Idempotency-Key header is longer than 200 characters")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        digest = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        prior = self.state.by_key(table, p, key)
        if prior is not None:
            if prior["body_hash"] != digest:
                raise ApiError(
                    409,
                    "this Idempotency-Key was used with a different body",
                    "idempotency_conflict",
                )
            return key, digest, body, web.json_response({"id": str(prior["id"])}, status=200)
        return key, digest, body, None

    def _check_common(
        self, p: Practice, body: dict[str, Any], category: int, type_field: str
    ) -> tuple[int, sqlite3.Row, str, str]:
        pat = _text(body, "patientId")
        if not pat.isdigit() or not self.state.exists("patients", p, int(pat)):
            raise ApiError(404, f"patientId: no patient {pat!r}", "not_found")
        type_id = _text(body, type_field)
        type_row = self.state.definition(p, category, type_id)
        if type_row is None:
            raise ApiError(
                404,
                f"{type_field}: no {'note' if category == catalog.CAT_NOTES else 'document'} type {type_id!r}",
                "not_found",
            )
        prov = _text(body, "providerId")
        if not self.state.exists("providers", p, prov):
            raise ApiError(404, f"providerId: no provider {prov!r}", "not_found")
        occurred = _text(body, "occurredAt")
        try:
            occurred = clock.fmt(clock.parse(occurred))
        except ValueError:
            raise ApiError(400, f"occurredAt: {occurred!r} is not an ISO 8601 date-time") from None
        return int(pat), type_row, prov, occurred

    async def post_note(self, request: web.Request) -> web.Response:
        """POST /notes (idempotent by Idempotency-Key)."""
        p = request[PRACTICE]
        key, digest, body, replay = await self._write_prelude(request, "notes")
        if replay is not None:
            return replay
        pat, type_row, prov, occurred = self._check_common(p, body, catalog.CAT_NOTES, "noteTypeId")
        text = _text(body, "text")
        kind = _text(body, "kind")
        if kind not in NOTE_KINDS:
            raise ApiError(400, f"kind: {kind!r} is not one of {', '.join(NOTE_KINDS)}")
        row = self.state.insert_note(
            p, pat=pat, note_type_id=type_row["id"], text=text, occurred=occurred, prov=prov,
            kind=kind, target=type_row["target"], writeback_id=key, idem_key=key, body_hash=digest,
        )  # fmt: skip
        return web.json_response({"id": str(row["id"])}, status=201)

    async def post_document(self, request: web.Request) -> web.Response:
        """POST /documents (idempotent by Idempotency-Key)."""
        p = request[PRACTICE]
        key, digest, body, replay = await self._write_prelude(request, "documents")
        if replay is not None:
            return replay
        pat, type_row, prov, occurred = self._check_common(
            p, body, catalog.CAT_DOCUMENTS, "documentTypeId"
        )
        filename = _text(body, "filename")
        content_type = _text(body, "contentType")
        try:
            size = len(base64.b64decode(_text(body, "contentBase64"), validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "contentBase64: not valid base64") from None
        row = self.state.insert_document(
            p, pat=pat, category_id=type_row["id"], prov=prov, filename=filename,
            content_type=content_type, size=size, occurred=occurred, writeback_id=key,
            idem_key=key, body_hash=digest,
        )  # fmt: skip
        return web.json_response({"id": str(row["id"])}, status=201)


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name}: a non-empty string is required")
    return value
