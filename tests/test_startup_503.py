"""Start-up: the writeback API listens before the practices are loaded, and until they are it
answers 503 + Retry-After (and /readyz, the readiness probe, 503) instead of 404 for a practice
it does not know yet.

Real: the runtime's engine, SQLite files and writeback API on a loopback port (read with
httpx); `pmsctl up` in-process over a practices folder with its simulator; the operator's Kopf
handlers against the testenv kube-apiserver. To hold the start-up window open long enough to
look at it, the `pmsctl up` test makes the first folder sync wait for the test (a wrapper around
`LocalRunner.sync_folder`), and the operator test makes the start-up listing wait: both then
run the real code. The re-list timer of `StartupReconciles` runs on looptime's fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import timing

from pms_drivers.base import Credentials
from reconciler.kube.handlers import StartupReconciles
from reconciler.local import up as local_up
from reconciler.runtime import Runtime, RuntimeOptions

TOKEN = "startup-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parent.parent
BODY = {
    "callerId": "c1",
    "type": "missedCall",
    "patientId": "5",
    "occurredAt": "2026-11-26T09:15:00Z",
    "text": "missed call",
}


class NoSecrets:
    async def get(self, key: str, secret_name: str) -> Credentials:
        raise AssertionError(f"no practice was applied, yet {key} asked for {secret_name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_loading(r: httpx.Response, why: str) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) > 0
    err = r.json()["error"]
    assert err["code"] == "practices_loading"
    assert why in err["message"]


async def test_runtime_answers_503_with_retry_after_until_loaded(tmp_path: Path) -> None:
    why = "the practices are being read"
    runtime = Runtime(
        RuntimeOptions(
            sink_url=f"file:{tmp_path / 'events.jsonl'}",
            state_db=tmp_path / "state.db",
            listen_host="127.0.0.1",
            writeback_port=0,
            writeback_token=TOKEN,
            writeback_db=tmp_path / "writebacks.db",
        ),
        secrets=NoSecrets(),
        loading=why,
    )
    async with runtime, httpx.AsyncClient(base_url=str(runtime.writeback_url), timeout=5) as http:
        assert runtime.not_ready() == why
        assert_loading(
            await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH), why
        )
        assert_loading(await http.get("/readyz"), why)
        assert (await http.get("/healthz")).status_code == 200  # liveness: never restart for it
        # A request that is wrong whatever the practices are is still refused as such.
        assert (await http.post("/v1/practices/nobody/writebacks", json=BODY)).status_code == 401
        runtime.loaded()
        assert runtime.not_ready() is None
        r = await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "practice_unknown"
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True}


async def test_a_runtime_without_loading_is_ready_at_once(tmp_path: Path) -> None:
    runtime = Runtime(
        RuntimeOptions(
            sink_url=f"file:{tmp_path / 'events.jsonl'}",
            state_db=tmp_path / "state.db",
            listen_host="127.0.0.1",
            writeback_port=0,
            writeback_token=TOKEN,
            writeback_db=tmp_path / "writebacks.db",
        ),
        secrets=NoSecrets(),
    )
    async with runtime, httpx.AsyncClient(base_url=str(runtime.writeback_url), timeout=5) as http:
        assert (await http.get("/readyz")).status_code == 200
        r = await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH)
        assert r.status_code == 404


async def _poll(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """`timing.eventually`, counting a connection the server refuses (not listening yet) as
    "not yet"."""

    async def tolerant() -> Any:
        with contextlib.suppress(httpx.TransportError):
            return await check()
        return None

    return await timing.eventually(tolerant, timeout, what)


async def test_pmsctl_up_answers_503_until_the_first_folder_sync_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "practices"
    folder.mkdir()
    shutil.copy(REPO / "practices" / "opendental-bright-smiles.yaml", folder)
    release = asyncio.Event()
    entered = asyncio.Event()
    original = local_up.LocalRunner.sync_folder

    async def first_sync_waits(self: local_up.LocalRunner) -> None:
        entered.set()
        await release.wait()
        await original(self)

    monkeypatch.setattr(local_up.LocalRunner, "sync_folder", first_sync_waits)
    monkeypatch.setenv("PMSCTL_WRITEBACK_TOKEN", TOKEN)
    port = free_port()
    options = local_up.UpOptions(
        path=folder,
        simulate=True,
        state_dir=tmp_path / ".pmsctl",
        output="lines",
        writeback_port=port,
        scan_seconds=0.2,
    )
    up = asyncio.create_task(local_up.run_up(options, out=open(os.devnull, "w")))  # noqa: SIM115
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            await asyncio.wait_for(entered.wait(), 30)
            # The API listens, the folder's practice is not in the engine yet: 503, not 404.
            r = await http.post("/v1/practices/bright-smiles/writebacks", json=BODY, headers=AUTH)
            assert_loading(r, "pmsctl up is still reading the practices")
            assert_loading(await http.get("/readyz"), str(folder))
            release.set()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await _poll(ready, 30, "/readyz 200")
            r = await http.post("/v1/practices/bright-smiles/writebacks", json=BODY, headers=AUTH)
            assert r.status_code == 202, r.text
            r = await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH)
            assert r.status_code == 404
    finally:
        release.set()
        os.kill(os.getpid(), signal.SIGINT)  # run_up's own handler: a clean stop
        assert await asyncio.wait_for(up, 30) == 0


@pytest.mark.looptime
async def test_startup_reconciles_counts_the_listed_practices_and_relists() -> None:
    listed = [{"ns/a", "ns/b", "ns/gone"}, {"ns/a", "ns/b", "ns/new"}]
    loaded: list[set[str]] = []
    tracker: StartupReconciles

    async def list_keys() -> set[str]:
        return listed.pop(0) if len(listed) > 1 else set(listed[0])

    def on_loaded() -> None:
        loaded.append(set(tracker.seen))

    tracker = StartupReconciles(list_keys, on_loaded, relist=30.0)
    tracker.handled("ns/a")  # Kopf may handle one before the list arrives: it counts
    tracker.start()
    await timing.eventually(lambda: tracker.expected is not None, 1, "the first list")
    assert tracker.waiting_for() == {"ns/b", "ns/gone"}
    tracker.handled("ns/b")
    assert not loaded  # ns/gone (deleted before Kopf listed it) is still awaited ...
    await timing.elapse(31)  # ... until the re-list shows it is gone
    assert loaded == [{"ns/a", "ns/b"}] and tracker.done
    tracker.handled("ns/new")  # after start-up: nothing more to count
    assert len(loaded) == 1
    await tracker.stop()


@pytest.mark.looptime
async def test_startup_reconciles_with_nothing_listed_is_loaded_at_once() -> None:
    loaded: list[bool] = []

    async def none() -> set[str]:
        return set()

    tracker = StartupReconciles(none, lambda: loaded.append(True))
    await tracker.run()
    assert loaded == [True]


def _practice(ns: str, name: str, practice_id: str, labels: dict[str, str] | None = None) -> Any:
    import yaml

    doc = yaml.safe_load((REPO / "practices" / "opendental-bright-smiles.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": ns, "labels": labels or {}}
    doc["spec"]["practiceId"] = practice_id
    doc["spec"]["pms"]["url"] = "http://127.0.0.1:9/api/v1"  # nothing answers: not needed here
    return doc


@pytest.mark.kube
async def test_operator_answers_503_until_kopf_handled_every_practice_listed_at_start(
    kube: Any, crd_installed: list[str], kube_namespace: str, tmp_path: Path
) -> None:
    import kopf
    from kubernetes import client

    from reconciler.engine.sink import JsonlSink
    from reconciler.kube.client import (
        GROUP,
        PLURAL,
        KubeSecrets,
        StatusWriter,
        connection_info,
    )
    from reconciler.kube.handlers import build_registry, make_memo
    from reconciler.kube.run import practice_keys

    api = kube.api_client
    custom = client.CustomObjectsApi(api)
    ns = kube_namespace
    for name, pid, labels in (("one", "p-one", {"shard": "a"}), ("two", "p-two", {"shard": "b"})):
        await asyncio.to_thread(
            custom.create_namespaced_custom_object, GROUP, "v1alpha1", ns, PLURAL,
            _practice(ns, name, pid, labels),
        )  # fmt: skip
    # The listing follows Kopf's namespaces and label selector.
    assert practice_keys(api, [ns], None) == {f"{ns}/one", f"{ns}/two"}
    assert practice_keys(api, [ns], "shard=a") == {f"{ns}/one"}
    assert practice_keys(api, [ns[:-1] + "*"], "shard!=a") == {f"{ns}/two"}
    assert practice_keys(api, [ns, f"!{ns}"], None) == set()

    why = "the operator has not yet reconciled every PracticeWriteback it found at start-up"
    runtime = Runtime(
        RuntimeOptions(
            state_db=tmp_path / "state.db",
            listen_host="127.0.0.1",
            writeback_port=0,
            writeback_token=TOKEN,
            writeback_db=tmp_path / "writebacks.db",
        ),
        secrets=KubeSecrets(api),
        on_status=StatusWriter(api),
        sink=JsonlSink(tmp_path / "events.jsonl", fsync=False),
        loading=why,
    )
    listing = asyncio.Event()
    at_loaded: list[set[str]] = []

    async def list_keys() -> set[str]:
        await listing.wait()  # held open by the test: Kopf handles both meanwhile
        return await asyncio.to_thread(practice_keys, api, [ns], None)

    def on_loaded() -> None:
        at_loaded.append(set(runtime.engine.keys()))
        runtime.loaded()

    startup = StartupReconciles(list_keys, on_loaded)
    stop = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=build_registry(),
            memo=make_memo(runtime, StatusWriter(api), connection_info(api), startup=startup),
            standalone=True,
            namespaces=[ns],
            stop_flag=stop,
        )
    )
    try:
        await timing.eventually(lambda: runtime.writeback_url, 30, "the writeback API")
        async with httpx.AsyncClient(base_url=str(runtime.writeback_url), timeout=5) as http:

            async def both_handled() -> bool:
                return startup.seen >= {f"{ns}/one", f"{ns}/two"}

            await _poll(both_handled, 30, "Kopf's first handling of both practices")
            # Handled, but the start-up list is not in: not ready, unknown ids are not 404 yet.
            assert_loading(await http.get("/readyz"), why)
            r = await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH)
            assert_loading(r, why)
            listing.set()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await _poll(ready, 30, "/readyz 200")
            assert at_loaded == [{f"{ns}/one", f"{ns}/two"}]
            r = await http.post("/v1/practices/nobody/writebacks", json=BODY, headers=AUTH)
            assert r.status_code == 404
    finally:
        listing.set()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20)


@pytest.mark.looptime
async def test_startup_reconciles_retries_a_failed_first_list() -> None:
    answers: list[set[str] | Exception] = [PermissionError("forbidden"), {"ns/a"}]
    loaded: list[bool] = []

    async def list_keys() -> set[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    tracker = StartupReconciles(list_keys, lambda: loaded.append(True), relist=30.0)
    tracker.handled("ns/a")
    tracker.start()
    await timing.elapse(1)
    assert tracker.expected is None and not loaded  # the list failed: not ready, not stuck
    await timing.elapse(30)
    assert loaded == [True]
    await tracker.stop()
