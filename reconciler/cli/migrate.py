"""`pmsctl migrate PATH...`: rewrite PracticeWriteback files from v1alpha1 to v1.

Files and folders (recursive `*.yaml`/`*.yml`, multi-document); comments, key order and
formatting stay (`reconciler.review.migrate`). Running it twice changes nothing. `--check` (for
CI) writes nothing and exits 1 when a file would change. `--cluster` migrates what the API
server stores instead (`reconciler.kube.storage`): every PracticeWriteback rewritten in v1, then
v1alpha1 dropped from the CRD's `status.storedVersions`.
Exit codes: 0 done (or nothing to do), 1 `--check` found files to migrate, 2 usage or errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the `migrate` subcommand."""
    p = sub.add_parser(
        "migrate",
        help="rewrite PracticeWriteback files (or, with --cluster, stored objects) from v1alpha1 to v1",
        description="Rewrite PracticeWriteback files from writeback.dental.dev/v1alpha1 to v1, "
        "keeping comments and layout.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a file would change (for CI)",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="migrate the objects the API server stores (then drop v1alpha1 from storedVersions)",
    )
    p.add_argument("--kubeconfig", help="with --cluster: the kubeconfig (default: the usual)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Migrate files (or the cluster), print one line per file, return the exit code."""
    if args.cluster:
        if args.paths or args.check:
            print("pmsctl migrate: --cluster takes no PATH and no --check", file=sys.stderr)
            return 2
        from reconciler.kube.storage import StorageMigrationError, migrate_storage

        try:
            migrate_storage(args.kubeconfig, progress=print)
        except StorageMigrationError as exc:
            print(f"pmsctl migrate: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.paths:
        print("pmsctl migrate: give files or folders (or --cluster)", file=sys.stderr)
        return 2
    from reconciler.review.migrate import MigrateError, migrate_paths

    try:
        results = migrate_paths(args.paths, write=not args.check)
    except MigrateError as exc:
        print(f"pmsctl migrate: {exc}", file=sys.stderr)
        return 2
    changed = [r for r in results if r.changed]
    for r in changed:
        verb = "would migrate" if args.check else "migrated"
        print(f"{r.path}: {verb} {r.documents} PracticeWriteback document(s) to v1")
    for r in results:
        for note in r.notes:
            print(f"note: {note}")
    done = "would change" if args.check else "changed"
    print(f"{len(results)} file(s), {len(changed)} {done}")
    return 1 if args.check and changed else 0
