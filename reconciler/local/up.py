"""`pmsctl up`: the local adapter over the engine. A folder of PracticeWriteback YAML files
plays the part the Kubernetes API plays for the operator.

The pieces, from pure to edgy:

- `plan(applied, files)`: pure. Given what is running (key -> last applied practice and its
  generation) and what the folder holds now (file -> valid practices or problems), decide what
  to apply (with generation + 1 when the spec changed), what to remove, and which files are
  invalid. An invalid file changes nothing: the last good version of its practices keeps running.
- `FolderWatcher`: polls the folder once a second (stat, then a content hash only for files whose
  stat changed) and validates changed files with the same checks as `pmsctl validate`.
- `LocalSecrets`: the `SecretSource` of local mode. Credentials come from `--credentials FILE`
  (a mapping of Secret name -> {key: value}, or Kubernetes Secret manifests) or from environment
  variables `PMSCTL_CREDENTIALS_<SECRET_NAME>` holding a JSON object; never from the practice YAML.
- `SimulatedPms`: `--simulate` starts the PMS simulator in-process (autotick on, so appointments,
  status changes and patients keep changing), registers every practice with it and gives the
  engine a `connection_override` that points the practice at the simulator with the credentials
  the simulator made up. Its database lives in the state dir so a second run continues the same
  simulated offices and resumes from the saved cursors.
- `Display`: writes what `reconciler.local.table` renders: the table repainted in place on a
  terminal, one line per change otherwise, or JSON lines (`-o json`).
- `run_up(options)`: wires the engine (the same one the operator runs), the sink, the cursor store,
  the writeback API (`reconciler.writeback.service`), the watcher and the display, and runs until
  SIGINT/SIGTERM; then stops everything in order (writeback API and drainer; engine: pollers,
  last statuses, clients, sink, cursor store; then the simulator) and returns 0.

Real in its tests: files, the validator, the engine, SQLite, the simulator over loopback HTTP
(`tests/test_up.py` runs the command as a subprocess); the planner and display are table-tested.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import yaml

from pms_drivers.base import Credentials
from reconciler.api.spec import PmsType, PracticeSpec
from reconciler.api.yamlsource import DEFAULT_LIMITS
from reconciler.engine.engine import Engine, EngineSettings, SecretNotFoundError
from reconciler.local import table as uptable

if TYPE_CHECKING:
    from reconciler.writeback.service import WritebackService

#: Environment variable prefix for credentials: PMSCTL_CREDENTIALS_<SECRET_NAME> = JSON object.
ENV_PREFIX = "PMSCTL_CREDENTIALS_"
YAML_SUFFIXES = (".yaml", ".yml")
OutputMode = Literal["auto", "table", "lines", "json"]


class UpError(Exception):
    """A problem `pmsctl up` cannot start with (bad flags, unreadable credentials file); exit 2."""


class CredentialsNotFound(SecretNotFoundError):
    """No credentials for a practice's Secret name in the credentials file or environment."""


# --------------------------------------------------------------------------------------------
# The pure planner


@dataclass(frozen=True)
class LoadedPractice:
    """One valid PracticeWriteback document read from a file."""

    key: str  # namespace/name, the engine's key
    name: str  # metadata.name, what the table shows
    path: str  # the file it came from
    spec: PracticeSpec


@dataclass(frozen=True)
class FileResult:
    """A file's validation outcome: its practices when valid, else its problems (one line each)."""

    path: str
    practices: tuple[LoadedPractice, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Applied:
    """What is running for one key: the last good practice and the generation it was applied at."""

    practice: LoadedPractice
    generation: int


@dataclass(frozen=True)
class Plan:
    """The outcome of `plan()`: actions for the engine and the state to keep."""

    apply: tuple[Applied, ...] = ()
    remove: tuple[str, ...] = ()
    #: Problems by file path, for every file that is not (fully) applied.
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: key -> Applied after the actions succeed.
    applied: Mapping[str, Applied] = field(default_factory=dict)


def plan(applied: Mapping[str, Applied], files: Mapping[str, FileResult]) -> Plan:
    """Decide what to apply and remove so the engine runs what the folder says.

    - a practice that is new, or whose spec changed, is applied (generation + 1 on change);
    - a practice whose file is gone, or whose valid file no longer holds it, is removed;
    - an invalid file changes nothing: its practices keep running at their last good version;
    - the same key in two files: the first file (by path) wins, the other file is reported.
    """
    problems: dict[str, list[str]] = {}
    desired: dict[str, LoadedPractice] = {}
    by_practice_id: dict[str, LoadedPractice] = {}
    for path in sorted(files):
        result = files[path]
        if not result.valid:
            problems[path] = list(result.problems)
            continue
        for practice in result.practices:
            kept = applied.get(practice.key)
            held_by = desired.get(practice.key)
            if held_by is None and kept is not None and kept.practice.path != path:
                # A key still running from an invalid file keeps its place there.
                source = files.get(kept.practice.path)
                held_by = kept.practice if source is not None and not source.valid else None
            if held_by is not None:
                where = held_by.path
                problems.setdefault(path, []).append(
                    f"{path}: {practice.key} is also defined in {where}; this copy is not applied"
                )
                continue
            same_id = by_practice_id.get(practice.spec.practice_id)
            if same_id is not None:
                problems.setdefault(path, []).append(
                    f"{path}: {practice.key}: spec.practiceId {practice.spec.practice_id!r} is "
                    f"also used by {same_id.key} in {same_id.path}; not applied"
                )
                continue
            desired[practice.key] = practice
            by_practice_id[practice.spec.practice_id] = practice
    # Keys whose source file is currently invalid stay as they are.
    frozen = {
        key: a
        for key, a in applied.items()
        if a.practice.path in files and not files[a.practice.path].valid and key not in desired
    }
    to_apply: list[Applied] = []
    next_applied: dict[str, Applied] = dict(frozen)
    for key, practice in desired.items():
        current = applied.get(key)
        if current is None:
            entry = Applied(practice, 1)
            to_apply.append(entry)
        elif current.practice.spec != practice.spec:
            entry = Applied(practice, current.generation + 1)
            to_apply.append(entry)
        else:  # same spec, perhaps from a moved or renamed file: nothing to do
            entry = Applied(practice, current.generation)
        next_applied[key] = entry
    to_remove = tuple(sorted(k for k in applied if k not in next_applied))
    return Plan(
        apply=tuple(sorted(to_apply, key=lambda a: a.practice.key)),
        remove=to_remove,
        problems={p: tuple(v) for p, v in problems.items()},
        applied=next_applied,
    )


# --------------------------------------------------------------------------------------------
# Reading and watching the folder


def practice_key(metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(engine key, name) from a resource's metadata: `namespace/name` (namespace `default`
    when absent, as kubectl would apply it) and `metadata.name`."""
    name = str(metadata.get("name") or "")
    namespace = str(metadata.get("namespace") or "default")
    return f"{namespace}/{name}", name


def display_names(applied: Mapping[str, Applied]) -> dict[str, str]:
    """key -> what the PRACTICE column shows: the name, like `kubectl get`, or `namespace/name`
    for a name that two namespaces use."""
    counts: dict[str, int] = {}
    for entry in applied.values():
        counts[entry.practice.name] = counts.get(entry.practice.name, 0) + 1
    return {
        key: entry.practice.name if counts[entry.practice.name] == 1 else key
        for key, entry in applied.items()
    }


def load_text(text: str, path: str) -> FileResult:
    """Validate one file's text with `reconciler.api.validate` (the checks `pmsctl validate` runs)
    and turn its documents into practices; any problem makes the whole file not applied."""
    from reconciler.api import validate

    documents, problems = validate.validate_text(text, path)
    if problems:
        return FileResult(path=path, problems=tuple(str(p) for p in problems))
    practices = []
    for doc in documents:
        key, name = practice_key({"name": doc.name, "namespace": doc.namespace})
        practices.append(LoadedPractice(key, name, path, doc.spec()))
    return FileResult(path=path, practices=tuple(practices))


def yaml_files(root: Path) -> list[Path]:
    """The YAML files `pmsctl up` reads: the file itself, or every *.yaml/*.yml under a folder
    (hidden files and folders skipped, as editors keep swap files there)."""
    if root.is_file():
        return [root]
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix in YAML_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found)


@dataclass
class _Cached:
    stat: tuple[int, int, int]
    digest: str
    result: FileResult


class FolderWatcher:
    """Polls a folder for YAML files and validates the ones that changed.

    `scan()` returns the full snapshot (path -> FileResult) and whether anything differs from the
    previous scan. A file is re-read only when its (mtime, size, inode) changed, and re-validated
    only when its content hash changed, so a scan of an unchanged folder costs one stat per file.
    """

    def __init__(self, root: Path, load: Callable[[str, str], FileResult] = load_text) -> None:
        self.root = root
        self._load = load
        self._cache: dict[str, _Cached] = {}

    def _display_path(self, path: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)

    def scan(self) -> tuple[dict[str, FileResult], bool]:
        """Read the folder now; returns (snapshot, changed since the last scan)."""
        changed = False
        seen: dict[str, _Cached] = {}
        for path in yaml_files(self.root):
            shown = self._display_path(path)
            try:
                st = path.stat()
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                cached = self._cache.get(shown)
                if cached is not None and cached.stat == stamp:
                    seen[shown] = cached
                    continue
                if st.st_size > DEFAULT_LIMITS.max_bytes:
                    limit = DEFAULT_LIMITS.max_bytes
                    too_big = f"{shown}:1:1: <file>: file is {st.st_size} bytes, over the limit of {limit}"
                    seen[shown] = _Cached(stamp, "", FileResult(shown, problems=(too_big,)))
                    changed = changed or cached is None or cached.result != seen[shown].result
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed between listing and reading: the next scan sees it gone
            except OSError as exc:
                result = FileResult(shown, problems=(f"{shown}: cannot read: {exc.strerror}",))
                seen[shown] = _Cached((0, 0, 0), "", result)
                changed = changed or self._cache.get(shown) != seen[shown]
                continue
            digest = hashlib.sha256(data).hexdigest()
            if cached is not None and cached.digest == digest:
                seen[shown] = _Cached(stamp, digest, cached.result)
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                result = FileResult(shown, problems=(f"{shown}: not UTF-8 text ({exc.reason})",))
            else:
                result = self._load(text, shown)
            seen[shown] = _Cached(stamp, digest, result)
            changed = True
        if set(seen) != set(self._cache):
            changed = True
        self._cache = seen
        return {p: c.result for p, c in seen.items()}, changed


# --------------------------------------------------------------------------------------------
# Credentials


def env_var_name(secret_name: str) -> str:
    """`bright-smiles-od` -> `PMSCTL_CREDENTIALS_BRIGHT_SMILES_OD`."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", secret_name).upper()


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in value.items()
    ):
        raise UpError(f"{where}: expected a mapping of key -> string (e.g. developerKey: ...)")
    return {k: str(v) for k, v in value.items()}


def parse_credentials_file(text: str, path: str) -> dict[str, dict[str, str]]:
    """Secret name -> {key: value} from a credentials file.

    Two shapes are accepted: a plain mapping (`bright-smiles-od: {developerKey: ..., customerKey:
    ...}`, YAML or JSON), or Kubernetes Secret manifests (`kind: Secret`, `stringData` and/or
    base64 `data`), one per document. Error messages never include a value.
    """
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise UpError(f"{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    out: dict[str, dict[str, str]] = {}
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, Mapping):
            raise UpError(f"{path}: document {i}: expected a mapping of Secret name -> keys")
        if doc.get("kind") == "Secret":
            name = (doc.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not name:
                raise UpError(f"{path}: document {i}: a Secret needs metadata.name")
            values: dict[str, str] = {}
            for k, v in _string_map(doc.get("data") or {}, f"{path}: Secret {name}: data").items():
                try:
                    values[k] = base64.b64decode(v, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise UpError(
                        f"{path}: Secret {name}: data.{k} is not base64 text (use stringData for plain values)"
                    ) from None
            values.update(
                _string_map(doc.get("stringData") or {}, f"{path}: Secret {name}: stringData")
            )
            out[name] = values
            continue
        for name, values in doc.items():
            out[str(name)] = _string_map(values, f"{path}: {name}")
    return out


def parse_credentials_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Env var name -> {key: value} for every PMSCTL_CREDENTIALS_* variable (JSON objects)."""
    out: dict[str, dict[str, str]] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise UpError(
                f'{var}: expected a JSON object like \'{{"developerKey": "...", "customerKey": "..."}}\''
            ) from None
        out[var] = _string_map(value, var)
    return out


class LocalSecrets:
    """The local `SecretSource`: Secret name -> Credentials from a file, then the environment.

    The environment wins over the file for the same Secret (so one key can be overridden in CI).
    Values are held as `Credentials`, whose repr is redacted.
    """

    def __init__(
        self,
        by_name: Mapping[str, Mapping[str, str]] | None = None,
        by_env: Mapping[str, Mapping[str, str]] | None = None,
        source: str = "",
    ) -> None:
        self._by_name = {k: Credentials(v) for k, v in (by_name or {}).items()}
        self._by_env = {k: Credentials(v) for k, v in (by_env or {}).items()}
        self._source = source

    @classmethod
    def load(cls, path: Path | None, environ: Mapping[str, str]) -> LocalSecrets:
        """From `--credentials FILE` (optional) and the environment; UpError when unreadable."""
        by_name: dict[str, dict[str, str]] = {}
        if path is not None:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UpError(f"--credentials {path}: cannot read: {exc.strerror}") from None
            by_name = parse_credentials_file(text, str(path))
        return cls(by_name, parse_credentials_env(environ), str(path) if path else "")

    @property
    def available(self) -> bool:
        """True when any credentials were given (then `--simulate` is not the default)."""
        return bool(self._by_name or self._by_env)

    def lookup(self, secret_name: str) -> Credentials:
        """The credentials for a Secret name; CredentialsNotFound says where it looked."""
        found = self._by_env.get(env_var_name(secret_name)) or self._by_name.get(secret_name)
        if found is None:
            where = self._source or "a --credentials file"
            raise CredentialsNotFound(
                f"no credentials for Secret {secret_name!r}: add it to {where} "
                f"or set {env_var_name(secret_name)} to a JSON object of its keys"
            )
        return found

    async def get(self, key: str, secret_name: str) -> Credentials:
        """`SecretSource.get`: `key` is the practice's engine key (unused locally)."""
        return self.lookup(secret_name)

    def __repr__(self) -> str:
        return f"LocalSecrets(<{len(self._by_name) + len(self._by_env)} secrets, redacted>)"


# --------------------------------------------------------------------------------------------
# The embedded simulator


class SimulatedPms:
    """The in-process PMS simulator every practice is pointed at under `--simulate`."""

    def __init__(self, sim: Any, server_url: str) -> None:
        self.sim = sim
        self.server_url = server_url
        self._creds: dict[str, tuple[str, Credentials]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, db: Path, tick_seconds: float = 2.0) -> AsyncIterator[SimulatedPms]:
        """Start the simulator on a free loopback port; stops it and closes its database on exit."""
        from pms_simulator import Simulator

        sim = Simulator(db=str(db), autotick=True, tick_seconds=tick_seconds)
        try:
            async with sim.serve(host="127.0.0.1", port=0) as server_url:
                yield cls(sim, str(server_url))
        finally:
            sim.close()

    async def ensure(self, spec: PracticeSpec) -> None:
        """Register the practice with the simulator (seeded from its id on first use) unless
        already known with this PMS type. Seeding writes SQLite, so it runs off the loop."""
        known = self._creds.get(spec.practice_id)
        if known is not None and known[0] == spec.pms.type.value:
            return
        made = await asyncio.to_thread(self.sim.add_practice, spec.practice_id, spec.pms.type.value)
        self._creds[spec.practice_id] = (spec.pms.type.value, Credentials(dict(made)))

    def override(self, spec: PracticeSpec) -> tuple[str, Credentials] | None:
        """The engine's `connection_override`: the simulator's base URL for this PMS type and the
        credentials it made up for this practice (None for a practice not registered)."""
        known = self._creds.get(spec.practice_id)
        if known is None or known[0] != spec.pms.type.value:
            return None
        return str(self.sim.base_url(PmsType(spec.pms.type).value)), known[1]


# --------------------------------------------------------------------------------------------
# The display


class Display:
    """Writes the table (TTY: repainted in place), change lines (not a TTY) or JSON lines."""

    def __init__(
        self, out: TextIO, mode: OutputMode = "auto", heartbeat_seconds: float = 30.0
    ) -> None:
        if mode == "auto":
            mode = "table" if out.isatty() else "lines"
        self.out = out
        self.mode = mode
        #: In `lines` mode, a practice whose event count moved gets a line at least this often,
        #: so a log shows events flowing even when nothing else changes.
        self.heartbeat_seconds = heartbeat_seconds
        self._signatures: dict[str, tuple[object, ...]] = {}
        self._printed: dict[str, tuple[datetime, int]] = {}
        self._problems: dict[str, tuple[str, ...]] = {}
        self._height = 0

    def _emit(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()

    def update(
        self,
        rows: Sequence[uptable.Row],
        statuses: Mapping[str, Mapping[str, Any]],
        problems: Mapping[str, tuple[str, ...]],
        now: datetime,
        present: Iterable[str] = (),
        kept: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Show the current state; only changes print in `lines` and `json` modes. `present` is
        the files in the folder now; `kept` the practices still running from each invalid file."""
        in_folder = set(present)
        kept = kept or {}
        names = {r.name for r in rows}
        out: list[str] = []
        for name in sorted(set(self._signatures) - names):
            out.append(
                uptable.json_line("removed", now, practice=name)
                if self.mode == "json"
                else uptable.removed_line(name, now)
            )
            del self._signatures[name]
            self._printed.pop(name, None)
        for path in sorted(set(self._problems) | set(problems)):
            before, after = self._problems.get(path, ()), problems.get(path, ())
            if before == after:
                continue
            if not after:
                if path in in_folder:  # fixed; a deleted file needs no line of its own
                    out.append(
                        uptable.json_line("valid", now, file=path)
                        if self.mode == "json"
                        else uptable.fixed_line(path, now)
                    )
                continue
            running = list(kept.get(path, ()))
            if self.mode == "json":
                out.extend(
                    uptable.json_line("invalid", now, file=path, problem=p, running=running)
                    for p in after
                )
            else:
                out.extend(uptable.problem_line(p, now) for p in after)
                out.append(uptable.kept_line(path, running, now))
        self._problems = dict(problems)
        for row in sorted(rows, key=lambda r: r.name):
            sig = uptable.signature(row)
            if self._signatures.get(row.name) == sig:
                when, events = self._printed.get(row.name, (now, row.events))
                due = (now - when).total_seconds() >= self.heartbeat_seconds
                if not (self.mode == "lines" and due and events != row.events):
                    continue
            self._signatures[row.name] = sig
            self._printed[row.name] = (now, row.events)
            if self.mode == "json":
                out.append(
                    uptable.json_line(
                        "status",
                        now,
                        practice=row.name,
                        pms=row.pms,
                        provider=row.provider,
                        status=dict(statuses.get(row.name) or {}),
                    )
                )
            else:
                out.append(uptable.change_line(row, now))
        if self.mode == "table":
            flat = [p for path in sorted(problems) for p in problems[path]]
            frame = [*uptable.render_table(rows, now), *uptable.render_problems(flat)]
            width = shutil.get_terminal_size().columns
            self.out.write(uptable.redraw(frame, self._height, width))
            self.out.flush()
            self._height = len(frame)
        else:
            self._emit(out)

    def table_once(
        self, rows: Sequence[uptable.Row], problems: Mapping[str, tuple[str, ...]], now: datetime
    ) -> None:
        """Print the table once, plainly (for `--once`)."""
        flat = [p for path in sorted(problems) for p in problems[path]]
        if self.mode == "json":
            self._emit(
                uptable.json_line("status", now, practice=r.name, ready=r.ready, reason=r.reason)
                for r in rows
            )
            self._emit(uptable.json_line("invalid", now, problem=p) for p in flat)
            return
        self._emit(
            [
                *uptable.render_table(rows, now),
                *uptable.render_not_ready(rows),
                *uptable.render_problems(flat, "Not applied:"),
            ]
        )


# --------------------------------------------------------------------------------------------
# The run loop


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


def writeback_token(state_dir: Path, environ: Mapping[str, str]) -> tuple[str, str]:
    """(token, where it came from) for the local writeback API: $PMSCTL_WRITEBACK_TOKEN or
    $PMSCTL_WRITEBACK_TOKEN_FILE when set, else `STATE_DIR/writeback-token`, made once (0600)."""
    from reconciler.writeback.errors import WritebackConfigError
    from reconciler.writeback.service import TOKEN_ENV, TOKEN_FILE_ENV, load_token

    try:
        if environ.get(TOKEN_ENV) or environ.get(TOKEN_FILE_ENV):
            token = load_token()
            return token, f"${TOKEN_ENV}" if environ.get(TOKEN_ENV) else environ[TOKEN_FILE_ENV]
        path = state_dir / "writeback-token"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secrets.token_hex(32) + "\n")
        return load_token(token_file=path), str(path)
    except WritebackConfigError as exc:
        raise UpError(str(exc)) from None


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


def _make_sink(options: UpOptions) -> Any:
    from reconciler.engine import sink

    if options.sink_url:
        try:
            return sink.sink_from_url(options.sink_url)
        except ValueError as exc:
            raise UpError(str(exc)) from None
    return sink.JsonlSink(options.events_path)


def _setup_logging(mode: str, log_file: Path) -> None:
    """Warnings to stderr, except under the live table, where a stray line would break the
    in-place repaint: then everything from INFO goes to `log_file` (and we say so)."""
    root = logging.getLogger()
    if root.handlers:
        return  # the caller configured logging
    if mode == "table":
        handler: logging.Handler = logging.FileHandler(log_file, encoding="utf-8")
        root.setLevel(logging.INFO)
        _info(f"log in {log_file}")
    else:
        handler = logging.StreamHandler(sys.stderr)
        root.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


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
    from reconciler.engine.cursors import SqliteCursorStore

    out = out if out is not None else sys.stdout
    if not options.path.exists():
        raise UpError(
            f"{options.path}: no such file or folder (pass the folder of practice YAML files)"
        )
    credentials = LocalSecrets.load(options.credentials, os.environ)
    simulate = options.simulate if options.simulate is not None else not credentials.available
    options.state_dir.mkdir(parents=True, exist_ok=True)
    display = Display(out, options.output)
    _setup_logging(display.mode, options.state_dir / "pmsctl.log")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait for a clean stop
            _info("second signal: quitting at once (cursors saved so far are kept)")
            os._exit(130)
        _info("stopping (Ctrl-C again to quit at once)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            sim: SimulatedPms | None = None
            if simulate:
                sim = await stack.enter_async_context(
                    SimulatedPms.start(options.state_dir / "simulator.db", options.tick_seconds)
                )
                _info(f"simulator on {sim.server_url} (every practice points here)")
            sink = _make_sink(options)
            store = SqliteCursorStore(options.state_dir / "state.db")
            engine = Engine(
                sink=sink,
                store=store,
                secrets=credentials,
                settings=_local_settings(),
                connection_override=sim.override if sim is not None else None,
            )
            _info(
                f"watching {options.path}; events -> {options.sink_url or options.events_path}; "
                f"cursors in {options.state_dir / 'state.db'}"
            )
            await engine.start()
            service: WritebackService | None = None
            try:
                if options.writeback_port is not None:
                    from reconciler.writeback.service import WritebackService

                    token, token_from = writeback_token(options.state_dir, os.environ)
                    service = WritebackService(engine, options.state_dir / "writebacks.db", token)
                    url = await service.start("127.0.0.1", free_or_zero(options.writeback_port))
                    # The same feed the operator uses: counters reach status every status_interval.
                    engine.watch_writebacks(service.counts)
                    _info(f"writeback API on {url} (bearer token: {token_from})")
                runner = LocalRunner(engine, FolderWatcher(options.path), display, sim)
                await runner.sync_folder()
                if not runner.files:
                    _info(f"no *.yaml or *.yml files in {options.path} (yet)")
                if options.once:
                    code = await _settle_once(runner, display, stop, options.once_timeout)
                else:
                    await _watch(runner, stop, options.scan_seconds)
            finally:
                if service is not None:
                    engine.watch_writebacks(None)
                    await service.stop()
                await engine.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _info("stopped cleanly")
    return code
