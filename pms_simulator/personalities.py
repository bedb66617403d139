"""The built-in simulator personalities: Open Dental on its REST API, Eaglesoft and Dentrix on
the bridge agent API, each with its seed catalog from `catalog`.

Imported by the package (`pms_simulator/__init__.py`), so every `Simulator` can play them. A new
PMS adds one `register(Personality(...))` here (and a protocol module when it speaks an API of
its own); its name must be the one its `pms_drivers.records` record registers.
"""

from __future__ import annotations

from pms_simulator import bridge, catalog, opendental
from pms_simulator.personality import Api, Personality, register

#: Open Dental's REST API subset, authenticated by a developer key and a customer key.
OPEN_DENTAL_API = Api("/api/v1", opendental.build_app, "keys")
#: The bridge agent's API (docs/bridge-agent.openapi.yaml), authenticated by a bearer token.
BRIDGE_API = Api("/bridge/v1", bridge.build_app, "token")


def _seeded(name: str, api: Api) -> Personality:
    return Personality(
        name=name,
        api=api,
        providers=catalog.PROVIDERS[name],
        definitions=catalog.DEFINITIONS[name],
        photo_category=catalog.PHOTO_CATEGORY[name],
        version=catalog.PMS_VERSIONS[name],
    )


register(_seeded(catalog.OPEN_DENTAL, OPEN_DENTAL_API))
register(_seeded(catalog.EAGLESOFT, BRIDGE_API))
register(_seeded(catalog.DENTRIX, BRIDGE_API))
