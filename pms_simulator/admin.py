"""Admin endpoints under `/_admin`: the `Simulator` test API over HTTP, for a separate process.

No authentication: the simulator is a development tool listening on loopback. JSON in and out;
errors are `{"error": {"code", "message"}}` like the bridge's.

    GET  /_admin/practices                      [{practiceId, pms, credentials}]
    POST /_admin/practices                      {practiceId, pms} -> {practiceId, pms, baseUrl, credentials}
    POST /_admin/advance                        {minutes} -> {now, events}
    PUT  /_admin/practices/{id}/faults          FaultConfig fields (snake or camel case)
    POST /_admin/practices/{id}/drift           {op, name?, newName?, providerId?}
    GET  /_admin/practices/{id}/requests|notes|documents
    GET  /_admin/practices/{id}/changes?kind=appointments|appointmentStatus|patients
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pms_simulator.errors import DriftError, UnknownPracticeError

if TYPE_CHECKING:
    from pms_simulator.server import Simulator

DRIFT_OPS = (
    "renameNoteType", "hideNoteType", "renameDocumentCategory", "hideDocumentCategory",
    "deleteDocumentCategory", "inactivateProvider",
)  # fmt: skip


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except UnknownPracticeError as exc:
        return _error(404, "not_found", str(exc))
    except DriftError as exc:
        return _error(404, "not_found", str(exc))
    except (ValueError, TypeError, KeyError) as exc:
        return _error(400, "invalid_request", str(exc))
    except web.HTTPException as exc:
        return _error(
            exc.status, "not_found" if exc.status == 404 else "invalid_request", exc.reason
        )


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError:
        raise ValueError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def build_app(sim: Simulator) -> web.Application:
    """The `/_admin` sub-application."""
    app = web.Application(middlewares=[_errors])

    async def list_practices(request: web.Request) -> web.Response:
        """GET /_admin/practices"""
        return web.json_response([
            {"practiceId": pid, "pms": pms, "credentials": sim.credentials(pid)}
            for pid, pms in sim.practices()
        ])  # fmt: skip

    async def add_practice(request: web.Request) -> web.Response:
        """POST /_admin/practices"""
        body = await _body(request)
        pid, pms = body.get("practiceId"), body.get("pms")
        if not isinstance(pid, str) or not isinstance(pms, str):
            raise ValueError(
                "practiceId and pms (OpenDental|Eaglesoft|Dentrix) are required strings"
            )
        creds = sim.add_practice(pid, pms)
        return web.json_response(
            {"practiceId": pid, "pms": pms, "baseUrl": sim.base_url(pms), "credentials": creds}
        )

    async def advance(request: web.Request) -> web.Response:
        """POST /_admin/advance"""
        body = await _body(request)
        minutes = body.get("minutes", 30)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float):
            raise ValueError("minutes must be a number")
        events = sim.advance(float(minutes))
        return web.json_response({"now": sim.now.isoformat(), "events": events})

    async def faults(request: web.Request) -> web.Response:
        """PUT /_admin/practices/{id}/faults"""
        from pms_simulator.faults import FaultConfig

        pid = request.match_info["pid"]
        config = FaultConfig.from_json(await _body(request))
        sim.set_faults(pid, **dataclasses.asdict(config))
        return web.json_response(dataclasses.asdict(config))

    async def drift(request: web.Request) -> web.Response:
        """POST /_admin/practices/{id}/drift"""
        pid = request.match_info["pid"]
        body = await _body(request)
        op = body.get("op")
        name, new_name = body.get("name"), body.get("newName")
        if op == "renameNoteType":
            sim.rename_note_type(pid, _req(name, "name"), _req(new_name, "newName"))
        elif op == "hideNoteType":
            sim.hide_note_type(pid, _req(name, "name"))
        elif op == "renameDocumentCategory":
            sim.rename_document_category(pid, _req(name, "name"), _req(new_name, "newName"))
        elif op == "hideDocumentCategory":
            sim.hide_document_category(pid, _req(name, "name"))
        elif op == "deleteDocumentCategory":
            sim.delete_document_category(pid, _req(name, "name"))
        elif op == "inactivateProvider":
            sim.inactivate_provider(pid, _req(body.get("providerId"), "providerId"))
        else:
            raise ValueError(f"op {op!r} is not one of {', '.join(DRIFT_OPS)}")
        return web.json_response({"ok": True})

    async def requests_(request: web.Request) -> web.Response:
        """GET /_admin/practices/{id}/requests"""
        records = sim.requests(request.match_info["pid"])
        return web.json_response([dataclasses.asdict(r) for r in records])

    async def notes(request: web.Request) -> web.Response:
        """GET /_admin/practices/{id}/notes"""
        return web.json_response(sim.notes(request.match_info["pid"]))

    async def documents(request: web.Request) -> web.Response:
        """GET /_admin/practices/{id}/documents"""
        return web.json_response(sim.documents(request.match_info["pid"]))

    async def changes(request: web.Request) -> web.Response:
        """GET /_admin/practices/{id}/changes?kind="""
        kind = request.query.get("kind", "")
        return web.json_response(sim.changes(request.match_info["pid"], kind))

    app.router.add_get("/practices", list_practices)
    app.router.add_post("/practices", add_practice)
    app.router.add_post("/advance", advance)
    app.router.add_put("/practices/{pid}/faults", faults)
    app.router.add_post("/practices/{pid}/drift", drift)
    app.router.add_get("/practices/{pid}/requests", requests_)
    app.router.add_get("/practices/{pid}/notes", notes)
    app.router.add_get("/practices/{pid}/documents", documents)
    app.router.add_get("/practices/{pid}/changes", changes)
    return app


def _req(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is required (a non-empty string)")
    return value
