"""`python -m reconciler` runs the operator (same as `pmsctl operator`)."""

import sys

from reconciler.cli import main

sys.exit(main(["operator", *sys.argv[1:]]))
