"""`python -m reconciler.cli ARGS` is `pmsctl ARGS` (for environments without the entry point)."""

import sys

from reconciler.cli import main

sys.exit(main())
