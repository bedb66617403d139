"""pmsctl: declarative PMS writeback settings for dental practices.

The engine (spec model, pure core, poller scheduler, event sink), its two adapters (the Kopf
operator and the local `pmsctl up`), and the `pmsctl` command line. See ARCHITECTURE.md.
"""

__version__ = "0.1.0"
GROUP = "writeback.dental.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PracticeWriteback"
PLURAL = "practicewritebacks"
