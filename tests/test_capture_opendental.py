"""Open Dental change capture against the vendor's documented behaviour, over real HTTP.

Real: the simulator (aiohttp, in-memory SQLite) on a loopback port, the driver on a client from
`pms_drivers.transport.new_client`. The simulator is made to behave as the API documents and no
kinder: changes land in the same second as a read (the simulated clock only moves when a test
moves it), list order is undefined and reshuffles when the data changes, definitions carry no
`serverDateTime`, and appointments carry their confirmation name. Each test names the way the
driver used to lose a change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from pms_drivers.base import Credentials
from pms_drivers.opendental import OpenDentalDriver
from pms_drivers.registry import create_driver
from pms_drivers.transport import new_client
from pms_simulator import Simulator, catalog, clock
from pms_simulator.adversary import Adversary, AdversaryConfig, ReadVerdict
from pms_simulator.state import Practice

PID = "od-capture"


@dataclass
class Env:
    sim: Simulator
    driver: OpenDentalDriver


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    sim = Simulator(db=":memory:", autotick=False)
    async with sim.serve(host="127.0.0.1", port=0):
        creds = Credentials(dict(sim.add_practice(PID, "OpenDental")))
        base = sim.base_url("OpenDental")
        async with new_client(base, timeout=30, rate_per_second=0, burst=1) as client:
            driver = create_driver("OpenDental", client, base, creds)
            assert isinstance(driver, OpenDentalDriver)
            yield Env(sim, driver)


def _scheduled(sim: Simulator) -> list[int]:
    rows = sim.state.query(
        "SELECT id FROM appointments WHERE p=? AND status='Scheduled' "
        "AND arrived=? AND confirmed=? ORDER BY id",
        (PID, clock.EMPTY_TIME, catalog.UNCONFIRMED_DEFNUM),
    )
    assert rows, "the seeded day has no unconfirmed appointment waiting"
    return [int(r[0]) for r in rows]


async def test_a_second_status_set_in_the_same_second_as_the_last_read_is_emitted(env: Env) -> None:
    sim, driver = env.sim, env.driver
    status = await driver.appointment_status_since(None)
    apt = _scheduled(sim)[0]
    sim.state.act(PID, clock.ARRIVE, apt)
    status = await driver.appointment_status_since(status.cursor)
    assert [(c.appointment_id, c.status) for c in status.records] == [(str(apt), "arrived")]
    # Seated in the very second the last read ran (and stamped with it): same key, same stamp.
    sim.state.act(PID, clock.SEAT, apt)
    status = await driver.appointment_status_since(status.cursor)
    assert [(c.appointment_id, c.status) for c in status.records] == [(str(apt), "seated")]
    assert (await driver.appointment_status_since(status.cursor)).records == []


async def test_an_appointment_changed_again_in_the_same_second_is_emitted_again(env: Env) -> None:
    sim, driver = env.sim, env.driver
    page = await driver.appointments_since(None)
    apt = _scheduled(sim)[0]
    sim.state.act(PID, clock.CONFIRM, apt)
    page = await driver.appointments_since(page.cursor)
    assert [(a.id, a.confirmed) for a in page.records] == [(str(apt), "Appointment Confirmed")]
    sim.state.act(PID, clock.ARRIVE, apt)
    sim.state.act(PID, clock.SEAT, apt)
    sim.state.act(PID, clock.DISMISS, apt)  # Complete, in the same second as the last read
    page = await driver.appointments_since(page.cursor)
    assert [(a.id, a.status) for a in page.records] == [(str(apt), "Complete")]
    assert (await driver.appointments_since(page.cursor)).records == []


class _AddPatientAfterFirstPage(Adversary):
    """Adds one patient between the first and the second page of the first patients read."""

    def before_read(self, p: Practice, path: str) -> ReadVerdict:
        self.reads = getattr(self, "reads", 0) + 1
        if path.endswith("/patients/Simple") and self.reads == 2:
            self.state.act(p.id, clock.NEW_PATIENT, 7)
        return ReadVerdict()


async def test_a_patient_added_between_pages_of_an_unordered_list_loses_no_one(env: Env) -> None:
    sim, driver = env.sim, env.driver
    sim.state.practice(PID)
    sim.state.adversary = _AddPatientAfterFirstPage(
        sim.state, AdversaryConfig(change_rate=0, throttle_rate=0, drop_rate=0, shuffle=True)
    )
    first = await driver.patients_since(None)
    later = await driver.patients_since(first.cursor)
    seen = [p.id for p in first.records] + [p.id for p in later.records]
    everyone = {str(r[0]) for r in sim.state.query("SELECT id FROM patients WHERE p=?", (PID,))}
    assert len(everyone) == 301
    assert sorted(seen, key=int) == sorted(everyone, key=int)


async def test_confirmation_comes_from_the_row_not_a_stale_definition_list(env: Env) -> None:
    sim, driver = env.sim, env.driver
    await driver.server_info()
    page = await driver.appointments_since(None)
    status = await driver.appointment_status_since(None)
    # The office renames a confirmation status after the driver last read the definitions.
    sim.state.update_def(PID, catalog.CAT_CONFIRMED, "Texted", new_name="Confirmed by text")
    apt = _scheduled(sim)[0]
    sim.state.set_confirmation(PID, apt, 23)
    page = await driver.appointments_since(page.cursor)
    status = await driver.appointment_status_since(status.cursor)
    assert [(a.id, a.confirmed) for a in page.records] == [(str(apt), "Confirmed by text")]
    assert [(c.appointment_id, c.status) for c in status.records] == [(str(apt), "confirmed")]


async def test_the_office_clock_comes_from_a_list_item_server_date_time(env: Env) -> None:
    env.sim.advance(minutes=95)
    info = await env.driver.server_info()
    assert info.server_time == "2026-11-26T08:35:00"


async def test_a_first_read_of_more_than_1000_pages_pages_through_with_progress(
    env: Env, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000 pages of 100 (a practice of 100,000 patients) is what the read used to stop at. The
    # same number of pages, at 5 rows a page on both sides, is much cheaper to serve.
    monkeypatch.setattr("pms_drivers.opendental.PAGE_CAP", 5)
    monkeypatch.setattr("pms_simulator.opendental.PAGE_CAP", 5)
    sim, driver = env.sim, env.driver
    sim.set_faults(PID, rate_limit_per_second=100_000, burst=100_000)
    sim.state.add_patients(PID, 5_000)  # 5,300 with the seed: more than 1,000 pages
    with caplog.at_level(logging.INFO, logger="pms_drivers.opendental"):
        page = await driver.patients_since(None)
    assert len(page.records) == 5_300
    assert len({p.id for p in page.records}) == 5_300
    progress = [r.getMessage() for r in caplog.records if "rows so far" in r.getMessage()]
    assert (
        len(progress) == 10 and progress[0] == "read changed patients: 500 rows so far (100 pages)"
    )
    assert (await driver.patients_since(page.cursor)).records == []


class _ThrottleThirdRead(Adversary):
    """Answers the third read 429 with Retry-After: 3, once."""

    def before_read(self, p: Practice, path: str) -> ReadVerdict:
        self.reads = getattr(self, "reads", 0) + 1
        return ReadVerdict(throttle=self.reads == 3, retry_after=3)


async def test_a_throttled_page_of_a_long_read_waits_the_retry_after_and_goes_on(env: Env) -> None:
    sim = env.sim
    sim.state.practice(PID)
    sim.state.adversary = _ThrottleThirdRead(sim.state, AdversaryConfig(shuffle=False))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the driver's clock: record, do not wait
        waits.append(seconds)

    base = sim.base_url("OpenDental")
    creds = Credentials(dict(sim.credentials(PID)))
    # No token bucket: it would pause for the Retry-After on the wall clock.
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        driver = OpenDentalDriver(client, base, creds, sleep=sleep)
        page = await driver.patients_since(None)
    assert waits and waits[0] >= 3
    assert len({p.id for p in page.records}) == 300
