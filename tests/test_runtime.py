"""The runtime both adapters build (`reconciler.runtime`), in-process.

Real: the engine, the SQLite cursor store and writeback queue in a temporary folder, the JSONL
sink, the writeback API and the metrics server on loopback ports (read over HTTP with httpx),
and real SIGTERM/SIGINT sent to this process (the handlers are the event loop's, removed after
each test). Credentials are never asked for (no practice is applied), so the secret source is
a stub that fails the test if called. That both adapters build this runtime is shown end to end
by tests/test_up.py and tests/test_operator_command.py, which read the same metrics from
`--metrics-port`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest
from timing import eventually

from pms_drivers.base import Credentials
from reconciler.engine import metrics as engine_metrics
from reconciler.runtime import (
    Runtime,
    RuntimeOptions,
    check_sink_url,
    setup_logging,
    writeback_token,
)
from reconciler.writeback import metrics as writeback_metrics
from reconciler.writeback.errors import WritebackConfigError

TOKEN = "runtime-test-token-0123456789"


class NoSecrets:
    async def get(self, key: str, secret_name: str) -> Credentials:
        raise AssertionError(f"no practice was applied, yet {key} asked for {secret_name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def options(tmp_path: Path, **kw: object) -> RuntimeOptions:
    base: dict[str, object] = {
        "sink_url": f"file:{tmp_path / 'events.jsonl'}",
        "state_db": tmp_path / "state.db",
        "listen_host": "127.0.0.1",
        "writeback_port": 0,
        "writeback_token": TOKEN,
        "writeback_db": tmp_path / "writebacks.db",
        "metrics_port": free_port(),
    }
    base.update(kw)
    return RuntimeOptions(**base)  # type: ignore[arg-type]


async def test_engine_and_writeback_metrics_share_one_registry_on_one_port(tmp_path: Path) -> None:
    runtime = Runtime(options(tmp_path), secrets=NoSecrets())
    assert runtime.writebacks is not None
    assert runtime.writebacks.metrics.registry is engine_metrics.REGISTRY
    assert runtime.writebacks.metrics is writeback_metrics.process_metrics()
    async with runtime:
        assert runtime.metrics_url is not None and runtime.writeback_url is not None
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(
                f"{runtime.writeback_url}/v1/practices/nobody/writebacks",
                json={"callerId": "c1", "type": "missedCall", "patientId": "5",
                      "occurredAt": "2026-11-26T09:15:00Z", "text": "missed call"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
            assert r.status_code == 404  # the API is the runtime's, over its engine
            text = (await http.get(f"{runtime.metrics_url}/metrics")).text
    assert "pmsctl_practices 0.0" in text  # the engine's
    assert "pmsctl_writeback_queue_depth" in text  # the writeback path's
    assert "# TYPE pmsctl_writeback_ack_seconds histogram" in text


async def test_stop_closes_the_writeback_api_and_the_metrics_port(tmp_path: Path) -> None:
    opts = options(tmp_path)
    async with Runtime(opts, secrets=NoSecrets()) as runtime:
        urls = [runtime.metrics_url, runtime.writeback_url]
    for url in urls:
        assert url is not None
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
    # The metrics port can be bound again: a second runtime in the same process serves on it.
    async with Runtime(opts, secrets=NoSecrets()) as again:
        assert again.metrics_url == f"http://127.0.0.1:{opts.metrics_port}"


async def test_without_writeback_port_there_is_no_writeback_service(tmp_path: Path) -> None:
    async with Runtime(
        options(tmp_path, writeback_port=None, writeback_token=None, metrics_port=0),
        secrets=NoSecrets(),
    ) as runtime:
        assert runtime.writebacks is None and runtime.writeback_url is None
        assert runtime.metrics_url is None
    assert not (tmp_path / "writebacks.db").exists()


def test_a_writeback_port_without_a_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a writeback token"):
        Runtime(options(tmp_path, writeback_token=None), secrets=NoSecrets())


async def test_sigterm_and_sigint_set_the_one_stop_event_and_the_hook_sees_a_repeat(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, bool]] = []
    runtime = Runtime(
        options(tmp_path, writeback_port=None, writeback_token=None, metrics_port=0),
        secrets=NoSecrets(),
    )
    async with runtime:
        runtime.handle_signals(lambda sig, repeated: seen.append((sig.name, repeated)))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runtime.stop_event.wait(), 5)
        os.kill(os.getpid(), signal.SIGINT)
        # The handler runs on a later loop iteration.
        await eventually(lambda: len(seen) == 2, 5, "the SIGINT handler")
    assert seen == [("SIGTERM", False), ("SIGINT", True)]
    # Released on the way out: the loop no longer owns the signals.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sink_urls_are_checked_before_anything_is_opened(tmp_path: Path) -> None:
    check_sink_url("https://events.example/ingest")
    check_sink_url(f"file:{tmp_path / 'e.jsonl'}")
    assert not (tmp_path / "e.jsonl").exists()
    for bad in ("file:", "file://", ""):
        with pytest.raises(ValueError, match="file:PATH"):
            check_sink_url(bad)


def test_writeback_token_comes_from_the_environment_else_a_file_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PMSCTL_WRITEBACK_TOKEN_FILE", raising=False)
    monkeypatch.setenv("PMSCTL_WRITEBACK_TOKEN", TOKEN)
    assert writeback_token(tmp_path / "t") == (TOKEN, "$PMSCTL_WRITEBACK_TOKEN")
    assert not (tmp_path / "t").exists()
    monkeypatch.delenv("PMSCTL_WRITEBACK_TOKEN")
    made, where = writeback_token(tmp_path / "t")
    assert where == str(tmp_path / "t") and len(made) == 64
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o600
    assert writeback_token(tmp_path / "t")[0] == made  # the same token on the next run
    with pytest.raises(WritebackConfigError, match="no writeback token"):
        writeback_token()  # the operator's case: no file is made up


def test_logging_goes_to_the_log_file_as_json_lines_and_httpx_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process; pytest's come back after
    monkeypatch.setattr(root, "level", root.level)
    httpx_logger = logging.getLogger("httpx")
    monkeypatch.setattr(httpx_logger, "level", httpx_logger.level)
    log_file = tmp_path / "pmsctl.log"
    setup_logging(RuntimeOptions(log_format="json", log_level="info", log_file=log_file))
    try:
        logging.getLogger("reconciler.test").info("hello %s", "there")
        httpx_logger.info("HTTP Request: GET http://pms/ (200 OK)")
    finally:
        for handler in root.handlers:
            handler.close()
    [line] = log_file.read_text().splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "info",
        "reconciler.test",
        "hello there",
    )
