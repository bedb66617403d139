"""One module per `pmsctl` subcommand; each exposes `register(subparsers)` and sets `func`."""
