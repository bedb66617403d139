"""`pmsctl`: the command line. Each subcommand lives in `reconciler.cli.<name>` and exposes
`register(subparsers)`; heavy imports (kopf, aiohttp, the Kubernetes client) happen inside the
command's run function so `pmsctl validate` starts fast.

Exit codes follow kubectl: 0 success, 1 the command's negative verdict (invalid files, a diff
found changes, failed writebacks listed), 2 usage errors and other failures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from reconciler import __version__

#: Subcommand modules under reconciler.cli, in `pmsctl --help` order.
COMMANDS = (
    "validate",
    "diff",
    "plan",
    "catalog",
    "migrate",
    "up",
    "simulate",
    "operator",
    "writebacks",
    "store",
    "version",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pmsctl",
        description="Manage dental practices' PMS writeback settings declaratively.",
    )
    parser.add_argument("--version", action="version", version=f"pmsctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"reconciler.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
