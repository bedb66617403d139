"""The driver registry: a plain dict from `spec.pms.type` to the driver factory.

    driver = create_driver("OpenDental", client, base_url, credentials)

`client` is the practice's shared `httpx.AsyncClient` (see `pms_drivers.transport.new_client`),
`base_url` the PMS API root (`.../api/v1` for Open Dental, `.../bridge/v1` for the bridge agent).
Adding a PMS is one module and one entry here; `tests/typing_drivers.py` proves statically that
every entry builds a `PmsDriver`.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from pms_drivers.base import Credentials, PmsDriver
from pms_drivers.bridge import DentrixDriver, EaglesoftDriver
from pms_drivers.opendental import OpenDentalDriver

Factory = Callable[[httpx.AsyncClient, str, Credentials], PmsDriver]

#: `spec.pms.type` -> driver factory. Keys are exactly the schema's enum values.
DRIVERS: dict[str, Factory] = {
    "OpenDental": OpenDentalDriver,
    "Eaglesoft": EaglesoftDriver,
    "Dentrix": DentrixDriver,
}


def create_driver(
    pms_type: str, client: httpx.AsyncClient, base_url: str, credentials: Credentials
) -> PmsDriver:
    """Build the driver for `pms_type`; ValueError naming the known types when there is none."""
    try:
        factory = DRIVERS[str(pms_type)]
    except KeyError:
        known = ", ".join(DRIVERS)
        raise ValueError(
            f"spec.pms.type: {pms_type!r} has no driver; expected one of {known}"
        ) from None
    return factory(client, base_url, credentials)
