"""The two series the alerts need beyond the engine's counters, from the real code paths:
`pmsctl_practice_ready{practice}` follows the Ready condition of a practice the engine holds
(real simulator on loopback, real SQLite), with no series while suspended or once removed; and
`pmsctl_leader{lease}` is 1 while a LeaderElector holds its Lease on the real API server and 0
once it released or lost it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import testenv
from prometheus_client import REGISTRY

from pms_simulator import Simulator
from reconciler.engine.cursors import SqliteCursorStore
from reconciler.engine.engine import Engine, EngineSettings
from reconciler.engine.sink import JsonlSink
from reconciler.kube.leader import LeaderElector, LeaseConfig

FAST = EngineSettings(first_poll_jitter=0.0, jitter=0.0, drift_interval=60.0, status_interval=0.5)


class Secrets:
    """SecretSource over a dict of Secret name -> values (the protocol in full)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {}

    async def get(self, key: str, secret_name: str):  # type: ignore[no-untyped-def]
        from pms_drivers.base import Credentials
        from reconciler.engine.engine import SecretNotFoundError

        if secret_name not in self.values:
            raise SecretNotFoundError(f"Secret {secret_name} not found")
        return Credentials(self.values[secret_name])


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(rate_limit_per_second=1000, burst=1000)
    s.add_practice("acme", "OpenDental")
    async with s.serve():
        yield s
    s.close()


def ready_value(key: str) -> float | None:
    return REGISTRY.get_sample_value("pmsctl_practice_ready", {"practice": key})


async def test_practice_ready_follows_the_ready_condition(sim: Simulator, tmp_path: Path) -> None:
    from reconciler.api.spec import PracticeSpec

    def spec(**over: object) -> PracticeSpec:
        body = {
            "practiceId": "acme",
            "pms": {
                "type": "OpenDental",
                "url": sim.base_url("OpenDental"),
                "credentialsSecretRef": {"name": "acme-pms"},
            },
            "providerId": "1",
            "sync": {"appointments": {"enabled": True, "interval": "60s"}},
            **over,
        }
        return PracticeSpec.from_spec(body)

    secrets = Secrets()
    engine = Engine(
        sink=JsonlSink(tmp_path / "events.jsonl", fsync=False),
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=secrets,
        settings=FAST,
    )
    key = "clinics/acme-ready-metric"
    await engine.start()
    try:
        status = await engine.apply(key, spec())
        assert not status.ready
        assert ready_value(key) == 0.0  # the Secret is missing
        secrets.values["acme-pms"] = dict(sim.credentials("acme"))
        status = await engine.refresh(key)  # type: ignore[assignment]
        assert status is not None and status.ready
        assert ready_value(key) == 1.0
        status = await engine.apply(key, spec(suspend=True), generation=2)
        assert not status.ready
        assert ready_value(key) is None, "a suspended practice is not a fault to alert on"
        await engine.apply(key, spec(), generation=3)
        assert ready_value(key) == 1.0
        await engine.remove(key)
        assert ready_value(key) is None
        await engine.apply(key, spec(), generation=4)
        assert ready_value(key) == 1.0
    finally:
        await engine.stop()
    assert ready_value(key) is None


def leader_value(lease: str) -> float | None:
    return REGISTRY.get_sample_value("pmsctl_leader", {"lease": lease})


@pytest.mark.kube
async def test_leader_is_one_while_the_lease_is_held(
    kube: testenv.Cluster, kube_namespace: str
) -> None:
    timing = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.3}
    a = LeaderElector(kube.api_client, LeaseConfig("lock", kube_namespace, "cand-a", **timing))
    where = f"{kube_namespace}/lock"
    try:
        assert leader_value(where) is None
        await asyncio.wait_for(a.acquire(), 10)
        assert leader_value(where) == 1.0
        assert await a.release()
        assert leader_value(where) == 0.0

        # Taken over behind its back: the next renewal finds another holder and gives up.
        await asyncio.wait_for(a.acquire(), 10)
        assert leader_value(where) == 1.0
        patch = {"spec": {"holderIdentity": "someone-else"}}
        kube.kubectl(
            "patch", "lease", "lock", "-n", kube_namespace, "--type=merge", "-p", json.dumps(patch)
        )
        lost: list[str] = []
        await asyncio.wait_for(a.run_renewals(lost.append), 10)
        assert lost and "someone-else" in lost[0]
        assert leader_value(where) == 0.0
    finally:
        a.close()
