"""The Kubernetes adapter: read Secrets, patch PracticeWriteback status, post Events.

Only `reconciler.kube` talks to the API server (this client; Kopf in `handlers`/`run`; `catalog`,
`leader`, `storage` and `webhooks` for their own objects). It uses the
official `kubernetes` client (synchronous; every call runs in a worker thread so the event loop
never blocks). Kopf itself gets its connection from `connection_info()`, built from the same
configuration, so the operator and this adapter always talk to the same cluster as the same user.

    api = load_api_client(kubeconfig=None)        # in-cluster, else $KUBECONFIG / ~/.kube/config
    secrets = KubeSecrets(api)                    # the engine's SecretSource
    writer = StatusWriter(api)                    # the engine's StatusListener
    live = list_practice_writebacks(["ns"])       # `pmsctl diff --live`: plain dicts + label
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pms_drivers.base import Credentials
from reconciler.engine.core import PracticeStatus, Transition, events_for
from reconciler.engine.engine import SecretNotFoundError

log = logging.getLogger(__name__)

GROUP = "writeback.dental.dev"
#: The version the operator reads and writes: the storage version, which needs no conversion, so
#: the operator keeps working while its own conversion webhook is down.
VERSION = "v1"
PLURAL = "practicewritebacks"
KIND = "PracticeWriteback"
COMPONENT = "pmsctl-operator"

_SECRET_KEYS_HINT = "developerKey and customerKey for Open Dental, token for Eaglesoft/Dentrix"


def load_api_client(kubeconfig: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: from `kubeconfig`, else in-cluster, else the default file."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return client.ApiClient(cfg)
    return config.new_client_from_config()  # type: ignore[no-untyped-call]


def connection_info(api: Any) -> dict[str, Any]:
    """Keyword arguments for `kopf.ConnectionInfo`, from the ApiClient's configuration."""
    cfg = api.configuration
    token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    scheme = None
    if token and " " in token:
        scheme, token = token.split(" ", 1)
    return {
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
        "scheme": scheme or ("Bearer" if token else None),
        "token": token,
        "username": cfg.username or None,
        "password": cfg.password or None,
    }


def unparsed(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Call a `kubernetes` client `method` (blocking) whose answer is not used: the answer's bytes
    are read, not parsed into the client's models or dicts (which costs more CPU than the call),
    and the connection goes back to the pool. An HTTP error still raises ApiException."""
    response = method(*args, _preload_content=False, **kwargs)
    try:
        response.read()
    finally:
        response.release_conn()


def _split(key: str) -> tuple[str, str]:
    namespace, _, name = key.partition("/")
    return namespace, name


#: Seconds a reconcile waits for the watch to deliver a Secret it does not hold yet (created a
#: moment before its practice, say) before reading it with a GET.
WATCH_GRACE = 2.0


class KubeSecrets:
    """The engine's SecretSource over Kubernetes Secrets in the practice's namespace.

    With `watch(lookup)` (the operator gives it Kopf's index over its Secrets watch) a Secret
    the watch holds is served from memory. One it does not hold yet is waited for (`grace`
    seconds: applied together, a Secret and its practice race on two watches), then read with
    a GET (`gets` counts those reads), so a missing Secret still says how to create it. A
    Secret the watch does not hold by design (not Opaque) is read with a GET at once.

    `arrived(namespace, name, keys)` is for the Secrets watch: it wakes the reconciles waiting
    for that Secret and returns those of the practices `keys` (the ones using it) that were last
    given other data, i.e. that need a refresh: a Secret delivered while its practice's
    reconcile waits for it, or just after that reconcile read it with a GET, or a change of its
    labels only, costs no second reconcile.
    """

    def __init__(self, api: Any, grace: float = WATCH_GRACE) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api)
        self._watched: Callable[[str, str], Mapping[str, str] | None] | None = None
        self._grace = grace
        #: practice key -> the Secret and the data it was last given (none after a failure).
        self._served: dict[str, tuple[tuple[str, str], dict[str, str]]] = {}
        self._unwatched: set[tuple[str, str]] = set()
        #: Secret -> practice key -> the future its reconcile waits on.
        self._waiting: dict[tuple[str, str], dict[str, asyncio.Future[None]]] = {}
        self.gets = 0

    def watch(self, lookup: Callable[[str, str], Mapping[str, str] | None]) -> None:
        """Serve Secrets from `lookup(namespace, name)` (their `data`: base64 values, as the
        API serves them), which returns None for a Secret it does not hold."""
        self._watched = lookup

    def arrived(self, namespace: str, name: str, keys: Iterable[str]) -> list[str]:
        """The watch delivered a change of Secret `namespace/name` (or its deletion): wake the
        reconciles waiting for it; those of `keys` last given other data (they need a refresh)."""
        ref = (namespace, name)
        waiting = self._waiting.pop(ref, {})
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_result(None)
        now = self._watched(*ref) if self._watched is not None else None
        current = (ref, dict(now)) if now is not None else None
        return [k for k in keys if k not in waiting and self._served.get(k) != current]

    def forget(self, key: str) -> None:
        """The practice `key` is gone."""
        self._served.pop(key, None)

    async def get(self, key: str, secret_name: str) -> Credentials:
        namespace, _ = _split(key)
        ref = (namespace, secret_name)
        self._served.pop(key, None)
        data = await self._from_watch(key, ref)
        if data is None:
            data = await self._read(ref)
        self._served[key] = (ref, dict(data))
        return _credentials(data)

    async def _from_watch(self, key: str, ref: tuple[str, str]) -> Mapping[str, str] | None:
        if self._watched is None or ref in self._unwatched:
            return None
        data = self._watched(*ref)
        if data is None and self._grace > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(ref, {})[key] = waiter
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, self._grace)
            finally:
                waiting = self._waiting.get(ref, {})
                if waiting.get(key) is waiter:
                    del waiting[key]
                    if not waiting:
                        del self._waiting[ref]
            data = self._watched(*ref)
        return data

    async def _read(self, ref: tuple[str, str]) -> Mapping[str, str]:
        from kubernetes.client.exceptions import ApiException

        namespace, secret_name = ref
        self.gets += 1
        try:
            secret = await asyncio.to_thread(
                self._core.read_namespaced_secret, secret_name, namespace
            )
        except ApiException as exc:
            if exc.status == 404:
                raise SecretNotFoundError(
                    f"spec.pms.credentialsSecretRef: Secret {namespace}/{secret_name} not found; "
                    f"create it with the keys {_SECRET_KEYS_HINT}"
                ) from None
            raise SecretNotFoundError(
                f"spec.pms.credentialsSecretRef: cannot read Secret {namespace}/{secret_name}: "
                f"HTTP {exc.status} {exc.reason} (check the operator's RBAC)"
            ) from None
        if (secret.type or "Opaque") != "Opaque":
            self._unwatched.add(ref)  # the watch never holds it: no waiting next time
        else:
            self._unwatched.discard(ref)
        return {str(k): str(v) for k, v in (secret.data or {}).items()}


def _credentials(data: Mapping[str, str]) -> Credentials:
    """A Secret's `data` (base64 values) as Credentials."""
    return Credentials({k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()})


class StatusWriter:
    """The engine's StatusListener: replaces `status` and posts an Event per notable transition."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._uids: dict[str, str] = {}
        self.patches = 0
        self.events = 0

    def remember(self, key: str, uid: str) -> None:
        """Record the resource's uid (Events point at it)."""
        self._uids[key] = uid

    def forget(self, key: str) -> None:
        self._uids.pop(key, None)

    async def __call__(
        self, key: str, status: PracticeStatus, transitions: Sequence[Transition]
    ) -> None:
        await self.patch_status(key, status.to_dict())
        for t in events_for(transitions):
            await self.post_event(
                key,
                "Warning" if t.warning else "Normal",
                t.reason,
                f"{t.type} is {t.new_status}: {t.message}",
            )

    async def patch_status(self, key: str, status: Mapping[str, Any]) -> None:
        """Replace the whole status (a JSON patch, so stale map keys do not linger)."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = _split(key)
        body = [{"op": "add", "path": "/status", "value": dict(status)}]
        try:
            await asyncio.to_thread(
                functools.partial(
                    unparsed, self._custom.patch_namespaced_custom_object_status,
                    GROUP, VERSION, namespace, PLURAL, name, body,
                    _content_type="application/json-patch+json",
                )
            )  # fmt: skip
            self.patches += 1
        except ApiException as exc:
            if exc.status == 404:
                return  # deleted meanwhile
            raise

    async def post_event(self, key: str, type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the practice (best effort: a failure is logged)."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = _split(key)
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        # A plain body, and the answer left unparsed: the client's models cost more CPU than the
        # rest of the call, and one Event goes out per new practice.
        event = {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                **({"uid": self._uids[key]} if self._uids.get(key) else {}),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
        }
        try:
            await asyncio.to_thread(unparsed, self._core.create_namespaced_event, namespace, event)
            self.events += 1
        except ApiException as exc:
            log.warning("%s: could not post Event %s: HTTP %s", key, reason, exc.status)


# ---------------------------------------------------------------------------------------------
# Reading PracticeWritebacks for the CLI (`pmsctl diff --live`)

#: Seconds one list request may take before `list_practice_writebacks` gives up.
LIST_TIMEOUT_S = 15.0


class KubeReadError(Exception):
    """The kubeconfig could not be loaded or the API server could not be read; the message
    says which (kubeconfig, missing CRD, HTTP status, unreachable server) and never holds a
    credential."""


@dataclass(frozen=True)
class LiveObjects:
    """PracticeWriteback objects read from a cluster, as plain dicts (the API server's JSON),
    and which cluster they came from: `label` is `cluster <context name or server URL>`."""

    items: tuple[dict[str, Any], ...]
    label: str
    server: str


def _kubeconfig_contexts(kubeconfig: str | None) -> tuple[list[dict[str, Any]], Any]:
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        raise KubeReadError(f"cannot load the kubeconfig: {exc}") from exc
    return list(contexts or []), active


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig's `context` (default: its current context), `default`
    when the context names none; KubeReadError when the kubeconfig or context does not exist."""
    contexts, active = _kubeconfig_contexts(kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), None) if context else active
    if chosen is None:
        raise KubeReadError(f"kubeconfig has no context named {context!r}")
    return str((chosen.get("context") or {}).get("namespace") or "default")


def list_practice_writebacks(
    namespaces: Iterable[str],
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout_s: float = LIST_TIMEOUT_S,
) -> LiveObjects:
    """Every PracticeWriteback in `namespaces`, read with the kubeconfig file (default:
    $KUBECONFIG / ~/.kube/config) and context (default: the current one). One list request per
    namespace, each bounded by `timeout_s`, one retry. Raises KubeReadError when the kubeconfig
    cannot be loaded, the CRD is not installed, a list fails or the server cannot be reached."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    cfg = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=cfg
        )
    except (ConfigException, OSError) as exc:
        raise KubeReadError(f"cannot load the kubeconfig: {exc}") from exc
    cfg.retries = 1
    if context is None:
        try:
            _, active = _kubeconfig_contexts(kubeconfig)
            context = str(active["name"]) if active else None
        except KubeReadError:  # it loaded a moment ago; a label is not worth failing for
            context = None
    label = f"cluster {context or cfg.host}"
    items: list[dict[str, Any]] = []
    with client.ApiClient(cfg) as api_client:
        api = client.CustomObjectsApi(api_client)
        for ns in sorted(set(namespaces)):
            try:
                answer = api.list_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, _request_timeout=timeout_s
                )
            except ApiException as exc:
                if exc.status == 404:
                    raise KubeReadError(
                        f"{label}: the {KIND} CRD is not installed "
                        "(kubectl apply --server-side -f crds/)"
                    ) from exc
                raise KubeReadError(
                    f"{label}: listing {PLURAL} in namespace {ns} failed: "
                    f"HTTP {exc.status} {exc.reason}"
                ) from exc
            except (HTTPError, OSError) as exc:
                raise KubeReadError(
                    f"{label}: cannot reach the API server at {cfg.host}: {exc}"
                ) from exc
            found = answer.get("items") if isinstance(answer, dict) else None
            items.extend(obj for obj in found or [] if isinstance(obj, dict))
    return LiveObjects(tuple(items), label, str(cfg.host))
