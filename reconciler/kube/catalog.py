"""PracticeCatalog objects in the cluster: the operator writes them, `pmsctl` reads them.

`CatalogWriter(api)` is the engine's catalog listener in the operator. Each catalog becomes a
`PracticeCatalog` with the PracticeWriteback's namespace and name and an ownerReference to it (so
the garbage collector deletes it with the practice), written by server-side apply under the
field manager `pmsctl-operator`: one request, whether the object exists or not. The engine hands
a catalog over only when its content changed or it is due for a refresh
(`reconciler.engine.catalog.publish_due`), so this writes rarely. A removed practice's catalog is
deleted at once too (the ownerReference covers a practice deleted while no operator runs). A
cluster without the CRD or the RBAC rule (HTTP 404 or 403) gets one warning naming the fix and
no catalogs; reconciles are never held up by a catalog.

`read_catalogs(...)` lists them for `pmsctl catalog` and `pmsctl plan` with the caller's
kubeconfig (a read-only identity is enough: deploy/base/catalog/ has the ClusterRole).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.api.catalog import (
    CATALOG_API_VERSION,
    CATALOG_PLURAL,
    CATALOG_VERSION,
    Catalog,
    content_hash,
)
from reconciler.kube.client import GROUP, KIND, VERSION, KubeReadError, unparsed

log = logging.getLogger(__name__)

FIELD_MANAGER = "pmsctl-operator"
#: The annotation carrying the catalog's content hash (what changed, at a glance).
HASH_ANNOTATION = "writeback.dental.dev/catalog-hash"


def catalog_body(catalog: Catalog, owner_uid: str | None) -> dict[str, Any]:
    """The object the operator applies: the catalog, its hash, and the ownerReference."""
    body = catalog.to_object()
    meta = body["metadata"]
    meta["annotations"] = {HASH_ANNOTATION: content_hash(catalog)}
    meta["labels"] = {"app.kubernetes.io/managed-by": "pmsctl"}
    if owner_uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": catalog.name,
                "uid": owner_uid,
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ]
    return body


class CatalogWriter:
    """The engine's CatalogListener over the API server (see the module docstring)."""

    def __init__(self, api: Any) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api)
        self._uids: dict[str, str] = {}
        #: HTTP statuses already logged as a warning (a missing CRD or RBAC rule: one line).
        self._warned: set[int] = set()
        self.writes = 0
        self.refused = 0

    def remember(self, key: str, uid: str) -> None:
        """Record the PracticeWriteback's uid (the catalog's ownerReference points at it)."""
        self._uids[key] = uid

    def forget(self, key: str) -> None:
        self._uids.pop(key, None)

    async def __call__(self, key: str, catalog: Catalog | None) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, _, name = key.partition("/")
        if catalog is None:
            try:
                await asyncio.to_thread(
                    self._custom.delete_namespaced_custom_object,
                    GROUP, CATALOG_VERSION, namespace, CATALOG_PLURAL, name,
                )  # fmt: skip
            except ApiException as exc:
                if exc.status != 404:
                    raise
            return
        uid = self._uids.get(key)
        if not uid:
            # Without its owner's uid the catalog would outlive the practice: wait for the
            # handler to remember it (the next drift check publishes again).
            log.debug("%s: no PracticeWriteback uid yet; catalog not written", key)
            return
        body = catalog_body(catalog, uid)
        try:
            await asyncio.to_thread(
                functools.partial(
                    unparsed, self._custom.patch_namespaced_custom_object,
                    GROUP, CATALOG_VERSION, namespace, CATALOG_PLURAL, name, body,
                    field_manager=FIELD_MANAGER, force=True,
                    _content_type="application/apply-patch+yaml",
                )
            )  # fmt: skip
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise  # the engine logs it and tries again at the next drift check
            # The cluster is not set up for catalogs; reconciles go on without them. Returning
            # (not raising) lets the engine wait for a change or the refresh before trying again.
            self.refused += 1
            if exc.status not in self._warned:
                self._warned.add(exc.status)
                log.warning(
                    "%s: cannot write its PracticeCatalog: HTTP %s %s; %s",
                    key,
                    exc.status,
                    exc.reason,
                    "install the CRD (kubectl apply --server-side -f crds/)"
                    if exc.status == 404
                    else "grant the operator deploy/base/catalog/operator-rbac.yaml",
                )
            return
        self.writes += 1


def read_catalogs(
    namespaces: Iterable[str] | None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout_s: float = 15.0,
) -> dict[str, Mapping[str, Any]]:
    """PracticeCatalog objects by `namespace/name`: in `namespaces`, or in every namespace
    when None. KubeReadError naming the cluster and the cause (never a credential)."""
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
    label = f"cluster {context or cfg.host}"
    out: dict[str, Mapping[str, Any]] = {}
    with client.ApiClient(cfg) as api_client:
        api = client.CustomObjectsApi(api_client)
        calls: list[Any]
        if namespaces is None:
            calls = [
                functools.partial(
                    api.list_cluster_custom_object, GROUP, CATALOG_VERSION, CATALOG_PLURAL
                )
            ]
        else:
            calls = [
                functools.partial(
                    api.list_namespaced_custom_object, GROUP, CATALOG_VERSION, ns, CATALOG_PLURAL
                )
                for ns in sorted(set(namespaces))
            ]
        for call in calls:
            try:
                answer = call(_request_timeout=timeout_s)
            except ApiException as exc:
                if exc.status == 404:
                    raise KubeReadError(
                        f"{label}: the PracticeCatalog CRD is not installed "
                        "(kubectl apply --server-side -f crds/)"
                    ) from exc
                raise KubeReadError(
                    f"{label}: listing {CATALOG_PLURAL} failed: HTTP {exc.status} {exc.reason}"
                ) from exc
            except (HTTPError, OSError) as exc:
                raise KubeReadError(
                    f"{label}: cannot reach the API server at {cfg.host}: {exc}"
                ) from exc
            for obj in (answer or {}).get("items") or ():
                if isinstance(obj, dict):
                    obj.setdefault("apiVersion", CATALOG_API_VERSION)
                    obj.setdefault("kind", "PracticeCatalog")
                    meta = obj.get("metadata") or {}
                    out[f"{meta.get('namespace')}/{meta.get('name')}"] = obj
    return out
