"""What a new user meets in the first hour of `pmsctl up`: ports, `--once`, messages, counters,
the log, `--skip-other-kinds` and the port flags shared with `pmsctl operator`.

Real: `pmsctl up` as a subprocess on a temporary copy of `practices/` (validator, engine, drivers,
SQLite, the embedded simulator over loopback HTTP), real sockets for the ports (a socket left in
TIME_WAIT is made the way a quick restart leaves one). Nothing is faked; the sync intervals are 5 s
and the simulator ticks every second so each run takes seconds.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from test_up import UpProcess, fast_copy, read_events, run_up, wait_until

from reconciler.cli import build_parser

__all__ = ["run_up"]  # the fixture, imported so pytest finds it here

BRIGHT_SMILES = "opendental-bright-smiles.yaml"


def leave_in_time_wait() -> int:
    """A loopback port whose last connection the server side closed first: that socket stays in
    TIME_WAIT (about a minute on Linux), as the writeback API's do after a quick restart."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its side goes to TIME_WAIT
        client.close()
    return port


def test_a_port_left_in_time_wait_by_a_quick_restart_is_used_again(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    fast_copy(tmp_path / "practices")
    port = leave_in_time_wait()
    up = run_up("--once", "practices", "--writeback-port", str(port))
    assert up.proc.wait(timeout=40) == 0, "\n".join(up.out + up.err)
    line = up.wait_for(r"writeback API on ", 1, stream="err")
    assert f"http://127.0.0.1:{port} " in line, line


def test_a_taken_writeback_port_stops_up_with_exit_2_naming_the_port_and_the_fix(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    fast_copy(tmp_path / "practices")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = run_up("--once", "practices", "--writeback-port", str(port))
        assert up.proc.wait(timeout=40) == 2, "\n".join(up.out + up.err)
    error = "\n".join(up.err)
    assert f"--writeback-port {port}: cannot listen on 127.0.0.1:{port}" in error
    assert "address already in use" in error
    assert "--writeback-port N" in error and "--no-writeback" in error
    assert "writeback API on" not in error, "it must not move to another port"


def test_once_returns_at_once_when_waiting_cannot_fix_a_practice(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    """A note type the PMS does not have stays missing however long `--once` waits: it returns
    as soon as the others are Ready, exits 1 and says why. Also: port 0 turns the writeback API
    off (as in `pmsctl operator`), and messages name the simulator's real URL."""
    folder = tmp_path / "practices"
    fast_copy(folder)
    path = folder / BRIGHT_SMILES
    path.write_text(path.read_text().replace("noteType: Text Message", "noteType: Txt Message"))
    started = time.monotonic()
    up = run_up("--once", "practices", "--timeout", "120", "--writeback-port", "0")
    assert up.proc.wait(timeout=40) == 1, "\n".join(up.out + up.err)
    assert time.monotonic() - started < 40
    row = next(ln for ln in up.out if ln.startswith("bright-smiles "))
    assert row.split()[3:5] == ["False", "NoteTypeNotFound"], row
    assert any(
        ln.startswith("  bright-smiles: NoteTypeNotFound: ") and "'Txt Message'" in ln
        for ln in up.out
    ), up.out
    assert not any("writeback API on" in ln for ln in up.err), "port 0 is off"
    sim_url = up.simulator_url()
    log = (tmp_path / ".pmsctl" / "pmsctl.log").read_text()
    assert f"answered at {sim_url}/api/v1" in log
    assert ":8830" not in log


def test_events_survive_a_removed_and_restored_file_and_the_log_records_each_change(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    folder = tmp_path / "practices"
    fast_copy(folder)
    path = folder / BRIGHT_SMILES
    original = path.read_text()
    events = tmp_path / ".pmsctl" / "events.jsonl"
    up = run_up(
        "practices", "--tick-seconds", "1", "--no-writeback", "-o", "lines", "--log-format", "json"
    )
    up.wait_ready(["bright-smiles"], timeout=30)
    wait_until(
        lambda: any(e["practiceid"] == "bright-smiles" for e in read_events(events)),
        15,
        "events from bright-smiles",
    )

    mark = len(up.out)
    path.write_text(original.replace("interval: 5s", "interval: 7s", 1))
    up.wait_for(r"^\S+ bright-smiles Ready=True .*=7s", 10, start=mark)

    mark = len(up.out)
    path.unlink()
    up.wait_for(r"^\S+ bright-smiles removed$", 10, start=mark)
    emitted = sum(1 for e in read_events(events) if e["practiceid"] == "bright-smiles")
    assert emitted > 0
    path.write_text(original)
    back = up.wait_for(r"^\S+ bright-smiles Ready=", 15, start=mark + 1)
    counted = int(re.search(r" events=(\d+)", back).group(1))  # type: ignore[union-attr]
    assert counted >= emitted, f"EVENTS restarted at {counted}; {emitted} events were emitted"
    assert up.stop() == 0

    lines = [
        json.loads(ln) for ln in (tmp_path / ".pmsctl" / "pmsctl.log").read_text().splitlines()
    ]
    mine = [ln for ln in lines if ln.get("practice") == "dental-practices/bright-smiles"]
    by_event: dict[str, list[dict]] = {}
    for ln in mine:
        by_event.setdefault(str(ln.get("event")), []).append(ln)
    changed = by_event["practice.changed"]
    assert len(changed) == 1 and changed[0]["generation"] == 2
    assert [c["field"] for c in changed[0]["changes"]] == ["spec.sync.appointmentStatus.interval"]
    assert "5s -> 7s" in changed[0]["message"]
    assert [(r["poller"], r["before"], r["after"]) for r in by_event["poller.rescheduled"]] == [
        ("appointmentStatus", "5s", "7s")
    ]
    assert len(by_event["practice.removed"]) == 1 and len(by_event["practice.added"]) == 2
    ready = [c for c in by_event["condition.changed"] if c["condition"] == "Ready"]
    assert ready and ready[0]["after"] == "True" and ready[0]["reason"] == "Ready"
    assert not [ln for ln in lines if ln["logger"].startswith(("httpx", "httpcore"))]
    assert {ln["event"] for ln in lines if "event" in ln} >= {"started", "stopped"}


def test_skip_other_kinds_is_offered_and_taken_as_in_validate(
    tmp_path: Path, run_up: Callable[..., UpProcess]
) -> None:
    folder = tmp_path / "practices"
    fast_copy(folder)
    path = folder / BRIGHT_SMILES
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: bright-smiles-pms}\n---\n"
    path.write_text(secret + path.read_text())

    refused = run_up("--once", "practices", "--no-writeback")
    assert refused.proc.wait(timeout=40) == 1, "\n".join(refused.out + refused.err)
    assert any("pass --skip-other-kinds" in ln for ln in refused.out), refused.out

    taken = run_up("--once", "practices", "--no-writeback", "--skip-other-kinds")
    assert taken.proc.wait(timeout=40) == 0, "\n".join(taken.out + taken.err)
    assert any(ln.startswith("bright-smiles ") and " True " in ln for ln in taken.out)


def test_port_zero_and_the_no_flags_mean_off_in_up_and_in_operator() -> None:
    parser = build_parser()
    up = parser.parse_args(["up", "--no-writeback", "--no-metrics"])
    assert (up.writeback_port, up.metrics_port) == (0, 0)
    assert parser.parse_args(["up"]).writeback_port == 8081
    op = parser.parse_args(["operator", "--no-writeback", "--no-metrics"])
    assert (op.writeback_port, op.metrics_port) == (0, 0)
    op = parser.parse_args(["operator", "--writeback-port", "0", "--metrics-port", "0"])
    assert (op.writeback_port, op.metrics_port) == (0, 0)


def test_writeback_port_zero_gives_up_no_writeback_service() -> None:
    from reconciler.cli.up import options_from_args

    parser = build_parser()
    assert (
        options_from_args(parser.parse_args(["up", "--writeback-port", "0"])).writeback_port is None
    )
    assert options_from_args(parser.parse_args(["up"])).writeback_port == 8081
