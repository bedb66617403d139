"""`Simulator`: one real aiohttp server simulating many practices' PMSes, and its test API.

Real: the HTTP server on a loopback port, the SQLite state, the token buckets, the latency.
Simulated: the PMS data and the office's clock, which only moves when `advance()` is called
(or every `tick_seconds` when `autotick` is on). One server serves every practice; the credential
picks the practice: `{url}/api/v1` for Open Dental, `{url}/bridge/v1` for Eaglesoft and Dentrix,
`{url}/_admin` for tests and demos driving a simulator in another process.

Which PMSes it plays, and so which APIs it mounts, is up to the personalities it receives
(`pms_simulator.personality`; every registered one by default): the server imports no protocol
module itself.

Credentials are made up deterministically from the practice id (`simulator_credentials`), so a
separate process can compute them; they are simulator credentials, never real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from pms_simulator import catalog
from pms_simulator.errors import UnknownPracticeError
from pms_simulator.faults import FaultConfig, Gate
from pms_simulator.personality import PERSONALITIES, Api, Personality
from pms_simulator.state import Practice, State

#: The developer key every simulated Open Dental practice accepts (a vendor-wide key, as in OD).
DEVELOPER_KEY = "sim-developer-key"


@dataclass(frozen=True)
class RequestRecord:
    """One request a practice received: method, path, query, final status, wall-clock time."""

    method: str
    path: str
    query: dict[str, str]
    status: int
    at: float
    #: The client's User-Agent (which replica sent it, when the client says so).
    agent: str = ""


def simulator_credentials(practice_id: str, pms: str) -> dict[str, str]:
    """The made-up credentials the simulator gives `practice_id` (deterministic, not secret)."""
    digest = hashlib.sha256(f"pmsctl-simulator|{pms}|{practice_id}".encode()).hexdigest()
    if _uses_keys(pms):
        return {"developerKey": DEVELOPER_KEY, "customerKey": f"sim-ck-{digest[:24]}"}
    return {"token": f"sim-token-{digest[:32]}"}


def _uses_keys(pms: str) -> bool:
    """Whether `pms` authenticates with an Open Dental key pair (otherwise a bearer token)."""
    known = PERSONALITIES.get(pms)
    return known is not None and known.api.credentials == "keys"


class Simulator:
    """Many simulated practices behind one HTTP server. Methods are thread-safe.

    `personalities` are the PMSes it can play (default: every registered one). Each must be
    registered too: `State` seeds practices from `catalog`'s tables, which registering fills.
    `monotonic` is the clock of the rate limits and outage windows (default `time.monotonic`);
    a test may pass one it moves forward instead of waiting a window out."""

    def __init__(
        self,
        db: str = ":memory:",
        *,
        autotick: bool = False,
        tick_seconds: float = 2.0,
        tick_minutes: float = 1.0,
        rate_limit_per_second: float = 50.0,
        burst: float = 100,
        start: datetime | None = None,
        request_log_size: int = 2_000,
        personalities: Mapping[str, Personality] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if tick_seconds <= 0 or tick_minutes <= 0:
            raise ValueError("tick_seconds and tick_minutes must be positive")
        self.personalities = dict(PERSONALITIES if personalities is None else personalities)
        for name, played in self.personalities.items():
            if PERSONALITIES.get(name) != played:
                raise ValueError(f"{name}: register the personality before a Simulator plays it")
        self.state = State(db, start)
        self.autotick = autotick
        self.tick_seconds = tick_seconds
        self.tick_minutes = tick_minutes
        self._rate = (float(rate_limit_per_second), float(burst))
        self._log_size = request_log_size
        self._monotonic = monotonic  # the fault gates' clock (rate-limit and outage windows)
        self._gates: dict[str, Gate] = {}
        self._logs: dict[str, deque[RequestRecord]] = {}
        self._od_keys: dict[str, str] = {}
        self._tokens: dict[str, str] = {}
        self._url: str | None = None
        for p in self.state.practices():
            self._index(p.id, p.pms)

    # ---- practices --------------------------------------------------------------------------

    def _index(self, pid: str, pms: str) -> dict[str, str]:
        creds = simulator_credentials(pid, pms)
        if _uses_keys(pms):
            self._od_keys[creds["customerKey"]] = pid
        else:
            self._tokens[creds["token"]] = pid
        return creds

    def add_practice(self, practice_id: str, pms: str) -> dict[str, str]:
        """Register a practice (idempotent; seeded on first use) and return its credentials."""
        if pms not in self.personalities:
            raise ValueError(f"pms {pms!r} is not one of {', '.join(self.personalities)}")
        self.state.register(practice_id, pms)
        return self._index(practice_id, pms)

    def seed(self, practice_ids: list[str] | None = None) -> None:
        """Seed practices now instead of on first use (all added ones by default), e.g. before a benchmark."""
        for pid in practice_ids if practice_ids is not None else [p for p, _ in self.practices()]:
            self.state.practice(pid)

    def credentials(self, practice_id: str) -> dict[str, str]:
        """The credentials of an added practice."""
        return simulator_credentials(practice_id, self._practice(practice_id).pms)

    def practices(self) -> list[tuple[str, str]]:
        """(practice id, PMS type) of every added practice."""
        return [(p.id, p.pms) for p in self.state.practices()]

    def _practice(self, pid: str) -> Practice:
        p = self.state.get(pid)
        if p is None:
            raise UnknownPracticeError(f"no practice {pid!r} in this simulator; add it first")
        return p

    def practice_for_od_keys(self, developer_key: str, customer_key: str) -> str | None:
        """The practice an Open Dental key pair belongs to, or None."""
        return self._od_keys.get(customer_key) if developer_key == DEVELOPER_KEY else None

    def practice_for_token(self, token: str) -> str | None:
        """The practice a bridge bearer token belongs to, or None."""
        return self._tokens.get(token)

    # ---- clock ------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The simulated office-local time."""
        return self.state.now

    def advance(self, minutes: float = 30) -> int:
        """Move the simulated clock on; every seeded practice's due activity happens. Returns #events."""
        return self.state.advance(minutes)

    # ---- faults and drift -------------------------------------------------------------------

    def gate(self, practice_id: str) -> Gate:
        """The practice's fault gate (created on first use)."""
        gate = self._gates.get(practice_id)
        if gate is None:
            gate = self._gates[practice_id] = Gate(practice_id, *self._rate, self._monotonic)
        return gate

    def set_faults(self, practice_id: str, **settings: Any) -> FaultConfig:
        """Replace the practice's faults; unnamed settings go back to off. See `FaultConfig`."""
        self._practice(practice_id)
        config = FaultConfig(**settings)
        self.gate(practice_id).configure(config)
        return config

    def rename_note_type(self, practice_id: str, name: str, new_name: str) -> None:
        """Rename a note type (keeps its id, as the PMSes do)."""
        self.state.update_def(practice_id, catalog.CAT_NOTES, name, new_name=new_name)

    def hide_note_type(self, practice_id: str, name: str) -> None:
        """Hide a note type."""
        self.state.update_def(practice_id, catalog.CAT_NOTES, name, hide=True)

    def rename_document_category(self, practice_id: str, name: str, new_name: str) -> None:
        """Rename a document category/type/group."""
        self.state.update_def(practice_id, catalog.CAT_DOCUMENTS, name, new_name=new_name)

    def hide_document_category(self, practice_id: str, name: str) -> None:
        """Hide a document category/type/group."""
        self.state.update_def(practice_id, catalog.CAT_DOCUMENTS, name, hide=True)

    def delete_document_category(self, practice_id: str, name: str) -> None:
        """Delete a document category/type/group."""
        self.state.update_def(practice_id, catalog.CAT_DOCUMENTS, name, delete=True)

    def inactivate_provider(self, practice_id: str, provider_id: str) -> None:
        """Make a provider inactive (Open Dental: IsHidden; bridge: active=false)."""
        self.state.inactivate_provider(practice_id, provider_id)

    # ---- assertions -------------------------------------------------------------------------

    def log_request(
        self,
        pid: str,
        method: str,
        path: str,
        query: dict[str, str],
        status: int,
        at: float,
        agent: str = "",
    ) -> None:
        """Record one request (called by the HTTP layer)."""
        log = self._logs.get(pid)
        if log is None:
            log = self._logs[pid] = deque(maxlen=self._log_size)
        log.append(RequestRecord(method, path, query, status, at, agent))

    def requests(self, practice_id: str) -> list[RequestRecord]:
        """The practice's requests, oldest first (the last `request_log_size`)."""
        self._practice(practice_id)
        return list(self._logs.get(practice_id, ()))

    def clear_requests(self, practice_id: str) -> None:
        """Forget the practice's request log."""
        self._logs.pop(practice_id, None)

    def notes(self, practice_id: str) -> list[dict[str, Any]]:
        """Notes written to the practice, normalized (see docs/simulator.md)."""
        return self.state.notes(practice_id)

    def documents(self, practice_id: str, include_seeded: bool = False) -> list[dict[str, Any]]:
        """Documents uploaded to the practice (and the seeded photos when asked)."""
        return self.state.documents(practice_id, include_seeded)

    def changes(self, practice_id: str, kind: str) -> list[dict[str, Any]]:
        """Ground truth: every change of kind appointments|appointmentStatus|patients, in order."""
        if kind not in ("appointments", "appointmentStatus", "patients", "notes", "documents"):
            raise ValueError(
                f"kind {kind!r} is not one of appointments, appointmentStatus, patients"
            )
        return self.state.changes(practice_id, kind)

    # ---- serving ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base URL while serving."""
        if self._url is None:
            raise RuntimeError("the simulator is not serving; use `async with sim.serve()`")
        return self._url

    def base_url(self, pms: str) -> str:
        """The API base URL a driver for `pms` uses."""
        known = self.personalities.get(pms)
        if known is None:
            raise ValueError(f"pms {pms!r} is not one of {', '.join(self.personalities)}")
        return f"{self.url}{known.api.mount}"

    def make_app(self) -> web.Application:
        """The aiohttp application: each personality's API once at its mount path, and /_admin."""
        from pms_simulator import admin

        app = web.Application()
        apis: dict[str, Api] = {}
        for personality in self.personalities.values():
            api = personality.api
            if apis.setdefault(api.mount, api) != api:
                raise ValueError(f"{personality.name}: another API is mounted at {api.mount}")
        for mount, api in apis.items():
            app.add_subapp(mount, api.build_app(self))
        app.add_subapp("/_admin", admin.build_app(self))
        return app

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve until the block exits; yields the base URL (e.g. http://127.0.0.1:41234)."""
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        ticker: asyncio.Task[None] | None = None
        inflight: list[asyncio.Future[int]] = []
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1]
            shown = f"[{host}]" if ":" in host else host
            self._url = f"http://{shown}:{bound}"
            if self.autotick:
                ticker = asyncio.create_task(self._tick_forever(inflight))
            yield self._url
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                for job in inflight:
                    await job
            self._url = None
            await runner.cleanup()

    async def _tick_forever(self, inflight: list[asyncio.Future[int]]) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            # Off the event loop (many practices make a tick take a while); shielded so that
            # stopping waits for a tick in progress instead of leaving it running behind us.
            job = asyncio.ensure_future(asyncio.to_thread(self.advance, self.tick_minutes))
            inflight[:] = [job]
            await asyncio.shield(job)

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """`serve()` on a background thread with its own event loop, for synchronous callers."""
        ready = threading.Event()
        box: dict[str, Any] = {}
        loop = asyncio.new_event_loop()

        async def main() -> None:
            """Serve until `stop` is set; report the URL or the failure."""
            stop = asyncio.Event()
            box["stop"] = stop
            try:
                async with self.serve(host, port) as url:
                    box["url"] = url
                    ready.set()
                    await stop.wait()
            except BaseException as exc:
                box["error"] = exc
                ready.set()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        ready.wait(30)
        try:
            if "error" in box:
                raise RuntimeError("the simulator did not start") from box["error"]
            if "url" not in box:
                raise RuntimeError("the simulator did not start within 30 s")
            yield box["url"]
        finally:
            if "stop" in box:
                loop.call_soon_threadsafe(box["stop"].set)
            thread.join(30)
            loop.close()

    def close(self) -> None:
        """Close the database."""
        self.state.close()
