"""The Kopf handlers: every handler is on one screen below (Kopf is imported only in
`reconciler.kube`, here and in `run.py`, which starts it).

Handlers unpack the body, call the engine (from Kopf's `memo`, never a module global) and turn
the engine's last error into `kopf.TemporaryError` / `kopf.PermanentError`. The engine reports
status through its listener (`reconciler.kube.client.StatusWriter`): it replaces `status` promptly on
condition transitions (posting Events) and at most every `status_interval` for poller counters.

- create / update / resume -> `engine.apply` (an update includes annotation changes, so
  `writeback.dental.dev/reconcile-requested-at: <token>` forces a reconcile; the token is echoed
  to `status.lastHandledReconcileAt`).
- deleted (or marked for deletion) -> `engine.remove`, from the watch event: no finalizer, since
  nothing outside the operator needs cleaning up before the object goes (the PracticeCatalog is
  garbage-collected through its ownerReference, cursors are kept on purpose). A finalizer would
  cost two object PATCHes per practice; one left by an older operator is removed by Kopf.
- a Secret referenced by a practice changes -> `engine.refresh` for those practices.
- Secrets are served to the engine from a Kopf index over the Secrets watch Kopf already runs
  (`KubeSecrets.watch`): a reconcile reads no Secret from the API server; Kopf fills the index
  from its initial listing before it handles any practice, so a restart reads none either. A
  Secret the index does not hold (not Opaque, or not delivered yet) is read with a GET.
- drift re-checks are the engine's own (one heap-scheduled check per practice, shared with the
  local mode), not a Kopf timer per object: at 10,000 practices that is one task, not 10,000.

Start-up readiness: the writeback API listens before Kopf has handled the practices, and a
practice it does not hold yet must be 503 ("try again"), not 404. With a `StartupReconciles` in
the memo (as `pmsctl operator` builds it), the startup handler lists the practices this operator
owns; once Kopf's first create/update/resume (or delete) of each of them has returned (the
engine has applied it), the runtime is `loaded()`: the API and its /readyz answer as usual.

`build_registry(labels=...)` registers the handlers on a fresh registry so a label selector (one
shard per replica) and the tests each get their own. The memo comes from `make_memo()`: the
`reconciler.runtime.Runtime` (started by the startup handler, stopped by the cleanup handler:
its writeback API before its engine), its `engine`, the `writer` (StatusWriter), `connection`
(kwargs for kopf.ConnectionInfo) and `catalogs` (the CatalogWriter that publishes each
practice's PracticeCatalog; it needs the practice's uid for the ownerReference).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import kopf

from pms_drivers.errors import PmsError, TemporaryPmsError
from reconciler.api.spec import PracticeSpec
from reconciler.engine.engine import SecretNotFoundError
from reconciler.kube.client import GROUP, PLURAL, VERSION, KubeSecrets
from reconciler.runtime import Runtime
from reconciler.writeback.errors import WritebackError

ANNOTATION_RECONCILE = "writeback.dental.dev/reconcile-requested-at"
#: The finalizer earlier releases put on every practice: no handler needs one, so Kopf removes it.
FINALIZER = "writeback.dental.dev/finalizer"
#: The Kopf index of Opaque Secrets: (namespace, name) -> data (base64 values, as served).
SECRET_INDEX = "pmsctl_secrets"
#: How long Kopf waits for the watch to deliver the version its own PATCH produced before it
#: handles a later event (seconds). Until then the events it sees lack its last-handled state,
#: and handling one would run the create handler again; under load (1,000 practices applied at
#: once, an operator restart) the watch delivered it tens of seconds late, past Kopf's 5 s.
CONSISTENCY_TIMEOUT = 120.0
#: Where Kopf keeps its handler progress and last-handled spec (annotations).
KOPF_PREFIX = "operator.writeback.dental.dev"
RESOURCE = (GROUP, VERSION, PLURAL)
#: Kopf retry delay (s) after a temporary PMS failure (the engine's pollers notice recovery sooner).
RETRY_DELAY = 10.0
#: While not every listed practice has been handled, re-list this often (seconds): one deleted
#: between the list and Kopf's own listing is never handled, and must not hold readiness back.
STARTUP_RELIST = 30.0

log = logging.getLogger(__name__)


class StartupReconciles:
    """Counts Kopf's first handling of each practice that existed at start-up.

    `list_keys` returns the keys (namespace/name) of the practices this operator owns now (same
    namespaces and label selector as Kopf's watch); `on_loaded` is called once every listed key
    has been handled (`handled(key)`, after the engine applied or removed it). A key handled
    before the list arrives counts; a listed key gone from a later list no longer waits.
    """

    def __init__(
        self,
        list_keys: Callable[[], Awaitable[set[str]]],
        on_loaded: Callable[[], None],
        relist: float = STARTUP_RELIST,
    ) -> None:
        self.list_keys = list_keys
        self.on_loaded = on_loaded
        self.relist = relist
        self.expected: set[str] | None = None
        self.seen: set[str] = set()
        self.done = False
        self._task: asyncio.Task[None] | None = None

    def handled(self, key: str) -> None:
        """Kopf's handler for `key` has returned (whatever it raised)."""
        if not self.done:
            self.seen.add(key)
            self._check()

    def waiting_for(self) -> set[str]:
        """The listed keys not handled yet (empty before the list arrives)."""
        return (self.expected or set()) - self.seen

    def _check(self) -> None:
        if not self.done and self.expected is not None and not self.waiting_for():
            self.done = True
            log.info("every practice found at start-up has been reconciled (%d)",
                     len(self.expected))  # fmt: skip
            self.on_loaded()

    async def run(self) -> None:
        """List, then re-list every `relist` seconds until every listed key is handled."""
        while not self.done:
            try:
                now = await self.list_keys()
            except Exception as exc:  # a failed list only delays readiness; say why
                log.warning("listing the practices at start-up failed (retrying in %gs): %s",
                            self.relist, exc)  # fmt: skip
            else:
                self.expected = now if self.expected is None else self.expected & now
                self._check()
            if not self.done:
                await asyncio.sleep(self.relist)

    def start(self) -> None:
        """Run `run()` in the background (the startup handler, once the runtime listens)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def build_registry(
    *, labels: Mapping[str, Any] | None = None, share: bool = False
) -> kopf.OperatorRegistry:
    """All handlers, registered on a new registry; `labels` filters practices (a shard).
    `share` (--share): practices reach `memo.share` (`reconciler.kube.membership`) through a
    plain watch instead of the per-object handlers, which keep state on the objects (progress,
    last-handled spec, finalizer) that replicas would fight over."""
    registry = kopf.OperatorRegistry()
    per_object = kopf.OperatorRegistry() if share else registry  # not run under --share
    sel = dict(labels or {})

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kw: Any) -> None:
        configure(settings)
        if memo.get("secrets") is not None:
            memo.secrets.watch(_index_lookup(kw[SECRET_INDEX]))
        await _start_runtime(memo.runtime)
        if memo.get("startup") is not None:
            memo.startup.start()
        if memo.get("share") is not None:
            memo.share.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        if memo.get("startup") is not None:
            await memo.startup.stop()
        if memo.get("share") is not None:
            await memo.share.stop()
        await memo.runtime.stop()

    @kopf.on.login(registry=registry)
    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**memo.connection)

    @kopf.on.resume(*RESOURCE, labels=sel, registry=per_object)
    @kopf.on.create(*RESOURCE, labels=sel, registry=per_object)
    @kopf.on.update(*RESOURCE, labels=sel, registry=per_object)
    async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        try:
            await _reconcile(body, memo)
        finally:  # applied, or failed for a reason its status shows: handled either way
            _handled(memo, f"{body['metadata']['namespace']}/{body['metadata']['name']}")

    @kopf.on.event(*RESOURCE, labels=sel, registry=per_object, when=_deleting)
    async def delete(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.engine.remove(f"{namespace}/{name}")
        memo.writer.forget(f"{namespace}/{name}")
        if memo.get("secrets") is not None:
            memo.secrets.forget(f"{namespace}/{name}")
        if memo.get("catalogs") is not None:
            memo.catalogs.forget(f"{namespace}/{name}")
        _handled(memo, f"{namespace}/{name}")

    if share:

        @kopf.on.event(*RESOURCE, labels=sel, registry=registry)
        async def seen(
            event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any
        ) -> None:
            await memo.share.observe(event.get("type"), body)

    @kopf.index("", "v1", "secrets", id=SECRET_INDEX, registry=registry, when=_opaque)
    def secrets(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace or "", name): dict(body.get("data") or {})}

    @kopf.on.event("", "v1", "secrets", registry=registry, when=_referenced)
    async def secret_changed(
        event: Mapping[str, Any], namespace: str | None, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        if event.get("type") is None:  # the initial listing, not a change
            return
        keys = memo.engine.keys_using_secret(namespace or "", name)
        if memo.get("secrets") is not None:  # not those reconciled with this very data
            keys = memo.secrets.arrived(namespace or "", name, keys)
        for key in keys:
            await memo.engine.refresh(key)

    @kopf.on.probe(id="practices", registry=registry)
    def practices(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.engine.keys())

    @kopf.on.probe(id="pollers", registry=registry)
    def pollers(memo: kopf.Memo, **_: Any) -> int:
        return len(memo.engine.scheduler)

    return registry


def configure(settings: kopf.OperatorSettings) -> None:
    """Operator settings: watches that recover, annotation storage, quiet Kopf Events."""
    # A watch the API server silently stops answering is re-established: the server ends each
    # watch after server_timeout, and the client gives up a little after that.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.persistence.finalizer = FINALIZER  # no handler needs it: Kopf removes it if found
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT
    # status is the engine's (and the schema prunes unknown status fields): Kopf keeps its
    # progress and last-handled state in annotations.
    # Its own prefix: Kopf ignores every annotation under a storage prefix when diffing, and
    # writeback.dental.dev/reconcile-requested-at must count as a change.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = _DiffBase(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # the engine posts the Events that matter


class _DiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's annotation diff-base, with the essence built from the spec, labels and annotations
    only: Kopf deep-copies the whole body first, and a practice's status (conditions, resolved
    names, pollers) is most of it; Kopf builds an essence for every event it handles."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        if extra_fields:  # no handler here asks for status fields; keep Kopf's way if one does
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        slim = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        slim["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, slim)), extra_fields=None)


def make_memo(
    runtime: Runtime,
    writer: Any,
    connection: Mapping[str, Any],
    catalogs: Any = None,
    startup: StartupReconciles | None = None,
    secrets: KubeSecrets | None = None,
) -> kopf.Memo:
    """The memo every handler reads: the runtime, its engine, the status writer, the kwargs
    of kopf.ConnectionInfo, the catalog writer (`reconciler.kube.catalog`, optional), the
    start-up count that makes the runtime `loaded()` (optional) and the engine's `KubeSecrets`
    (optional: given, it is served from the Secrets index)."""
    return kopf.Memo(
        runtime=runtime,
        engine=runtime.engine,
        writer=writer,
        connection=connection,
        catalogs=catalogs,
        startup=startup,
        secrets=secrets,
    )


def _handled(memo: kopf.Memo, key: str) -> None:
    if memo.get("startup") is not None:
        memo.startup.handled(key)


async def _start_runtime(runtime: Runtime) -> None:
    """Start the runtime; a writeback API or metrics port that cannot be served is permanent."""
    try:
        await runtime.start()
    except WritebackError as exc:  # the port is taken, the queue file cannot be opened
        raise kopf.PermanentError(f"the writeback service cannot start: {exc}") from exc
    except OSError as exc:  # the metrics port is taken
        raise kopf.PermanentError(f"the metrics server cannot start: {exc}") from exc


async def apply_shared(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    """--share: apply a practice this replica runs (its status shows what went wrong)."""
    with contextlib.suppress(kopf.TemporaryError, kopf.PermanentError):
        await _reconcile(body, memo)


async def forget_shared(key: str, memo: kopf.Memo) -> None:
    """--share: stop running a practice here (deleted, or its bucket went to another replica)."""
    await memo.engine.remove(key)
    memo.writer.forget(key)
    if memo.get("secrets") is not None:
        memo.secrets.forget(key)
    evict = getattr(memo.runtime.store, "evict", None)  # its cursors may move on elsewhere
    if evict is not None:
        evict(key)


def _deleting(**kwargs: Any) -> bool:
    """The practice is gone, or marked for deletion (another finalizer may still hold it)."""
    event, body = kwargs["event"], kwargs["body"]
    return bool(event.get("type") == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"))


def _opaque(**kwargs: Any) -> bool:
    """Credentials are Opaque Secrets; service-account tokens, TLS and Helm's are not indexed."""
    return str(kwargs["body"].get("type") or "Opaque") == "Opaque"


def _index_lookup(index: Any) -> Callable[[str, str], Mapping[str, str] | None]:
    """`(namespace, name) -> data` over the Kopf index (None when it holds no such Secret)."""

    def lookup(namespace: str, name: str) -> Mapping[str, str] | None:
        for data in index.get((namespace, name)) or ():
            return dict(data)
        return None

    return lookup


def _referenced(**kwargs: Any) -> bool:
    memo, namespace, name = kwargs["memo"], kwargs["namespace"], kwargs["name"]
    return bool(memo.engine.keys_using_secret(namespace or "", name))


async def _reconcile(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    meta = body["metadata"]
    key = f"{meta['namespace']}/{meta['name']}"
    memo.writer.remember(key, meta.get("uid", ""))
    if memo.get("catalogs") is not None:
        memo.catalogs.remember(key, meta.get("uid", ""))
    try:
        spec = PracticeSpec.from_resource(body)
    except (KeyError, TypeError, ValueError) as exc:
        raise kopf.PermanentError(f"spec is not valid: {exc}; run `pmsctl validate`") from exc
    token = (meta.get("annotations") or {}).get(ANNOTATION_RECONCILE)
    await memo.engine.apply(
        key,
        spec,
        generation=int(meta.get("generation") or 1),
        reconcile_token=token,
        previous_status=body.get("status") or None,
        created=meta.get("creationTimestamp") or None,
    )
    _raise_for(memo.engine.last_error(key))


def _raise_for(error: BaseException | None) -> None:
    """Translate the engine's last error for Kopf.

    The engine heals by itself (it watches for the PMS answering again, re-checks on its drift
    schedule, and is refreshed when a referenced Secret changes), and a Kopf retry delay would
    hold back the next spec change until it expires. So only a temporary PMS error gets a short
    Kopf retry; a missing Secret, rejected credentials or a spec the PMS refuses are permanent
    for this spec: the status says what to fix, and the fix (a Secret or spec change) reconciles.
    """
    if error is None:
        return
    if isinstance(error, TemporaryPmsError):
        delay = min(max(RETRY_DELAY, float(error.retry_after or 0)), 60.0)
        raise kopf.TemporaryError(str(error), delay=delay)
    if isinstance(error, SecretNotFoundError | PmsError | ValueError):
        raise kopf.PermanentError(str(error))
    raise kopf.TemporaryError(str(error), delay=RETRY_DELAY)


def parse_selector(selector: str | None) -> dict[str, Any]:
    """`a=b,c,!d,e!=f` -> a Kopf labels filter; ValueError naming the bad term."""
    out: dict[str, Any] = {}
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            out[k] = _not_equal(v)
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            out[k] = v
        elif term.startswith("!"):
            out[term[1:].strip()] = kopf.ABSENT
        else:
            out[term] = kopf.PRESENT
        if not list(out)[-1]:
            raise ValueError(f"--selector: {term!r} has no label key")
        if any(c in term for c in " ()"):
            raise ValueError(
                f"--selector: {term!r}: only key=value, key!=value, key and !key are supported"
            )
    return out


def _not_equal(value: str) -> Any:
    def check(v: str | None, **_: Any) -> bool:
        return v != value

    return check
