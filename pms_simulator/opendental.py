"""The Open Dental API subset the drivers use, served under `/api/v1` (see docs/simulator.md).

Speaks like Open Dental's Remote API (docs/vendor-facts.md): `Authorization: ODFHIR {dev}/{customer}`,
PascalCase fields, `"true"`/`"false"` strings, `yyyy-MM-dd HH:mm:ss` office-local times,
`serverDateTime` on every item, `Limit`/`Offset` paging capped at 100 rows, `DateTStamp` filters
(rows changed at or after the stamp), 400/404 with a text/plain reason and 401 for bad keys.
Query parameter names are matched case-insensitively.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pms_simulator import catalog, clock
from pms_simulator.errors import ApiError
from pms_simulator.gateway import PRACTICE, gateway
from pms_simulator.state import Practice

if TYPE_CHECKING:
    from pms_simulator.server import Simulator

PAGE_CAP = 100
MODES = ("None", "Email", "Mail", "Phone", "In Person", "Text", "Email and Text", "Phone and Text")
SENT_OR_RECEIVED = ("Neither", "Sent", "Received")
IMG_TYPES = ("Document", "Radiograph", "Photo", "File", "Attachment")


def _tf(value: Any) -> str:
    return "true" if value else "false"


def render_error(err: ApiError) -> web.Response:
    """Open Dental's error shape: the status and a plain-text reason."""
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return web.Response(status=err.status, text=err.message, headers=headers)


def build_app(sim: Simulator) -> web.Application:
    """The `/api/v1` sub-application."""

    def authenticate(request: web.Request) -> Practice:
        """The practice whose ODFHIR key pair this is; 401 otherwise."""
        header = request.headers.get("Authorization", "")
        scheme, _, keys = header.partition(" ")
        dev, _, customer = keys.strip().partition("/")
        if scheme != "ODFHIR" or not dev or not customer:
            raise ApiError(
                401,
                "Authorization header is missing or not in the form 'ODFHIR {DeveloperKey}/{CustomerKey}'.",
            )
        pid = sim.practice_for_od_keys(dev, customer)
        if pid is None:
            raise ApiError(401, "Invalid DeveloperKey or CustomerKey.")
        return sim.state.practice(pid)

    api = _OpenDental(sim)
    app = web.Application(middlewares=[gateway(sim, authenticate, render_error)])
    app.router.add_get("/providers", api.providers)
    app.router.add_get("/definitions", api.definitions)
    app.router.add_get("/appointments", api.appointments)
    app.router.add_get("/appointments/{num}", api.appointment)
    app.router.add_get("/patients/Simple", api.patients)
    app.router.add_get("/patients/{num}", api.patient)
    app.router.add_get("/commlogs", api.commlogs)
    app.router.add_post("/commlogs", api.post_commlog)
    app.router.add_get("/documents", api.documents)
    app.router.add_post("/documents/Upload", api.upload_document)
    return app


class _Query:
    """Case-insensitive query parameters with Open Dental's validation messages."""

    def __init__(self, request: web.Request) -> None:
        self._q = {k.lower(): v for k, v in request.query.items()}

    def text(self, name: str) -> str | None:
        """The parameter's value, None when absent or empty."""
        value = self._q.get(name.lower())
        return value if value not in (None, "") else None

    def number(self, name: str) -> int | None:
        """The parameter as an integer; 400 when it is not one."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise ApiError(400, f"{name} is not a valid number: '{value}'.") from None

    def stamp(self, name: str) -> str | None:
        """The parameter as a `yyyy-MM-dd HH:mm:ss` stamp; 400 when it is not one."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return clock.fmt(clock.parse(value))
        except ValueError:
            raise ApiError(
                400, f"{name} is not in a valid format. Use yyyy-MM-dd HH:mm:ss."
            ) from None

    def flag(self, name: str) -> bool:
        """The parameter as a 'true'/'false' boolean (absent = false)."""
        value = (self.text(name) or "false").lower()
        if value not in ("true", "false"):
            raise ApiError(400, f"{name} must be 'true' or 'false'.")
        return value == "true"

    def page(self) -> tuple[int, int]:
        """(Limit, Offset), Limit capped at the 100-row page cap."""
        limit = self.number("Limit")
        offset = self.number("Offset") or 0
        if (limit is not None and limit < 0) or offset < 0:
            raise ApiError(400, "Limit and Offset must not be negative.")
        return min(PAGE_CAP, limit if limit is not None else PAGE_CAP), offset


def _json(items: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(items), content_type="application/json")


class _OpenDental:
    """The route handlers; each reads the authenticated practice from the request."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.state = sim.state

    def _rows(self, sql: str, params: list[Any], q: _Query) -> list[sqlite3.Row]:
        limit, offset = q.page()
        return self.state.query(sql + " LIMIT ? OFFSET ?", [*params, limit, offset])

    async def providers(self, request: web.Request) -> web.Response:
        """GET /providers[?DateTStamp=]"""
        p = request[PRACTICE]
        q = _Query(request)
        sql = "SELECT * FROM providers WHERE p=?"
        params: list[Any] = [p.id]
        if (since := q.stamp("DateTStamp")) is not None:
            sql, params = sql + " AND stamp>=?", [*params, since]
        now = self.state.now_text
        return _json([
            {"ProvNum": int(r["id"]), "Abbr": r["abbr"], "LName": r["lname"], "FName": r["fname"],
             "Suffix": r["suffix"], "IsHidden": _tf(r["hidden"]), "ProvStatus": r["status"],
             "DateTStamp": r["stamp"], "serverDateTime": now}
            for r in self._rows(sql + " ORDER BY CAST(id AS INTEGER)", params, q)
        ])  # fmt: skip

    async def definitions(self, request: web.Request) -> web.Response:
        """GET /definitions?Category=&includeHidden="""
        p = request[PRACTICE]
        q = _Query(request)
        rows = self.state.definitions(p, q.number("Category"), q.flag("includeHidden"))
        limit, offset = q.page()
        # Definitions carry no serverDateTime: they are settings, not changes to poll.
        return _json([
            {"DefNum": int(r["id"]), "Category": r["category"], "ItemOrder": r["ord"],
             "ItemName": r["name"], "ItemValue": r["item_value"], "isHidden": _tf(r["hidden"])}
            for r in rows[offset : offset + limit]
        ])  # fmt: skip

    def _appointment(self, r: sqlite3.Row, now: str) -> dict[str, Any]:
        # `confirmed` (lowercase: derived) is the name of the `Confirmed` definition right now.
        return {"AptNum": r["id"], "PatNum": r["pat"], "AptStatus": r["status"],
                "AptDateTime": r["start"], "ProvNum": int(r["prov"]), "Confirmed": r["confirmed"],
                "confirmed": r["confirmed_name"] or "",
                "DateTimeArrived": r["arrived"], "DateTimeSeated": r["seated"],
                "DateTimeDismissed": r["dismissed"], "DateTStamp": r["stamp"],
                "serverDateTime": now}  # fmt: skip

    async def appointments(self, request: web.Request) -> web.Response:
        """GET /appointments with DateTStamp, dateStart, dateEnd, AptStatus, PatNum filters."""
        p = request[PRACTICE]
        q = _Query(request)
        sql = f"{_APPOINTMENTS} WHERE a.p=?"
        params: list[Any] = [p.id]
        if (since := q.stamp("DateTStamp")) is not None:
            sql, params = sql + " AND a.stamp>=?", [*params, since]
        if (start := q.stamp("dateStart")) is not None:
            sql, params = sql + " AND a.start>=?", [*params, start]
        if (end := q.stamp("dateEnd")) is not None:
            sql, params = sql + " AND a.start<?", [*params, clock.fmt(clock.parse(end[:10]) + _DAY)]
        if (status := q.text("AptStatus")) is not None:
            sql, params = sql + " AND a.status=?", [*params, status]
        if (pat := q.number("PatNum")) is not None:
            sql, params = sql + " AND a.pat=?", [*params, pat]
        now = self.state.now_text
        order = self.state.order_by(p, "a.id")
        return _json([self._appointment(r, now) for r in self._rows(f"{sql} {order}", params, q)])

    async def appointment(self, request: web.Request) -> web.Response:
        """GET /appointments/{AptNum}"""
        p = request[PRACTICE]
        rows = self.state.query(f"{_APPOINTMENTS} WHERE a.p=? AND a.id=?", (p.id, _num(request)))
        if not rows:
            raise ApiError(404, "Appointment not found.", "not_found")
        return _json(self._appointment(rows[0], self.state.now_text))

    def _patient(self, r: sqlite3.Row, now: str) -> dict[str, Any]:
        return {"PatNum": r["id"], "LName": r["lname"], "FName": r["fname"], "MiddleI": "",
                "Preferred": "", "PatStatus": "Patient", "Gender": "Male" if r["gender"] == "M" else "Female",
                "Birthdate": r["birthdate"], "WirelessPhone": r["phone"], "Email": r["email"],
                "PriProv": int(r["prov"]), "DateTStamp": r["stamp"], "serverDateTime": now}  # fmt: skip

    async def patients(self, request: web.Request) -> web.Response:
        """GET /patients/Simple[?DateTStamp=]"""
        p = request[PRACTICE]
        q = _Query(request)
        sql = "SELECT * FROM patients WHERE p=?"
        params: list[Any] = [p.id]
        if (since := q.stamp("DateTStamp")) is not None:
            sql, params = sql + " AND stamp>=?", [*params, since]
        now = self.state.now_text
        order = self.state.order_by(p, "id")
        return _json([self._patient(r, now) for r in self._rows(f"{sql} {order}", params, q)])

    async def patient(self, request: web.Request) -> web.Response:
        """GET /patients/{PatNum}"""
        p = request[PRACTICE]
        rows = self.state.query("SELECT * FROM patients WHERE p=? AND id=?", (p.id, _num(request)))
        if not rows:
            raise ApiError(404, "Patient not found.", "not_found")
        return _json(self._patient(rows[0], self.state.now_text))

    def _commlog(self, r: sqlite3.Row, type_name: str | None, now: str) -> dict[str, Any]:
        return {"CommlogNum": r["id"], "PatNum": r["pat"], "CommDateTime": r["occurred"],
                "CommType": str(r["note_type_id"]), "commType": type_name or "",
                "Mode_": r["mode"], "SentOrReceived": r["sor"], "Note": r["text"],
                "DateTStamp": r["stamp"], "serverDateTime": now}  # fmt: skip

    async def commlogs(self, request: web.Request) -> web.Response:
        """GET /commlogs?PatNum=&DateTStamp= (one of them required)."""
        p = request[PRACTICE]
        q = _Query(request)
        pat, since = q.number("PatNum"), q.stamp("DateTStamp")
        if pat is None and since is None:
            raise ApiError(400, "PatNum or DateTStamp is required.")
        sql = (
            "SELECT n.*, d.name AS type_name FROM notes n LEFT JOIN defs d ON d.p=n.p "
            "AND d.category=27 AND d.id=n.note_type_id WHERE n.p=?"
        )
        params: list[Any] = [p.id]
        if pat is not None:
            sql, params = sql + " AND n.pat=?", [*params, pat]
        if since is not None:
            sql, params = sql + " AND n.stamp>=?", [*params, since]
        now = self.state.now_text
        rows = self._rows(sql + " ORDER BY n.id", params, q)
        return _json([self._commlog(r, r["type_name"], now) for r in rows])

    async def post_commlog(self, request: web.Request) -> web.Response:
        """POST /commlogs -> 201 with the created commlog."""
        p = request[PRACTICE]
        body = await _body(request)
        pat = self._patient_num(p, body)
        note = body.get("Note")
        if not isinstance(note, str) or not note.strip():
            raise ApiError(400, "Note is required.")
        occurred = _time_field(body, "CommDateTime", self.state.now_text)
        if body.get("CommType") not in (None, "", 0, "0"):
            type_id = str(_int_field(body, "CommType"))
            type_row = self.state.definition(p, catalog.CAT_NOTES, type_id)
            if type_row is None:
                raise ApiError(
                    400, f"CommType is invalid: no commlog type definition with DefNum {type_id}."
                )
        else:
            name = body.get("commType") or "Misc"
            type_rows = self.state.query(
                "SELECT * FROM defs WHERE p=? AND category=27 AND name=?", (p.id, name)
            )
            if not type_rows:
                raise ApiError(400, f"commType is invalid: no commlog type named '{name}'.")
            type_row = type_rows[0]
        mode = _choice(body, "Mode_", MODES, "None")
        sor = _choice(body, "SentOrReceived", SENT_OR_RECEIVED, "Neither")
        row = self.state.insert_note(
            p,
            pat=pat,
            note_type_id=str(type_row["id"]),
            mode=mode,
            sor=sor,
            text=note,
            occurred=occurred,
        )
        return _json(self._commlog(row, type_row["name"], self.state.now_text), status=201)

    def _document(self, r: sqlite3.Row, now: str) -> dict[str, Any]:
        return {"DocNum": r["id"], "PatNum": r["pat"], "Description": r["description"],
                "DateCreated": r["occurred"], "DocCategory": int(r["category_id"]),
                "ImgType": r["img_type"], "ProvNum": int(r["prov"] or 0), "FileName": r["filename"],
                "DateTStamp": r["stamp"], "serverDateTime": now}  # fmt: skip

    async def documents(self, request: web.Request) -> web.Response:
        """GET /documents?PatNum=[&DocCategory=]"""
        p = request[PRACTICE]
        q = _Query(request)
        pat = q.number("PatNum")
        if pat is None:
            raise ApiError(400, "PatNum is required.")
        sql = "SELECT * FROM documents WHERE p=? AND pat=?"
        params: list[Any] = [p.id, pat]
        if (cat := q.number("DocCategory")) is not None:
            sql, params = sql + " AND category_id=?", [*params, str(cat)]
        now = self.state.now_text
        return _json([self._document(r, now) for r in self._rows(sql + " ORDER BY id", params, q)])

    async def upload_document(self, request: web.Request) -> web.Response:
        """POST /documents/Upload -> 201 with the created document."""
        p = request[PRACTICE]
        body = await _body(request)
        pat = self._patient_num(p, body)
        raw = body.get("rawBase64")
        if not isinstance(raw, str) or not raw:
            raise ApiError(400, "rawBase64 is required.")
        try:
            size = len(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(400, "rawBase64 is not valid base64.") from None
        ext = body.get("extension")
        if not isinstance(ext, str) or not ext.strip("."):
            raise ApiError(400, "extension is required, for example '.pdf'.")
        cat = str(_int_field(body, "DocCategory"))
        if self.state.definition(p, catalog.CAT_DOCUMENTS, cat) is None:
            raise ApiError(
                400, f"DocCategory is invalid: no image category definition with DefNum {cat}."
            )
        prov = body.get("ProvNum")
        prov_id = str(_int_field(body, "ProvNum")) if prov not in (None, "", 0, "0") else None
        if prov_id is not None and not self.state.exists("providers", p, prov_id):
            raise ApiError(400, f"ProvNum is invalid: no provider {prov_id}.")
        img = _choice(body, "ImgType", IMG_TYPES, "Document")
        row = self.state.insert_document(
            p, pat=pat, category_id=cat, prov=prov_id, filename=f"upload{'.' + ext.strip('.')}",
            description=str(body.get("Description") or ""), img_type=img,
            content_type=None, size=size, occurred=_time_field(body, "DateCreated", self.state.now_text),
        )  # fmt: skip
        return _json(self._document(row, self.state.now_text), status=201)

    def _patient_num(self, p: Practice, body: dict[str, Any]) -> int:
        if body.get("PatNum") in (None, ""):
            raise ApiError(400, "PatNum is required.")
        pat = _int_field(body, "PatNum")
        if not self.state.exists("patients", p, pat):
            raise ApiError(404, f"Patient not found: PatNum {pat}.", "not_found")
        return pat


_DAY = timedelta(days=1)
_APPOINTMENTS = (
    "SELECT a.*, d.name AS confirmed_name FROM appointments a LEFT JOIN defs d ON d.p=a.p "
    f"AND d.category={catalog.CAT_CONFIRMED} AND d.id=CAST(a.confirmed AS TEXT)"
)


def _num(request: web.Request) -> int:
    try:
        return int(request.match_info["num"])
    except ValueError:
        raise ApiError(400, f"'{request.match_info['num']}' is not a valid number.") from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} is not a valid number: {value!r}.") from None


def _time_field(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name)
    if value in (None, ""):
        return default
    try:
        return clock.fmt(clock.parse(str(value)))
    except ValueError:
        raise ApiError(400, f"{name} is not in a valid format. Use yyyy-MM-dd HH:mm:ss.") from None


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(name)
    if value in (None, ""):
        return default
    if value not in allowed:
        raise ApiError(400, f"{name} is invalid: {value!r}. Valid values: {', '.join(allowed)}.")
    return str(value)
