"""deploy/gitops/argocd-health.lua, the Argo CD health check of PracticeWriteback, run by a real
Lua interpreter (lupa): hand-written objects for each rule, and statuses the real engine writes
(simulator on loopback, real SQLite) for a practice that is broken, healthy and suspended. The
same statuses go through kstatus (the rules Flux applies to custom resources; the upstream
sigs.k8s.io/cli-utils code, built by hack/kstatus/build.sh), so docs/gitops.md's Flux section
is checked too."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

from pms_drivers.base import Credentials
from pms_simulator import Simulator
from reconciler.api.spec import PracticeSpec
from reconciler.engine.cursors import SqliteCursorStore
from reconciler.engine.engine import Engine, EngineSettings, SecretNotFoundError
from reconciler.engine.sink import JsonlSink

REPO = Path(__file__).resolve().parent.parent
SCRIPT = (REPO / "deploy" / "gitops" / "argocd-health.lua").read_text()


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script the way Argo CD does: `obj` as a global, the returned table read back."""
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return str(hs["status"]), str(hs["message"])


def cond(type: str, status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type, "status": status, "reason": reason, "message": message}


def pwb(
    generation: int = 3, observed: int | None = 3, *conds: dict[str, str], **spec: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "writeback.dental.dev/v1alpha1",
        "kind": "PracticeWriteback",
        "metadata": {"name": "acme", "namespace": "clinics", "generation": generation},
        "spec": {"practiceId": "acme", **spec},
    }
    if observed is not None or conds:
        obj["status"] = {"conditions": list(conds)}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


READY = cond("Ready", "True", "Ready", "provider verified, names resolved, pollers running")
NOT_SUSPENDED = cond("Suspended", "False", "NotSuspended", "pollers and writebacks are active")

CASES = [
    ("no status yet", {**pwb(), "status": None}, "Progressing", "Waiting for the operator"),
    ("status without conditions", pwb(1, None), "Progressing", "Waiting for the operator"),
    (
        "an older generation observed",
        pwb(4, 3, READY),
        "Progressing",
        "generation 4 (status is for 3)",
    ),
    (
        "no observedGeneration",
        pwb(2, None, READY),
        "Progressing",
        "generation 2 (status is for none)",
    ),
    ("ready", pwb(3, 3, READY, NOT_SUSPENDED), "Healthy", "Ready: provider verified"),
    (
        "not ready",
        pwb(
            3,
            3,
            cond("Ready", "False", "SecretNotFound", "create Secret clinics/acme-pms"),
            NOT_SUSPENDED,
        ),
        "Degraded",
        "SecretNotFound: create Secret clinics/acme-pms",
    ),
    (
        "pollers starting",
        pwb(3, 3, cond("Ready", "False", "PollersStarting", "1 of 3")),
        "Progressing",
        "PollersStarting",
    ),
    (
        "ready unknown",
        pwb(3, 3, cond("Ready", "Unknown", "NotChecked", "not yet")),
        "Progressing",
        "NotChecked",
    ),
    ("no ready condition", pwb(3, 3, NOT_SUSPENDED), "Progressing", "No Ready condition yet"),
    (
        "suspended",
        pwb(
            3,
            3,
            cond("Ready", "False", "Suspended", "spec.suspend"),
            cond("Suspended", "True", "Suspended", "spec.suspend is true: nothing runs"),
        ),
        "Suspended",
        "Suspended: spec.suspend is true",
    ),
    (
        "suspend in spec, no condition",
        pwb(3, 3, cond("Ready", "False", "Suspended"), suspend=True),
        "Suspended",
        "spec.suspend is true",
    ),
    (
        "reconciling",
        pwb(3, 3, READY, cond("Reconciling", "True", "Progressing", "resolving")),
        "Progressing",
        "Progressing: resolving",
    ),
    (
        "stalled wins over ready",
        pwb(3, 3, READY, cond("Stalled", "True", "Refused", "bad spec")),
        "Degraded",
        "Refused: bad spec",
    ),
]


@pytest.mark.parametrize(
    ("obj", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_health_rules(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = health(obj)
    assert got_status == status
    assert message in got_message


def test_the_status_fields_the_script_reads_are_in_the_crd() -> None:
    crd = yaml.safe_load(
        (REPO / "crds" / "writeback.dental.dev_practicewritebacks.yaml").read_text()
    )
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions if v["served"]] == ["v1alpha1", "v1"]
    for version in versions:  # the script reads whichever version Argo CD asks for
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        assert status["observedGeneration"]["type"] == "integer"
        condition = status["conditions"]["items"]["properties"]
        assert {"type", "status", "reason", "message"} <= set(condition)
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert spec["suspend"]["type"] == "boolean"


# ---------------------------------------------------------------------------------------------
# Statuses written by the real engine


@pytest.fixture(scope="module")
def kstatus() -> Path:
    """The kstatus command from the pinned cli-utils module (built once, cached)."""
    build = REPO / "hack" / "kstatus" / "build.sh"
    result = subprocess.run(["bash", str(build)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"hack/kstatus/build.sh failed:\n{result.stderr[-3000:]}"
    return Path(result.stdout.strip().splitlines()[-1]) / "kstatus"


def flux_health(kstatus: Path, objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """kstatus (Current, InProgress, Failed) and its message for each object."""
    lines = "".join(json.dumps(o) + "\n" for o in objs)
    out = subprocess.run(
        [str(kstatus)], input=lines, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    results = [json.loads(line) for line in out.splitlines()]
    assert not any(r.get("error") for r in results), results
    return [(r["status"], r["message"]) for r in results]


class Secrets:
    """SecretSource over a dict of Secret name -> values (the protocol in full)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, str]] = {}

    async def get(self, key: str, secret_name: str) -> Credentials:
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


async def test_health_of_statuses_the_engine_writes(
    sim: Simulator, tmp_path: Path, kstatus: Path
) -> None:
    body: dict[str, Any] = {
        "practiceId": "acme",
        "pms": {
            "type": "OpenDental",
            "url": sim.base_url("OpenDental"),
            "credentialsSecretRef": {"name": "acme-pms"},
        },
        "providerId": "1",
        "sync": {"appointments": {"enabled": True, "interval": "60s"}},
    }
    secrets = Secrets()
    engine = Engine(
        sink=JsonlSink(tmp_path / "events.jsonl", fsync=False),
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=secrets,
        settings=EngineSettings(first_poll_jitter=0.0, jitter=0.0, drift_interval=60.0),
    )

    def live(generation: int, spec: dict[str, Any], status: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": "acme", "namespace": "clinics", "generation": generation},
            "spec": spec,
            "status": status.to_dict(),
        }

    await engine.start()
    try:
        status = await engine.apply("clinics/acme", PracticeSpec.from_spec(body), generation=1)
        broken = live(1, body, status)
        assert health(broken)[0] == "Degraded"
        assert "SecretNotFound" in health(live(1, body, status))[1]
        # The spec moved on and the operator has not caught up: Progressing, not Degraded.
        assert health(live(2, body, status))[0] == "Progressing"

        secrets.values["acme-pms"] = dict(sim.credentials("acme"))
        status = await engine.apply("clinics/acme", PracticeSpec.from_spec(body), generation=2)
        assert status.ready
        assert health(live(2, body, status)) == (
            "Healthy",
            "Ready: provider verified, names resolved, pollers running",
        )

        healthy = live(2, body, status)
        assert health(live(2, body, status)) == (
            "Healthy",
            "Ready: provider verified, names resolved, pollers running",
        )

        suspended = {**body, "suspend": True}
        status = await engine.apply("clinics/acme", PracticeSpec.from_spec(suspended), generation=3)
        got, message = health(live(3, suspended, status))
        assert got == "Suspended" and message.startswith("Suspended")
        paused = live(3, suspended, status)
    finally:
        await engine.stop()

    # What Flux makes of the same objects: Ready=True is Current; Ready=False is InProgress
    # (never Failed: Flux fails it only when the Kustomization's timeout passes), with the
    # Ready message; a generation the operator has not observed is InProgress; a suspended
    # practice stays InProgress (docs/gitops.md: keep it out of health checks).
    (ok, ok_msg), (stale, stale_msg), (off, off_msg), (bad, bad_msg) = flux_health(
        kstatus,
        [
            healthy,
            {**healthy, "metadata": {**healthy["metadata"], "generation": 3}},
            paused,
            broken,
        ],
    )
    assert (ok, ok_msg) == ("Current", "Resource is Ready")
    assert stale == "InProgress" and "latest observed generation is 2" in stale_msg
    assert off == "InProgress" and "suspend" in off_msg
    assert bad == "InProgress" and "acme-pms" in bad_msg
