"""`pmsctl store migrate|version`: the shared store's schema (docs/store.md).

    pmsctl store migrate --store postgresql://pmsctl@db.internal/pmsctl --store-password-file pw

`migrate` applies the schema migrations this pmsctl knows, under the store's migration lock, so
a rollout can run it (a Job, a CI step) before any new replica starts; replicas apply missing
migrations at start anyway, under the same lock. `version` prints the store's schema version
and the one this pmsctl knows. The URL is printed without its password.

Exit codes: 0 done; 1 the store belongs to a newer pmsctl; 2 usage errors and unreachable stores.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "store",
        help="apply or show the schema of the shared store (PostgreSQL)",
        description="Manage the schema of the store given by --store (default $PMSCTL_STORE).",
    )
    ssub = p.add_subparsers(dest="action", metavar="ACTION")
    for name, text in (
        ("migrate", "apply the missing schema migrations (run before a rollout)"),
        ("version", "print the store's schema version and the one this pmsctl knows"),
    ):
        q = ssub.add_parser(name, help=text, description=text)
        q.add_argument(
            "--store",
            default=os.environ.get("PMSCTL_STORE") or None,
            metavar="URL",
            help="postgresql://USER@HOST/DB (default $PMSCTL_STORE)",
        )
        q.add_argument(
            "--store-password-file",
            default=os.environ.get("PMSCTL_STORE_PASSWORD_FILE") or None,
            metavar="PATH",
            help="a file holding the password (default $PMSCTL_STORE_PASSWORD_FILE)",
        )
        q.set_defaults(func=run_migrate if name == "migrate" else run_version)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2


def _backend(args: argparse.Namespace) -> Any:
    from reconciler.stores import backend_from_url

    if not args.store:
        print("pmsctl store: give --store URL (or set $PMSCTL_STORE)", file=sys.stderr)
        return None
    return backend_from_url(args.store, password_file=args.store_password_file)


def run_migrate(args: argparse.Namespace) -> int:
    from reconciler.writeback.errors import StoreError

    try:
        backend = _backend(args)
        if backend is None:
            return 2
        before, after = backend.migrate()
    except StoreError as exc:
        print(f"pmsctl store migrate: {exc}", file=sys.stderr)
        return 1 if "newer pmsctl" in str(exc) else 2
    if before == after:
        print(f"{backend.name}: schema version {after}, up to date")
    else:
        print(f"{backend.name}: schema version {before} -> {after}")
    return 0


def run_version(args: argparse.Namespace) -> int:
    from reconciler.writeback.errors import StoreError

    try:
        backend = _backend(args)
        if backend is None:
            return 2
        current, known = backend.version()
    except StoreError as exc:
        print(f"pmsctl store version: {exc}", file=sys.stderr)
        return 2
    print(f"{backend.name}: schema version {current} (this pmsctl: {known})")
    return 1 if current > known else 0
