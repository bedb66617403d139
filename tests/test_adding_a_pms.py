"""Adding a PMS is the files docs/adding-a-pms.md lists: proved with a toy PMS registered here.

The toy PMS ("Toy") is a driver class, one `PmsRecord` and one simulator `Personality`, all
registered in this module through the public `register()` functions, and nothing else. Then:
the generator writes the schema's enum and providerId rule and the CRD's CEL rule for it (into a
temporary copy of schemas/ and crds/, so the checked-in files stay the built-in PMSes'), the
schema accepts `type: Toy` with a Toy provider id and rejects another, `PmsType` accepts it, and
the engine builds its driver and runs it against the simulator serving it.

Real: the generator, jsonschema, the simulator's HTTP server and SQLite, the engine with its
SQLite cursors and JSONL sink, httpx. The secret source is a dict (a complete `SecretSource`).
The toy speaks the bridge agent API, as a further bridge-reached PMS would.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from timing import eventually

from pms_drivers import records
from pms_drivers.base import Credentials
from pms_drivers.bridge import BridgeDriver
from pms_drivers.registry import DRIVERS, create_driver
from pms_simulator import Simulator, catalog, personalities, personality
from reconciler.api import crdgen
from reconciler.api.spec import PmsType, PracticeSpec
from reconciler.engine.cursors import SqliteCursorStore
from reconciler.engine.engine import Engine, EngineSettings, SecretNotFoundError
from reconciler.engine.sink import JsonlSink

ROOT = Path(__file__).resolve().parents[1]


class ToyDriver(BridgeDriver):
    """The toy PMS's driver: a bridge agent flavour with TOY-numbered providers."""

    pms = "Toy"
    provider_id_pattern = re.compile(r"^TOY[0-9]{1,3}$")
    provider_id_rule = "TOY and 1-3 digits"


TOY_RECORD = records.PmsRecord(
    name="Toy",
    display_name="Toy Dental",
    driver=f"{__name__}:ToyDriver",
    reached_through="the bridge agent",
    provider_id=records.ProviderIdRule(r"^TOY[0-9]{1,3}$", "TOY and 1-3 digits", ("TOY1",)),
    catalog=records.CatalogShape(note_type="toy memo kind", document_category="toy folder"),
)
TOY_PERSONALITY = personality.Personality(
    name="Toy",
    api=personalities.BRIDGE_API,
    providers=(
        catalog.ProviderSeed("TOY1", "TOY1", "Tess", "Toy", "DDS", "Dr. Tess Toy"),
        catalog.ProviderSeed("TOY2", "TOY2", "Ted", "Toy", "DDS", "Dr. Ted Toy", False),
    ),
    definitions=(
        catalog.DefSeed(catalog.CAT_NOTES, "901", "Text Message"),
        catalog.DefSeed(catalog.CAT_NOTES, "902", "Old Memo", hidden=True),
        catalog.DefSeed(catalog.CAT_DOCUMENTS, "951", "Statements"),
        catalog.DefSeed(catalog.CAT_DOCUMENTS, "952", "Toy Photos"),
    ),
    photo_category="Toy Photos",
    version="0.1-toy",
)


@pytest.fixture
def toy() -> Iterator[None]:
    """The toy PMS registered in both registries for one test, and forgotten afterwards."""
    records.register(TOY_RECORD)
    personality.register(TOY_PERSONALITY)
    try:
        yield
    finally:
        records.unregister("Toy")
        personality.unregister("Toy")


def test_the_driver_records_and_the_simulator_personalities_name_the_same_pmses() -> None:
    assert list(records.RECORDS) == list(personality.PERSONALITIES)
    assert list(records.RECORDS) == ["OpenDental", "Eaglesoft", "Dentrix"]


def test_pms_type_is_exactly_the_registered_names(toy: None) -> None:
    assert set(PmsType) == {"OpenDental", "Eaglesoft", "Dentrix", "Toy"}
    assert PmsType("Toy") == "Toy" and PmsType("Toy").value == "Toy"
    with pytest.raises(ValueError, match="'OpenDentl' is not a registered PMS type"):
        PmsType("OpenDentl")


def test_pms_type_forgets_an_unregistered_pms() -> None:
    with pytest.raises(ValueError, match="'Toy' is not a registered PMS type"):
        PmsType("Toy")
    assert "Toy" not in DRIVERS


def _practice(pms: str, provider: str) -> dict[str, Any]:
    return {
        "apiVersion": "writeback.dental.dev/v1alpha1",
        "kind": "PracticeWriteback",
        "metadata": {"name": "toy-practice", "namespace": "clinics"},
        "spec": {
            "practiceId": "toy-1",
            "pms": {
                "type": pms,
                "url": "https://bridge.example.com/bridge/v1",
                "credentialsSecretRef": {"name": "toy-pms"},
            },
            "providerId": provider,
        },
    }


def test_the_generator_writes_the_toy_into_the_schema_and_the_crd(
    toy: None, tmp_path: Path
) -> None:
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    shutil.copytree(ROOT / "crds", tmp_path / "crds")
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1  # the records moved on
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0

    schema = json.loads((tmp_path / "schemas" / crdgen.SCHEMA_FILENAME).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(_practice("Toy", "TOY7"))) == []
    (error,) = validator.iter_errors(_practice("Toy", "DDS1"))
    assert "TOY and 1-3 digits" in json.dumps(schema)
    assert list(error.absolute_path) == ["spec", "providerId"]
    assert list(validator.iter_errors(_practice("OpenDental", "1"))) == []
    assert list(validator.iter_errors(_practice("Toys", "TOY7")))  # still a closed enum

    crd = yaml.safe_load((tmp_path / "crds" / crdgen.CRD_FILENAME).read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["pms"]["properties"]["type"]["enum"][-1] == "Toy"
    (rule,) = [r for r in spec["x-kubernetes-validations"] if '"Toy"' in r["rule"]]
    assert 'self.pms.type == "Toy"' in rule["rule"]
    assert 'self.providerId.matches("^TOY[0-9]{1,3}$")' in rule["rule"]
    assert rule["message"] == 'for Toy, providerId is TOY and 1-3 digits (for example "TOY1")'
    assert "For Toy, TOY and 1-3 digits" in spec["properties"]["providerId"]["description"]


def test_a_record_whose_example_breaks_its_own_rule_is_refused() -> None:
    bad = records.ProviderIdRule(r"^TOY[0-9]{1,3}$", "TOY and 1-3 digits", ("TOY1234",))
    with pytest.raises(ValueError, match="example providerId 'TOY1234' does not match"):
        records.register(
            records.PmsRecord(
                "Toy", "Toy", f"{__name__}:ToyDriver", "the bridge agent", bad, TOY_RECORD.catalog
            )
        )
    with pytest.raises(ValueError, match="must be anchored"):
        records.register(
            records.PmsRecord(
                "Toy",
                "Toy",
                f"{__name__}:ToyDriver",
                "the bridge agent",
                records.ProviderIdRule("TOY[0-9]", "TOY and a digit", ("TOY1",)),
                TOY_RECORD.catalog,
            )
        )
    assert "Toy" not in records.RECORDS


def test_another_record_under_a_taken_name_is_refused() -> None:
    taken = records.RECORDS["Dentrix"]
    with pytest.raises(ValueError, match="already registered"):
        records.register(records.PmsRecord(**{**taken.__dict__, "display_name": "Other"}))
    assert records.RECORDS["Dentrix"] is taken


class DictSecrets:
    """SecretSource over a dict of secret name -> values."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    async def get(self, key: str, secret_name: str) -> Credentials:
        if secret_name not in self.secrets:
            raise SecretNotFoundError(f"Secret {secret_name} not found")
        return Credentials(self.secrets[secret_name])


@pytest.fixture
async def toy_sim(toy: None) -> AsyncIterator[Simulator]:
    sim = Simulator(rate_limit_per_second=1000, burst=1000)
    sim.add_practice("toy-1", "Toy")
    async with sim.serve():
        yield sim
    sim.close()


def _toy_spec(sim: Simulator, **over: Any) -> PracticeSpec:
    body: dict[str, Any] = {
        "practiceId": "toy-1",
        "pms": {
            "type": "Toy",
            "url": sim.base_url("Toy"),
            "credentialsSecretRef": {"name": "toy-pms"},
        },
        "providerId": "TOY1",
        "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
        "documents": {"accountStatement": {"writeTo": "Statements"}},
        "sync": {"appointments": {"enabled": True, "interval": "1s"}},
    }
    body.update(over)
    return PracticeSpec.from_spec(body)


async def test_the_simulator_serves_the_toy_and_the_engine_drives_it(
    toy_sim: Simulator, tmp_path: Path
) -> None:
    sim = toy_sim
    assert sim.base_url("Toy").endswith("/bridge/v1")
    engine = Engine(
        sink=JsonlSink(tmp_path / "events.jsonl", fsync=False),
        store=SqliteCursorStore(tmp_path / "state.db"),
        secrets=DictSecrets({"toy-pms": sim.credentials("toy-1")}),
        settings=EngineSettings(first_poll_jitter=0.0, jitter=0.0, rate_per_second=50.0, burst=50),
    )
    await engine.start()
    try:
        status = await engine.apply("clinics/toy", _toy_spec(sim))
        assert status.ready, status.to_dict()
        target = engine.target("toy-1")
        assert target is not None and isinstance(target.driver, ToyDriver)
        reachable = status.condition("PMSReachable")
        assert reachable is not None and reachable.message.startswith("Toy Dental (0.1-toy")

        # The catalog words of the record reach the conditions' messages.
        hidden = await engine.apply(
            "clinics/toy",
            _toy_spec(sim, writeback={"outgoingSms": {"allow": True, "noteType": "Old Memo"}}),
        )
        notes = hidden.condition("NoteTypesResolved")
        assert notes is not None and notes.status == "False", hidden.to_dict()
        assert "toy memo kind" in notes.message

        sim.advance(90)
        changed = {str(c["id"]) for c in sim.changes("toy-1", "appointments")}
        assert changed

        def emitted() -> set[str]:
            path = tmp_path / "events.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            return {json.loads(x)["subject"].rsplit("/", 1)[-1] for x in lines}

        await eventually(
            lambda: changed <= emitted(), what="every toy appointment change emitted", step=0.1
        )
    finally:
        await engine.stop()
    assert any(r.path.startswith("/bridge/v1/") for r in sim.requests("toy-1"))


async def test_a_simulator_plays_the_personalities_it_receives(toy: None) -> None:
    sim = Simulator(personalities={"Toy": TOY_PERSONALITY})
    try:
        with pytest.raises(ValueError, match="'OpenDental' is not one of Toy"):
            sim.add_practice("od-1", "OpenDental")
        creds = sim.add_practice("toy-1", "Toy")
        async with sim.serve() as url:
            with pytest.raises(ValueError, match="is not one of Toy"):
                sim.base_url("OpenDental")
            async with httpx.AsyncClient() as client:
                driver = create_driver("Toy", client, sim.base_url("Toy"), Credentials(creds))
                providers = await driver.list_providers()
                assert {p.id for p in providers} == {"TOY1", "TOY2"}
                assert (await client.get(f"{url}/api/v1/providers")).status_code == 404
    finally:
        sim.close()


def test_a_simulator_refuses_a_personality_that_is_not_registered() -> None:
    with pytest.raises(ValueError, match="Toy: register the personality"):
        Simulator(personalities={"Toy": TOY_PERSONALITY})


async def test_the_registry_builds_the_toy_driver_by_its_import_path(toy: None) -> None:
    async with httpx.AsyncClient() as client:
        driver = create_driver("Toy", client, "http://127.0.0.1:1", Credentials({"token": "t"}))
    assert isinstance(driver, ToyDriver) and driver.pms == "Toy"
