"""`pmsctl up`: the local adapter over the runtime. A folder of PracticeWriteback YAML files
plays the part the Kubernetes API plays for the operator, and the terminal shows the status.

`run_up(options)` builds the same `reconciler.runtime.Runtime` the operator builds (engine, sink,
cursor store, writeback API, metrics, SIGINT/SIGTERM) with what is local: `LocalSecrets`
(`reconciler.local.secrets`), the embedded simulator's connection override under `--simulate`
(`reconciler.local.simulated`) and settings for a handful of practices on a laptop. Then
`LocalRunner` keeps the engine matched to the folder: scan (`reconciler.local.folder`), plan
(`reconciler.local.plan`, pure), apply/remove, show (`reconciler.local.display`); until
SIGINT/SIGTERM (a second one quits at once; `--once`: until every practice is Ready or failed for
a reason waiting cannot fix), then the runtime stops (writeback API and drainer;
engine: pollers, last statuses, clients, sink, cursor store; metrics), then the simulator, and
`run_up` returns 0.

Real in its tests: files, the validator, the engine, SQLite, the simulator over loopback HTTP
(`tests/test_up.py` runs the command as a subprocess); the planner and display are table-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from errno import EACCES, EADDRINUSE
from pathlib import Path
from typing import Any, TextIO

from reconciler import private
from reconciler.api.spec import PracticeSpec
from reconciler.engine.core import Reason
from reconciler.engine.engine import Engine, EngineSettings
from reconciler.local import table as uptable
from reconciler.local.catalogs import CATALOG_FOLDER, LocalCatalogs
from reconciler.local.display import Display, OutputMode
from reconciler.local.errors import UpError
from reconciler.local.folder import FolderWatcher
from reconciler.local.plan import Applied, config_changes, display_names, plan, poller_changes
from reconciler.local.secrets import LocalSecrets
from reconciler.local.simulated import SimulatedPms
from reconciler.runtime import (
    LogFormat,
    LogLevel,
    Runtime,
    RuntimeOptions,
    check_sink_url,
    check_store_url,
    setup_logging,
    stop_on_signals,
    writeback_token,
)

log = logging.getLogger(__name__)

#: Ready=False reasons that waiting does not fix: the file, the credentials or the PMS's
#: catalog has to change first. `--once` stops waiting for a practice that shows one.
PERMANENT_REASONS = frozenset(
    {
        Reason.SECRET_NOT_FOUND,
        Reason.SECRET_INCOMPLETE,
        Reason.CREDENTIALS_REJECTED,
        Reason.PROVIDER_NOT_FOUND,
        Reason.PROVIDER_INACTIVE,
        Reason.NOTE_TYPE_NOT_FOUND,
        Reason.NOTE_TYPE_HIDDEN,
        Reason.DOCUMENT_TYPE_NOT_FOUND,
        Reason.DOCUMENT_TYPE_HIDDEN,
        Reason.DUPLICATE_PRACTICE_ID,
        Reason.SUSPENDED,
    }
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
    #: The writeback API's port on 127.0.0.1 (0: any free port, for callers that embed
    #: `run_up`; None: no writeback service). `pmsctl up --writeback-port 0` arrives as None:
    #: on the command line 0 means off, as in `pmsctl operator`.
    writeback_port: int | None = 8081
    #: The writeback API in a process of its own instead of a thread (`--writeback-intake`).
    writeback_intake_process: bool = False
    #: Prometheus /metrics of the engine and the writeback path on 127.0.0.1 (0: not served).
    metrics_port: int = 0
    #: Skip documents of other kinds (Secrets next to the practices), as `pmsctl validate` does.
    skip_other_kinds: bool = False
    #: A shared store (`postgresql://...`) for the cursors and the writeback queue instead of
    #: the SQLite files in `state_dir` (None: those files). Kept out of repr: it may hold a
    #: password.
    store_url: str | None = dataclasses.field(default=None, repr=False)
    #: A file holding the store's password, when it is not in `store_url`.
    store_password_file: Path | None = None
    log_format: LogFormat = "text"
    log_level: LogLevel = "info"

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


def _events(status: Mapping[str, Any] | None) -> int:
    pollers = (status or {}).get("pollers") or {}
    return sum(int(p.get("eventsEmitted") or 0) for p in pollers.values())


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
        #: Events a practice emitted before its file was removed: the engine forgets them with
        #: the practice, the sink still holds them, so the EVENTS column keeps counting them.
        self.earlier_events: dict[str, int] = {}

    def _engine_spec(self, spec: PracticeSpec) -> PracticeSpec:
        """The spec the engine runs: under `--simulate`, with the simulator's URL, so status
        messages name the server the practice really talks to, not the file's URL."""
        if self.sim is None:
            return spec
        url = self.sim.base_url(spec)
        return dataclasses.replace(spec, pms=dataclasses.replace(spec.pms, url=url))

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
            status = self.engine.status(key)
            self.earlier_events[key] = self.earlier_events.get(key, 0) + _events(
                status.to_dict() if status is not None else None
            )
            await self.engine.remove(key)
            log.info("%s: removed (its file is gone); pollers stopped", key,
                     extra={"event": "practice.removed", "practice": key})  # fmt: skip
        for entry in result.apply:
            practice = entry.practice
            previous = self.applied.get(practice.key)
            try:
                if self.sim is not None:
                    await self.sim.ensure(practice.spec)
                await self.engine.apply(
                    practice.key, self._engine_spec(practice.spec), generation=entry.generation
                )
                _log_applied(previous, entry)
            except Exception as exc:  # the engine reports PMS trouble in status; this is the rest
                problems.setdefault(practice.path, []).append(
                    f"{practice.path}: {practice.key}: not applied: {exc}"
                )
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
                uptable.row_from_status(
                    shown[key],
                    spec.pms.type.value,
                    spec.provider_id,
                    as_dict,
                    earlier_events=self.earlier_events.get(key, 0),
                )
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
        """Nothing left to wait for: every practice is either Ready with every running poller
        past its first poll (success or not), or not Ready for a reason waiting cannot fix."""
        rows, _ = self.rows()
        return bool(rows) and all(_row_settled(r) for r in rows)


def _row_settled(row: uptable.Row) -> bool:
    if row.ready != "True":
        return row.ready == "False" and row.reason in PERMANENT_REASONS
    return all(p.last_success or p.consecutive_failures for p in row.pollers if p.running)


def _log_applied(previous: Applied | None, entry: Applied) -> None:
    """One line for the practice (added, or the fields that changed), one per poller whose
    schedule changed; `extra` carries the same as keys for `--log-format json`."""
    practice = entry.practice
    key, path, gen = practice.key, practice.path, entry.generation
    if previous is None:
        log.info("%s: added from %s (generation %d)", key, path, gen,
                 extra={"event": "practice.added", "practice": key, "file": path,
                        "generation": gen})  # fmt: skip
    else:
        changes = config_changes(previous.practice.spec, practice.spec)
        log.info(
            "%s: changed in %s (generation %d): %s",
            key,
            path,
            gen,
            "; ".join(c["message"] for c in changes) or "no effective change",
            extra={"event": "practice.changed", "practice": key, "file": path,
                   "generation": gen, "changes": changes},
        )  # fmt: skip
    before = previous.practice.spec if previous is not None else None
    for change in poller_changes(before, practice.spec):
        old, new = change["before"], change["after"]
        log.info("%s: poller %s %s (%s -> %s)", key, change["poller"], change["action"],
                 old or "off", new or "off",
                 extra={"event": f"poller.{change['action']}", "practice": key, **change})  # fmt: skip


def _state_dir(path: Path) -> None:
    """Create the state folder 0700 (its files hold patient data and the writeback token); an
    existing one is left as it is, with a warning when group or others may read it."""
    if path.is_dir():
        if private.loose_dir(path):
            mode = path.stat().st_mode & 0o777
            _info(
                f"warning: {path} is mode {mode:04o}: others on this machine may read the "
                f"patient data and the writeback token in it; run chmod 700 {path}"
            )
        return
    private.private_dir(path)


def runtime_options(options: UpOptions, token: str | None) -> RuntimeOptions:
    """The runtime's options for `pmsctl up`: files in the state dir, listeners on 127.0.0.1,
    and the log in STATE_DIR/pmsctl.log, where it never breaks the table's in-place repaint
    and a user finds it whatever the output mode."""
    return RuntimeOptions(
        sink_url=options.sink_url or f"file:{options.events_path}",
        state_db=options.state_dir / "state.db",
        listen_host="127.0.0.1",
        writeback_port=options.writeback_port,
        writeback_intake_process=options.writeback_intake_process,
        writeback_token=token,
        writeback_db=options.state_dir / "writebacks.db",
        metrics_port=options.metrics_port,
        store_url=options.store_url,
        store_password_file=options.store_password_file,
        log_format=options.log_format,
        log_level=options.log_level,
        log_file=options.state_dir / "pmsctl.log",
    )


def _store_name(url: str | None) -> str | None:
    """The store URL as a message may show it (password masked), or None."""
    from reconciler.stores import scrub

    return scrub(url) if url else None


def _on_signal(sig: signal.Signals, repeated: bool) -> None:
    if repeated:  # a second Ctrl-C: the user does not want to wait for a clean stop
        _info("second signal: quitting at once (cursors saved so far are kept)")
        os._exit(130)
    _info("stopping (Ctrl-C again to quit at once)")


def port_in_use(flag: str, port: int | None, exc: BaseException, off: str) -> UpError:
    """The exit-2 error for a listener that cannot bind: the port, and the ways out. A busy
    port is never swapped for another silently: scripts and curl commands name the port."""
    return UpError(
        f"{flag} {port}: cannot listen on 127.0.0.1:{port} ({exc}). Is another pmsctl up "
        f"running? Stop it, or pass {flag} N with a free port N, or {off}"
    )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _settle_once(
    runner: LocalRunner, display: Display, stop: asyncio.Event, timeout: float
) -> int:
    """`--once`: wait (bounded) until every practice is Ready with its pollers' first polls, or
    failed for a reason waiting cannot fix; print the table (and why a practice is not Ready);
    the exit code."""
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
    _state_dir(options.state_dir)
    display = Display(out, options.output)
    token, token_from = None, ""
    try:
        if options.sink_url:
            check_sink_url(options.sink_url)
        if options.store_url:
            check_store_url(options.store_url)
        if options.writeback_port is not None:
            token, token_from = writeback_token(options.state_dir / "writeback-token")
    except (ValueError, WritebackConfigError) as exc:
        raise UpError(str(exc)) from None
    settings = runtime_options(options, token)
    if settings.log_file is not None and not logging.getLogger().handlers:
        _info(f"log in {settings.log_file}")
    setup_logging(settings)
    sim_url_file = options.state_dir / "simulator-url"
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
                # Scripts (and the README's curl commands) find the simulator's port here.
                with private.open_private(sim_url_file, "w", encoding="utf-8") as f:
                    f.write(sim.server_url + "\n")
                stack.callback(sim_url_file.unlink, missing_ok=True)
            runtime = Runtime(
                settings,
                secrets=credentials,
                settings=_local_settings(),
                connection_override=sim.override if sim is not None else None,
                stop=stop,
                on_catalog=LocalCatalogs(options.state_dir / CATALOG_FOLDER),
                loading=f"pmsctl up is still reading the practices in {options.path}",
            )
            _info(
                f"watching {options.path}; events -> {options.sink_url or options.events_path}; "
                f"cursors in {_store_name(options.store_url) or settings.state_db}"
            )
            try:
                await stack.enter_async_context(runtime)  # stopped before the simulator
            except WritebackConfigError as exc:
                raise port_in_use(
                    "--writeback-port",
                    options.writeback_port,
                    exc.__cause__ or exc,
                    "--no-writeback",
                ) from None
            except OSError as exc:
                if not options.metrics_port or exc.errno not in (EADDRINUSE, EACCES):
                    raise
                raise port_in_use(  # the metrics server's bind
                    "--metrics-port", options.metrics_port, exc, "--no-metrics"
                ) from None
            if runtime.writeback_url is not None:
                _info(f"writeback API on {runtime.writeback_url} (bearer token: {token_from})")
            if runtime.metrics_url is not None:
                _info(f"metrics on {runtime.metrics_url}/metrics")
            log.info("started: watching %s", options.path,
                     extra={"event": "started", "path": str(options.path),
                            "writebackUrl": runtime.writeback_url,
                            "simulatorUrl": sim.server_url if sim is not None else None})  # fmt: skip
            watcher = FolderWatcher(options.path, skip_other_kinds=options.skip_other_kinds)
            runner = LocalRunner(runtime.engine, watcher, display, sim)
            await runner.sync_folder()
            # The folder's practices are in the engine: from now on an unknown practiceId is
            # one no file names (404), not one still being read (503).
            runtime.loaded()
            if not runner.files:
                _info(f"no *.yaml or *.yml files in {options.path} (yet)")
            if options.once:
                code = await _settle_once(runner, display, stop, options.once_timeout)
            else:
                await _watch(runner, stop, options.scan_seconds)
    finally:
        release_signals()
    log.info("stopped cleanly", extra={"event": "stopped"})
    _info("stopped cleanly")
    return code
