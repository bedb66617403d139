"""`pmsctl plan`: would a change to practice files work at rollout? Names checked, no PMS needed.

    pmsctl plan BASE..HEAD [--catalogs FILE | --state-dir DIR]   a git range
    pmsctl plan [FILE...]                                        the working tree vs the merge base

For every practice the change adds, changes or renames (the sides come from `pmsctl diff`'s
git reader, `reconciler.cli.diff.git_sides`), every provider, note-type and document-category
name is resolved against the practice's catalog (`reconciler.review.plan`): one line per name,
the PMS id it resolves to or why it would fail. Catalogs come from an exported file
(`--catalogs`, what a CI job without PMS credentials or cluster access uses), `pmsctl up`'s
state folder (`--state-dir`) or the cluster. Exit codes: 0 every name resolves, 1 a name would
fail at rollout, 2 usage and read errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.api.catalog import Catalog
from reconciler.api.durations import parse_duration
from reconciler.cli.catalog import CatalogSourceError, add_source_arguments, load_catalogs
from reconciler.cli.diff import DiffInputError, git_sides
from reconciler.review.gitsource import GitSourceError
from reconciler.review.plan import DEFAULT_MAX_AGE, RENDERERS, plan_change


def register(sub: Any) -> None:
    """Add `pmsctl plan` to the CLI."""
    p = sub.add_parser(
        "plan",
        help="check a change's provider, note-type and document names against the PMS catalogs",
        description=(
            "Resolve every provider, note-type and document-category name of the practices a "
            "change touches against their catalogs (what each PMS offers), and say what the "
            "change does at run time. Exit codes: 0 clean, 1 would fail at rollout, 2 usage."
        ),
    )
    p.add_argument(
        "target",
        nargs="*",
        metavar="BASE..HEAD | FILE",
        help="a git range, or files/folders (default: practices/ vs the merge base)",
    )
    p.add_argument(
        "--max-catalog-age",
        metavar="DURATION",
        default="1h",
        help="warn about catalogs read longer ago than this (default: 1h)",
    )
    p.add_argument("--show-options", action="store_true", help="list every name that would resolve")
    p.add_argument(
        "-n",
        "--namespace",
        metavar="NS",
        help="namespace of documents without metadata.namespace (default: 'default')",
    )
    p.add_argument("-o", "--output", choices=sorted(RENDERERS), default="text")
    add_source_arguments(p)
    p.set_defaults(func=run)


def _sides_args(args: argparse.Namespace) -> argparse.Namespace:
    """The namespace `git_sides` reads, from BASE..HEAD or FILEs."""
    ranges = [t for t in args.target if ".." in t and not Path(t).exists()]
    if ranges:
        if len(args.target) != 1:
            raise ValueError("give one BASE..HEAD range, or files, not both")
        base, _, head = ranges[0].partition("..")
        if not base:
            raise ValueError(f"{ranges[0]!r}: the range needs a base (BASE..HEAD)")
        return argparse.Namespace(
            paths=[], base=base, head=head or "HEAD", namespace=args.namespace
        )
    return argparse.Namespace(paths=args.target, base=None, head=None, namespace=args.namespace)


def _lookup(objects: Mapping[str, Mapping[str, Any]], key: str) -> Catalog | None:
    obj = objects.get(key)
    return Catalog.from_object(obj) if obj is not None else None


def run(args: argparse.Namespace) -> int:
    """Entry point of `pmsctl plan`."""
    try:
        max_age = parse_duration(args.max_catalog_age) if args.max_catalog_age else DEFAULT_MAX_AGE
        sides_args = _sides_args(args)
    except ValueError as exc:
        print(f"pmsctl plan: {exc}", file=sys.stderr)
        return 2
    try:
        sides = git_sides(sides_args)
        touched = {r.namespace for r in sides.head.values()} | {
            r.namespace for r in sides.base.values()
        }
        objects, source = load_catalogs(args, sorted(touched))
        report = plan_change(
            sides.base,
            sides.head,
            partial(_lookup, objects),
            now=datetime.now(UTC),
            max_age=max_age,
            base_label=sides.base_label,
            head_label=sides.head_label,
            catalog_source=source,
            identical=sides.identical,
        )
    except DiffInputError as exc:
        print(f"pmsctl plan: {exc.headline}", file=sys.stderr)
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    except (GitSourceError, CatalogSourceError, ValueError) as exc:
        print(f"pmsctl plan: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(RENDERERS[args.output](report, show_options=args.show_options))
    return report.exit_code
