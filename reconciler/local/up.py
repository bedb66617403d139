"""`pmsctl up`: the local adapter over the runtime. A folder of PracticeWriteback YAML files
plays the part the Kubernetes API plays for the operator, and the terminal shows the status.

`run_up(options)` builds the same `reconciler.runtime.Runtime` the operator builds (engine, sink,
cursor store, writeback API, metrics, SIGINT/SIGTERM) with what is local: `LocalSecrets`
(`reconciler.local.secrets`), the embedded simulator's connection override under `--simulate`
(`reconciler.local.simulated`) and settings for a handful of practices on a laptop. Then
`LocalRunner` keeps the engine matched to the folder: scan (`reconciler.local.folder`), plan
(`reconciler.local.plan`, pure), apply/remove, show (`reconciler.local.display`); until
SIGINT/SIGTERM (a second one quits at once), then the runtime stops (writeback API and drainer;
engine: pollers, last statuses, clients, sink, cursor store; metrics), then the simulator, and
`run_up` returns 0.

Real in its tests: files, the validator, the engine, SQLite, the simulator over loopback HTTP
(`tests/test_up.py` runs the command as a subprocess); the planner and display are table-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from reconciler.engine.engine import Engine, EngineSettings
from reconciler.local import table as uptable
from reconciler.local.catalogs import CATALOG_FOLDER, LocalCatalogs
from reconciler.local.display import Display, OutputMode
from reconciler.local.errors import UpError
from reconciler.local.folder import FolderWatcher
from reconciler.local.plan import Applied, display_names, plan
from reconciler.local.secrets import LocalSecrets
from reconciler.local.simulated import SimulatedPms
from reconciler.runtime import (
    Runtime,
    RuntimeOptions,
    check_sink_url,
    setup_logging,
    stop_on_signals,
    writeback_token,
)


@dataclass(frozen=True)
class UpOptions:
    """Everything `pmsctl up` was asked to do (the CLI's flags, resolved)."""

    path: Path = Path("practices")
    simulate: bool | None = None  # None: simulate when no credentials are available
    credentials: Path | None = None
    events: Path | None = None  # default <state_dir>/events.jsonl
    sink_url: str | None = None
    state_dir: Path = Path(".pmsctl")
    once: bool = False
    once_timeout: float = 30.0
    output: OutputMode = "auto"
    scan_seconds: float = 1.0
    tick_seconds: float = 2.0
    #: The writeback API's port on 127.0.0.1 (0: a free port; None: no writeback service).
    writeback_port: int | None = 8081
    #: Prometheus /metrics of the engine and the writeback path on 127.0.0.1 (0: not served).
    metrics_port: int = 0

    @property
    def events_path(self) -> Path:
        return self.events if self.events is not None else self.state_dir / "events.jsonl"


def _now() -> datetime:
    return datetime.now(UTC)


def _local_settings() -> EngineSettings:
    # A handful of practices on a laptop: poll at once instead of spreading first polls over an
    # interval, and refresh counters every second so the table is live.
    # The listener is the table, not an API server: no cap on status updates.
    return EngineSettings(first_poll_jitter=0.0, status_interval=1.0, status_qps=0.0)


def _info(message: str) -> None:
    print(f"pmsctl up: {message}", file=sys.stderr, flush=True)


class LocalRunner:
    """Keeps the engine matched to the folder: scan, plan, apply/remove, show."""

    def __init__(
        self,
        engine: Engine,
        watcher: FolderWatcher,
        display: Display,
        sim: SimulatedPms | None,
    ) -> None:
        self.engine = engine
        self.watcher = watcher
        self.display = display
        self.sim = sim
        self.applied: dict[str, Applied] = {}
        self.problems: dict[str, tuple[str, ...]] = {}
        self.files: set[str] = set()

    async def sync_folder(self) -> None:
        """Scan the folder, then apply and remove so the engine runs what it says."""
        # Planning is cheap (spec equality), so it runs every scan: an apply that failed is
        # retried on the next one without waiting for the file to change.
        files, _ = self.watcher.scan()
        self.files = set(files)
        result = plan(self.applied, files)
        next_applied = dict(result.applied)
        problems = {k: list(v) for k, v in result.problems.items()}
        for key in result.remove:
            await self.engine.remove(key)
        for entry in result.apply:
            practice = entry.practice
            try:
                if self.sim is not None:
                    await self.sim.ensure(practice.spec)
                await self.engine.apply(practice.key, practice.spec, generation=entry.generation)
            except Exception as exc:  # the engine reports PMS trouble in status; this is the rest
                problems.setdefault(practice.path, []).append(
                    f"{practice.path}: {practice.key}: not applied: {exc}"
                )
                previous = self.applied.get(practice.key)
                if previous is None:
                    next_applied.pop(practice.key, None)
                else:
                    next_applied[practice.key] = previous
        self.applied = next_applied
        self.problems = {k: tuple(v) for k, v in problems.items()}

    def rows(self) -> tuple[list[uptable.Row], dict[str, Mapping[str, Any]]]:
        """The table rows and status dicts of every applied practice, from the engine."""
        rows, statuses = [], {}
        shown = display_names(self.applied)
        for key, entry in sorted(self.applied.items()):
            status = self.engine.status(key)
            as_dict: Mapping[str, Any] = status.to_dict() if status is not None else {}
            spec = entry.practice.spec
            rows.append(
                uptable.row_from_status(shown[key], spec.pms.type.value, spec.provider_id, as_dict)
            )
            statuses[shown[key]] = as_dict
        return rows, statuses

    def show(self) -> None:
        """Show the current statuses."""
        rows, statuses = self.rows()
        kept: dict[str, list[str]] = {}
        shown = display_names(self.applied)
        for key, entry in sorted(self.applied.items()):
            kept.setdefault(entry.practice.path, []).append(shown[key])
        self.display.update(rows, statuses, self.problems, _now(), self.files, kept)

    def all_ready(self) -> bool:
        """Every applied practice is Ready (and there is at least one)."""
        rows, _ = self.rows()
        return bool(rows) and all(r.ready == "True" for r in rows)

    def settled(self) -> bool:
        """Every practice Ready and every running poller past its first poll (success or not)."""
        rows, _ = self.rows()
        return self.all_ready() and all(
            p.last_success or p.consecutive_failures for r in rows for p in r.pollers if p.running
        )


def runtime_options(options: UpOptions, mode: str, token: str | None) -> RuntimeOptions:
    """The runtime's options for `pmsctl up`: files in the state dir, listeners on 127.0.0.1,
    and, under the live table (`mode`), logs in STATE_DIR/pmsctl.log from INFO, where a stray
    line would not break the in-place repaint; else warnings to stderr."""
    table = mode == "table"
    return RuntimeOptions(
        sink_url=options.sink_url or f"file:{options.events_path}",
        state_db=options.state_dir / "state.db",
        listen_host="127.0.0.1",
        writeback_port=(
            free_or_zero(options.writeback_port) if options.writeback_port is not None else None
        ),
        writeback_token=token,
        writeback_db=options.state_dir / "writebacks.db",
        metrics_port=options.metrics_port,
        log_level="info" if table else "warning",
        log_file=options.state_dir / "pmsctl.log" if table else None,
    )


def _on_signal(sig: signal.Signals, repeated: bool) -> None:
    if repeated:  # a second Ctrl-C: the user does not want to wait for a clean stop
        _info("second signal: quitting at once (cursors saved so far are kept)")
        os._exit(130)
    _info("stopping (Ctrl-C again to quit at once)")


def free_or_zero(port: int) -> int:
    """`port` when 127.0.0.1:port can be bound now, else 0 (the OS picks a free one)."""
    if port == 0:
        return 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _settle_once(
    runner: LocalRunner, display: Display, stop: asyncio.Event, timeout: float
) -> int:
    """`--once`: wait (bounded) for every practice to be Ready and its pollers' first polls,
    print the table; the exit code."""
    deadline = asyncio.get_running_loop().time() + timeout
    while runner.applied and not runner.settled() and not stop.is_set():
        if asyncio.get_running_loop().time() >= deadline:
            break
        await _wait(stop, 0.2)
    rows, _ = runner.rows()
    display.table_once(rows, runner.problems, _now())
    return 0 if runner.all_ready() and not runner.problems else 1


async def _watch(runner: LocalRunner, stop: asyncio.Event, scan_seconds: float) -> None:
    """Show, wait a scan period, re-read the folder; until SIGINT/SIGTERM."""
    while not stop.is_set():
        runner.show()
        await _wait(stop, scan_seconds)
        if not stop.is_set():
            await runner.sync_folder()


async def run_up(options: UpOptions, out: TextIO | None = None) -> int:
    """Run `pmsctl up` until SIGINT/SIGTERM (or once, with `options.once`); the exit code."""
    from reconciler.writeback.errors import WritebackConfigError

    out = out if out is not None else sys.stdout
    if not options.path.exists():
        raise UpError(
            f"{options.path}: no such file or folder (pass the folder of practice YAML files)"
        )
    credentials = LocalSecrets.load(options.credentials, os.environ)
    simulate = options.simulate if options.simulate is not None else not credentials.available
    options.state_dir.mkdir(parents=True, exist_ok=True)
    display = Display(out, options.output)
    token, token_from = None, ""
    try:
        if options.sink_url:
            check_sink_url(options.sink_url)
        if options.writeback_port is not None:
            token, token_from = writeback_token(options.state_dir / "writeback-token")
    except (ValueError, WritebackConfigError) as exc:
        raise UpError(str(exc)) from None
    settings = runtime_options(options, display.mode, token)
    if settings.log_file is not None and not logging.getLogger().handlers:
        _info(f"log in {settings.log_file}")
    setup_logging(settings)
    stop = asyncio.Event()
    release_signals = stop_on_signals(stop, _on_signal)
    code = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            sim: SimulatedPms | None = None
            if simulate:
                sim = await stack.enter_async_context(
                    SimulatedPms.start(options.state_dir / "simulator.db", options.tick_seconds)
                )
                _info(f"simulator on {sim.server_url} (every practice points here)")
            runtime = Runtime(
                settings,
                secrets=credentials,
                settings=_local_settings(),
                connection_override=sim.override if sim is not None else None,
                stop=stop,
                on_catalog=LocalCatalogs(options.state_dir / CATALOG_FOLDER),
            )
            _info(
                f"watching {options.path}; events -> {options.sink_url or options.events_path}; "
                f"cursors in {settings.state_db}"
            )
            await stack.enter_async_context(runtime)  # stopped before the simulator
            if runtime.writeback_url is not None:
                _info(f"writeback API on {runtime.writeback_url} (bearer token: {token_from})")
            if runtime.metrics_url is not None:
                _info(f"metrics on {runtime.metrics_url}/metrics")
            runner = LocalRunner(runtime.engine, FolderWatcher(options.path), display, sim)
            await runner.sync_folder()
            if not runner.files:
                _info(f"no *.yaml or *.yml files in {options.path} (yet)")
            if options.once:
                code = await _settle_once(runner, display, stop, options.once_timeout)
            else:
                await _watch(runner, stop, options.scan_seconds)
    finally:
        release_signals()
    _info("stopped cleanly")
    return code
