"""Intake under overload: a bounded number of writebacks wait for their commit; one more is
refused at once with 503 + Retry-After (nothing stored), instead of every caller's wait growing.

Real: the writeback service (aiohttp on loopback), the SQLite queue file and its writer thread,
the PMS simulator and the drivers behind the drainer. The store's commits are held back by a
gate the test opens (`GatedStore`: the real `Store`, whose `run` first waits for the gate), which
is what a stalled disk or database looks like from intake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from test_writeback_e2e import TOKEN, db_counts, note_body, post, running
from timing import eventually

from reconciler.writeback import store as ops
from reconciler.writeback.store import Store

T = TypeVar("T")
LIMIT = 4


class GatedStore(Store):
    """The SQLite queue, whose intake inserts wait for `gate` before they are committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()

    async def run(self, op: Callable[[ops.Conn], T]) -> T:
        if isinstance(op, ops.Insert):
            await self.gate.wait()
        return await super().run(op)


async def test_intake_over_its_in_flight_limit_answers_503_with_retry_after_and_stores_nothing(
    tmp_path: Path,
) -> None:
    store = GatedStore(tmp_path / "wb.db")
    # api_thread=False: the gate is an asyncio.Event of this loop.
    options: dict[str, Any] = {"store": store, "api_thread": False, "max_in_flight": LIMIT}
    async with (
        running(tmp_path, [("acme", "OpenDental")], **options) as (_, _, service, url),
        aiohttp.ClientSession() as http,
    ):
        waiting = [
            asyncio.create_task(post(http, url, "acme", note_body(f"w{i}", "outgoingSms", "2")))
            for i in range(LIMIT)
        ]
        await eventually(lambda: service.api.in_flight == LIMIT, 10, "the limit to fill")

        async with http.post(
            f"{url}/v1/practices/acme/writebacks",
            json=note_body("extra", "outgoingSms", "2"),
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            body: Any = await resp.json()
        assert body["error"]["code"] == "overloaded"
        assert "retry with the same callerId" in body["error"]["message"]

        store.gate.set()
        answers = await asyncio.gather(*waiting)
        assert [status for status, _ in answers] == [202] * LIMIT
        assert service.api.in_flight == 0
        # The refused one was not stored: sent again (same callerId) it is a new writeback.
        status, again = await post(http, url, "acme", note_body("extra", "outgoingSms", "2"))
        assert status == 202 and again["status"] == "pending"
    counts = db_counts(tmp_path / "wb.db", "acme")
    assert sum(counts.values()) == LIMIT + 1
