"""The aiohttp middleware both simulated APIs share: authenticate, gate, log, render errors.

Order per request, as a PMS server would: the credential picks the practice (401 if none), then
the practice's faults decide (outage 503, rate limit 429, injected 5xx, added latency; a write
the handler stored may still be answered with a 5xx: `lost_write_rate`), then an
adversary, when one is set (`pms_simulator.adversary`), may change rows, throttle the read or cut
its body off half way, then the handler runs. Every request that named a practice is logged with its final status. The protocol
modules pass their own `authenticate` and error `render` (Open Dental: text/plain; bridge: JSON).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from pms_simulator.adversary import ReadVerdict
from pms_simulator.errors import ApiError
from pms_simulator.faults import Gate
from pms_simulator.state import Practice

if TYPE_CHECKING:
    from pms_simulator.server import Simulator

Authenticate = Callable[[web.Request], Practice]
Render = Callable[[ApiError], web.Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where the gateway leaves the authenticated practice for the handlers.
PRACTICE = web.RequestKey("practice", Practice)


def gateway(
    sim: Simulator, authenticate: Authenticate, render: Render
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware running `authenticate`, the practice's gate, the handler and the request log."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, gate, run the handler, log the request."""
        try:
            practice = authenticate(request)
        except ApiError as err:
            return render(err)
        request[PRACTICE] = practice
        is_write = request.method not in ("GET", "HEAD")
        gate = sim.gate(practice.id)
        verdict = gate.check(is_write)
        response: web.StreamResponse
        if verdict.status is not None:
            codes = {401: "unauthorized", 429: "rate_limited", 503: "unavailable"}
            code = codes.get(verdict.status, "internal")
            response = render(ApiError(verdict.status, verdict.reason, code, verdict.retry_after))
        else:
            if verdict.delay:
                await asyncio.sleep(verdict.delay)
            hostile = ReadVerdict()
            adversary = sim.state.adversary
            if adversary is not None and request.method == "GET":
                hostile = adversary.before_read(practice, request.path)
            try:
                if hostile.throttle:
                    raise ApiError(429, "Too many requests.", "rate_limited", hostile.retry_after)
                response = await handler(request)
            except ApiError as err:
                response = render(err)
            except web.HTTPException as exc:
                code = "not_found" if exc.status == 404 else "invalid_request"
                response = render(ApiError(exc.status, exc.reason, code))
            if hostile.drop and isinstance(response, web.Response):
                response = await _cut_off(request, response)
            elif is_write and response.status < 300:
                response = await _after_write(gate, response, render)
        sim.log_request(
            practice.id,
            request.method,
            request.path,
            dict(request.query),
            response.status,
            time.time(),
            request.headers.get("User-Agent", ""),
        )
        return response

    return middleware


async def _after_write(
    gate: Gate, response: web.StreamResponse, render: Render
) -> web.StreamResponse:
    """A stored write's answer: held back `write_answer_delay_ms`, then replaced by the error
    status at `lost_write_rate` (the note stays stored)."""
    config = gate.config
    if config.write_answer_delay_ms:
        await asyncio.sleep(config.write_answer_delay_ms / 1000.0)
    if not gate.lose_write():
        return response
    status = config.status
    code = "unavailable" if status == 503 else "internal"
    retry_after = 1 if status in (429, 503) else None
    return render(ApiError(status, "injected error after the write was stored", code, retry_after))


async def _cut_off(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send the status, the headers and half the body, then drop the connection."""
    body = response.body if isinstance(response.body, bytes) else b""
    cut = web.StreamResponse(status=response.status)
    cut.content_type = response.content_type
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return cut
