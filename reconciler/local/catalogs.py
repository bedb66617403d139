"""`pmsctl up`'s catalogs: one JSON file per practice in STATE_DIR/catalogs/.

`LocalCatalogs(folder)` is the engine's catalog listener in local mode: it writes each practice's
PracticeCatalog object (the same object the operator publishes) to `<namespace>_<name>.json`,
atomically (a temporary file renamed over the old one, so a reader never sees half a file), and
removes the file when the practice is removed. `read_catalog_folder` reads them back for
`pmsctl catalog` and `pmsctl plan --state-dir`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler import private
from reconciler.api.catalog import Catalog

#: The folder under the state dir.
CATALOG_FOLDER = "catalogs"


def catalog_path(folder: Path, key: str) -> Path:
    """The file of practice `key` (`namespace/name`) in `folder`."""
    namespace, _, name = key.partition("/")
    return folder / f"{namespace}_{name}.json"


class LocalCatalogs:
    """The engine's catalog listener for `pmsctl up` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.writes = 0

    async def __call__(self, key: str, catalog: Catalog | None) -> None:
        await asyncio.to_thread(self._write, key, catalog)

    def _write(self, key: str, catalog: Catalog | None) -> None:
        path = catalog_path(self.folder, key)
        if catalog is None:
            path.unlink(missing_ok=True)
            return
        private.private_dir(self.folder)  # a catalog names the practice's providers
        tmp = path.with_suffix(".json.tmp")
        with private.open_private(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(catalog.to_object(), indent=2) + "\n")
        os.replace(tmp, path)
        self.writes += 1


def read_catalog_folder(folder: Path) -> dict[str, Mapping[str, Any]]:
    """Every PracticeCatalog object in `folder` (`*.json`), by `namespace/name`; an unreadable
    file is a ValueError naming it. A missing folder holds none."""
    out: dict[str, Mapping[str, Any]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            catalog = Catalog.from_object(obj)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a PracticeCatalog: {exc}") from exc
        out[catalog.key] = obj
    return out
