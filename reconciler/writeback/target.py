"""The contract between the engine and the writeback path.

The engine (operator or `pmsctl up`) knows each practice's current spec, what it resolved in the
PMS, and holds the practice's driver (whose HTTP client carries the practice's rate budget). The
writeback path asks it for a `WritebackTarget` by practice id each time it decides or delivers, so
a setting changed in the spec takes effect for the next request.

Whether the practice's provider and names are usable is a tri-state, read from `provider_id`
(and the id maps) together with `checked`:

    verified      provider_id set                    write
    not verified  provider_id None, checked          the PMS said no: skip (ProviderNotVerified)
    unknown       provider_id None, not checked      the PMS has not answered since start (down,
                                                     credentials refused): wait, decide later

"Not verified yet" is not "not allowed": a request the PMS has not been asked about yet stays
pending and is decided when the practice is checked.

A directory may also be still loading (`LoadingDirectory`): at start-up the process serves the
API before it has read every practice (the folder's first sync, Kopf's first reconcile of the
practices it found). While it loads, a practice it does not hold yet may be one it is about to
load, so the API answers 503 + Retry-After ("try again"), not 404 ("no such practice").
`StartupGate` is that state, flipped by the runtime's adapter once the practices are loaded.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pms_drivers.base import PmsDriver
from reconciler.api.spec import DocumentType, PracticeSpec, WritebackType


@dataclass(frozen=True)
class WritebackTarget:
    """What the writeback path needs to know about one practice, right now."""

    key: str  # namespace/name of the resource (or file-based key in local mode)
    spec: PracticeSpec
    #: The verified active provider id, or None when the provider is not (yet) verified.
    provider_id: str | None
    #: Whether the PMS's providers, note types and document categories have been read (since
    #: the process started or the practice moved to another PMS). False makes a missing
    #: provider or id "unknown", not "not verified".
    checked: bool = False
    #: Resolved PMS note type id for each allowed writeback type whose name resolved.
    note_type_ids: Mapping[WritebackType, str] = field(default_factory=dict)
    #: Resolved PMS document category id (the `writeTo` mapping) per document type.
    document_category_ids: Mapping[DocumentType, str] = field(default_factory=dict)
    #: The practice's driver; None while the PMS has not been reached yet.
    driver: PmsDriver | None = None

    @property
    def practice_id(self) -> str:
        return self.spec.practice_id


class PracticeDirectory(Protocol):
    """Looks practices up by `spec.practiceId`; implemented by the engine."""

    def target(self, practice_id: str) -> WritebackTarget | None: ...


@runtime_checkable
class LoadingDirectory(PracticeDirectory, Protocol):
    """A directory that can say it has not loaded every practice yet."""

    def not_ready(self) -> str | None:
        """None once every practice is loaded; until then, why not (one sentence)."""
        ...


@runtime_checkable
class FetchingDirectory(PracticeDirectory, Protocol):
    """A directory whose lookups may have to ask elsewhere (the intake process asks the engine's
    process for a practice it holds no snapshot of): the API awaits `fetch` instead of `target`."""

    async def fetch(self, practice_id: str) -> WritebackTarget | None:
        """`target(practice_id)`, asking the practices' owner when it is not held here."""
        ...

    async def fetch_not_ready(self) -> str | None:
        """`not_ready()` as the practices' owner says it now."""
        ...


def not_ready(directory: PracticeDirectory) -> str | None:
    """Why `directory` is not ready yet, or None (a plain `PracticeDirectory` always is)."""
    return directory.not_ready() if isinstance(directory, LoadingDirectory) else None


class StartupGate:
    """A `LoadingDirectory` over `inner`: not ready (saying `loading`) until `loaded()`.

    Lookups always go to `inner` (a practice already loaded is served at once). The state is
    one attribute, read by the API's thread and written by the event loop's: a plain store is
    atomic, so no lock.
    """

    def __init__(self, inner: PracticeDirectory, loading: str | None) -> None:
        self.inner = inner
        self._loading = loading

    def target(self, practice_id: str) -> WritebackTarget | None:
        return self.inner.target(practice_id)

    def not_ready(self) -> str | None:
        return self._loading

    def loaded(self) -> None:
        """Every practice is loaded: unknown practice ids are 404 from now on."""
        self._loading = None


# --- practices held by another replica (a shared PostgreSQL store) ---------------------------


class SharedSettings(Protocol):
    """The practices' intake snapshots that every replica sharing a store can read (the
    PostgreSQL table `practice_settings`): the replica holding a practice publishes its
    snapshot; any replica's API decides a writeback for it from there. Safe to call from any
    thread."""

    #: This replica's name in the table (who holds the practices it publishes).
    owner: str

    def publish(self, practice_id: str, snapshot_json: str) -> None:
        """Store the practice's snapshot (held by `owner`) if it differs from the stored one."""
        ...

    def withdraw(self, practice_id: str) -> None:
        """The practice is gone for good (its resource deleted): remove its row if `owner`
        still holds it (a replica that took it over meanwhile keeps its own)."""
        ...

    def lookup(self, practice_id: str) -> tuple[str, str] | None:
        """(owner, snapshot JSON) of the practice, from the cache the notifications keep."""
        ...

    def alive(self, owner: str) -> bool:
        """Whether replica `owner` is running (has a session on the store), as of a moment ago."""
        ...

    def start(self, on_change: Callable[[str], None], on_writeback: Callable[[str], None]) -> None:
        """Load the table and listen: `on_change(practice_id)` after a row changed,
        `on_writeback(practice_id)` after any replica stored a writeback (both called on a
        thread of the listener's own)."""
        ...

    def stop(self) -> None: ...


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, str):
        return str(value)  # an enum member or a PmsType as its plain name
    return value


def _decode(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        return _decode(next(a for a in typing.get_args(tp) if a is not type(None)), value)
    if origin in (Mapping, dict, collections.abc.Mapping):
        key_type, value_type = typing.get_args(tp)
        return {_decode(key_type, k): _decode(value_type, v) for k, v in value.items()}
    if origin is tuple:
        return tuple(_decode(typing.get_args(tp)[0], v) for v in value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _decode(hints[f.name], value[f.name])
                     for f in dataclasses.fields(tp) if f.name in value})  # fmt: skip
    if tp is float:
        return float(value)
    if isinstance(tp, type) and tp is not type(None):
        return tp(value)
    return value


def snapshot_json(target: WritebackTarget) -> str:
    """The target without its driver as JSON (what `practice_settings` holds)."""
    fields = _encode(target)
    fields.pop("driver", None)
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def snapshot_from_json(text: str) -> WritebackTarget:
    """The `WritebackTarget` (no driver) `snapshot_json` made."""
    fields = json.loads(text)
    fields.pop("driver", None)
    target: WritebackTarget = _decode(WritebackTarget, fields)
    return target


class SharedDirectory:
    """The API's directory on a shared store: the practices this replica holds (`inner`), else
    the snapshot the holder published (no driver: deciding needs none, delivery is the
    holder's). Readiness is `inner`'s."""

    def __init__(self, inner: PracticeDirectory, shared: SharedSettings) -> None:
        self.inner = inner
        self.shared = shared
        self._decoded: dict[str, tuple[str, WritebackTarget]] = {}

    def target(self, practice_id: str) -> WritebackTarget | None:
        held = self.inner.target(practice_id)
        if held is not None:
            return held
        row = self.shared.lookup(practice_id)
        if row is None:
            return None
        text = row[1]
        cached = self._decoded.get(practice_id)
        if cached is not None and cached[0] == text:
            return cached[1]
        target = snapshot_from_json(text)
        self._decoded[practice_id] = (text, target)
        return target

    def held_elsewhere(self, practice_id: str) -> bool:
        """Whether another running replica holds the practice (and this one does not). A row
        whose owner is gone holds nothing: its writebacks are treated as any unknown
        practice's (delivered by whoever loads the practice, else failed after the grace)."""
        if self.inner.target(practice_id) is not None:
            return False
        row = self.shared.lookup(practice_id)
        return row is not None and row[0] != self.shared.owner and self.shared.alive(row[0])

    def not_ready(self) -> str | None:
        return not_ready(self.inner)
