"""`pmsctl up --simulate` end to end, as a user runs it: a real subprocess on a temporary copy of
`practices/`, with the real validator, engine, scheduler, drivers, SQLite cursor store and JSONL
sink, talking HTTP on loopback to the embedded PMS simulator it starts.

The writeback API `pmsctl up` mounts is exercised once over HTTP (a note written to the
simulated PMS). Nothing is faked. To keep each test within ~20 s, the copy of the examples has every enabled
sync interval set to 5 s (the schema's minimum) and the simulator ticks every second; the
behaviour under test does not depend on the interval's length.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import timing
import yaml

REPO = Path(__file__).resolve().parents[1]
EVENT_PATIENT = "dev.dental.pmsctl.patient.changed"
EVENT_APPOINTMENT = "dev.dental.pmsctl.appointment.changed"
EVENT_TYPES = {"dev.dental.pmsctl.appointment-status.changed", EVENT_APPOINTMENT, EVENT_PATIENT}


class UpProcess:
    """A running `pmsctl up`; collects stdout/stderr lines on threads so waits can time out."""

    def __init__(self, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PMSCTL_CREDENTIALS_")}
        env.update(extra_env or {})
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "up", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, *, start: int = 0, stream: str = "out") -> str:
        """The first line from index `start` matching `pattern` (a regex), within `timeout` s."""
        lines = self.out if stream == "out" else self.err
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in lines[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s; exit={self.proc.poll()}\n"
                        f"stdout:\n"
                        + "\n".join(self.out[-40:])
                        + "\nstderr:\n"
                        + "\n".join(self.err[-40:])
                    )
                self._changed.wait(min(left, 0.5))

    def wait_ready(self, names: list[str], timeout: float) -> None:
        for name in names:
            self.wait_for(rf"^\S+ {re.escape(name)} Ready=True ", timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (Ctrl-C), then wait for the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def simulator_url(self) -> str:
        line = self.wait_for(r"simulator on http://", 20, stream="err")
        return re.search(r"(http://\S+)", line).group(1)  # type: ignore[union-attr]


@pytest.fixture
def run_up(tmp_path: Path) -> Iterator[Callable[..., UpProcess]]:
    """Starts `pmsctl up` subprocesses in tmp_path; kills whatever is still running after the test."""
    started: list[UpProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> UpProcess:
        p = UpProcess(list(args), cwd=tmp_path, extra_env=env)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.kill()


def example_files() -> list[Path]:
    return sorted(p for p in (REPO / "practices").rglob("*") if p.suffix in (".yaml", ".yml"))


def fast_copy(dst: Path) -> dict[str, str]:
    """Copy practices/ to dst with every enabled interval at 5s; returns file name -> practice name."""
    names: dict[str, str] = {}
    dst.mkdir()
    for src in example_files():
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for doc in docs:
            for setting in (doc["spec"].get("sync") or {}).values():
                if setting.get("enabled"):
                    setting["interval"] = "5s"
            names[src.name] = doc["metadata"]["name"]
        (dst / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    assert len(names) >= 3, "the test wants one example per PMS in practices/"
    return names


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    timing.wait_until(check, timeout, what, step=0.2)


def free_port() -> int:
    """A port nothing listens on now (the OS's pick): `pmsctl up`'s port flags take 0 as off."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_closed(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return True
    return False


def test_up_reconciles_watches_edits_removals_breakage_and_stops_cleanly(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    folder = tmp_path / "practices"
    names = fast_copy(folder)
    files = sorted(names)
    practice_ids = {
        f: yaml.safe_load((folder / f).read_text())["spec"]["practiceId"] for f in files
    }
    events = tmp_path / ".pmsctl" / "events.jsonl"
    up = run_up(
        "--simulate", "practices", "--tick-seconds", "1", "--writeback-port", str(free_port())
    )  # fmt: skip
    sim_url = up.simulator_url()
    wb_url = re.search(  # type: ignore[union-attr]
        r"(http://\S+)", up.wait_for(r"writeback API on http://", 20, stream="err")
    ).group(1)
    up.wait_ready(list(names.values()), timeout=30)

    # Edit an interval: the new interval shows within seconds.
    edited, edited_name = folder / files[0], names[files[0]]
    mark = len(up.out)
    edited.write_text(edited.read_text().replace("interval: 5s", "interval: 7s", 1))
    up.wait_for(rf"^\S+ {re.escape(edited_name)} Ready=True .*=7s", 10, start=mark)

    # Break a file: reported with file:line:col, the practice keeps its last good version.
    broken, broken_name = folder / files[1], names[files[1]]
    mark = len(up.out)
    broken.write_text(re.sub(r"type: \w+", "type: OpenDentl", broken.read_text(), count=1))
    line = up.wait_for(r" invalid ", 10, start=mark)
    assert f"practices/{files[1]}:" in line and "OpenDentl" in line

    # Remove a file: its practice goes.
    removed_name = names[files[2]]
    mark = len(up.out)
    (folder / files[2]).unlink()
    up.wait_for(rf"^\S+ {re.escape(removed_name)} removed$", 10, start=mark)
    assert not any(f" {broken_name} removed" in ln for ln in up.out)

    # The others keep running, the broken one at its last good version: new events keep
    # arriving from both.
    count_before = len(read_events(events))
    kept = {practice_ids[files[0]], practice_ids[files[1]]}
    wait_until(
        lambda: (
            kept <= {e["practiceid"] for e in read_events(events)[count_before:]}
            and {e["type"] for e in read_events(events)} >= EVENT_TYPES
        ),
        20,
        "events of every type, and new events from the practices still running",
    )

    # The writeback API is mounted: a note for a running practice is written to its PMS.
    practice = practice_ids[files[0]]
    patient = next(
        e["subject"]
        for e in read_events(events)
        if e["practiceid"] == practice and e["type"].endswith("patient.changed")
    )
    token = (tmp_path / ".pmsctl" / "writeback-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=wb_url, headers=headers, timeout=10) as client:
        r = client.post(
            f"/v1/practices/{practice}/writebacks",
            json={
                "callerId": "sms-1",
                "type": "outgoingSms",
                "patientId": patient,
                "occurredAt": "2026-11-26T09:15:00Z",
                "text": "See you tomorrow at 9:00",
            },
        )
        assert r.status_code == 202, r.text
        wid = r.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/writebacks/{wid}").json()["status"] == "sent",
            15,
            "the writeback to be sent",
        )

    assert up.stop() == 0
    assert "stopped cleanly" in "\n".join(up.err)
    assert port_closed(sim_url), "the simulator must not outlive pmsctl up"
    assert port_closed(wb_url), "the writeback API must not outlive pmsctl up"

    evs = read_events(events)
    ids = [e["id"] for e in evs]
    assert len(ids) == len(set(ids)), "the same change was emitted twice"
    assert {e["type"] for e in evs} >= EVENT_TYPES


def test_second_run_resumes_from_saved_cursors(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    names = fast_copy(tmp_path / "practices")
    practice_ids = {
        f: yaml.safe_load((tmp_path / "practices" / f).read_text())["spec"]["practiceId"]
        for f in names
    }
    events = tmp_path / ".pmsctl" / "events.jsonl"

    first = run_up("practices", "--tick-seconds", "1", "--no-writeback")
    first.wait_ready(list(names.values()), timeout=30)
    ids = set(practice_ids.values())
    # Let every practice's first pages land (as after any real run) before stopping.
    wait_until(
        lambda: (
            {(e["practiceid"], e["type"]) for e in read_events(events)}
            >= {(i, t) for i in ids for t in (EVENT_PATIENT, EVENT_APPOINTMENT)}
        ),
        15,
        "the first run's patient and appointment events from every practice",
    )
    assert first.stop() == 0
    before = read_events(events)
    seen = {e["id"] for e in before}

    # `--once` returns after every poller's first poll, which is the one that would re-read from
    # the start if the cursors had not been saved.
    second = run_up("--once", "practices", "--tick-seconds", "1", "--no-writeback")
    assert second.proc.wait(timeout=40) == 0, "\n".join(second.out + second.err)
    polled = [ln for ln in second.out[1:] if ln.strip() and not ln.startswith(" ")]
    assert len(polled) == len(names) and all(ln.count(" ago)") == 3 for ln in polled), second.out

    again = [e for e in read_events(events)[len(before) :] if e["id"] in seen]
    assert again == [], f"{len(again)} events of the first run were emitted again"


def test_once_exits_zero_when_all_ready_and_one_with_an_invalid_file(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    names = fast_copy(tmp_path / "practices")
    ok = run_up("--once", "practices", "--writeback-port", "0")
    assert ok.proc.wait(timeout=40) == 0, "\n".join(ok.out + ok.err)
    assert ok.out[0].split()[:5] == ["PRACTICE", "PMS", "PROVIDER", "READY", "REASON"]
    for name in names.values():
        assert any(ln.startswith(name + " ") and " True " in ln for ln in ok.out), ok.out

    bad = tmp_path / "practices" / "zz-bad.yaml"
    bad.write_text(
        "apiVersion: writeback.dental.dev/v1alpha1\nkind: PracticeWriteback\nmetadata: {name: x}\nspec: {}\n"
    )
    failed = run_up("--once", "practices", "--writeback-port", "0")
    assert failed.proc.wait(timeout=40) == 1
    assert any("practices/zz-bad.yaml:" in ln for ln in failed.out), failed.out


def test_no_simulate_uses_credentials_from_a_file_and_the_environment(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    """Real PMS endpoints here are a simulator the test runs on a thread (another "office
    server", as `pmsctl simulate` would be); `pmsctl up --no-simulate` must reach it with the
    credentials given locally, and say which variable to set when one is missing."""
    from pms_simulator import Simulator

    folder = tmp_path / "practices"
    names = fast_copy(folder)
    sim = Simulator()
    try:
        with sim.serve_in_thread() as url:
            creds: dict[str, dict[str, str]] = {}
            for path in sorted(folder.iterdir()):
                doc = yaml.safe_load(path.read_text())
                pms = doc["spec"]["pms"]
                made = sim.add_practice(doc["spec"]["practiceId"], pms["type"])
                creds[pms["credentialsSecretRef"]["name"]] = made
                pms["url"] = f"{url}/api/v1" if pms["type"] == "OpenDental" else f"{url}/bridge/v1"
                path.write_text(yaml.safe_dump(doc, sort_keys=False))
            secrets_in_env = sorted(creds)[0]
            env_var = "PMSCTL_CREDENTIALS_" + re.sub(r"[^A-Za-z0-9]", "_", secrets_in_env).upper()
            (tmp_path / "creds.yaml").write_text(
                yaml.safe_dump({k: v for k, v in creds.items() if k != secrets_in_env})
            )
            ok = run_up(
                "--no-simulate",
                "--once",
                "--credentials",
                "creds.yaml",
                "practices",
                "--no-writeback",
                env={env_var: json.dumps(creds[secrets_in_env])},
            )
            assert ok.proc.wait(timeout=40) == 0, "\n".join(ok.out + ok.err)
            for name in names.values():
                assert any(ln.startswith(name + " ") and " True " in ln for ln in ok.out), ok.out

            missing = run_up(
                "--no-simulate",
                "--once",
                "--credentials",
                "creds.yaml",
                "practices",
                "--no-writeback",
                "--timeout",
                "3",
            )
            assert missing.proc.wait(timeout=40) == 1
            row = next(ln for ln in missing.out if "SecretNotFound" in ln)
            assert row.split()[3] == "False"
            assert any(env_var in ln for ln in missing.out + missing.err), "the fix is not named"
            printed = "\n".join(ok.out + ok.err + missing.out + missing.err)
            for values in creds.values():
                for value in values.values():
                    if value.startswith("sim-") and "developer" not in value:
                        assert value not in printed, "a credential was printed"
    finally:
        sim.close()


def test_sink_url_posts_cloudevent_batches(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    """The receiver is a real HTTP server on loopback (the standard library's), collecting the
    batches `--sink http://...` posts."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []
    content_types: set[str] = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            content_types.add(self.headers["Content-Type"])
            received.extend(json.loads(body))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    fast_copy(tmp_path / "practices")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/events"
        up = run_up("--once", "practices", "--sink", url, "--no-writeback")
        assert up.proc.wait(timeout=40) == 0, "\n".join(up.out + up.err)
    finally:
        server.shutdown()
        server.server_close()
    assert content_types == {"application/cloudevents-batch+json"}
    assert {e["type"] for e in received} >= {EVENT_PATIENT, EVENT_APPOINTMENT}
    assert not (tmp_path / ".pmsctl" / "events.jsonl").exists()


def test_metrics_port_serves_the_engine_and_the_writeback_api_on_one_port(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    """`--metrics-port` serves the process's one registry, as `pmsctl operator` does: the
    engine's metrics and the writeback API's side by side; the port closes on a clean stop."""
    names = fast_copy(tmp_path / "practices")
    port = free_port()
    up = run_up(
        "--simulate", "practices", "--tick-seconds", "1", "--writeback-port", str(free_port()),
        "--metrics-port", str(port),
    )  # fmt: skip
    line = up.wait_for(r"metrics on http://", 20, stream="err")
    url = re.search(r"(http://\S+)/metrics", line).group(1)  # type: ignore[union-attr]
    assert url == f"http://127.0.0.1:{port}"
    up.wait_ready(list(names.values()), timeout=30)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'pmsctl_reconciles_total{result="ok"}' in text
    assert f"pmsctl_practices {float(len(names))}" in text
    assert "pmsctl_writeback_queue_depth 0.0" in text
    assert "# TYPE pmsctl_writebacks_total counter" in text
    assert up.stop() == 0, "\n".join(up.err[-20:])
    assert port_closed(url)
