"""The per-practice client's token bucket and the one retry loop.

Real: an aiohttp app on a loopback port answers the requests, httpx sends them through
`RateLimitedTransport` and the aiohttp-backed `AiohttpTransport` under it (slow answers, gzip,
and a server hanging up mid-answer are all produced for real), and time is the real monotonic clock (the waits are a few hundred ms).
The retry schedule tests inject `sleep` and `rng` so the exact waits can be asserted; nothing
else is faked.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from timing import Monotonic

from pms_drivers.errors import (
    PermanentPmsError,
    PmsAuthError,
    PmsNotFoundError,
    RateLimitedError,
    TemporaryPmsError,
)
from pms_drivers.retry import RetryPolicy, with_retry
from pms_drivers.transport import (
    URL_CACHE_SIZE,
    AiohttpTransport,
    PracticeClient,
    RateLimitedTransport,
    TokenBucket,
    bucket_of,
    new_client,
    parse_retry_after,
)


@pytest.fixture
async def tiny_app() -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A loopback server: /ok answers 200, /limited answers 429 Retry-After: 1 on its first call."""
    hits: dict[str, int] = {"ok": 0, "limited": 0}

    async def ok(request: web.Request) -> web.Response:
        hits["ok"] += 1
        return web.json_response({"ok": True})

    async def limited(request: web.Request) -> web.Response:
        hits["limited"] += 1
        if hits["limited"] == 1:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/limited", limited)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", hits
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("nonsense", None),
        ("99999", 300.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    header: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_date_in_the_future_counts_from_now() -> None:
    now = 1_445_412_470.0  # 10 s before Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(10.0)


async def test_bucket_spaces_requests_at_the_configured_rate(
    tiny_app: tuple[str, dict[str, int]],
) -> None:
    url, hits = tiny_app
    async with new_client(url, timeout=5, rate_per_second=20, burst=1) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.get("/ok") for _ in range(11)))
        elapsed = time.monotonic() - started
    assert hits["ok"] == 11
    # 1 from the burst, then 10 at 20/s: at least 0.5 s (less a little for timer slack).
    assert elapsed >= 0.45


async def test_burst_lets_the_first_requests_through_at_once(
    tiny_app: tuple[str, dict[str, int]],
) -> None:
    url, _ = tiny_app
    async with new_client(url, timeout=5, rate_per_second=1, burst=5) as client:
        started = time.monotonic()
        await asyncio.gather(*(client.get("/ok") for _ in range(5)))
        assert time.monotonic() - started < 0.9


async def test_429_with_retry_after_pauses_every_request_of_the_practice(
    tiny_app: tuple[str, dict[str, int]],
) -> None:
    url, hits = tiny_app
    async with new_client(url, timeout=5, rate_per_second=100, burst=10) as client:
        first = await client.get("/limited")
        assert first.status_code == 429
        bucket = bucket_of(client)
        assert bucket is not None and bucket.paused_for > 0.5
        started = time.monotonic()
        # A different path, a different task: it still waits for the pause.
        second = await client.get("/ok")
        assert second.status_code == 200
        assert time.monotonic() - started >= 0.8
    assert hits == {"ok": 1, "limited": 1}


async def test_the_pause_runs_on_the_clock_the_client_is_given(
    tiny_app: tuple[str, dict[str, int]],
) -> None:
    url, hits = tiny_app
    clock = Monotonic()
    async with new_client(url, timeout=5, rate_per_second=100, burst=10, clock=clock) as client:
        assert (await client.get("/limited")).status_code == 429
        bucket = bucket_of(client)
        assert bucket is not None and 0.5 < bucket.paused_for <= 1.0
        clock.jump(1.0)
        assert bucket.paused_for == 0.0  # over on the client's clock: the next request goes now
        assert (await client.get("/ok")).status_code == 200
    assert hits == {"ok": 1, "limited": 1}


async def test_a_pause_is_never_shortened_by_a_later_shorter_one() -> None:
    bucket = TokenBucket(10, 1)
    bucket.pause(2.0)
    bucket.pause(0.1)
    assert bucket.paused_for > 1.5


def test_client_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="timeout"):
        new_client("http://127.0.0.1:1", timeout=0, rate_per_second=1, burst=1)
    with pytest.raises(ValueError, match="burst"):
        new_client("http://127.0.0.1:1", timeout=1, rate_per_second=1, burst=0)


def _temporary(retry_after: float | None = None) -> TemporaryPmsError:
    return TemporaryPmsError("flaky", pms="OpenDental", operation="test", retry_after=retry_after)


async def test_retry_waits_capped_exponential_backoff_with_full_jitter() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    calls = 0

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise _temporary()
        return "done"

    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=5.0)
    assert await with_retry(op, policy=policy, sleep=sleep, rng=lambda: 0.5) == "done"
    # ceilings 1, 2, 4, 5 (capped), 5 (capped); full jitter at rng=0.5 halves them.
    assert waits == [0.5, 1.0, 2.0, 2.5, 2.5]


async def test_retry_never_waits_less_than_the_servers_retry_after() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    errors = [RateLimitedError("429", pms="Dentrix", operation="x", retry_after=7.0)]

    async def op() -> int:
        if errors:
            raise errors.pop()
        return 1

    await with_retry(op, policy=RetryPolicy(base_delay=0.1), sleep=sleep, rng=lambda: 1.0)
    assert waits == [7.0]


@pytest.mark.parametrize(
    "error",
    [
        PermanentPmsError("bad", pms="OpenDental", operation="x", status=400),
        PmsNotFoundError("gone", pms="OpenDental", operation="x", status=404),
        PmsAuthError("who", pms="OpenDental", operation="x", status=401),
    ],
)
async def test_retry_gives_up_at_once_on_errors_retrying_cannot_fix(error: Exception) -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await with_retry(op, policy=RetryPolicy(max_attempts=5, base_delay=0))
    assert calls == 1


async def test_retry_reraises_the_last_temporary_error_when_attempts_run_out() -> None:
    seen: list[int] = []

    async def op() -> None:
        raise _temporary()

    with pytest.raises(TemporaryPmsError):
        await with_retry(
            op,
            policy=RetryPolicy(max_attempts=3, base_delay=0),
            on_retry=lambda attempt, exc, wait: seen.append(attempt),
        )
    assert seen == [1, 2]


async def test_retry_on_names_other_retryable_errors_on_the_same_schedule() -> None:
    class Busy(Exception):
        retry_after = 3.0

    waits: list[float] = []
    calls = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Busy()
        if calls == 3:
            raise _temporary()  # not named in retry_on: propagates at once
        return "unreachable"

    with pytest.raises(TemporaryPmsError):
        await with_retry(
            op,
            policy=RetryPolicy(max_attempts=5, base_delay=1.0),
            sleep=sleep,
            rng=lambda: 1.0,
            retry_on=(Busy,),
        )
    # Full jitter ceilings 1 and 2, each raised to the error's retry_after of 3 s.
    assert (calls, waits) == (3, [3.0, 3.0])


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


async def test_transport_errors_become_temporary_through_the_driver_wire() -> None:
    """A closed port: httpx's ConnectError becomes a TemporaryPmsError, chained."""
    from pms_drivers.wire import call

    async with httpx.AsyncClient(timeout=2) as client:
        with pytest.raises(TemporaryPmsError) as caught:
            await call(
                client,
                "GET",
                "http://127.0.0.1:9/api/v1/providers?customerKey=s3cret",
                pms="OpenDental",
                operation="list providers",
                headers={},
            )
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "s3cret" not in str(caught.value)
    assert "OpenDental list providers" in str(caught.value)


# ----- the aiohttp-backed network transport under every `new_client` ---------------------------


@pytest.fixture
async def wire_app() -> AsyncIterator[tuple[str, list[tuple[str, int]]]]:
    """A loopback server that records each request's client port and answers the shapes the
    transport must carry: echo (method, path, raw query, headers, body), gzip, slow, hang-up."""
    peers: list[tuple[str, int]] = []

    async def echo(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peers.append((request.path, peer[1] if peer else -1))
        return web.json_response(
            {
                "method": request.method,
                "query": request.rel_url.raw_query_string,
                "auth": request.headers.get("Authorization"),
                "body": (await request.read()).decode(),
            },
            headers={"X-Twice": "a"},
        )

    async def gz(request: web.Request) -> web.Response:
        body = gzip.compress(json.dumps({"items": list(range(50))}).encode())
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    # A slow answer comes only when the test is over: a client timeout, never a race with it.
    over = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await over.wait()
        return web.json_response({})

    async def hang_up(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"{")
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/gz", gz)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang-up", hang_up)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", peers
    finally:
        over.set()
        await runner.cleanup()


async def test_the_network_transport_carries_method_query_headers_and_body_unchanged(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = wire_app
    async with new_client(url, timeout=5, rate_per_second=0, burst=1) as client:
        response = await client.post(
            "/echo",
            params={"since": "a+b/c=d", "limit": 2},
            headers={"Authorization": "Bearer t0k3n"},
            json={"note": "héllo"},
        )
    assert response.status_code == 200
    assert response.reason_phrase == "OK"
    body = response.json()
    assert body["method"] == "POST"
    # The query arrives exactly as httpx encoded it (aiohttp must not re-encode or decode it).
    assert body["query"] == response.request.url.query.decode()
    assert body["query"].startswith("since=a%2Bb") and body["query"].endswith("&limit=2")
    assert body["auth"] == "Bearer t0k3n"
    assert json.loads(body["body"]) == {"note": "héllo"}
    assert response.headers["X-Twice"] == "a"
    assert response.request.url.path == "/echo"


async def test_the_network_transport_reuses_one_connection_for_sequential_requests(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    url, peers = wire_app
    async with new_client(url, timeout=5, rate_per_second=0, burst=1) as client:
        for _ in range(5):
            assert (await client.get("/echo")).status_code == 200
    assert len(peers) == 5
    assert len({port for _, port in peers}) == 1


async def test_a_gzip_answer_is_decoded_once(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = wire_app
    async with new_client(url, timeout=5, rate_per_second=0, burst=1) as client:
        response = await client.get("/gz")
    assert response.json() == {"items": list(range(50))}


async def test_a_slow_answer_is_httpx_read_timeout_and_a_temporary_error_through_the_wire(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    from pms_drivers.wire import call

    url, _ = wire_app
    async with new_client(url, timeout=0.3, rate_per_second=0, burst=1) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow")
        with pytest.raises(TemporaryPmsError, match=r"timed out after 0\.3s") as caught:
            await call(client, "GET", "/slow", pms="Dentrix", operation="read", headers={})
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


async def test_a_connection_dropped_mid_answer_is_an_httpx_transport_error(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = wire_app
    async with new_client(url, timeout=5, rate_per_second=0, burst=1) as client:
        with pytest.raises(httpx.TransportError) as caught:
            await client.get("/hang-up")
        assert isinstance(caught.value, (httpx.RemoteProtocolError, httpx.ReadError))
        # The client stays usable: the next request opens a fresh connection.
        assert (await client.get("/echo")).status_code == 200


async def test_a_refused_connection_is_httpx_connect_error_through_new_client() -> None:
    async with new_client("http://127.0.0.1:9", timeout=2, rate_per_second=0, burst=1) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/anything")


async def test_closing_the_client_closes_its_connections(
    wire_app: tuple[str, list[tuple[str, int]]],
) -> None:
    url, _ = wire_app
    client = new_client(url, timeout=5, rate_per_second=0, burst=1)
    assert (await client.get("/echo")).status_code == 200
    transport = client._transport
    assert isinstance(transport, RateLimitedTransport)
    inner = transport._inner
    assert isinstance(inner, AiohttpTransport)
    session = inner._session
    assert session is not None and not session.closed
    await client.aclose()
    assert session.closed


async def test_the_practice_client_parses_a_repeated_url_once_and_keeps_no_cookies() -> None:
    """Real loopback server that sets a cookie; the client must neither store nor send it back."""
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"since": request.query.get("since")})
        response.set_cookie("session", "s3cr3t")
        return response

    app = web.Application()
    app.router.add_get("/page", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with new_client(
            f"http://127.0.0.1:{port}", timeout=5, rate_per_second=0, burst=1
        ) as client:
            assert isinstance(client, PracticeClient)
            url = f"http://127.0.0.1:{port}/page?since=c1"
            first = await client.get(url)
            second = await client.get(url)
            assert first.json() == second.json() == {"since": "c1"}
            # One parse served both requests (httpx wraps the same parse result in each Request).
            assert len(client._urls) == 1
            assert first.request.url._uri_reference is second.request.url._uri_reference
            for i in range(URL_CACHE_SIZE + 4):
                await client.get(f"http://127.0.0.1:{port}/page?since=c{i + 2}")
            assert len(client._urls) == URL_CACHE_SIZE
            assert (await client.get(url)).json() == {"since": "c1"}  # parsed again, same answer
            assert len(client.cookies) == 0
            # A practice's seven URLs (three pollers, the drift check's four reads) all stay
            # parsed: a drift check does not push the pollers' URLs out.
            practice = [f"http://127.0.0.1:{port}/page?since=u{i}" for i in range(7)]
            for u in practice:
                await client.get(u)
            parsed = {u: client._urls[u] for u in practice}
            for u in practice:
                assert (await client.get(u)).request.url._uri_reference is (
                    parsed[u]._uri_reference
                )
    finally:
        await runner.cleanup()
    assert seen == [None] * len(seen)
