"""`WritebackService`: the queue file, the drainer and the HTTP API, started and stopped as one.

The runtime (`reconciler.runtime`, under the operator and `pmsctl up`) builds one over its
engine (a `PracticeDirectory`):

    service = WritebackService(engine, db_path, load_token())
    url = await service.start("0.0.0.0", 8081)     # opens the file, resumes delivery, serves
    ...
    status_counts = service.counts(practice_id)    # {sent, skipped, pending, failed}
    await service.stop()

`start(host=None)` runs everything but the listener; then mount `service.app` in an aiohttp
runner of your own. With `intake_process=True` (what the runtime builds) the API runs in a
process of its own, started, supervised and stopped by the service (`intake.IntakeProcess`):
acknowledgments then never wait for the engine's or the drainer's Python.

On a store several replicas share (PostgreSQL), pass `shared` (the store's `practice_settings`)
and `practice_ids` (the practices this replica's engine holds): the service publishes each held
practice's snapshot there (`Publisher`), its API decides writebacks for practices another
replica holds from their published snapshots (`SharedDirectory`), its drainer leaves those
practices to their holder, and a writeback stored by any replica wakes the holder's drainer at
once (the store's NOTIFY; the sweep stays the safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from reconciler.writeback import store as ops
from reconciler.writeback.api import MAX_IN_FLIGHT, WritebackApi
from reconciler.writeback.delivery import DeliveryPolicy, Drainer
from reconciler.writeback.errors import WritebackConfigError
from reconciler.writeback.intake import IntakeConfig, IntakeProcess, store_recipe
from reconciler.writeback.metrics import WritebackMetrics
from reconciler.writeback.model import DB_PATH_ENV, DEFAULT_DB_PATH, DEFAULT_MAX_BODY_BYTES
from reconciler.writeback.store import QueueStore, Store
from reconciler.writeback.target import (
    PracticeDirectory,
    SharedDirectory,
    SharedSettings,
    snapshot_json,
)

log = logging.getLogger(__name__)

TOKEN_ENV = "PMSCTL_WRITEBACK_TOKEN"
TOKEN_FILE_ENV = "PMSCTL_WRITEBACK_TOKEN_FILE"
MIN_TOKEN_CHARS = 16
#: The interpreter switch interval while the API thread runs (Python's default is 5 ms). Every
#: SQLite statement and every cross-thread wake-up gives up the GIL; taking it back from a thread
#: that is busy in Python (the drainer, the engine) waits up to one interval. An acknowledgment
#: needs about ten of those, so at 5 ms a busy process made the 202 wait 20-250 ms.
API_SWITCH_INTERVAL = 0.0005


def load_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str:
    """The bearer token: `token`, else `token_file`, else $PMSCTL_WRITEBACK_TOKEN, else the file
    named by $PMSCTL_WRITEBACK_TOKEN_FILE (a mounted Secret key). WritebackConfigError if none."""
    source = "the token argument"
    if token is None and token_file is None:
        token = os.environ.get(TOKEN_ENV) or None
        source = f"${TOKEN_ENV}"
        if token is None and os.environ.get(TOKEN_FILE_ENV):
            token_file = os.environ[TOKEN_FILE_ENV]
    if token is None and token_file is not None:
        source = f"token file {os.fspath(token_file)}"
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise WritebackConfigError(
                f"{os.fspath(token_file)}: cannot read the writeback token: {exc.strerror}"
            ) from exc
    if not token:
        raise WritebackConfigError(
            f"no writeback token: set ${TOKEN_ENV}, or ${TOKEN_FILE_ENV} to a file holding it "
            "(in the cluster: a Secret key mounted as a file)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise WritebackConfigError(
            f"the writeback token from {source} is {len(token)} characters; use at least "
            f"{MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)"
        )
    return token


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve `app` on host:port on the running loop; returns the runner and the base URL."""
    # lingering_time: after an early answer (401, 413) to a client still sending its body, read
    # and drop the rest for at most 1 s instead of aiohttp's default 10 s.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, lingering_time=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"


#: How often the publisher looks at the held practices' snapshots ...
PUBLISH_SECONDS = 0.1
#: ... and at most how many each time (10,000 practices: a change is published within 2 s).
PUBLISH_BATCH = 500
#: While the store refuses, try again this often.
PUBLISH_RETRY_SECONDS = 1.0


class Publisher:
    """Keeps `practice_settings` up to date with the practices this replica holds: a changed
    snapshot is published, a practice that left the engine (its resource deleted) withdrawn.
    A replica that stops withdraws nothing: the next holder publishes over its rows."""

    def __init__(
        self,
        directory: PracticeDirectory,
        practice_ids: Callable[[], Iterable[str]],
        shared: SharedSettings,
    ) -> None:
        self.directory = directory
        self.practice_ids = practice_ids
        self.shared = shared
        self._published: dict[str, Any] = {}  # practice id -> the snapshot stored
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="practice-settings-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        todo: list[str] = []
        while True:
            if not todo:
                held = set(self.practice_ids())
                for pid in [p for p in self._published if p not in held]:
                    if not await self._call(self.shared.withdraw, pid):
                        break
                    self._published.pop(pid, None)
                todo = sorted(held)
            batch, todo = todo[:PUBLISH_BATCH], todo[PUBLISH_BATCH:]
            for n, pid in enumerate(batch):
                target = self.directory.target(pid)
                if target is None:
                    continue
                now = dataclasses.replace(target, driver=None)
                if self._published.get(pid) == now:
                    continue
                if not await self._call(self.shared.publish, pid, snapshot_json(now)):
                    todo = batch[n:] + todo  # the store is down: these go first next time
                    break
                self._published[pid] = now
            await asyncio.sleep(PUBLISH_SECONDS if not self._failing else PUBLISH_RETRY_SECONDS)

    async def _call(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            await asyncio.to_thread(fn, *args)
        except Exception as exc:  # the store is down: said once, tried again later
            if not self._failing:
                log.warning("practice settings: cannot publish (trying again): %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("practice settings: publishing again")
        self._failing = False
        return True


def default_db_path() -> str:
    """$PMSCTL_WRITEBACK_DB, else `.pmsctl/writebacks.db`."""
    return os.environ.get(DB_PATH_ENV) or DEFAULT_DB_PATH


class WritebackService:
    """The writeback path for one process: queue file + drainer + HTTP API."""

    def __init__(
        self,
        directory: PracticeDirectory,
        db_path: str | os.PathLike[str],
        token: str,
        *,
        policy: DeliveryPolicy | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        registry: CollectorRegistry | None = None,
        metrics: WritebackMetrics | None = None,
        synchronous: str = "FULL",
        api_thread: bool = True,
        switch_interval: float | None = API_SWITCH_INTERVAL,
        store: QueueStore | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        intake_process: bool = False,
        shared: SharedSettings | None = None,
        practice_ids: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        if not token:
            raise WritebackConfigError("WritebackService needs a token (see load_token())")
        self.directory = directory
        # `store`: a queue from `reconciler.stores` (e.g. PostgreSQL); else the SQLite file.
        self.store: QueueStore = (
            store if store is not None else Store(db_path, synchronous=synchronous)
        )
        # `metrics` shares metric objects already registered (the process's, see
        # `process_metrics()`); else they are registered anew in `registry` (None: a private one).
        self.metrics = metrics if metrics is not None else WritebackMetrics.create(registry)
        #: The practices the API knows: with `shared`, also those other replicas hold.
        self.shared = shared
        api_directory: PracticeDirectory = directory
        elsewhere: Callable[[str], bool] | None = None
        self.publisher: Publisher | None = None
        if shared is not None:
            both = SharedDirectory(directory, shared)
            api_directory, elsewhere = both, both.held_elsewhere
            if practice_ids is not None:
                self.publisher = Publisher(directory, practice_ids, shared)
        self.drainer = Drainer(
            self.store, directory, policy=policy, metrics=self.metrics, elsewhere=elsewhere
        )
        self.api = WritebackApi(
            store=self.store,
            drainer=self.drainer,
            directory=api_directory,
            token=token,
            metrics=self.metrics,
            max_body_bytes=max_body_bytes,
            max_in_flight=max_in_flight,
        )
        self.app: web.Application = self.api.app()
        self.url: str | None = None
        self._api_thread = api_thread
        #: With `intake_process`, the API runs in a process of its own (`intake.IntakeProcess`).
        self.intake: IntakeProcess | None = None
        if intake_process:
            self.intake = IntakeProcess(
                directory=api_directory,
                drainer=self.drainer,
                metrics=self.metrics,
                config=IntakeConfig(
                    token=token,
                    store=store_recipe(self.store),
                    max_body_bytes=max_body_bytes,
                    max_in_flight=max_in_flight,
                    loading=None,
                    switch_interval=switch_interval,
                ),
            )
        self._switch_interval = switch_interval
        self._switch_restore: tuple[float, float] | None = None  # (ours, the one before)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_box: dict[str, Any] = {}

    async def start(self, host: str | None = "127.0.0.1", port: int = 8081) -> str | None:
        """Open the queue, resume delivery, and (unless host is None) serve the API.

        Returns the base URL it listens on (port 0 picks a free port), or None without a listener.
        With `api_thread` (the default) the API runs on its own thread and event loop, so a
        busy drainer (hundreds of practices' PMS calls on the engine's loop) does not delay
        acknowledgments; the store, the metrics and `directory.target()` are safe to use from it.
        While it runs, the process's switch interval is at most `switch_interval` (see
        `API_SWITCH_INTERVAL`; None leaves it alone); `stop()` puts the previous one back.
        """
        self.store.open()
        await self.drainer.start()
        if self.shared is not None:
            await asyncio.to_thread(self.shared.start, self._changed, self._stored)
        if self.publisher is not None:
            self.publisher.start()
        if host is None:
            return None
        if self.intake is not None:
            self.url = await self.intake.start(host, port)
        elif self._api_thread:
            self._shorten_switch_interval()
            try:
                self.url = await self._serve_in_thread(host, port)
            except BaseException:
                self._restore_switch_interval()
                raise
        else:
            self._runner, self.url = await _serve(self.app, host, port)
        return self.url

    def _changed(self, practice_id: str) -> None:
        """A practice's published snapshot changed (the API reads it from the cache)."""

    def _stored(self, practice_id: str) -> None:
        """Some replica stored a writeback for `practice_id`: deliver it now if it is ours."""
        if self.directory.target(practice_id) is not None:
            self.drainer.notify_threadsafe(practice_id)

    async def _serve_in_thread(self, host: str, port: int) -> str:
        ready = threading.Event()
        box: dict[str, Any] = {}

        def main() -> None:
            loop = asyncio.new_event_loop()
            box["loop"] = loop

            async def run() -> None:
                stop = asyncio.Event()
                box["stop"] = stop
                runner, box["url"] = await _serve(self.app, host, port)
                ready.set()
                try:
                    await stop.wait()
                finally:
                    await runner.cleanup()

            try:
                loop.run_until_complete(run())
            except BaseException as exc:  # reported to start()'s caller
                box["error"] = exc
            finally:
                ready.set()
                loop.close()

        thread = threading.Thread(target=main, name="writeback-api", daemon=True)
        thread.start()
        await asyncio.to_thread(ready.wait, 30)
        if "error" in box or "url" not in box:
            await asyncio.to_thread(thread.join, 5)
            raise WritebackConfigError(
                f"the writeback API cannot listen on {host}:{port}: {box.get('error', 'timeout')}"
            ) from box.get("error")
        self._thread, self._thread_box = thread, box
        return str(box["url"])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop serving, let running deliveries finish (up to `grace` s), close the queue file."""
        if self.intake is not None:
            await self.intake.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._thread is not None:
            box = self._thread_box
            with contextlib.suppress(RuntimeError):  # its loop already ended
                box["loop"].call_soon_threadsafe(box["stop"].set)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None
        if self.publisher is not None:
            await self.publisher.stop()
        if self.shared is not None:
            await asyncio.to_thread(self.shared.stop)
        await self.drainer.stop(grace)
        self.store.close()
        self._restore_switch_interval()

    def _shorten_switch_interval(self) -> None:
        before = sys.getswitchinterval()
        if self._switch_interval is not None and self._switch_interval < before:
            sys.setswitchinterval(self._switch_interval)
            self._switch_restore = (sys.getswitchinterval(), before)

    def _restore_switch_interval(self) -> None:
        # Only if nobody changed it since (another service in the process may have).
        if self._switch_restore is not None:
            ours, before = self._switch_restore
            if sys.getswitchinterval() == ours:
                sys.setswitchinterval(before)
            self._switch_restore = None

    def counts(self, practice_id: str) -> dict[str, int]:
        """{sent, skipped, pending, failed} for one practice (one indexed query; cheap)."""
        return self.store.read(lambda c: ops.counts(c, practice_id))
