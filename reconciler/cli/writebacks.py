"""`pmsctl writebacks list|retry`: see and resend the writebacks in the queue.

Two ways to reach the queue:
- `--db PATH` (default $PMSCTL_WRITEBACK_DB, else `.pmsctl/writebacks.db`): the SQLite file
  itself. Safe while a service runs on it (WAL, busy timeout); a running service picks retried
  records up on its next sweep (every 2 s).
- `--server URL` with `--token-file F` (default: $PMSCTL_WRITEBACK_TOKEN, the file named by
  $PMSCTL_WRITEBACK_TOKEN_FILE, else `.pmsctl/writeback-token`, where `pmsctl up` keeps the one
  it made): the service's HTTP API, for `pmsctl up` or an operator in a cluster (e.g. through
  `kubectl port-forward`).

Exit codes: 0 done; 1 `list --failed` listed failed writebacks, or `retry` found nothing to
retry; 2 usage errors and unreachable queues.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

STATUSES = ("pending", "sending", "sent", "skipped", "failed")
#: The token file `pmsctl up` makes when no token is configured.
DEFAULT_TOKEN_FILE = ".pmsctl/writeback-token"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "writebacks",
        help="list and retry writebacks (notes and documents written to the PMS)",
        description="List and retry the writebacks in the queue (the SQLite file or a server).",
    )
    wsub = p.add_subparsers(dest="action", metavar="ACTION")

    def where(q: argparse.ArgumentParser) -> None:
        q.add_argument("--db", metavar="PATH", help="the queue file (default $PMSCTL_WRITEBACK_DB "
                       "or .pmsctl/writebacks.db)")  # fmt: skip
        q.add_argument("--server", metavar="URL", help="a running writeback service instead")
        q.add_argument("--token-file", metavar="FILE", help="bearer token for --server "
                       "(default $PMSCTL_WRITEBACK_TOKEN, $PMSCTL_WRITEBACK_TOKEN_FILE, "
                       "else .pmsctl/writeback-token as pmsctl up makes it)")  # fmt: skip

    ls = wsub.add_parser("list", help="list writebacks (newest last)")
    group = ls.add_mutually_exclusive_group()
    group.add_argument("--failed", action="store_true", help="only failed ones (exit 1 if any)")
    group.add_argument("--status", choices=STATUSES, help="only this status")
    ls.add_argument("--practice", metavar="ID", help="only this practiceId")
    ls.add_argument("--limit", type=int, default=500, help="at most this many (default 500)")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    where(ls)
    ls.set_defaults(func=run_list)

    rt = wsub.add_parser(
        "retry",
        help="put failed writebacks (or one skipped for what the PMS answered) back in the queue",
    )
    rt.add_argument("id", nargs="?", help="the writeback id (wb-...)")
    rt.add_argument("--all", action="store_true", help="every failed writeback")
    rt.add_argument("--practice", metavar="ID", help="with --all: only this practiceId")
    where(rt)
    rt.set_defaults(func=run_retry)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


class _Failure(Exception):
    """A problem reaching the queue; the message is printed as is (exit 2)."""


# --- reaching the queue ---


def _db_path(args: argparse.Namespace) -> str:
    from reconciler.writeback.service import default_db_path

    path: str = args.db or default_db_path()
    if not os.path.exists(path):
        raise _Failure(
            f"{path}: no writeback queue here; pass --db PATH (or set $PMSCTL_WRITEBACK_DB), "
            "or --server URL for a running service"
        )
    return path


def _token(args: argparse.Namespace) -> str:
    """The bearer token for --server, checked; no message ever quotes it (or the file)."""
    from reconciler.writeback.errors import WritebackConfigError
    from reconciler.writeback.service import TOKEN_ENV, TOKEN_FILE_ENV, load_token
    from reconciler.writeback.tokens import token_problem

    source = f"${TOKEN_ENV}"
    if args.token_file:
        source = f"token file {args.token_file}"
    elif not os.environ.get(TOKEN_ENV) and os.environ.get(TOKEN_FILE_ENV):
        source = f"token file {os.environ[TOKEN_FILE_ENV]} (${TOKEN_FILE_ENV})"
    try:
        if args.token_file:
            token = load_token(token_file=args.token_file)
        elif not (os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_FILE_ENV)) and os.path.exists(
            DEFAULT_TOKEN_FILE
        ):
            # The file `pmsctl up` makes when no token is configured: what the server uses.
            source = f"token file {DEFAULT_TOKEN_FILE}"
            token = load_token(token_file=DEFAULT_TOKEN_FILE)
        else:
            token = load_token()
    except WritebackConfigError as exc:
        raise _Failure(f"--server needs a token: {exc}") from None
    except UnicodeDecodeError:  # its message would quote the file's bytes
        raise _Failure(f"--server needs a token: {source} is not UTF-8 text") from None
    problem = token_problem(token)
    if problem is not None:
        raise _Failure(f"--server needs a token: the token from {source} {problem}")
    return token


def _http(args: argparse.Namespace, method: str, path: str) -> Any:
    import urllib.error
    import urllib.request

    url = args.server.rstrip("/") + path
    req = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {_token(args)}"}, data=None
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read())["error"]["message"]
        except Exception:
            detail = exc.reason
        if exc.code in (404, 409):
            return {"_status": exc.code, "_message": detail}
        raise _Failure(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise _Failure(f"{method} {url}: cannot reach the writeback service: {exc}") from exc
    except ValueError as exc:  # urllib's "unknown url type" (the token was checked before)
        raise _Failure(f"{method} {url}: --server must be an http:// or https:// URL") from exc


# --- list ---


def run_list(args: argparse.Namespace) -> int:
    """`pmsctl writebacks list`."""
    status = "failed" if args.failed else args.status
    try:
        items = _list_items(args, status)
    except _Failure as exc:
        print(f"pmsctl writebacks list: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps({"items": items}, indent=2))
    elif not items:
        print("No writebacks found.", file=sys.stderr)
    else:
        print(render_table(items, now=time.time()))
    return 1 if args.failed and items else 0


def _list_items(args: argparse.Namespace, status: str | None) -> list[Any]:
    if args.server:
        from urllib.parse import urlencode

        query = {"limit": str(args.limit)}
        if status:
            query["status"] = status
        if args.practice:
            query["practiceId"] = args.practice
        body = _http(args, "GET", f"/v1/writebacks?{urlencode(query)}")
        return list(body.get("items", []))
    from reconciler.writeback import store as ops
    from reconciler.writeback.model import record_json

    conn = ops.connect(_db_path(args))
    try:
        statuses = [status] if status else []
        records = ops.list_records(
            conn, statuses=statuses, practice_id=args.practice, limit=args.limit
        )
    finally:
        conn.close()
    return [record_json(r) for r in records]


def _age(created: str, now: float) -> str:
    from datetime import datetime

    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "?"
    s = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def render_table(items: list[Any], *, now: float) -> str:
    """A kubectl-style table: upper-case headers, columns padded to the widest cell."""
    # PMS-ID: the note or document the PMS made, so a sent writeback can be found in the PMS.
    headers = ("ID", "PRACTICE", "KIND", "TYPE", "PATIENT", "STATUS", "REASON", "PMS-ID",
               "ATTEMPTS", "AGE")  # fmt: skip
    rows = [
        (
            str(i["id"]),
            str(i["practiceId"]),
            str(i["kind"]),
            str(i["type"]),
            str(i["patientId"]),
            str(i["status"]),
            str(i.get("reason") or "<none>"),
            str(i.get("pmsId") or "<none>"),
            str(i.get("attempts", 0)),
            _age(str(i.get("createdAt", "")), now),
        )
        for i in items
    ]
    widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (headers, *rows)]  # fmt: skip
    # A failed writeback's message (the PMS's answer) is what staff act on: show it under the row.
    out: list[str] = []
    for line, item in zip(lines, (None, *items), strict=True):
        out.append(line)
        if item is not None and item.get("status") == "failed" and item.get("message"):
            out.append(f"    └─ {item['message']}")
    return "\n".join(out)


# --- retry ---


def run_retry(args: argparse.Namespace) -> int:
    """`pmsctl writebacks retry ID|--all`."""
    if bool(args.id) == bool(args.all):
        print("pmsctl writebacks retry: give a writeback ID or --all", file=sys.stderr)
        return 2
    if args.practice and not args.all:
        print("pmsctl writebacks retry: --practice goes with --all", file=sys.stderr)
        return 2
    try:
        ids, problem = _retry(args)
    except _Failure as exc:
        print(f"pmsctl writebacks retry: {exc}", file=sys.stderr)
        return 2
    if problem:
        print(f"pmsctl writebacks retry: {problem}", file=sys.stderr)
        return 1
    for wid in ids:
        print(f"writeback/{wid} queued for retry")
    if not ids:
        print("No failed writebacks to retry.", file=sys.stderr)
        return 1
    return 0


def _retry(args: argparse.Namespace) -> tuple[list[str], str | None]:
    if args.server:
        from urllib.parse import quote, urlencode

        if args.all:
            q = f"?{urlencode({'practiceId': args.practice})}" if args.practice else ""
            body = _http(args, "POST", f"/v1/writebacks/retry{q}")
            return list(body.get("retried", [])), None
        body = _http(args, "POST", f"/v1/writebacks/{quote(args.id, safe='')}/retry")
        if "_status" in body:
            return [], str(body["_message"])
        return [str(body["id"])], None
    from reconciler.writeback import store as ops

    conn = ops.connect(_db_path(args))
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if args.all:
                return ops.retry_all(conn, practice_id=args.practice, now=ops.now()), None
            record = ops.retry(conn, args.id, now=ops.now())
            if record is not None:
                return [record.id], None
            current = ops.get(conn, args.id)
            if current is None:
                return [], f"no writeback has id {args.id}"
            why = f" ({current.reason})" if current.reason else ""
            return (
                [],
                f"writeback {args.id} is {current.status.value}{why}; only failed ones are "
                "retried (and ones skipped for what the PMS answered)",
            )
    finally:
        conn.close()
