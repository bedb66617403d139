"""KubeSecrets served from the Secrets watch: what it waits for and which practices a Secret event
refreshes. The watch is a plain mapping here (Kopf's index in the operator); the API client points
at a closed port, so a GET would fail the test."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from kubernetes import client

from reconciler.kube.client import KubeSecrets

NS = "clinics"


def _unreachable_api() -> Any:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard: nothing answers
    cfg.retries = 0
    return client.ApiClient(cfg)


def _data(**values: str) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def _secrets(watched: dict[tuple[str, str], dict[str, str]]) -> KubeSecrets:
    secrets = KubeSecrets(_unreachable_api(), grace=30.0)
    secrets.watch(lambda namespace, name: watched.get((namespace, name)))
    return secrets


async def test_a_watched_secret_is_served_from_memory_without_a_get() -> None:
    secrets = _secrets({(NS, "acme-pms"): _data(token="t-1")})
    creds = await secrets.get(f"{NS}/acme", "acme-pms")
    assert creds.get("token") == "t-1"
    assert secrets.gets == 0


async def test_a_reconcile_waits_for_a_secret_the_watch_delivers_after_its_practice() -> None:
    watched: dict[tuple[str, str], dict[str, str]] = {}
    secrets = _secrets(watched)
    reading = asyncio.ensure_future(secrets.get(f"{NS}/acme", "acme-pms"))
    await asyncio.sleep(0)  # the reconcile is now waiting for the watch
    assert not reading.done()
    watched[(NS, "acme-pms")] = _data(token="t-1")
    # The waiting practice is given this data: the event must not reconcile it a second time.
    assert secrets.arrived(NS, "acme-pms", [f"{NS}/acme"]) == []
    creds = await asyncio.wait_for(reading, 5)
    assert creds.get("token") == "t-1"
    assert secrets.gets == 0


async def test_a_secret_event_refreshes_only_the_practices_given_other_data() -> None:
    watched = {(NS, "shared-pms"): _data(token="t-1")}
    secrets = _secrets(watched)
    await secrets.get(f"{NS}/acme", "shared-pms")
    # The same data again (a label change, the initial event after a GET): nothing to do.
    assert secrets.arrived(NS, "shared-pms", [f"{NS}/acme"]) == []
    # A practice that has not read it yet (its reconcile failed, say) is refreshed.
    assert secrets.arrived(NS, "shared-pms", [f"{NS}/acme", f"{NS}/beta"]) == [f"{NS}/beta"]
    watched[(NS, "shared-pms")] = _data(token="t-2")
    assert secrets.arrived(NS, "shared-pms", [f"{NS}/acme"]) == [f"{NS}/acme"]
    del watched[(NS, "shared-pms")]  # deleted: the practice must learn it is gone
    assert secrets.arrived(NS, "shared-pms", [f"{NS}/acme"]) == [f"{NS}/acme"]
    secrets.forget(f"{NS}/acme")
    assert secrets.arrived(NS, "shared-pms", [f"{NS}/acme"]) == []
