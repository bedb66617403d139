"""pmsctl: declarative PMS writeback settings for dental practices.

The engine (spec model, pure core, poller scheduler, event sink), its two adapters (the Kopf
operator and the local `pmsctl up`), and the `pmsctl` command line. See ARCHITECTURE.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pmsctl")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
GROUP = "writeback.dental.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PracticeWriteback"
PLURAL = "practicewritebacks"
