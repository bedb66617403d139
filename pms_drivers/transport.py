"""The per-practice HTTP client: one `httpx.AsyncClient` whose transport holds the practice's rate budget.

`new_client()` builds the client every user of a practice shares (reconcile, pollers, writes).
Its transport, `RateLimitedTransport`, wraps the network transport and takes a token from ONE
`TokenBucket` before every request, so the practice's total request rate stays under the
budget however many tasks use the client. When the PMS answers 429 or 503 with `Retry-After`, the
transport pauses the whole bucket until then: every caller waits, not just the one that was told.

The network transport is `AiohttpTransport`: httpx's API on top (drivers keep their injected
`httpx.AsyncClient`), aiohttp's connection pool and C HTTP parser underneath, because httpx's own
`httpx.AsyncHTTPTransport` (httpcore + h11, pure Python) takes ~30% of the operator's CPU per poll
(docs/operator.md, "Scale and sharding", has the bench_scale figures). The `httpx-aiohttp`
package's transport measured worse on bench_drivers (see `AiohttpTransport`).

The transport neither retries nor raises on HTTP statuses: drivers map statuses to
`pms_drivers.errors`, and `pms_drivers.retry.with_retry` is the one place that retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import http.cookiejar
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import yarl

log = logging.getLogger(__name__)

#: Statuses whose `Retry-After` pauses the practice's whole bucket.
PAUSING_STATUSES = frozenset({429, 503})
#: Idle connections are kept this long. httpx's default (5 s) is shorter than every poll interval,
#: so each poll would pay a TCP connect and close; keeping them halves the CPU per poll
#: (bench_scale, docs/operator.md).
KEEPALIVE_SECONDS = 120.0
#: Parsed URLs each `PracticeClient` keeps (~700 bytes each): a practice polls three URLs and its
#: drift check (every 30 s by default) reads four more (version, providers, note types, document
#: categories); with fewer than those seven, each drift check pushed the pollers' URLs out and
#: every request parsed its URL again. A cursor that moved makes its old URL useless.
URL_CACHE_SIZE = 8
#: A `Retry-After` longer than this is clamped (a misbehaving server must not park a practice for hours).
MAX_PAUSE_SECONDS = 300.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_PAUSE_SECONDS)


class TokenBucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved up, pausable as a whole.

    `acquire()` waits until a token is available (and any pause is over) and takes it. Waiters are
    served in arrival order (one lock), so a busy poller cannot starve a write.
    `rate <= 0` or `math.inf` means unlimited (pauses still apply).
    """

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0 or math.isinf(self.rate)

    @property
    def paused_for(self) -> float:
        """Seconds left on the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Stop handing out tokens for `seconds` from now (extends, never shortens, a pause)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            # Nothing was saved up while the server told us to stop.
            self._tokens = min(self._tokens, 1.0)
            self._stamp = max(self._stamp, until)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    async def acquire(self) -> None:
        """Wait for the pause to end and a token to be free, then take it."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                if self.unlimited:
                    return
                self._refill(now)
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class RateLimitedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that spends one token of the practice's bucket per request.

    On a 429 or 503 carrying `Retry-After` it pauses the bucket for that long, so every request
    through this client (from any task) waits; the response itself is returned unchanged.
    """

    def __init__(self, bucket: TokenBucket, inner: httpx.AsyncBaseTransport) -> None:
        self.bucket = bucket
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.bucket.acquire()
        response = await self._inner.handle_async_request(request)
        if response.status_code in PAUSING_STATUSES:
            delay = parse_retry_after(response.headers.get("Retry-After"))
            if delay is not None:
                log.info(
                    "%s %s answered %d: pausing this practice's requests for %.1fs",
                    request.method,
                    request.url.copy_with(query=None),
                    response.status_code,
                    delay,
                )
                self.bucket.pause(delay)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every practice's client: building one per client costs ~0.8 MB and
    ~150 ms (the CA bundle), which at 10,000 practices is 8 GB and minutes of start-up."""
    return httpx.create_ssl_context()


# Kept over the httpx-aiohttp package's transport: bench_drivers (200 practices, 2 s intervals, same sitting) gave 294 vs 252 req/s, HTTP p50 4.7 vs 582 ms, and it maps a dropped connection to ConnectTimeout.
class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request over an `aiohttp.ClientSession` (aiohttp's C parser).

    One session (and `TCPConnector`) per transport, created on the first request (aiohttp binds it
    to the running loop) and closed by `aclose()`. Connections are reused for `KEEPALIVE_SECONDS`,
    at most `max_connections` at once; TLS uses the shared context. The body is read whole (the
    drivers read every body anyway); aiohttp's decompression is off so httpx decodes
    `Content-Encoding` as it would for its own transport. aiohttp's errors become httpx's:
    connect timeouts `httpx.ConnectTimeout`, read timeouts `httpx.ReadTimeout`, a refused or
    unresolvable host `httpx.ConnectError`, a connection lost mid-answer `httpx.RemoteProtocolError`
    or `httpx.ReadError`, so `pms_drivers.wire`'s mapping does not change.
    """

    def __init__(self, *, max_connections: int = 8) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=KEEPALIVE_SECONDS,
                ssl=_shared_ssl_context(),
                ttl_dns_cache=300,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._session = session
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=t.get("pool"),
            sock_connect=t.get("connect"),
            sock_read=t.get("read"),
        )
        body = await request.aread()
        try:
            async with self._open().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                content = await resp.read()
                return httpx.Response(
                    resp.status,
                    headers=resp.raw_headers,
                    content=content,
                    request=request,
                    extensions={
                        "http_version": b"HTTP/1.1",
                        "reason_phrase": (resp.reason or "").encode(),
                    },
                )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except aiohttp.SocketTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except TimeoutError as exc:
            raise httpx.PoolTimeout(
                str(exc) or "timed out waiting for a connection", request=request
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(
                str(exc) or "server disconnected", request=request
            ) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: PMS APIs authenticate every request with a header, and
    httpx's cookie handling (building urllib's request and response views of every response)
    costs a tenth of each request."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class _UnkeptCookies(httpx.Cookies):
    """The client's cookies, which never take any from a response: httpx wraps every response
    and its request in urllib's cookie views before the jar sees them (a tenth of a request's
    CPU), even when the jar keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class PracticeClient(httpx.AsyncClient):
    """The `httpx.AsyncClient` `new_client()` returns: the same API, but each distinct URL string
    is parsed once (httpx's pure-Python URL parser is the biggest single cost of a request), and
    responses' cookies are neither kept nor looked at (PMS APIs authenticate with headers).

    A poller asks for the same URL until its cursor moves, so the last `URL_CACHE_SIZE` URLs are
    kept per client. Requests that pass `params=` are built by httpx as usual.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._urls: dict[str, httpx.URL] = {}
        # httpx's `cookies` setter would wrap the jar in a plain `httpx.Cookies` again.
        self._cookies = _UnkeptCookies(_NoCookies())

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        if isinstance(url, str) and kwargs.get("params") is None:
            parsed = self._urls.get(url)
            if parsed is None:
                parsed = httpx.URL(url)
                if len(self._urls) >= URL_CACHE_SIZE:
                    del self._urls[next(iter(self._urls))]  # the oldest
                self._urls[url] = parsed
            url = parsed
        return super().build_request(method, url, **kwargs)


def new_client(
    base_url: str,
    *,
    timeout: float,
    rate_per_second: float,
    burst: int,
    inner: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> httpx.AsyncClient:
    """The practice's shared client: `timeout` seconds per request, `rate_per_second` with `burst`.

    `inner` replaces the real network transport (tests may pass `httpx.MockTransport`); by default
    it is an `AiohttpTransport` with a connection pool sized for a few concurrent pollers.
    `clock` is the bucket's monotonic clock (tests move it past a `Retry-After` pause).
    Close the client (`await client.aclose()`) when the practice goes away.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    transport = RateLimitedTransport(
        TokenBucket(rate_per_second, burst, clock=clock),
        inner or AiohttpTransport(max_connections=8),
    )
    return PracticeClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        transport=transport,
        follow_redirects=False,
        cookies=_NoCookies(),
        headers={"User-Agent": user_agent()},
    )


def user_agent() -> str:
    """`pmsctl (POD)`: which replica sent a request, for the PMS's access log ($POD_NAME, the
    Deployment's downward API; plain `pmsctl` without it)."""
    pod = os.environ.get("POD_NAME", "").strip()
    return f"pmsctl ({pod})" if pod else "pmsctl"


def bucket_of(client: httpx.AsyncClient) -> TokenBucket | None:
    """The token bucket behind a client made by `new_client()` (None for any other client)."""
    transport = client._transport
    return transport.bucket if isinstance(transport, RateLimitedTransport) else None
