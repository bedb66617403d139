"""The driver registry: `spec.pms.type` -> the driver factory its `PmsRecord` names.

    driver = create_driver("OpenDental", client, base_url, credentials)

`client` is the practice's shared `httpx.AsyncClient` (see `pms_drivers.transport.new_client`),
`base_url` the PMS API root (`.../api/v1` for Open Dental, `.../bridge/v1` for the bridge agent).
The PMSes themselves are the records in `pms_drivers.records`: a record names its factory by
import path, loaded here on first use, so reading the records imports no driver.
`tests/typing_drivers.py` proves statically that every driver class is a `PmsDriver`, and
`tests/test_driver_typing.py` that every registered factory builds one.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import cast

import httpx

from pms_drivers import records
from pms_drivers.base import Credentials, PmsDriver

Factory = Callable[[httpx.AsyncClient, str, Credentials], PmsDriver]


@functools.cache
def _load(path: str) -> Factory:
    module, _, attribute = path.partition(":")
    factory = getattr(importlib.import_module(module), attribute)
    if not callable(factory):
        raise TypeError(f"driver {path!r} is not callable")
    return cast(Factory, factory)


def driver_factory(pms_type: str) -> Factory:
    """The factory registered for `pms_type`; ValueError naming the known types when there is none."""
    record = records.RECORDS.get(str(pms_type))
    if record is None:
        known = ", ".join(records.RECORDS)
        raise ValueError(f"spec.pms.type: {pms_type!r} has no driver; expected one of {known}")
    return _load(record.driver)


class _Drivers(Mapping[str, Factory]):
    """Every registered factory by name, following `records.register()` calls."""

    def __getitem__(self, name: str) -> Factory:
        if name not in records.RECORDS:
            raise KeyError(name)
        return driver_factory(name)

    def __iter__(self) -> Iterator[str]:
        return iter(records.RECORDS)

    def __len__(self) -> int:
        return len(records.RECORDS)


#: `spec.pms.type` -> driver factory. Keys are exactly the schema's enum values.
DRIVERS: Mapping[str, Factory] = _Drivers()


def create_driver(
    pms_type: str, client: httpx.AsyncClient, base_url: str, credentials: Credentials
) -> PmsDriver:
    """Build the driver for `pms_type`; ValueError naming the known types when there is none."""
    return driver_factory(pms_type)(client, base_url, credentials)
