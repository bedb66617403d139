"""How the simulator plays each PMS: one `Personality` per `spec.pms.type` name, registered here.

    register(Personality(
        name="Dentrix",                 # the same name as its pms_drivers.records record
        api=BRIDGE_API,                 # the HTTP API it speaks (pms_simulator.personalities)
        providers=(...), definitions=(...), photo_category="Patient Photos", version="G7.3.1",
    ))

A personality is the API the PMS speaks (`Api`: where it is mounted, the aiohttp app builder,
the kind of credential that picks a practice) plus the seed catalog its practices start from.
`Simulator` receives its personalities (all registered ones by default) and mounts their APIs;
it imports no protocol module itself. The built-in personalities are registered by
`pms_simulator.personalities`, which the package imports. The seed tables in `catalog` are what
`State` reads, so registering a personality also writes its seed there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from pms_simulator import catalog

#: Builds the API's aiohttp app for a `pms_simulator.server.Simulator` (typed `Any` here so this
#: module need not import the server, which imports it).
AppBuilder = Callable[[Any], web.Application]


@dataclass(frozen=True)
class Api:
    """One HTTP API the simulator serves: its mount path, its app, its credential kind
    (`keys`: an Open Dental developer/customer key pair; `token`: a bearer token)."""

    mount: str
    build_app: AppBuilder
    credentials: Literal["keys", "token"]


@dataclass(frozen=True)
class Personality:
    """One simulated PMS: its name, the API it speaks and the catalog its practices start from."""

    name: str
    api: Api
    providers: tuple[catalog.ProviderSeed, ...]
    definitions: tuple[catalog.DefSeed, ...]
    #: The document category that holds patient photos (one of `definitions`).
    photo_category: str
    #: The version string the PMS reports.
    version: str


#: spec.pms.type -> personality, in registration order.
PERSONALITIES: dict[str, Personality] = {}


def register(personality: Personality) -> Personality:
    """Add a personality (and its seed to `catalog`); the same one twice is a no-op, another one
    under a taken name a ValueError."""
    name = personality.name
    known = PERSONALITIES.get(name)
    if known is not None and known != personality:
        raise ValueError(f"PMS {name!r} already has another simulator personality")
    photo = [d for d in personality.definitions if d.category == catalog.CAT_DOCUMENTS]
    if personality.photo_category not in {d.name for d in photo}:
        raise ValueError(f"{name}: photo category {personality.photo_category!r} is not seeded")
    PERSONALITIES[name] = personality
    catalog.PROVIDERS[name] = personality.providers
    catalog.DEFINITIONS[name] = personality.definitions
    catalog.PHOTO_CATEGORY[name] = personality.photo_category
    catalog.PMS_VERSIONS[name] = personality.version
    if name not in catalog.PMS_TYPES:
        catalog.PMS_TYPES = (*catalog.PMS_TYPES, name)
    return personality


def unregister(name: str) -> None:
    """Forget a personality and its seed (for tests that register a toy PMS)."""
    PERSONALITIES.pop(name, None)
    catalog.PROVIDERS.pop(name, None)
    catalog.DEFINITIONS.pop(name, None)
    catalog.PHOTO_CATEGORY.pop(name, None)
    catalog.PMS_VERSIONS.pop(name, None)
    catalog.PMS_TYPES = tuple(t for t in catalog.PMS_TYPES if t != name)
