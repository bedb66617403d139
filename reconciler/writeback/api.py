"""The writeback HTTP API (aiohttp): intake, lookup, the failed list, and retry.

    POST /v1/practices/{practiceId}/writebacks   202 {id, status: pending|skipped, reason?, message?}
                                                 200 the stored record, for a replayed callerId
    GET  /v1/writebacks/{id}                     200 the record
    GET  /v1/writebacks?status=failed&practiceId=&limit=&after=   200 {items, next}
    POST /v1/writebacks/{id}/retry               200 the record, back to pending (409 if not failed
                                                 or skipped for what the PMS answered)
    POST /v1/writebacks/retry?practiceId=        200 {retried: [ids]}: every failed one
    GET  /metrics, GET /healthz, GET /openapi.json   no token needed (the last: this API's
                                                     OpenAPI document, docs/writeback.openapi.yaml)
    GET  /readyz                                 200 once the practices are loaded; 503 +
                                                 Retry-After until then (the readiness probe)

Every /v1 route needs `Authorization: Bearer <token>` (compared in constant time; a token file
that changes is picked up, and the previous token keeps working for a while: `tokens.py`).
Errors are JSON `{"error": {"code", "message", "field"?}}`: 400 not JSON / a bad value, 401
token, 404 unknown practice or id, 408 the body did not arrive within `body_timeout` of the
headers, 409 callerId reused with a different body, 413 body over the limit, 415 not
`application/json`, 422 the body does not match the request schema (or the patientId cannot
exist in the practice's PMS), 500 a bug (logged), 503 + `Retry-After` (retry with the same
callerId): the queue could not store or read it (the database restarting, the file locked too
long), intake is overloaded (`MAX_IN_FLIGHT` writebacks already wait for their commit), or the
practices are still being loaded at start-up (an unknown practiceId is 404 only once they are:
`target.LoadingDirectory`). A refused request changes nothing. Messages quote at most a few dozen
characters of the request.

Request time is bounded: `header_timeout` for the request line and headers (aiohttp's keep-alive
timer, which trickled bytes do not extend), then `body_timeout` for the body.

The intake stores the request (group commit, fsync) BEFORE answering, so a 202 survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reconciler.writeback import store as ops
from reconciler.writeback.decide import Skip, Wait, decide
from reconciler.writeback.errors import StoreError, WritebackConfigError
from reconciler.writeback.metrics import WritebackMetrics
from reconciler.writeback.model import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_SEQ,
    RETRYABLE_SKIPS,
    RequestError,
    Status,
    dumps,
    is_safe_path_id,
    is_unicode,
    parse_request,
    record_json,
    shown,
)
from reconciler.writeback.openapi import document
from reconciler.writeback.pmsids import patient_id_problem
from reconciler.writeback.store import QueueStore
from reconciler.writeback.target import FetchingDirectory, PracticeDirectory, not_ready
from reconciler.writeback.tokens import TOKEN_FILE_ENV, BearerTokens, token_problem

log = logging.getLogger(__name__)
LAG_SAMPLE_SECONDS = 0.005  # how often the loop's lag is sampled while requests arrive
#: A connection has this long to send a request's headers (from when it opens, or from the
#: previous answer on a kept-alive connection); then it is closed. Also the keep-alive idle limit.
HEADER_TIMEOUT = 10.0
#: A request's body must have arrived this long after its headers, or the answer is 408. The
#: default lets a 10 MiB document through a 2 Mbit/s uplink.
BODY_TIMEOUT = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Error messages are cut to this many characters: an error never grows with the input.
MAX_ERROR_CHARS = 1000
#: Retry-After (seconds) while the practices are being loaded at start-up.
LOADING_RETRY_AFTER = 2
#: At most this many writebacks wait for their commit at once; one more is refused with 503 +
#: Retry-After (`OVERLOAD_RETRY_AFTER`). A group commit takes them all in one go, so a healthy
#: store keeps this count near the arrival rate times one commit's time (a few dozen at
#: 1,000/s); reaching the limit means the store stalls, and queueing more would only grow every
#: caller's wait without bound.
MAX_IN_FLIGHT = 500
#: Retry-After (seconds) when intake is over `MAX_IN_FLIGHT`.
OVERLOAD_RETRY_AFTER = 1
#: Retry-After (seconds) when the queue cannot store (the database is restarting, the file
#: stays locked): the caller sends the same request again, with the same callerId.
STORE_RETRY_AFTER = 1


def error(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A JSON error answer, at most about `MAX_ERROR_CHARS` long whatever the request held."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field[:MAX_ERROR_CHARS]
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="pmsctl-writeback"'}
    # backslashreplace: a lone surrogate echoed from the request must not make the error a 500.
    text = dumps({"error": body}).encode("utf-8", "backslashreplace")
    return web.Response(status=status, body=text, content_type="application/json", headers=headers)


def unread_body_error(
    status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    """An error answered before the body was read: close the connection rather than drain it."""
    response = error(status, code, message, field)
    response.force_close()
    return response


def loading_error(why: str) -> web.Response:
    """503 + Retry-After: the practices are still being loaded; the client tries again."""
    return error(
        503, "practices_loading", f"{why}; try again in a moment",
        headers={"Retry-After": str(LOADING_RETRY_AFTER)},
    )  # fmt: skip


def store_error() -> web.Response:
    """503 + Retry-After: the queue could not store or read; nothing was accepted."""
    return error(
        503, "queue_unavailable", "the writeback queue is unavailable (nothing was accepted); "
        "retry with the same callerId", headers={"Retry-After": str(STORE_RETRY_AFTER)},
    )  # fmt: skip


def ok(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=dumps(body), content_type="application/json", headers=headers
    )


class Pacing(Protocol):
    """What the API tells the drainer's pacer (`pacing.AckPacer`): requests arrive, and how late
    the API's loop runs."""

    @property
    def busy(self) -> bool: ...

    def ack(self) -> None: ...

    def lag(self, seconds: float) -> None: ...


class DrainerLink(Protocol):
    """The drainer as the API reaches it: the `Drainer` itself in its process, or the intake
    process's link to it (`intake.RemoteDrainer`)."""

    @property
    def pacer(self) -> Pacing: ...

    def notify_threadsafe(self, practice_id: str, *, now: bool = False) -> None: ...

    async def sweep_threadsafe(self) -> None: ...


@dataclass
class WritebackApi:
    """The handlers, over the store, the drainer and the practice directory."""

    store: QueueStore
    drainer: DrainerLink
    directory: PracticeDirectory
    token: str
    metrics: WritebackMetrics
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    #: The most writebacks waiting for their commit at once (`MAX_IN_FLIGHT`).
    max_in_flight: int = MAX_IN_FLIGHT
    #: Writebacks waiting for their commit now (read by the tests and the benchmark).
    in_flight: int = field(default=0, init=False)
    #: `GET /metrics`'s body when the metrics live in another process (the intake process asks
    #: the engine's); None: `metrics.registry`'s.
    exposition: Callable[[], Awaitable[bytes]] | None = None
    _heartbeat: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _openapi: bytes | None = field(default=None, init=False, repr=False)

    #: The file the token came from, watched for a rotated one (`BearerTokens`). None: the file
    #: named by $PMSCTL_WRITEBACK_TOKEN_FILE when it holds `token` (a mounted Secret key).
    token_file: str | None = None
    tokens: BearerTokens = field(init=False, repr=False)

    def __post_init__(self) -> None:
        problem = token_problem(self.token)
        if problem is not None:
            raise WritebackConfigError(f"the writeback token {problem}")
        path = self.token_file
        if path is None and (named := os.environ.get(TOKEN_FILE_ENV)):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                if Path(named).read_text(encoding="utf-8").strip() == self.token:
                    path = named
        self.tokens = BearerTokens(self.token, path=path)

    def app(self) -> web.Application:
        """The aiohttp application (body limit = `max_body_bytes`)."""
        app = web.Application(
            client_max_size=self.max_body_bytes,
            middlewares=[self._errors],
            # keepalive_timeout: aiohttp closes a connection that has not sent a whole request
            # by then (slowly trickled header bytes do not extend it). lingering_time: after an
            # early answer (401, 408, 413) to a client still sending, read and drop the rest for
            # at most 1 s, not aiohttp's 10 s. Set here, whoever runs the app cannot loosen them.
            handler_args={"keepalive_timeout": self.header_timeout, "lingering_time": 1.0},
        )
        app.router.add_post("/v1/practices/{practiceId}/writebacks", self._auth(self.post))
        app.router.add_get("/v1/writebacks", self._auth(self.list))
        app.router.add_post("/v1/writebacks/retry", self._auth(self.retry_all))
        app.router.add_get("/v1/writebacks/{id}", self._auth(self.get))
        app.router.add_post("/v1/writebacks/{id}/retry", self._auth(self.retry))
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/openapi.json", self.openapi)
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
                             f"{request.method} {shown(request.path)}: {exc.reason}")  # fmt: skip
            raise
        except ConnectionError:  # the client went away: nothing to answer, nothing to debug
            log.info("writeback API: %s %s: the client closed the connection", request.method,
                     shown(request.path))  # fmt: skip
            return unread_body_error(400, "connection_lost", "the connection was closed")
        except StoreError as exc:  # the database is away (restart, failover): try again soon
            log.error("writeback API: %s %s: %s", request.method, shown(request.path), exc)
            return store_error()
        except Exception:
            # A bug, not the client's fault: log it once, and answer JSON without the details.
            log.exception("writeback API: %s %s failed", request.method, shown(request.path))
            return error(500, "internal_error", "the writeback service failed on this request; "
                         "it is logged (nothing was accepted unless a 202 said so)")  # fmt: skip

    def _too_large(self) -> web.Response:
        return unread_body_error(
            413,
            "too_large",
            f"the request body is over the {self.max_body_bytes} byte limit "
            "(a document's contentBase64 counts 4/3 of the file size)",
        )

    def _auth(self, handler: Handler) -> Handler:
        tokens = self.tokens

        async def check(request: web.Request) -> web.StreamResponse:
            # surrogateescape: aiohttp keeps a header's undecodable bytes as surrogates; they
            # compare as the bytes they were (and never match), instead of failing to encode.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not tokens.accepts(given):
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
        if self.in_flight >= self.max_in_flight:
            # Answered before reading the body: refusing must stay cheap while overloaded.
            response = unread_body_error(
                503, "overloaded",
                f"{self.in_flight} writebacks are waiting for the queue; nothing was accepted, "
                "retry with the same callerId",
            )  # fmt: skip
            response.headers["Retry-After"] = str(OVERLOAD_RETRY_AFTER)
            return response
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()
        if request.content_type != "application/json":
            return unread_body_error(
                415, "unsupported_media_type",
                f"Content-Type is {request.content_type or 'missing'}; send application/json",
            )  # fmt: skip
        try:
            async with asyncio.timeout(self.body_timeout):
                raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except TimeoutError:
            return unread_body_error(
                408, "request_timeout",
                f"the body did not arrive within {self.body_timeout:g} s of the headers; send "
                "the request again (with the same callerId)",
            )  # fmt: skip
        except ConnectionError:  # the client went away mid-body: nobody to answer, no traceback
            log.info("writeback intake for %s: the client closed the connection mid-body",
                     shown(practice_id))  # fmt: skip
            return unread_body_error(400, "connection_lost", "the body was cut off")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, "invalid_json", f"the body is not JSON: {exc}")
        except RecursionError:
            return error(400, "invalid_json", "the body is not JSON this service takes: it is "
                         "nested too deeply (a writeback is one flat object)")  # fmt: skip
        try:
            req = parse_request(practice_id, body)
        except RequestError as exc:
            return error(exc.status, "invalid_request", str(exc), exc.field or None)
        directory = self.directory
        if isinstance(directory, FetchingDirectory):
            target = await directory.fetch(practice_id)
        else:
            target = directory.target(practice_id)
        if target is None and (why := not_ready(self.directory)) is not None:
            return loading_error(why)  # it may be one of the practices still being loaded
        if target is None:
            return error(
                404, "practice_unknown",
                f"no practice has practiceId {shown(practice_id)} (spec.practiceId of a "
                "PracticeWriteback)", "practiceId",
            )  # fmt: skip
        problem = patient_id_problem(target.spec.pms.type, req.patient_id)
        if problem is not None:  # it could never be written: refuse it rather than queue it
            return error(422, "invalid_request", f"patientId: {shown(req.patient_id)} {problem}",
                         "patientId")  # fmt: skip
        decision = decide(req, target)
        t = ops.now()
        if isinstance(decision, Skip):
            status = Status.SKIPPED
            insert = ops.Insert(req, status, t, reason=decision.reason.value,
                                message=decision.message)  # fmt: skip
        elif isinstance(decision, Wait):  # stored undecided: the drainer decides it later
            status = Status.PENDING
            insert = ops.Insert(req, status, t, message=decision.message)
        else:
            status = Status.PENDING
            insert = ops.Insert(req, status, t, target_type_id=decision.type_id,
                                provider_id=decision.provider_id)  # fmt: skip
        self.in_flight += 1
        try:
            # An Insert, not a lambda: the writer stores a group commit's inserts in one statement.
            record, created = await self.store.run(insert)
        except StoreError as exc:  # not stored, so not accepted: the caller retries
            log.error("writeback intake for %s: %s", practice_id, exc)
            return store_error()
        finally:
            self.in_flight -= 1
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
        if not is_safe_path_id(wid):  # not an id this service makes: nothing to look up
            return self._unknown(wid)
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
            if not 1 <= limit <= 5000 or not 0 <= after <= MAX_SEQ:
                raise ValueError
        except ValueError:
            return error(400, "invalid_query", f"limit must be 1..5000 and after 0..{MAX_SEQ} "
                         "(the `next` of the previous page)", "limit")  # fmt: skip
        practice_id = q.get("practiceId")
        if practice_id is not None and not is_unicode(practice_id):
            return error(400, "invalid_query", "practiceId is not valid Unicode", "practiceId")
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
        if not is_safe_path_id(wid):
            return self._unknown(wid)
        t = ops.now()
        record = await self.store.run(lambda c: ops.retry(c, wid, now=t))
        if record is None:
            current = self.store.read(lambda c: ops.get(c, wid))
            if current is None:
                return self._unknown(wid)
            return error(
                409, "not_failed",
                f"writeback {wid} is {current.status.value}"
                + (f" ({current.reason})" if current.reason else "")
                + "; only failed writebacks, and ones skipped for what the PMS answered "
                f"({', '.join(RETRYABLE_SKIPS)}), are retried",
            )  # fmt: skip
        self.metrics.queue_depth.inc()
        self.drainer.notify_threadsafe(record.practice_id, now=True)
        return ok(200, record_json(record))

    async def retry_all(self, request: web.Request) -> web.Response:
        """Put every failed record (of `practiceId`, or all) back in the queue."""
        practice_id = request.query.get("practiceId")
        if practice_id is not None and not is_unicode(practice_id):
            return error(400, "invalid_query", "practiceId is not valid Unicode", "practiceId")
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
        if self.exposition is not None:
            body = await self.exposition()
        else:
            body = generate_latest(self.metrics.registry)
        return web.Response(
            body=body,
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process answers (also while loading: a restart would not help)."""
        return ok(200, {"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 once the practices are loaded, else 503 + Retry-After naming why."""
        directory = self.directory
        if isinstance(directory, FetchingDirectory):
            why = await directory.fetch_not_ready()
        else:
            why = not_ready(directory)
        if why is not None:
            return loading_error(why)
        return ok(200, {"ready": True})

    async def openapi(self, request: web.Request) -> web.Response:
        """This API's OpenAPI 3.1 document (`reconciler.writeback.openapi`)."""
        if self._openapi is None:
            self._openapi = dumps(document()).encode()
        return web.Response(body=self._openapi, content_type="application/json")
