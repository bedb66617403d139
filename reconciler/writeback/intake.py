"""The intake process: the writeback HTTP API in a process of its own, beside the engine's.

An acknowledgment is validate -> decide -> durable commit -> answer: a few hundred microseconds
of Python and one group commit. In the engine's process it shares the interpreter lock with the
drainer and the engine (hundreds of practices' polls and PMS writes), and at 1,000 requests a
second waiting for that lock, not the commit, made the p99. Here the API runs alone:

    engine's process (WritebackService)              intake process (`python -m ...intake`)
      IntakeProcess  --- control socket (pickle) ---  IntakeChild: WritebackApi over
        binds the port, passes it down                   its own store connection (same queue),
        answers "ask pid" with a snapshot                a SnapshotDirectory (targets, no driver),
        pushes changed snapshots, readiness              a RemoteDrainer (wake-ups, pacing),
        feeds wake-ups to the Drainer                     metrics forwarded up
        applies forwarded metrics to its registry
        restarts the child if it dies

- The listening socket is the parent's: a child that dies and is restarted takes over the same
  socket, so callers see a connection wait, never a refused connection.
- A practice's snapshot is what `decide()` and the patient id check need: the engine's
  `WritebackTarget` without the driver. The child asks for one the first time it sees a practice
  id (an unknown id is asked again each time: it may be a practice just added); the parent
  pushes a practice's new snapshot within `REFRESH_SECONDS` of a change. A request decided on a
  snapshot that was just overtaken is decided again at delivery (`Drainer`), so a setting
  withdrawn meanwhile skips it, never writes it wrongly.
- Metrics: the child counts in a private registry and sends the increments (and each ack's
  seconds) up at the end of each loop turn; `GET /metrics` on the API port asks the parent for
  the process's one exposition, so the metric names and the one /metrics stay as they were.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Histogram, generate_latest

from reconciler.writeback.errors import WritebackConfigError
from reconciler.writeback.metrics import WritebackMetrics
from reconciler.writeback.store import QueueStore, Store
from reconciler.writeback.target import PracticeDirectory, WritebackTarget, not_ready

log = logging.getLogger(__name__)

#: How often the parent looks for changed snapshots of the practices the child holds ...
REFRESH_SECONDS = 0.1
#: ... and at most how many it looks at each time (the next ones the next time): with 10,000
#: practices held a change reaches the child within 2 s, for about 2.5 % of a core.
REFRESH_BATCH = 500
#: Wait this long before starting a child that died again, doubled for each child in a row
#: that died before serving (its queue unreachable at start), up to `RESTART_DELAY_MAX`: a
#: crash loop must not spend the CPU the engine needs on starting interpreters.
RESTART_DELAY = 0.5
RESTART_DELAY_MAX = 10.0
#: How long a new child may take to import and serve before it counts as failed.
START_TIMEOUT = 60.0
_HEADER = struct.Struct("!I")


# --- framing: length-prefixed pickles over a Unix socket pair (parent and child only) ---------


def _frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream."""
    try:
        size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return message


def snapshot(target: WritebackTarget | None) -> WritebackTarget | None:
    """What the intake process holds of a practice: the target without its driver."""
    if target is None or target.driver is None:
        return target
    return dataclasses.replace(target, driver=None)


@dataclass(frozen=True)
class IntakeConfig:
    """What the child needs; sent as the first message (the token never goes on a command
    line or into the environment of the child)."""

    token: str
    #: Rebuilds the queue in the child: ("sqlite", path, synchronous) or ("backend", backend).
    store: tuple[Any, ...]
    max_body_bytes: int
    max_in_flight: int
    loading: str | None
    switch_interval: float | None


def store_recipe(store: QueueStore) -> tuple[Any, ...]:
    """How the child opens the same queue as `store` (its own connections)."""
    if type(store) is Store:
        return ("sqlite", store.path, store.synchronous)
    backend = getattr(store, "backend", None)
    if backend is not None:  # a `reconciler.stores` backend: its settings pickle, not its sockets
        return ("backend", backend)
    raise WritebackConfigError(
        f"the writeback queue {store.path} cannot be opened by the intake process"
    )


def _open_store(recipe: tuple[Any, ...]) -> QueueStore:
    if recipe[0] == "sqlite":
        return Store(recipe[1], synchronous=recipe[2])
    store: QueueStore = recipe[1].queue_store()
    return store


# --- the parent's side ------------------------------------------------------------------------


class _Link:
    """The parent's end of one child's control socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.held: dict[str, WritebackTarget] = {}  # the snapshots the child holds

    def send(self, *message: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(message))


class IntakeProcess:
    """Runs and supervises the intake process for a `WritebackService` (see the module doc)."""

    def __init__(
        self,
        *,
        directory: PracticeDirectory,
        drainer: Any,
        metrics: WritebackMetrics,
        config: IntakeConfig,
    ) -> None:
        self.directory = directory
        self.drainer = drainer
        self.metrics = metrics
        self.config = config
        self.url: str | None = None
        #: How many children were started (1 + restarts).
        self.starts = 0
        self.process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._link: _Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready_sent: str | None = config.loading

    async def start(self, host: str, port: int) -> str:
        """Bind host:port, start the child, and return the base URL once it serves."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            # Worded as asyncio words a failed bind, which callers show (`pmsctl up`'s exit 2).
            why = (exc.strerror or str(exc)).lower()
            cause = OSError(exc.errno, f"error while attempting to bind on {(host, port)!r}: {why}")
            raise WritebackConfigError(
                f"the writeback API cannot listen on {host}:{port}: {cause}"
            ) from cause
        sock.set_inheritable(True)
        self._sock = sock
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{sock.getsockname()[1]}"
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first))
        try:
            await first
        except BaseException:
            await self.stop(grace=1.0)
            raise
        self._refresher = asyncio.create_task(self._refresh())
        return self.url

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the child (it finishes the requests it has), then close the socket."""
        self._stopping = True
        for task in (self._refresher,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        link, proc = self._link, self.process
        if link is not None:
            link.send("stop")
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), grace + 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            served = False
            try:
                served = await self._run_child(first)
            except Exception as exc:
                if not first.done():
                    first.set_exception(exc)
                    return
                log.error("writeback intake process: %s", exc)
            if self._stopping:
                return
            delay = RESTART_DELAY if served else min(delay * 2, RESTART_DELAY_MAX)
            code = self.process.returncode if self.process is not None else None
            log.error("the writeback intake process exited (code %s); starting it again in "
                      "%.1f s", code, delay)  # fmt: skip
            await asyncio.sleep(delay)

    async def _run_child(self, first: asyncio.Future[None]) -> bool:
        """Run one child until it exits; True if it served (said "up") before."""
        assert self._sock is not None
        ours, theirs = socket.socketpair()
        try:
            theirs.set_inheritable(True)
            fds = (theirs.fileno(), self._sock.fileno())
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "reconciler.writeback.intake",
                "--control", str(fds[0]), "--listen", str(fds[1]),
                pass_fds=fds, start_new_session=False,
            )  # fmt: skip
        finally:
            theirs.close()
        self.starts += 1
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        link = _Link(reader, writer)
        config = dataclasses.replace(self.config, loading=not_ready(self.directory))
        self._ready_sent = config.loading
        link.send("config", config)
        try:
            message = await asyncio.wait_for(_receive(reader), START_TIMEOUT)
            if message is None or message[0] != "up":
                why = message[1] if message is not None and message[0] == "failed" else "exited"
                raise WritebackConfigError(f"the writeback intake process did not start: {why}")
            self._link = link
            if not first.done():
                first.set_result(None)
            while (message := await _receive(reader)) is not None:
                self._handle(link, message)
            return True
        finally:
            self._link = None
            writer.close()
            proc = self.process
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5.0)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    def _handle(self, link: _Link, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ask":
            pid = message[1]
            target = snapshot(self.directory.target(pid))
            if target is not None:
                link.held[pid] = target
            self._ready_sent = why = not_ready(self.directory)
            link.send("target", pid, target, why)
        elif kind == "ready?":
            self._ready_sent = why = not_ready(self.directory)
            link.send("ready", why)
        elif kind == "events":
            _, notes, sweep, acks, lag, counts, depth, ack_times = message
            for pid, now in notes:
                self.drainer.notify(pid, now=now)
            if sweep:
                task = asyncio.create_task(self.drainer.sweep())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            for _ in range(acks):
                self.drainer.pacer.ack()
            if lag:
                self.drainer.pacer.lag(lag)
            for labels, n in counts:
                self.metrics.writebacks.labels(*labels).inc(n)
            if depth:
                self.metrics.queue_depth.inc(depth)
            for seconds in ack_times:
                self.metrics.ack_seconds.observe(seconds)
        elif kind == "log":  # the child's log line, through this process's handlers
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "metrics?":
            link.send("metrics", message[1], generate_latest(self.metrics.registry))

    async def _refresh(self) -> None:
        """Push the snapshots that changed, and the readiness when it changes."""
        todo: list[str] = []
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            link = self._link
            if link is None:
                continue
            why = not_ready(self.directory)
            if why != self._ready_sent:
                self._ready_sent = why
                link.send("ready", why)
            if not todo:
                todo = list(link.held)
            batch, todo = todo[:REFRESH_BATCH], todo[REFRESH_BATCH:]
            for pid in batch:
                held = link.held.get(pid)
                if held is None:
                    continue
                now = snapshot(self.directory.target(pid))
                if now != held:
                    if now is None:
                        del link.held[pid]
                    else:
                        link.held[pid] = now
                    link.send("target", pid, now, why)


# --- the child's side -------------------------------------------------------------------------


class SnapshotDirectory:
    """The child's `FetchingDirectory`/`LoadingDirectory`: the snapshots the parent sent."""

    def __init__(self, child: IntakeChild, loading: str | None) -> None:
        self._child = child
        self.targets: dict[str, WritebackTarget] = {}
        self.loading = loading
        self._asking: dict[str, asyncio.Future[WritebackTarget | None]] = {}
        self._asking_ready: asyncio.Future[str | None] | None = None

    def target(self, practice_id: str) -> WritebackTarget | None:
        return self.targets.get(practice_id)

    async def fetch(self, practice_id: str) -> WritebackTarget | None:
        held = self.targets.get(practice_id)
        if held is not None:
            return held
        waiting = self._asking.get(practice_id)
        if waiting is None:
            waiting = asyncio.get_running_loop().create_future()
            self._asking[practice_id] = waiting
            self._child.send("ask", practice_id)
        return await asyncio.shield(waiting)

    async def fetch_not_ready(self) -> str | None:
        if self.loading is None:  # loaded stays loaded: no need to ask
            return None
        if self._asking_ready is None:
            self._asking_ready = asyncio.get_running_loop().create_future()
            self._child.send("ready?")
        return await asyncio.shield(self._asking_ready)

    def ready(self, why: str | None) -> None:
        self.loading = why
        waiting, self._asking_ready = self._asking_ready, None
        if waiting is not None and not waiting.done():
            waiting.set_result(why)

    def answered(self, practice_id: str, target: WritebackTarget | None, why: str | None) -> None:
        self.loading = why
        if target is None:
            self.targets.pop(practice_id, None)
        else:
            self.targets[practice_id] = target
        waiting = self._asking.pop(practice_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(target)

    def not_ready(self) -> str | None:
        return self.loading


class RemotePacer:
    """The child's side of the drainer's pacer: counts acks and the loop's lag for the parent."""

    def __init__(self, child: IntakeChild) -> None:
        self._child = child
        self._last_ack = 0.0

    @property
    def busy(self) -> bool:
        return time.monotonic() - self._last_ack < 0.5

    def ack(self) -> None:
        self._last_ack = time.monotonic()
        self._child.acks += 1
        self._child.flush_soon()

    def lag(self, seconds: float) -> None:
        self._child.lag = max(self._child.lag, seconds)


class RemoteDrainer:
    """The child's `DrainerLink`: wake-ups and sweeps go to the parent's drainer."""

    def __init__(self, child: IntakeChild) -> None:
        self._child = child
        self.pacer = RemotePacer(child)

    def notify_threadsafe(self, practice_id: str, *, now: bool = False) -> None:
        self._child.notes.append((practice_id, now))
        self._child.flush_soon()

    async def sweep_threadsafe(self) -> None:
        self._child.sweep = True
        self._child.flush_soon()


class _ForwardLogs(logging.Handler):
    """Sends the child's log records to the parent, which logs them through its own handlers
    (its format, its file: `pmsctl up` owns the terminal, the child must not write to it)."""

    def __init__(self, child: IntakeChild) -> None:
        super().__init__()
        self._child = child

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._child.send("log", record.name, record.levelno, text)
        except Exception:
            self.handleError(record)


class _RecordingHistogram(Histogram):
    """A histogram that also keeps each observation for the parent."""

    def __init__(self, child: IntakeChild, *args: Any, **kwargs: Any) -> None:
        self._child = child
        super().__init__(*args, **kwargs)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._child.ack_times.append(amount)
        super().observe(amount, exemplar)


@dataclass
class IntakeChild:
    """The intake process: the API over its own queue connection (see the module doc)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    notes: list[tuple[str, bool]] = field(default_factory=list)
    sweep: bool = False
    acks: int = 0
    lag: float = 0.0
    ack_times: list[float] = field(default_factory=list)
    _counted: dict[tuple[str, ...], float] = field(default_factory=dict)
    _depth: float = 0.0
    _flushing: bool = False
    _metrics: WritebackMetrics | None = None
    _exposition: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)

    def send(self, *message: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(message))

    def flush_soon(self) -> None:
        """Send what happened once the loop has run what is ready (one message per turn)."""
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flushing = False
        counts: list[tuple[tuple[str, ...], float]] = []
        depth = 0.0
        if self._metrics is not None:
            for metric in self._metrics.writebacks.collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    labels = (
                        sample.labels["kind"],
                        sample.labels["type"],
                        sample.labels["outcome"],
                    )
                    delta = sample.value - self._counted.get(labels, 0.0)
                    if delta:
                        counts.append((labels, delta))
                        self._counted[labels] = sample.value
            value = next(iter(self._metrics.queue_depth.collect())).samples[0].value
            depth, self._depth = value - self._depth, value
        if not (self.notes or self.sweep or self.acks or counts or depth or self.ack_times):
            return
        self.send("events", self.notes, self.sweep, self.acks, self.lag, counts, depth,
                  self.ack_times)  # fmt: skip
        self.notes, self.sweep, self.acks, self.lag, self.ack_times = [], False, 0, 0.0, []

    async def exposition(self) -> bytes:
        """The parent's /metrics (this process's counts sent first)."""
        self.flush()
        rid = id(object())
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._exposition[rid] = fut
        self.send("metrics?", rid)
        return await fut

    async def run(self, listen: socket.socket) -> int:
        from reconciler.writeback.api import WritebackApi

        message = await _receive(self.reader)
        if message is None or message[0] != "config":
            return 2
        config: IntakeConfig = message[1]
        if config.switch_interval is not None:
            sys.setswitchinterval(min(sys.getswitchinterval(), config.switch_interval))
        metrics = WritebackMetrics.create(None)
        metrics = dataclasses.replace(
            metrics,
            ack_seconds=_RecordingHistogram(
                self, "pmsctl_writeback_ack_seconds", "ack", registry=None
            ),
        )
        self._metrics = metrics
        directory = SnapshotDirectory(self, config.loading)
        try:
            store = _open_store(config.store)
            store.open()
        except Exception as exc:  # told to the parent, which reports it
            self.send("failed", f"{type(exc).__name__}: {exc}")
            await self.writer.drain()
            return 1
        api = WritebackApi(
            store=store,
            drainer=RemoteDrainer(self),
            directory=directory,
            token=config.token,
            metrics=metrics,
            max_body_bytes=config.max_body_bytes,
            max_in_flight=config.max_in_flight,
            exposition=self.exposition,
        )
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, listen).start()
        self.send("up")
        try:
            while (message := await _receive(self.reader)) is not None:
                kind = message[0]
                if kind == "target":
                    directory.answered(message[1], message[2], message[3])
                elif kind == "ready":
                    directory.ready(message[1])
                elif kind == "metrics":
                    fut = self._exposition.pop(message[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(message[2])
                elif kind == "stop":
                    break
        finally:
            await runner.cleanup()  # finishes the requests in progress
            self.flush()
            store.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            self.writer.close()
        return 0


async def _child_main(control_fd: int, listen_fd: int) -> int:
    control = socket.socket(fileno=control_fd)
    listen = socket.socket(fileno=listen_fd)
    reader, writer = await asyncio.open_unix_connection(sock=control)
    # The parent stops it over the control socket (or by closing it, when the parent dies): a
    # ^C on the terminal or a SIGTERM to the process group is the parent's to act on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = IntakeChild(reader, writer)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(child)]
    root.setLevel(logging.INFO)
    return await child.run(listen)


def main(argv: list[str] | None = None) -> int:
    """`python -m reconciler.writeback.intake --control FD --listen FD` (started by
    `IntakeProcess`, never by hand)."""
    parser = argparse.ArgumentParser(description="pmsctl's writeback intake process")
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--listen", type=int, required=True)
    args = parser.parse_args(argv)
    return asyncio.run(_child_main(args.control, args.listen))


if __name__ == "__main__":
    sys.exit(main())
