"""The operator-wide event sink: what pollers saw, as CloudEvents 1.0 (JSON).

Every change a poller reads becomes one CloudEvent with a stable id: the same change (practice,
kind, record id, change stamp and the row's version, or the flow status) always gets the same id,
so delivery is at-least-once and consumers de-duplicate on `id`. Event types:

    dev.dental.pmsctl.appointment-status.changed   a patient-flow status (confirmed, arrived, ...)
    dev.dental.pmsctl.appointment.changed          an appointment row changed
    dev.dental.pmsctl.patient.changed              a patient changed (with `photoRef` when
                                                   the practice's patient photos are on)

Sinks (a `publish()` returns only once the events are accepted, and raises `SinkError` if not;
the engine saves a cursor only after that):
- `JsonlSink(path)`: appends one JSON object per line (flushed, fsynced by default; publishes
  that arrive during an fsync share the next one).
- `HttpSink(url)`: POSTs batches with httpx as `application/cloudevents-batch+json`, retrying a
  few times on the drivers' schedule (`pms_drivers.retry`); any 2xx accepts the batch.
`sink_from_url("file:PATH" | "http(s)://...")` builds one from the `--sink` flag.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

import httpx

from pms_drivers.base import Appointment, AppointmentStatusChange, Patient
from pms_drivers.retry import RetryPolicy, with_retry
from reconciler import private

TYPE_APPOINTMENT_STATUS = "dev.dental.pmsctl.appointment-status.changed"
TYPE_APPOINTMENT = "dev.dental.pmsctl.appointment.changed"
TYPE_PATIENT = "dev.dental.pmsctl.patient.changed"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"


class CloudEvent(TypedDict):
    """A CloudEvents 1.0 event in structured JSON form (`practiceid`, `pms` are extensions)."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str
    practiceid: str
    pms: str
    data: dict[str, Any]


class SinkError(Exception):
    """The sink did not accept the events; the poller keeps its cursor and retries later."""


class _NotYetAccepted(SinkError):
    """A failure that the same batch may get past a moment later (network, 5xx, 408, 429)."""


class EventSink(Protocol):
    """Where events go. `publish` returns once every event is accepted (or raises SinkError)."""

    async def publish(self, events: Sequence[CloudEvent]) -> None: ...

    async def close(self) -> None: ...


def event_id(practice_id: str, kind: str, record_id: str, stamp: str) -> str:
    """The stable id of one change: same practice, kind, record and stamp (with the row's version,
    for rows) -> same id."""
    raw = "\x1f".join((practice_id, kind, record_id, stamp)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def _event(
    *,
    practice_id: str,
    pms: str,
    type_: str,
    kind: str,
    subject: str,
    stamp: str,
    time: str,
    data: dict[str, Any],
) -> CloudEvent:
    return CloudEvent(
        specversion="1.0",
        id=event_id(practice_id, kind, subject, stamp),
        source=f"/pmsctl/practices/{practice_id}",
        type=type_,
        subject=subject,
        time=time,
        datacontenttype="application/json",
        practiceid=practice_id,
        pms=pms,
        data=data,
    )


def appointment_status_event(practice_id: str, pms: str, c: AppointmentStatusChange) -> CloudEvent:
    """One patient-flow status change; the id covers the appointment, the status and its time."""
    return _event(
        practice_id=practice_id,
        pms=pms,
        type_=TYPE_APPOINTMENT_STATUS,
        kind="appointmentStatus",
        subject=c.appointment_id,
        stamp=f"{c.status}@{c.at}",
        time=c.at,
        data={
            "appointmentId": c.appointment_id,
            "patientId": c.patient_id,
            "status": c.status,
            "at": c.at,
        },
    )


def _row_stamp(changed_at: str, version: str) -> str:
    # The PMS's change stamp has one-second resolution: the row's version (a digest of what is
    # emitted) tells two states of one row within that second apart, so each keeps its own id.
    return f"{changed_at}#{version}" if version else changed_at


def appointment_event(practice_id: str, pms: str, a: Appointment) -> CloudEvent:
    """One appointment row change; the id covers the appointment, its change stamp and the
    row's version."""
    return _event(
        practice_id=practice_id,
        pms=pms,
        type_=TYPE_APPOINTMENT,
        kind="appointments",
        subject=a.id,
        stamp=_row_stamp(a.changed_at, a.version),
        time=a.changed_at,
        data={
            "id": a.id,
            "patientId": a.patient_id,
            "start": a.start,
            "status": a.status,
            "providerId": a.provider_id,
            "confirmed": a.confirmed,
            "changedAt": a.changed_at,
            "version": a.version,
        },
    )


def patient_event(practice_id: str, pms: str, p: Patient, *, photos: bool) -> CloudEvent:
    """One patient change; `photoRef` is included only when the practice asks for photos."""
    data: dict[str, Any] = {
        "id": p.id,
        "firstName": p.first_name,
        "lastName": p.last_name,
        "changedAt": p.changed_at,
        "version": p.version,
    }
    if photos:
        data["photoRef"] = p.photo_ref
    return _event(
        practice_id=practice_id,
        pms=pms,
        type_=TYPE_PATIENT,
        kind="patients",
        subject=p.id,
        stamp=_row_stamp(p.changed_at, p.version),
        time=p.changed_at,
        data=data,
    )


class JsonlSink:
    """Appends events to a file, one JSON object per line; safe for many concurrent pollers.

    With `fsync` (the default) `publish()` returns only once the file is fsynced past its
    events. Publishes that arrive while an fsync runs share the next one (group commit): at
    thousands of pollers one fsync per publish, each a thread hop and a disk flush, would queue
    every poll behind the disk, and one fsync covers every line written before it started.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        # Events carry patients' appointments and names: the owner's alone (0600 in 0700).
        private.private_dir(self.path.parent)
        self._fsync = fsync
        self._sync_lock = asyncio.Lock()
        self._file = private.open_private(self.path, "a", encoding="utf-8")
        #: Publishes written to the file so far, and how many of them an fsync has covered.
        self._written = 0
        self._synced = 0
        self.fsyncs = 0

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        if not events:
            return
        text = "".join(json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n" for e in events)
        try:
            # No await between write and flush: lines of concurrent publishes never interleave.
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as exc:  # ValueError: the file was closed
            raise SinkError(f"cannot append events to {self.path}: {exc}") from exc
        self._written += 1
        if self._fsync:
            await self._sync(self._written)

    async def _sync(self, mine: int) -> None:
        """Return once an fsync that started after publish number `mine` was written finished."""
        async with self._sync_lock:
            if self._synced >= mine:
                return  # the fsync this publish waited for covered it
            upto = self._written
            try:
                await asyncio.to_thread(os.fsync, self._file.fileno())
            except (OSError, ValueError) as exc:
                raise SinkError(f"cannot fsync events to {self.path}: {exc}") from exc
            self.fsyncs += 1
            self._synced = upto

    async def close(self) -> None:
        async with self._sync_lock:  # after an fsync in flight
            self._file.close()

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


class HttpSink:
    """POSTs events in batches (`application/cloudevents-batch+json`) to one URL."""

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 500,
        attempts: int = 3,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self._batch_size = batch_size
        self._retry = RetryPolicy(max_attempts=attempts, base_delay=0.2, max_delay=2.0)
        self._client = client or httpx.AsyncClient(timeout=timeout, headers=dict(headers or {}))
        self._owns_client = client is None

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        for i in range(0, len(events), self._batch_size):
            await self._post(events[i : i + self._batch_size])

    async def _post(self, batch: Sequence[CloudEvent]) -> None:
        body = json.dumps(list(batch), separators=(",", ":")).encode()

        def refused(why: str) -> str:
            return f"event sink {self.url} did not accept {len(batch)} event(s): {why}"

        async def attempt() -> None:
            try:
                r = await self._client.post(
                    self.url, content=body, headers={"Content-Type": BATCH_CONTENT_TYPE}
                )
            except httpx.HTTPError as exc:
                raise _NotYetAccepted(refused(f"{type(exc).__name__}: {exc}")) from exc
            if 200 <= r.status_code < 300:
                return
            if r.status_code >= 500 or r.status_code in (408, 429):
                raise _NotYetAccepted(refused(f"HTTP {r.status_code}"))
            # The receiver rejected the batch: retrying the same body will not help.
            raise SinkError(refused(f"HTTP {r.status_code}"))

        await with_retry(attempt, policy=self._retry, retry_on=(_NotYetAccepted,))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpSink({self.url!r})"


def sink_from_url(url: str) -> EventSink:
    """`file:PATH` (or a plain path) -> JsonlSink; `http://` / `https://` -> HttpSink."""
    if url.startswith(("http://", "https://")):
        return HttpSink(url)
    if url.startswith("file:"):
        url = url[len("file:") :]
        if url.startswith("//"):
            url = url[2:]
    if not url:
        raise ValueError("--sink: give file:PATH or an http(s):// URL")
    return JsonlSink(url)
