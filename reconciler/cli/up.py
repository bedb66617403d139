"""`pmsctl up [PATH]`: run the engine locally on a folder of practice files (see
`reconciler.local.up`), against the embedded PMS simulator by default or against real PMSes with
credentials from a local file or the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.local.up import UpOptions


def register(sub: Any) -> None:
    """Add `up` to the `pmsctl` subcommands."""
    p = sub.add_parser(
        "up",
        help="reconcile a folder of practices locally (simulated PMS by default) and watch it",
        description=(
            "Validate and reconcile every PracticeWriteback in PATH with the operator's engine, "
            "run the pollers, show a live status table, and pick up edits to the folder. "
            "Ctrl-C stops cleanly; a second run resumes from the saved cursors."
        ),
    )
    p.add_argument(
        "path",
        nargs="?",
        default="practices",
        type=Path,
        metavar="PATH",
        help="a folder of *.yaml/*.yml files, or one file (default: practices)",
    )
    p.add_argument(
        "--simulate",
        dest="simulate",
        action="store_true",
        default=None,
        help="start the embedded PMS simulator and point every practice at it "
        "(default when no credentials are given)",
    )
    p.add_argument(
        "--no-simulate",
        dest="simulate",
        action="store_false",
        help="talk to the PMS URLs in the files, with credentials from --credentials/env",
    )
    p.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="YAML/JSON: Secret name -> {key: value} (or Secret manifests); "
        "env PMSCTL_CREDENTIALS_<SECRET_NAME>='{...}' also works",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--events",
        type=Path,
        metavar="FILE",
        help="append events as JSON lines here (default: STATE_DIR/events.jsonl)",
    )
    where.add_argument(
        "--sink",
        dest="sink_url",
        metavar="URL",
        help="send events elsewhere: http(s)://... posts CloudEvents batches, file:PATH appends",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".pmsctl"),
        metavar="DIR",
        help="cursors, simulator data and the default events file (default: .pmsctl)",
    )
    p.add_argument(
        "--store",
        default=os.environ.get("PMSCTL_STORE") or None,
        metavar="URL",
        help="keep the cursors and the writeback queue in this database instead of the SQLite "
        "files in STATE_DIR: postgresql://USER@HOST/DB, shared by every pmsctl up (or operator) "
        "given the same URL (default: $PMSCTL_STORE; see docs/store.md)",
    )
    p.add_argument(
        "--store-password-file",
        default=os.environ.get("PMSCTL_STORE_PASSWORD_FILE") or None,
        type=Path,
        metavar="PATH",
        help="a file holding the store's password (default: $PMSCTL_STORE_PASSWORD_FILE, else "
        "the password in the URL, if any)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="reconcile everything, print the table once and exit: 0 when every "
        "practice is Ready and every file valid, else 1",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --once: how long to wait for Ready (default 30)",
    )
    p.add_argument(
        "--tick-seconds",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --simulate: seconds between simulated office changes (default 2)",
    )
    p.add_argument(
        "--writeback-port",
        type=_port,
        default=8081,
        metavar="PORT",
        help="serve the writeback API on 127.0.0.1:PORT (default 8081; 0: off, as in pmsctl "
        "operator). A port in use stops pmsctl up (exit 2) rather than moving to another",
    )
    p.add_argument(
        "--no-writeback",
        dest="writeback_port",
        action="store_const",
        const=0,
        help="do not start the writeback API (same as --writeback-port 0)",
    )
    p.add_argument(
        "--writeback-intake",
        choices=("thread", "process"),
        default=os.environ.get("PMSCTL_WRITEBACK_INTAKE", "thread"),
        help="where the writeback API runs: thread (default: its own thread and event loop in this process) or process (a process of its own; measured slower on 2 cores, see docs/writeback.md)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve Prometheus /metrics (the engine's and the writeback API's, as the operator "
        "does) on 127.0.0.1:PORT (default 0: off)",
    )
    p.add_argument(
        "--no-metrics",
        dest="metrics_port",
        action="store_const",
        const=0,
        help="do not serve /metrics (the default; same as --metrics-port 0)",
    )
    p.add_argument(
        "--skip-other-kinds",
        action="store_true",
        help="skip documents of other kinds (Secrets, ...) in the files, as pmsctl validate does",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="STATE_DIR/pmsctl.log as text lines or one JSON object a line (default text)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="info: lifecycle, configuration changes, condition transitions; debug adds one "
        "line per PMS request (default info)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("auto", "table", "lines", "json"),
        default="auto",
        help="table (repainted in place), lines (one per change), json (one object "
        "per change); auto: table on a terminal, lines otherwise",
    )
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> UpOptions:
    """The flags as `UpOptions` (a port of 0 on the command line: that listener is off)."""
    from reconciler.local.up import UpOptions

    return UpOptions(
        path=args.path,
        simulate=args.simulate,
        credentials=args.credentials,
        events=args.events,
        sink_url=args.sink_url,
        state_dir=args.state_dir,
        once=args.once,
        once_timeout=args.timeout,
        output=args.output,
        tick_seconds=args.tick_seconds,
        writeback_port=args.writeback_port or None,
        writeback_intake_process=args.writeback_intake == "process",
        metrics_port=args.metrics_port,
        skip_other_kinds=args.skip_other_kinds,
        store_url=args.store,
        store_password_file=args.store_password_file,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    """Run `pmsctl up`; exit 0 on a clean stop, 1 for a failed --once, 2 when it cannot start
    (a bad flag, a port in use)."""
    import asyncio

    from reconciler.local.errors import UpError
    from reconciler.local.up import run_up
    from reconciler.writeback.errors import StoreError

    try:
        return asyncio.run(run_up(options_from_args(args)))
    except (UpError, StoreError) as exc:  # a StoreError names the store without its password
        print(f"pmsctl up: {exc}", file=sys.stderr)
        return 2


def _port(text: str) -> int:
    """argparse type for a TCP port, 0..65535 (0: off)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0..65535; 0: off)")
    return value
