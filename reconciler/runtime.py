"""The process runtime both adapters build: one `Runtime` owns what `pmsctl operator` and
`pmsctl up` run alike, so neither wires it a second time.

    runtime = Runtime(options, secrets=..., on_status=..., connection_override=..., settings=...)
    await runtime.start()      # engine; writeback queue, drainer and API; the metrics server
    ...                        # the adapter feeds runtime.engine its desired state
    await runtime.stop()       # writeback API and drainer, then the engine, then metrics

What it owns: the event sink and the cursor store (built from `RuntimeOptions`: SQLite files, or
the shared store `store_url` names, see `reconciler.stores`), the `Engine` over them (with the
adapter's secret source, status listener, catalog listener, connection override and settings),
the writeback service over the engine (its counters reach each practice's status
through `Engine.watch_writebacks`), the Prometheus server for the process's one registry (engine
and writeback metrics on one port), SIGINT/SIGTERM turned into one stop event, and the logging
setup. What it does not own: where the desired state comes from (Kubernetes or a folder), how
status is shown (status subresource or a terminal table), leader election, or display options:
those stay in `reconciler.kube` and `reconciler.local`.

Loading: an adapter that passes `loading="why"` gets a writeback API that answers 503 +
Retry-After for a practice it does not know (and on /readyz) until it calls `loaded()`, once
its practices are in the engine: a client must not take "not loaded yet" for "no such
practice" (404).

Stopping goes in dependency order: the writeback API and drainer first (deliveries use the
engine's PMS clients), then the engine (pollers, last statuses, clients, sink, cursor store),
then the metrics server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from reconciler import private
from reconciler.engine import metrics as engine_metrics
from reconciler.engine.catalog import CatalogListener
from reconciler.engine.cursors import CursorStore, SqliteCursorStore
from reconciler.engine.engine import (
    ConnectionOverride,
    Engine,
    EngineSettings,
    SecretSource,
    StatusListener,
)
from reconciler.engine.sink import EventSink, sink_from_url
from reconciler.stores import Backend, backend_from_url

if TYPE_CHECKING:
    from reconciler.stores.claims import FleetClaims
    from reconciler.writeback.service import WritebackService
    from reconciler.writeback.store import QueueStore
    from reconciler.writeback.target import StartupGate

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
#: Called on SIGINT/SIGTERM with the signal and whether the stop event was already set.
SignalHook = Callable[[signal.Signals, bool], None]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    """What the runtime runs with, resolved by an adapter from its flags. No display options:
    how status is shown is the adapter's business."""

    #: Where poller events go: `file:PATH` (JSON lines) or an http(s) URL (CloudEvents batches).
    sink_url: str = "file:pmsctl-events.jsonl"
    #: The SQLite file of the pollers' cursors.
    state_db: Path = Path("pmsctl-state.db")
    #: The address the writeback API and the metrics server listen on.
    listen_host: str = "0.0.0.0"
    #: The writeback API's port (0: any free port; None: no writeback service at all).
    writeback_port: int | None = None
    #: The writeback API's bearer token (see `writeback_token`); needed with a writeback port.
    writeback_token: str | None = field(default=None, repr=False)
    #: The SQLite queue of accepted writebacks.
    writeback_db: Path = Path(".pmsctl/writebacks.db")
    #: Serve the writeback API from a process of its own (`reconciler.writeback.intake`)
    #: instead of its own thread and event loop here. The thread is the default: on the 2-core
    #: benchmark machine its ack p99 was lower in every paired run (bench/bench_ack.py,
    #: `service` vs `inproc`); the process gives the API a core of its own where there are more.
    writeback_intake_process: bool = False
    #: A shared store for the cursors and the writeback queue instead of the two SQLite files
    #: (`postgresql://...`; see `reconciler.stores`). None: the SQLite files.
    store_url: str | None = field(default=None, repr=False)
    #: A file holding the store's password (a mounted Secret key), when not in `store_url`.
    store_password_file: Path | None = None
    #: Replicas share the fleet through the store's claims (`reconciler.stores.claims`, needs
    #: a PostgreSQL `store_url`): the name of the group of replicas sharing one fleet, and
    #: `Runtime.claims` says which practices this one may run. None: no sharing.
    share: str | None = None
    #: Prometheus /metrics of the whole process on this port (0: not served).
    metrics_port: int = 0
    log_format: LogFormat = "text"
    log_level: LogLevel = "info"
    #: Log to this file instead of stderr (when the adapter owns the terminal).
    log_file: Path | None = None


def replica_name() -> str:
    """This process's name among the replicas sharing a store: $POD_NAME (the Deployment's
    downward API) or the host name, and the process id."""
    import socket

    return f"{os.environ.get('POD_NAME') or socket.gethostname()}:{os.getpid()}"


def check_sink_url(url: str) -> None:
    """ValueError naming the fix when `url` is not a sink `sink_from_url` can build. Opens
    nothing, so an adapter can check its flags before it holds anything."""
    if url.startswith(("http://", "https://")):
        return
    if not url.removeprefix("file:").removeprefix("//"):
        sink_from_url(url)  # raises, naming the fix


def check_store_url(url: str) -> None:
    """ValueError naming the fix (and not the password) when `url` names no known store
    backend. Connects to nothing."""
    from reconciler.stores import BACKENDS, scheme, scrub

    if scheme(url) not in BACKENDS:
        known = ", ".join(f"{s}://" for s in BACKENDS)
        raise ValueError(f"--store {scrub(url)}: unknown store; use {known}")


def writeback_token(made_file: Path | None = None) -> tuple[str, str]:
    """(token, where it came from) for the writeback API: $PMSCTL_WRITEBACK_TOKEN or the file
    named by $PMSCTL_WRITEBACK_TOKEN_FILE; without either, `made_file` (created once with a
    random token, mode 0600) when given. WritebackConfigError saying how to configure one."""
    from reconciler.writeback.service import TOKEN_ENV, TOKEN_FILE_ENV, load_token

    if os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_FILE_ENV) or made_file is None:
        token = load_token()
        from_env = bool(os.environ.get(TOKEN_ENV))
        return token, f"${TOKEN_ENV}" if from_env else os.environ.get(TOKEN_FILE_ENV, "")
    if not made_file.exists():
        private.private_dir(made_file.parent)
        fd = os.open(made_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32) + "\n")
    return load_token(token_file=made_file), str(made_file)


#: The attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
    """One JSON object a line (timestamp, level, logger, message, plus every field a caller
    passed with `extra=`, as keys of their own), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, object] = {
            "timestamp": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(options: RuntimeOptions) -> None:
    """Root logger at `log_level`; httpx's one line per PMS request only at `debug` (at any other
    level they would drown the lifecycle and configuration lines). A handler (stderr, or
    `log_file`; text or JSON) is added only when the root logger has none: an adapter (Kopf's
    own format) or a test harness that configured logging keeps its handlers."""
    root = logging.getLogger()
    if not root.handlers:
        if options.log_file is not None:  # lines name practices and patients: 0600 in 0700
            private.private_dir(options.log_file.parent)
            private.private_file(options.log_file)
        handler: logging.Handler = (
            logging.FileHandler(options.log_file, encoding="utf-8")
            if options.log_file is not None
            else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(
            _JsonFormatter()
            if options.log_format == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    root.setLevel(options.log_level.upper())
    # httpx's request lines are INFO records; httpcore's connection chatter stays off even then.
    logging.getLogger("httpx").setLevel(
        logging.NOTSET if options.log_level == "debug" else logging.WARNING
    )
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def stop_on_signals(stop: asyncio.Event, hook: SignalHook | None = None) -> Callable[[], None]:
    """SIGINT and SIGTERM set `stop` (after calling `hook`, which may exit on a repeat); returns
    the function that removes the handlers again."""
    loop = asyncio.get_running_loop()

    def received(sig: signal.Signals) -> None:
        repeated = stop.is_set()
        if hook is not None:
            hook(sig, repeated)
        elif not repeated:
            log.info("%s received: stopping", sig.name)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, received, sig)

    def remove() -> None:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)

    return remove


class Runtime:
    """The engine and everything around it that both adapters run; see the module docstring.

    Construction opens the cursor store and a file sink (so build it only once this process
    may work, e.g. after taking a Lease); `start()` starts the engine, the writeback service and
    the metrics server; `stop()` stops them in the reverse order and may be called once after
    a failed or partial start. `async with runtime:` does both and removes signal handlers.
    """

    def __init__(
        self,
        options: RuntimeOptions,
        *,
        secrets: SecretSource,
        settings: EngineSettings | None = None,
        on_status: StatusListener | None = None,
        connection_override: ConnectionOverride | None = None,
        stop: asyncio.Event | None = None,
        sink: EventSink | None = None,
        on_catalog: CatalogListener | None = None,
        loading: str | None = None,
    ) -> None:
        if options.writeback_port is not None and not options.writeback_token:
            raise ValueError("a writeback port needs a writeback token (see writeback_token())")
        self.options = options
        #: Set by SIGINT/SIGTERM (after `handle_signals()`) or by the adapter: time to stop.
        self.stop_event = stop if stop is not None else asyncio.Event()
        #: `sink` is one already built (a test's, a benchmark's); else `options.sink_url`'s.
        self.sink: EventSink = sink if sink is not None else sink_from_url(options.sink_url)
        backend: Backend | None = None
        self.store: CursorStore
        #: This replica's membership and claims when sharing the fleet (`options.share`).
        self.claims: FleetClaims | None = None
        queue: QueueStore | None = None
        if options.store_url:
            backend = backend_from_url(options.store_url, password_file=options.store_password_file)
            backend.migrate()
            self.store = backend.cursor_store()
            queue = backend.queue_store()
            if options.share is not None:
                from reconciler.stores.claims import FleetClaims, OwnedQueueStore
                from reconciler.stores.postgres import PostgresBackend

                if not isinstance(backend, PostgresBackend):
                    raise ValueError("sharing the fleet needs a postgresql:// store")
                self.claims = FleetClaims(backend, options.share)
                queue = OwnedQueueStore(backend, self.claims.owns)
        elif options.share is not None:
            raise ValueError("sharing the fleet needs a postgresql:// store (--store)")
        else:
            self.store = SqliteCursorStore(options.state_db)
        self.engine = Engine(
            sink=self.sink,
            store=self.store,
            secrets=secrets,
            settings=settings,
            on_status=on_status,
            connection_override=connection_override,
            on_catalog=on_catalog,
        )
        self.writebacks: WritebackService | None = None
        self._gate: StartupGate | None = None
        if options.writeback_port is not None and options.writeback_token:
            from reconciler.writeback import metrics as writeback_metrics
            from reconciler.writeback.service import WritebackService
            from reconciler.writeback.target import StartupGate

            self._gate = StartupGate(self.engine, loading)
            # A shared store: other replicas' APIs decide this engine's practices from the
            # snapshots it publishes, and this API decides theirs.
            shared = backend.shared_settings(replica_name()) if backend is not None else None
            self.writebacks = WritebackService(
                self._gate,
                options.writeback_db,
                options.writeback_token,
                metrics=writeback_metrics.process_metrics(),
                store=queue,
                intake_process=options.writeback_intake_process,
                shared=shared,
                practice_ids=self._practice_ids,
            )
        #: The writeback API's base URL once started.
        self.writeback_url: str | None = None
        self._metrics: engine_metrics.MetricsServer | None = None
        self._remove_signals: Callable[[], None] | None = None
        self._started = False

    def _practice_ids(self) -> list[str]:
        """The practice ids the engine holds (what this replica publishes)."""
        specs = (self.engine.spec(key) for key in self.engine.keys())  # noqa: SIM118
        return [spec.practice_id for spec in specs if spec is not None]

    @property
    def metrics_url(self) -> str | None:
        """The metrics server's base URL once started (None when not served)."""
        return self._metrics.url if self._metrics is not None else None

    def loaded(self) -> None:
        """The adapter's practices are in the engine: an unknown practice is 404 from now on
        (and /readyz answers 200). Idempotent."""
        if self._gate is not None and self._gate.not_ready() is not None:
            self._gate.loaded()
            log.info("practices loaded: the writeback API is ready")

    def not_ready(self) -> str | None:
        """Why the writeback API is not ready yet (see `loaded()`), or None."""
        return self._gate.not_ready() if self._gate is not None else None

    def handle_signals(self, hook: SignalHook | None = None) -> None:
        """SIGINT/SIGTERM set `stop_event` from now on (see `stop_on_signals`)."""
        self.release_signals()
        self._remove_signals = stop_on_signals(self.stop_event, hook)

    def release_signals(self) -> None:
        """Give SIGINT/SIGTERM back to their default handlers."""
        if self._remove_signals is not None:
            self._remove_signals()
            self._remove_signals = None

    async def start(self) -> None:
        """Serve metrics, start the engine, then open the writeback queue, resume its
        deliveries and serve its API. WritebackError when the API cannot listen."""
        self._started = True
        if self.options.metrics_port:
            self._metrics = engine_metrics.serve(
                self.options.metrics_port, self.options.listen_host
            )
        await self.engine.start()
        if self.writebacks is not None:
            port = self.options.writeback_port or 0
            self.writeback_url = await self.writebacks.start(self.options.listen_host, port)
            # Counters reach each practice's status.writebacks every status_interval.
            self.engine.watch_writebacks(self.writebacks.counts)
            log.info(
                "writeback API on %s (queue %s)", self.writeback_url, self.writebacks.store.path
            )

    async def stop(self) -> None:
        """Writeback API and drainer first (deliveries use the engine's clients), then the
        engine (pollers, last statuses, clients, sink, cursor store), then the metrics server."""
        if self.writebacks is not None:
            self.engine.watch_writebacks(None)
            if self._started:
                await self.writebacks.stop()
        await self.engine.stop()
        if self.claims is not None:  # after the pollers stopped: the others take over now
            await asyncio.to_thread(self.claims.close)
        if self._metrics is not None:
            await asyncio.to_thread(self._metrics.close)
            self._metrics = None

    async def __aenter__(self) -> Runtime:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            self.release_signals()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            self.release_signals()
