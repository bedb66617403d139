"""pmsctl: declarative PMS writeback settings for dental practices.

The engine (spec model, pure core, poller scheduler, event sink), its two adapters (the Kopf
operator and the local `pmsctl up`), and the `pmsctl` command line. See ARCHITECTURE.md.
"""

GROUP = "writeback.dental.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PracticeWriteback"
PLURAL = "practicewritebacks"


def __getattr__(name: str) -> str:
    # `__version__` is pyproject.toml's, read from the installed metadata on first use only:
    # importing importlib.metadata costs about 25 ms, which every `pmsctl` start would pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pmsctl")
        except PackageNotFoundError:  # a source tree on sys.path that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
