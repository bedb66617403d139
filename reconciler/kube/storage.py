"""Storage migration: every stored PracticeWriteback rewritten in v1, then v1alpha1 dropped from
the CRD's `status.storedVersions` (`pmsctl migrate --cluster`).

The API server writes an object in the storage version (v1) whenever it is updated, and skips
the write when the stored bytes would not change; so a no-op update (read in v1, write the same
object back) rewrites exactly the objects still stored in v1alpha1, the way Kubernetes' storage
version migrator does. Only after every object is rewritten may `storedVersions` shrink to
`[v1]`, and only then may a later CRD stop serving v1alpha1.

Safe to run twice and resumable: each object is rewritten on its own (a conflict re-reads it, a
deleted one is skipped), so an interrupted run is finished by running it again; the CRD status
changes last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from reconciler import GROUP, PLURAL
from reconciler.kube.client import load_api_client

CRD_NAME = f"{PLURAL}.{GROUP}"
STORAGE_VERSION = "v1"
PAGE = 100
_ATTEMPTS = 5


class StorageMigrationError(Exception):
    """The migration could not finish (the message says where it stopped)."""


def migrate_storage(
    kubeconfig: str | None = None,
    progress: Callable[[str], object] = print,
    api_client: Any = None,
) -> int:
    """Rewrite every PracticeWriteback in v1 and set storedVersions to [v1]; the number of
    objects rewritten. `progress` gets one line per page and a last line."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = api_client if api_client is not None else load_api_client(kubeconfig)
    extensions = client.ApiextensionsV1Api(api)
    objects = client.CustomObjectsApi(api)
    try:
        crd = extensions.read_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        raise StorageMigrationError(f"cannot read CRD {CRD_NAME}: {exc.reason}") from exc
    storage = next(v.name for v in crd.spec.versions if v.storage)
    if storage != STORAGE_VERSION:
        raise StorageMigrationError(
            f"CRD {CRD_NAME} stores {storage}; apply the CRD that stores {STORAGE_VERSION} first"
        )
    done = 0
    token: str | None = None
    while True:
        try:
            page: Any = objects.list_cluster_custom_object(
                GROUP, STORAGE_VERSION, PLURAL, limit=PAGE, _continue=token or None
            )
        except ApiException as exc:
            raise StorageMigrationError(f"listing after {done} object(s): {exc.reason}") from exc
        for item in page.get("items") or []:
            meta = item["metadata"]
            _rewrite(objects, meta.get("namespace", ""), meta["name"], item)
            done += 1
        progress(f"rewrote {done} PracticeWriteback(s) in {STORAGE_VERSION}")
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break
    stored = list((crd.status.stored_versions if crd.status else None) or [])
    if stored != [STORAGE_VERSION]:
        body = {"status": {"storedVersions": [STORAGE_VERSION]}}
        try:
            extensions.patch_custom_resource_definition_status(CRD_NAME, body)
        except ApiException as exc:
            raise StorageMigrationError(f"updating storedVersions: {exc.reason}") from exc
        progress(f"storedVersions: {', '.join(stored)} -> {STORAGE_VERSION}")
    else:
        progress(f"storedVersions: {STORAGE_VERSION} already")
    return done


def _rewrite(objects: Any, namespace: str, name: str, item: dict[str, Any]) -> None:
    """A no-op update of one object; a conflict re-reads it, a deleted one is skipped."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(_ATTEMPTS):
        try:
            objects.replace_namespaced_custom_object(
                GROUP, STORAGE_VERSION, namespace, PLURAL, name, item
            )
            return
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status != 409:
                raise StorageMigrationError(f"rewriting {namespace}/{name}: {exc.reason}") from exc
        try:
            item = objects.get_namespaced_custom_object(
                GROUP, STORAGE_VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return
            raise StorageMigrationError(f"re-reading {namespace}/{name}: {exc.reason}") from exc
    raise StorageMigrationError(f"rewriting {namespace}/{name}: still conflicting")
