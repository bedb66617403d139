"""`pmsctl diff`: not built yet (see the open issues)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("diff", help="(not built yet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("pmsctl diff: not built yet", file=sys.stderr)
    return 2
