"""The writeback API against hostile and unlucky clients: odd bytes, huge and deep bodies.

Real: the writeback service (aiohttp on loopback, the SQLite queue, the drainer), the PMS drivers
and the PMS simulator (through `running()` of the end-to-end tests). Requests go over real
sockets; the ones no HTTP client library would send (a raw 0xff byte in a header) are written
byte for byte on a plain asyncio connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from test_writeback_e2e import TOKEN, drained, dump, note_body, post, running

from reconciler.writeback.api import WritebackApi
from reconciler.writeback.service import WritebackService

PID = "od-hostile"


async def raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is; the status and body of the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status, await reader.readexactly(length)
    finally:
        writer.close()


def post_raw(path: str, body: bytes, auth: bytes = b"Bearer " + TOKEN.encode()) -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + auth + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


def note_json(**over: Any) -> bytes:
    """A valid note body with some values replaced by raw JSON text (escapes kept as written)."""
    body = note_body("h-1", "outgoingSms", "2")
    text = json.dumps(body)
    for key, raw_json in over.items():
        text = text.replace(json.dumps(body[key]), raw_json, 1)
    return text.encode()


PATH = f"/v1/practices/{PID}/writebacks"
DEEP = b"[" * 100_000 + b"]" * 100_000
AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
ODD: list[tuple[str, bytes, int, str | None]] = [
    ("lone surrogate in text", post_raw(PATH, note_json(text='"hi \\ud800"')), 422, "text"),
    ("lone surrogate in callerId", post_raw(PATH, note_json(callerId='"c-\\udfff"')), 422,
     "callerId"),
    ("body nested 100,000 deep", post_raw(PATH, DEEP), 400, None),
    ("text nested 100,000 deep", post_raw(PATH, note_json(text=DEEP.decode())), 400, None),
    ("bearer 0xff", post_raw(PATH, note_json(), auth=b"Bearer \xff"), 401, None),
    ("after beyond 64 bits", b"GET /v1/writebacks?after=99999999999999999999999 HTTP/1.1\r\n"
     b"Host: x\r\n" + AUTH + b"Connection: close\r\n\r\n", 400, "limit"),
    ("surrogate in the practice path", post_raw("/v1/practices/%ED%A0%80/writebacks",
     note_json()), 404, "practiceId"),
    ("odd writeback id", b"GET /v1/writebacks/%ED%A0%80%00 HTTP/1.1\r\nHost: x\r\n" + AUTH
     + b"Connection: close\r\n\r\n", 404, "id"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "status", "field"), ODD, ids=[o[0] for o in ODD])
async def test_odd_input_gets_a_json_4xx_never_a_500_and_is_not_stored(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    request_: bytes,
    status: int,
    field: str | None,
) -> None:
    async with running(tmp_path, [(PID, "OpenDental")]) as (sim, _, _, url):
        before = dump(tmp_path / "wb.db")
        with caplog.at_level(logging.WARNING):
            got, body = await raw(url, request_)
        assert got == status, body[:300]
        answer = json.loads(body)
        assert answer["error"]["message"]
        assert answer["error"].get("field") == field, answer
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert dump(tmp_path / "wb.db") == before
        assert not sim.notes(PID)


HUGE = "x" * (5 * 1024 * 1024)
OVERSIZED_OR_NUL: list[tuple[str, dict[str, Any], str, str]] = [
    ("5 MB text", {"text": HUGE}, "text", "65536"),
    ("5 MB type", {"type": HUGE}, "type", "is not one of"),
    ("5 MB callerId", {"callerId": HUGE}, "callerId", "at most 200"),
    ("5 MB unknown field", {HUGE: 1}, "", "is not a known field"),
    ("4,000-digit patientId number", {"patientId": int("9" * 4000)}, "patientId", "not a number"),
    ("NUL in callerId", {"callerId": "c\x001"}, "callerId", "NUL"),
    ("NUL in patientId", {"patientId": "2\x00"}, "patientId", "NUL"),
    ("NUL in text", {"text": "hello\x00world"}, "text", "NUL"),
]


@pytest.mark.parametrize(
    ("case", "change", "field", "words"), OVERSIZED_OR_NUL, ids=[o[0] for o in OVERSIZED_OR_NUL]
)
async def test_errors_stay_small_whatever_was_sent_and_nul_bytes_are_refused_by_name(
    tmp_path: Path, case: str, change: dict[str, Any], field: str, words: str
) -> None:
    async with running(tmp_path, [(PID, "OpenDental")]) as (sim, _, _, url):
        before = dump(tmp_path / "wb.db")
        body = {**note_body("n-1", "outgoingSms", "2"), **change}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}{PATH}",
                data=json.dumps(body),
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            ) as r,
        ):
            text = await r.read()
        assert r.status == 422, text[:300]
        assert len(text) < 2048, len(text)
        error = json.loads(text)["error"]
        assert error.get("field", "") == field, error
        assert words in error["message"], error
        assert dump(tmp_path / "wb.db") == before
        assert not sim.notes(PID)


# --- a writeback that can never be written does not get in the queue --------------------------

PATIENT_IDS = [
    ("OpenDental", "1042", True),
    ("OpenDental", "9223372036854775807", True),
    ("OpenDental", "9223372036854775808", False),
    ("OpenDental", "9" * 40, False),
    ("OpenDental", "0", False),
    ("OpenDental", "12a", False),
    ("OpenDental", "-5", False),
    ("Dentrix", "DX-1042.a_b", True),
    ("Dentrix", "9" * 40, False),
    ("Dentrix", "a b", False),
    ("Eaglesoft", "00000000000000000000001", True),
    ("Eaglesoft", "x" * 65, False),
]


@pytest.mark.parametrize(("pms", "patient", "ok"), PATIENT_IDS)
def test_patient_ids_are_checked_against_what_the_practices_pms_can_hold(
    pms: str, patient: str, ok: bool
) -> None:
    from reconciler.api.spec import PmsType
    from reconciler.writeback.pmsids import patient_id_problem

    problem = patient_id_problem(PmsType(pms), patient)
    assert (problem is None) == ok, problem
    if not ok:
        assert problem is not None and pms.replace("OpenDental", "Open Dental") in problem


@pytest.mark.parametrize("pms", ["OpenDental", "Dentrix"])
async def test_a_patient_id_the_pms_cannot_hold_is_a_422_and_the_next_writeback_goes_through(
    tmp_path: Path, pms: str
) -> None:
    pid = f"{pms.lower()}-poison"
    async with (
        running(tmp_path, [(pid, pms)]) as (sim, _, service, url),
        aiohttp.ClientSession() as http,
    ):
        status, answer = await post(http, url, pid, note_body("poison", "outgoingSms", "9" * 40))
        assert status == 422, answer
        assert answer["error"]["field"] == "patientId"
        message = answer["error"]["message"]
        assert "9" * 40 in message and ("PatNum" in message if pms == "OpenDental" else True)
        status, good = await post(http, url, pid, note_body("good", "outgoingSms", "2"))
        assert (status, good["status"]) == (202, "pending")
        assert await drained(service.counts, pid) == {
            "sent": 1, "skipped": 0, "pending": 0, "failed": 0,
        }  # fmt: skip
        assert [n["writeback_id"] for n in sim.notes(pid)] == [good["id"]]


# --- slow and vanishing clients --------------------------------------------------------------
# These use the server's real timers, set to 1 s, and wait for the event they cause (the
# server closing the socket), bounded at 20 s: aiohttp's keep-alive timer and the body deadline
# run on the loop's own clock, which a fake clock cannot drive while real sockets are involved.

SHORT = 1.0


@asynccontextmanager
async def short_timeouts(tmp_path: Path) -> AsyncIterator[tuple[WritebackService, str]]:
    """The service's parts, served with 1 s header and body timeouts on this loop."""
    async with running(tmp_path, [(PID, "OpenDental")]) as (_, directory, service, _):
        api = WritebackApi(store=service.store, drainer=service.drainer, directory=directory,
                           token=TOKEN, metrics=service.metrics, header_timeout=SHORT,
                           body_timeout=SHORT)  # fmt: skip
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield service, f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), timeout=20)


async def test_stalled_clients_are_cut_off(tmp_path: Path) -> None:
    body = note_json()
    head = post_raw(PATH, body)[: -len(body)]
    async with short_timeouts(tmp_path) as (service, url):
        parts = urlsplit(url)
        conns = []
        for n in range(60):
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            if n % 3 == 0:
                writer.write(head[:20])  # headers never finished
            elif n % 3 == 1:
                writer.write(head + body[:10])  # a body promised and stalled
            # else: connected, nothing sent
            conns.append((reader, writer))
        answers = await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
        for n, answer in enumerate(answers):
            if n % 3 == 1:
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
                assert b'"request_timeout"' in answer
            else:
                assert answer == b"", answer[:100]
        for _, writer in conns:
            writer.close()
        assert service.counts(PID) == {"sent": 0, "skipped": 0, "pending": 0, "failed": 0}


async def test_a_client_that_vanishes_mid_body_logs_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = note_json()
    head = post_raw(PATH, body)[: -len(body)]
    async with running(tmp_path, [(PID, "OpenDental")]) as (_, _, service, url):
        parts = urlsplit(url)
        with caplog.at_level(logging.INFO):
            for _ in range(5):
                _, writer = await asyncio.open_connection(parts.hostname, parts.port)
                writer.write(head + body[:10])
                await writer.drain()
                writer.transport.abort()
            # The server sees each EOF at once; then it answers a normal request as usual.
            async with aiohttp.ClientSession() as http:
                status, answer = await post(http, url, PID, note_body("after", "outgoingSms", "2"))
            assert status == 202, answer
            await drained(service.counts, PID)
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert service.counts(PID)["sent"] == 1
