"""A static check, run by mypy (see `test_driver_typing.py`): every registered driver is a `PmsDriver`.

jsonschema does the same for its validators: if a driver's method drifts from the Protocol (a
renamed method, a changed signature, a sync method where an async one is due), the assignments
below stop type-checking and the test that runs mypy on this file fails. It is never imported
at run time by the product.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from pms_drivers.base import Credentials, DriverFactory, PmsDriver
from pms_drivers.bridge import BridgeDriver, DentrixDriver, EaglesoftDriver
from pms_drivers.opendental import OpenDentalDriver
from pms_drivers.registry import DRIVERS, Factory, create_driver


def check(client: httpx.AsyncClient, credentials: Credentials) -> None:
    od: PmsDriver = OpenDentalDriver(client, "http://pms/api/v1", credentials)
    es: PmsDriver = EaglesoftDriver(client, "http://pms/bridge/v1", credentials)
    dx: PmsDriver = DentrixDriver(client, "http://pms/bridge/v1", credentials)
    bridge: PmsDriver = BridgeDriver(client, "http://pms/bridge/v1", credentials)
    registered: PmsDriver = create_driver("OpenDental", client, "http://pms", credentials)
    del od, es, dx, bridge, registered

    # The classes themselves are driver factories, as the registry and base.DriverFactory say.
    factories: list[DriverFactory] = [OpenDentalDriver, EaglesoftDriver, DentrixDriver]
    registry: Mapping[str, Factory] = DRIVERS
    del factories, registry
