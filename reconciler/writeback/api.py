"""The writeback HTTP API (aiohttp): intake, lookup, the failed list, and retry.

    POST /v1/practices/{practiceId}/writebacks   202 {id, status: pending|skipped, reason?, message?}
                                                 200 the stored record, for a replayed callerId
    GET  /v1/writebacks/{id}                     200 the record
    GET  /v1/writebacks?status=failed&practiceId=&limit=&after=   200 {items, next}
    POST /v1/writebacks/{id}/retry               200 the record, back to pending (409 if not failed)
    POST /v1/writebacks/retry?practiceId=        200 {retried: [ids]}: every failed one
    GET  /metrics, GET /healthz                  no token needed

Every /v1 route needs `Authorization: Bearer <token>` (compared in constant time). Errors are JSON
`{"error": {"code", "message", "field"?}}`: 400 not JSON / a bad value, 401 token, 404 unknown
practice or id, 409 callerId reused with a different body, 413 body over the limit, 415 not
`application/json`, 422 the body does not match the request schema, 503 the queue could not
store it (retry with the same callerId). A refused request changes nothing.

The intake stores the request (group commit, fsync) BEFORE answering, so a 202 survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reconciler.writeback import store as ops
from reconciler.writeback.decide import Skip, decide
from reconciler.writeback.delivery import Drainer
from reconciler.writeback.errors import StoreError
from reconciler.writeback.metrics import WritebackMetrics
from reconciler.writeback.model import (
    DEFAULT_MAX_BODY_BYTES,
    RequestError,
    Status,
    dumps,
    is_safe_path_id,
    parse_request,
    record_json,
)
from reconciler.writeback.store import QueueStore
from reconciler.writeback.target import PracticeDirectory

log = logging.getLogger(__name__)
LAG_SAMPLE_SECONDS = 0.005  # how often the loop's lag is sampled while requests arrive
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """A JSON error answer."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    headers = {"WWW-Authenticate": 'Bearer realm="pmsctl-writeback"'} if status == 401 else None
    return web.Response(
        status=status, text=dumps({"error": body}), content_type="application/json", headers=headers
    )


def unread_body_error(
    status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    """An error answered before the body was read: close the connection rather than drain it."""
    response = error(status, code, message, field)
    response.force_close()
    return response


def ok(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=dumps(body), content_type="application/json", headers=headers
    )


@dataclass
class WritebackApi:
    """The handlers, over the store, the drainer and the practice directory."""

    store: QueueStore
    drainer: Drainer
    directory: PracticeDirectory
    token: str
    metrics: WritebackMetrics
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    _heartbeat: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def app(self) -> web.Application:
        """The aiohttp application (body limit = `max_body_bytes`)."""
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[self._errors])
        app.router.add_post("/v1/practices/{practiceId}/writebacks", self._auth(self.post))
        app.router.add_get("/v1/writebacks", self._auth(self.list))
        app.router.add_post("/v1/writebacks/retry", self._auth(self.retry_all))
        app.router.add_get("/v1/writebacks/{id}", self._auth(self.get))
        app.router.add_post("/v1/writebacks/{id}/retry", self._auth(self.retry))
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.on_cleanup.append(self._stop_heartbeat)
        return app

    async def _stop_heartbeat(self, app: web.Application) -> None:
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None and not beat.done():
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except web.HTTPException as exc:  # aiohttp's own 404/405: answer in our JSON shape
            if exc.status >= 400:
                return error(exc.status, "not_found" if exc.status == 404 else "bad_request",
                             f"{request.method} {request.path}: {exc.reason}")  # fmt: skip
            raise

    def _too_large(self) -> web.Response:
        return unread_body_error(
            413,
            "too_large",
            f"the request body is over the {self.max_body_bytes} byte limit "
            "(a document's contentBase64 counts 4/3 of the file size)",
        )

    def _auth(self, handler: Handler) -> Handler:
        expected = f"Bearer {self.token}".encode()

        async def check(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return unread_body_error(
                    401, "unauthorized",
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                )  # fmt: skip
            return await handler(request)

        return check

    # --- intake ---

    async def post(self, request: web.Request) -> web.Response:
        """Take one writeback request: validate, decide, store, then answer."""
        started = time.perf_counter()
        practice_id = request.match_info["practiceId"]
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()
        if request.content_type != "application/json":
            return unread_body_error(
                415, "unsupported_media_type",
                f"Content-Type is {request.content_type or 'missing'}; send application/json",
            )  # fmt: skip
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, "invalid_json", f"the body is not JSON: {exc}")
        try:
            req = parse_request(practice_id, body)
        except RequestError as exc:
            return error(exc.status, "invalid_request", str(exc), exc.field or None)
        target = self.directory.target(practice_id)
        if target is None:
            return error(
                404, "practice_unknown",
                f"no practice has practiceId {practice_id!r} (spec.practiceId of a "
                "PracticeWriteback)", "practiceId",
            )  # fmt: skip
        decision = decide(req, target)
        t = ops.now()
        if isinstance(decision, Skip):
            status = Status.SKIPPED
            insert = ops.Insert(req, status, t, reason=decision.reason.value,
                                message=decision.message)  # fmt: skip
        else:
            status = Status.PENDING
            insert = ops.Insert(req, status, t, target_type_id=decision.type_id,
                                provider_id=decision.provider_id)  # fmt: skip
        try:
            # An Insert, not a lambda: the writer stores a group commit's inserts in one statement.
            record, created = await self.store.run(insert)
        except StoreError as exc:  # not stored, so not accepted: the caller retries
            log.error("writeback intake for %s: %s", practice_id, exc)
            return error(503, "queue_unavailable", "the writeback queue could not store the "
                         "request; retry with the same callerId")  # fmt: skip
        labels = (req.kind.value, req.type)
        if not created:
            if record.fingerprint != req.fingerprint():
                return error(
                    409, "caller_id_reused",
                    f"callerId {req.caller_id!r} was already used for a different writeback "
                    f"({record.id}); use a new callerId for a new writeback", "callerId",
                )  # fmt: skip
            self.metrics.writebacks.labels(*labels, "replayed").inc()
            return ok(200, record_json(record), {"Location": f"/v1/writebacks/{record.id}"})
        if status is Status.PENDING:
            self.drainer.notify_threadsafe(practice_id)
            self.metrics.queue_depth.inc()
            self.metrics.writebacks.labels(*labels, "accepted").inc()
        else:
            self.metrics.writebacks.labels(*labels, "skipped").inc()
        answer: dict[str, Any] = {"id": record.id, "status": record.status.value}
        if record.reason:
            answer["reason"] = record.reason
            answer["message"] = record.message
        self.metrics.ack_seconds.observe(time.perf_counter() - started)
        self._paced()
        return ok(202, answer, {"Location": f"/v1/writebacks/{record.id}"})

    def _paced(self) -> None:
        """Tell the drainer's pacer that requests are arriving, and while they are, sample
        how late this loop runs a timer (PMS writes slow down while it is late)."""
        self.drainer.pacer.ack()
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        pacer = self.drainer.pacer
        while pacer.busy:
            due = loop.time() + LAG_SAMPLE_SECONDS
            await asyncio.sleep(LAG_SAMPLE_SECONDS)
            pacer.lag(max(0.0, loop.time() - due))

    # --- lookup and retry ---

    async def get(self, request: web.Request) -> web.Response:
        """One record by id."""
        wid = request.match_info["id"]
        record = self.store.read(lambda c: ops.get(c, wid))
        if record is None:
            return self._unknown(wid)
        return ok(200, record_json(record))

    async def list(self, request: web.Request) -> web.Response:
        """Records filtered by `status` (comma-separated) and `practiceId`, in arrival order."""
        q = request.query
        statuses = [s for s in q.get("status", "").split(",") if s]
        known = [s.value for s in Status]
        for s in statuses:
            if s not in known:
                return error(400, "invalid_query", f"status: {s!r} is not one of "
                             f"{', '.join(known)}", "status")  # fmt: skip
        try:
            limit = int(q.get("limit", "500"))
            after = int(q.get("after", "0"))
            if not 1 <= limit <= 5000 or after < 0:
                raise ValueError
        except ValueError:
            return error(400, "invalid_query", "limit must be 1..5000 and after >= 0", "limit")
        practice_id = q.get("practiceId")
        records = self.store.read(
            lambda c: ops.list_records(
                c, statuses=statuses, practice_id=practice_id, limit=limit, after_seq=after
            )
        )
        nxt = records[-1].seq if len(records) == limit else None
        return ok(200, {"items": [record_json(r) for r in records], "next": nxt})

    async def retry(self, request: web.Request) -> web.Response:
        """Put one failed record back in its practice's queue."""
        wid = request.match_info["id"]
        t = ops.now()
        record = await self.store.run(lambda c: ops.retry(c, wid, now=t))
        if record is None:
            current = self.store.read(lambda c: ops.get(c, wid))
            if current is None:
                return self._unknown(wid)
            return error(
                409, "not_failed",
                f"writeback {wid} is {current.status.value}; only failed writebacks are retried",
            )  # fmt: skip
        self.metrics.queue_depth.inc()
        self.drainer.notify_threadsafe(record.practice_id, now=True)
        return ok(200, record_json(record))

    async def retry_all(self, request: web.Request) -> web.Response:
        """Put every failed record (of `practiceId`, or all) back in the queue."""
        practice_id = request.query.get("practiceId")
        t = ops.now()
        ids = await self.store.run(lambda c: ops.retry_all(c, practice_id=practice_id, now=t))
        if ids:
            self.metrics.queue_depth.inc(len(ids))
            await self.drainer.sweep_threadsafe()
        return ok(200, {"retried": ids})

    def _unknown(self, wid: str) -> web.Response:
        shown = wid if is_safe_path_id(wid) else "(that id)"
        return error(404, "not_found", f"no writeback has id {shown}", "id")

    # --- unauthenticated ---

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text exposition of the writeback metrics."""
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return ok(200, {"ok": True})
