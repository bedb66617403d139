"""PMS faults through the drivers, the transport's bucket and `with_retry`, for all three PMS types.

Real: the simulator on a loopback port with its own fault injection (401 for wrong keys, 404 for
unknown ids, per-practice rate limits answered 429 + Retry-After, outages answered 503 +
Retry-After, added latency, injected 5xx on writes), real httpx clients from `new_client`, real
wall-clock waits (about a second where Retry-After says so).

Faked, and why: one test wraps the real network transport so that the first POST's answer is
lost after the simulator has written the note (a client-side timeout after the server committed).
The simulator can answer a stored write with an error (`lost_write_rate`, tested in
tests/test_writeback_kill.py) or hold every stored write's answer back (`write_answer_delay_ms`),
but not time out one answer and let the next through, which is what this test needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from timing import Monotonic, eventually

from pms_drivers.base import Credentials, NoteWrite, PmsDriver
from pms_drivers.errors import (
    PermanentPmsError,
    PmsAuthError,
    PmsError,
    PmsNotFoundError,
    RateLimitedError,
    TemporaryPmsError,
)
from pms_drivers.registry import create_driver
from pms_drivers.retry import RetryPolicy, with_retry
from pms_drivers.transport import new_client
from pms_simulator import Simulator

PMS_TYPES = ["OpenDental", "Eaglesoft", "Dentrix"]
PROVIDER = {"OpenDental": "1", "Eaglesoft": "DCM", "Dentrix": "DDS1"}
FAST = RetryPolicy(max_attempts=10, base_delay=0.01, max_delay=0.05)
# The simulator's seeded fault stream has long runs of failures; give writes room to get through.
PATIENT = RetryPolicy(max_attempts=40, base_delay=0.005, max_delay=0.02)


@dataclass
class Env:
    sim: Simulator
    pms: str
    pid: str
    base: str
    credentials: Credentials

    def client(
        self,
        *,
        timeout: float = 5,
        inner: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> httpx.AsyncClient:
        return new_client(
            self.base, timeout=timeout, rate_per_second=0, burst=1, inner=inner, clock=clock
        )

    def driver(
        self, client: httpx.AsyncClient, credentials: Credentials | None = None
    ) -> PmsDriver:
        return create_driver(self.pms, client, self.base, credentials or self.credentials)

    def secrets(self) -> list[str]:
        return secret_values(self.credentials)


def secret_values(credentials: Credentials) -> list[str]:
    names = credentials.keys()  # a list, not a dict view
    return [v for name in names if (v := credentials.get(name))]


@pytest.fixture(params=PMS_TYPES)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    pms: str = request.param
    pid = f"faults-{pms.lower()}"
    sim = Simulator(db=":memory:", autotick=False)
    async with sim.serve(host="127.0.0.1", port=0):
        creds = sim.add_practice(pid, pms)
        yield Env(sim, pms, pid, sim.base_url(pms), Credentials(dict(creds)))


async def _note(driver: PmsDriver, writeback_id: str, patient_id: str | None = None) -> NoteWrite:
    note_type = next(t for t in await driver.list_note_types() if t.name == "Text Message")
    if patient_id is None:
        patient_id = (await driver.patients_since(None)).records[0].id
    return NoteWrite(
        writeback_id=writeback_id,
        kind="outgoingSms",
        patient_id=patient_id,
        note_type_id=note_type.id,
        provider_id=PROVIDER[driver.pms],
        occurred_at="2026-11-26T10:30:00",
        text=f"note {writeback_id}",
    )


def _notes_for(env: Env, writeback_id: str) -> list[dict[str, Any]]:
    return [
        n
        for n in env.sim.notes(env.pid)
        if n["writeback_id"] == writeback_id or f"writeback={writeback_id}]" in (n["text"] or "")
    ]


def _wrong(env: Env) -> Credentials:
    if env.pms == "OpenDental":
        return Credentials(
            {"developerKey": "sim-developer-key", "customerKey": "wrong-customer-key-123"}
        )
    return Credentials({"token": "wrong-bearer-token-456"})


async def test_wrong_credentials_are_an_auth_error_naming_pms_operation_status_and_url(
    env: Env,
) -> None:
    async with env.client() as client:
        with pytest.raises(PmsAuthError) as caught:
            await env.driver(client, _wrong(env)).list_providers()
    error = caught.value
    assert error.status == 401 and error.pms == env.pms and error.operation == "list providers"
    assert error.url is not None and error.url.endswith("/providers")
    assert str(error).startswith(f"{env.pms} list providers: HTTP 401 ")
    assert "Secret" in str(error)
    assert isinstance(error.__cause__, httpx.HTTPStatusError)


async def test_an_unknown_patient_is_a_not_found_error(env: Env) -> None:
    async with env.client() as client:
        driver = env.driver(client)
        note = await _note(driver, "wb-404", patient_id="999999")
        with pytest.raises(PmsNotFoundError) as caught:
            await with_retry(lambda: driver.write_note(note), policy=FAST)
    assert caught.value.status == 404
    # Not retried: one POST only.
    posts = [r for r in env.sim.requests(env.pid) if r.method == "POST"]
    assert len(posts) == 1


async def test_429_retry_after_is_honoured_by_the_bucket_and_the_retry_loop(env: Env) -> None:
    env.sim.set_faults(env.pid, rate_limit_per_second=1)
    seen: list[float | None] = []
    async with env.client() as client:
        driver = env.driver(client)
        started = time.monotonic()
        for _ in range(3):
            await with_retry(
                driver.list_providers,
                policy=FAST,
                on_retry=lambda attempt, exc, wait: seen.append(exc.retry_after),
            )
        elapsed = time.monotonic() - started
    log = env.sim.requests(env.pid)
    limited = [i for i, r in enumerate(log) if r.status == 429]
    assert limited, "the simulator never rate-limited"
    assert seen and all(s is not None and s >= 1 for s in seen)
    # After each 429 the next request waited for Retry-After (1 s), less a little timer slack.
    for i in limited:
        if i + 1 < len(log):
            assert log[i + 1].at - log[i].at >= 0.9
    assert elapsed >= 1.8
    assert [r.status for r in log].count(200) >= 3


async def test_a_pms_slower_than_the_timeout_is_a_temporary_error(env: Env) -> None:
    env.sim.set_faults(env.pid, latency_ms=400)
    logged = len(env.sim.requests(env.pid))
    async with env.client(timeout=0.1) as client:
        with pytest.raises(TemporaryPmsError) as caught:
            await env.driver(client).list_providers()
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert "timed out" in str(caught.value)
    assert not isinstance(caught.value, RateLimitedError)
    # The simulator's delayed handler finishes (and logs) before teardown closes its server.
    await eventually(lambda: len(env.sim.requests(env.pid)) > logged, 5, "the late answer")


async def test_an_outage_is_ridden_out_by_with_retry_and_recovery_is_seen(env: Env) -> None:
    env.sim.set_faults(env.pid, outage=True, outage_seconds=1.2)
    errors: list[PmsError] = []
    async with env.client() as client:
        driver = env.driver(client)
        info = await with_retry(
            driver.server_info, policy=FAST, on_retry=lambda a, exc, w: errors.append(exc)
        )
    assert info.pms == env.pms
    assert errors and all(isinstance(e, RateLimitedError) and e.status == 503 for e in errors)
    statuses = [r.status for r in env.sim.requests(env.pid)]
    assert statuses[0] == 503 and statuses[-1] == 200


async def test_an_outage_longer_than_the_attempts_raises_the_last_temporary_error(env: Env) -> None:
    env.sim.set_faults(env.pid, outage=True)
    async with env.client() as client:
        driver = env.driver(client)
        with pytest.raises(RateLimitedError) as caught:
            await with_retry(
                driver.list_providers, policy=RetryPolicy(max_attempts=2, base_delay=0)
            )
    assert caught.value.status == 503 and caught.value.retry_after == 1
    assert len(env.sim.requests(env.pid)) == 2


async def test_writes_retried_through_injected_write_errors_land_exactly_once(env: Env) -> None:
    async with env.client() as client:
        driver = env.driver(client)
        notes = [await _note(driver, f"wb-{i}") for i in range(8)]
        env.sim.set_faults(env.pid, write_error_rate=0.5, status=500)
        results = [
            await with_retry(lambda n=note: driver.write_note(n), policy=PATIENT) for note in notes
        ]
    assert all(r.created for r in results)
    failed = [r for r in env.sim.requests(env.pid) if r.method == "POST" and r.status == 500]
    assert failed, "no write error was injected"
    for note in notes:
        assert len(_notes_for(env, note.writeback_id)) == 1, note.writeback_id


class LoseFirstPostAnswer(httpx.AsyncBaseTransport):
    """Sends every request for real; drops the answer of the first POST as if it timed out."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "POST" and not self.lost:
            self.lost += 1
            await response.aclose()
            raise httpx.ReadTimeout("answer lost (test fault)", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_write_whose_answer_was_lost_is_found_and_not_written_again(env: Env) -> None:
    lossy = LoseFirstPostAnswer()
    async with env.client(inner=lossy) as client:
        driver = env.driver(client)
        note = await _note(driver, "wb-lost")
        result = await with_retry(lambda: driver.write_note(note), policy=FAST)
    assert lossy.lost == 1
    assert not result.created  # the retry found what the first attempt wrote
    written = _notes_for(env, "wb-lost")
    assert len(written) == 1 and written[0]["id"] == result.id


async def test_credentials_never_appear_in_errors_reprs_or_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = _wrong(env)
    secrets = [*env.secrets(), *secret_values(wrong)]
    caught: list[BaseException] = []

    async def expect(kind: type[PmsError], op: Any) -> None:
        try:
            await op()
        except kind as exc:
            caught.append(exc)
        else:
            raise AssertionError(f"expected {kind.__name__}")

    clock = Monotonic()  # the client's: it stays paused for Retry-After until this jumps
    async with env.client(timeout=2, clock=clock) as client:
        driver = env.driver(client)
        note = await _note(driver, "wb-secret")
        await expect(PmsAuthError, env.driver(client, _wrong(env)).list_providers)  # 401
        missing = await _note(driver, "wb-missing", patient_id="999999")
        await expect(PmsNotFoundError, lambda: driver.write_note(missing))  # 404
        bad_type = NoteWrite(
            **{**note.__dict__, "note_type_id": "99999" if env.pms != "Eaglesoft" else "ZZ:9"}
        )
        await expect(PermanentPmsError, lambda: driver.write_note(bad_type))  # 400 / 404
        env.sim.set_faults(env.pid, rate_limit_per_second=1)
        await driver.list_providers()
        await expect(RateLimitedError, driver.list_providers)  # 429
        clock.jump(1.1)  # past the Retry-After pause
        env.sim.set_faults(env.pid, outage=True)
        await expect(RateLimitedError, driver.list_providers)  # 503
        clock.jump(1.1)
        env.sim.set_faults(env.pid, latency_ms=300)
        logged = len(env.sim.requests(env.pid))
    async with env.client(timeout=0.05) as slow:
        await expect(TemporaryPmsError, env.driver(slow).list_providers)  # timeout
    async with new_client("http://127.0.0.1:9", timeout=1, rate_per_second=0, burst=1) as dead:
        dead_driver = create_driver(env.pms, dead, "http://127.0.0.1:9/api", env.credentials)
        await expect(TemporaryPmsError, dead_driver.list_providers)  # connection refused
        texts = [repr(dead_driver), repr(env.credentials), str(env.credentials)]
    # The simulator's delayed handler finishes (and logs) before teardown closes its server.
    await eventually(lambda: len(env.sim.requests(env.pid)) > logged, 5, "the late answer")
    assert len(caught) == 7
    for exc in caught:
        texts += [str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)]
    texts.append(caplog.text)
    texts += [str(r.args) for r in caplog.records]
    for secret in secrets:
        assert len(secret) >= 8
        for text in texts:
            assert secret not in text
