"""`python -m reconciler.cli ARGS` runs `pmsctl ARGS` (the tests start subcommands this way)."""

import sys

from reconciler.cli import main

sys.exit(main())
