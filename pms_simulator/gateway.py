"""The aiohttp middleware both simulated APIs share: authenticate, gate, log, render errors.

Order per request, as a PMS server would: the credential picks the practice (401 if none), then
the practice's faults decide (outage 503, rate limit 429, injected 5xx, added latency), then the
handler runs. Every request that named a practice is logged with its final status. The protocol
modules pass their own `authenticate` and error `render` (Open Dental: text/plain; bridge: JSON).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from pms_simulator.errors import ApiError
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
        verdict = sim.gate(practice.id).check(request.method not in ("GET", "HEAD"))
        response: web.StreamResponse
        if verdict.status is not None:
            codes = {401: "unauthorized", 429: "rate_limited", 503: "unavailable"}
            code = codes.get(verdict.status, "internal")
            response = render(ApiError(verdict.status, verdict.reason, code, verdict.retry_after))
        else:
            if verdict.delay:
                await asyncio.sleep(verdict.delay)
            try:
                response = await handler(request)
            except ApiError as err:
                response = render(err)
            except web.HTTPException as exc:
                code = "not_found" if exc.status == 404 else "invalid_request"
                response = render(ApiError(exc.status, exc.reason, code))
        sim.log_request(
            practice.id,
            request.method,
            request.path,
            dict(request.query),
            response.status,
            time.time(),
        )
        return response

    return middleware
