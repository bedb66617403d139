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
from typing import Any

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


class _Version(argparse.Action):
    """`--version`: the version is read when asked for, not at every start."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show the version and exit",
        )

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        import reconciler

        print(f"pmsctl {reconciler.__version__}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pmsctl",
        description="Manage dental practices' PMS writeback settings declaratively.",
    )
    parser.add_argument("--version", action=_Version)
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
