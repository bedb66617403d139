"""Catalogs: built from what the engine read, handed over when they change, written and read back.

Pure tables for `catalog_from` and `publish_due`; the PracticeCatalog object against the
hand-written schema (jsonschema); `pmsctl up`'s catalog files and `pmsctl catalog get|export`
over them (real files). The engine test runs against the real PMS simulator on a loopback port
on the `looptime` loop (a 600 s refresh takes no real time), as tests/test_engine.py does.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_engine import FAST, make_engine, sim, spec_for  # noqa: F401  (sim is a fixture)
from timing import elapse

from pms_drivers.base import DocumentCategory, NoteType, Provider
from pms_simulator import Simulator
from reconciler.api.catalog import (
    Catalog,
    CatalogDocumentCategory,
    CatalogIndex,
    CatalogNoteType,
    CatalogProvider,
    DocumentUse,
    catalogs_from_document,
    content_hash,
    dump_catalog_list,
)
from reconciler.api.spec import PracticeSpec
from reconciler.cli import main
from reconciler.engine.catalog import Published, catalog_from, publish_due
from reconciler.engine.core import Observed
from reconciler.engine.engine import EngineSettings
from reconciler.local.catalogs import LocalCatalogs, catalog_path, read_catalog_folder

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)

SPEC = PracticeSpec.from_spec(
    {
        "practiceId": "acme",
        "pms": {
            "type": "OpenDental",
            "url": "https://od.example.com/api/v1",
            "credentialsSecretRef": {"name": "acme-pms"},
        },
        "providerId": "1",
    }
)


def observed(**over: Any) -> Observed:
    base: dict[str, Any] = {
        "now": NOW,
        "pms_version": "24.3.36",
        "checked_at": NOW,
        "providers": (Provider("1", "Dr. Smith", True), Provider("7", "Dr. Gone", False)),
        "note_types": (NoteType("224", "Text Message"), NoteType("230", "Fax", hidden=True)),
        "document_categories": (
            DocumentCategory("187", "Insurance"),
            DocumentCategory("190", "Pictures", flags="P"),
            DocumentCategory("199", "Old", hidden=True, flags="P"),
        ),
    }
    base.update(over)
    return Observed(**base)


def sample() -> Catalog:
    catalog = catalog_from("clinics/acme", SPEC, observed())
    assert catalog is not None
    return catalog


# --- catalog_from -----------------------------------------------------------------------------


def test_the_catalog_lists_what_the_pms_offers_with_each_document_categorys_uses() -> None:
    c = sample()
    assert (c.namespace, c.name, c.practice_id, c.pms_type) == (
        "clinics",
        "acme",
        "acme",
        "OpenDental",
    )
    assert c.pms_version == "24.3.36"
    assert c.read_at == "2026-12-02T14:00:00Z"
    assert c.providers == (
        CatalogProvider("1", "Dr. Smith", True),
        CatalogProvider("7", "Dr. Gone", False),
    )
    assert c.note_types == (
        CatalogNoteType("224", "Text Message"),
        CatalogNoteType("230", "Fax", True),
    )
    assert c.document_categories == (
        CatalogDocumentCategory("187", "Insurance", False, (DocumentUse.WRITE, DocumentUse.READ)),
        CatalogDocumentCategory(
            "190",
            "Pictures",
            False,
            (DocumentUse.WRITE, DocumentUse.READ, DocumentUse.PATIENT_PHOTOS),
        ),
        CatalogDocumentCategory("199", "Old", True, ()),
    )


@pytest.mark.parametrize(
    "missing", ["checked_at", "providers", "note_types", "document_categories"]
)
def test_no_catalog_before_the_pms_lists_were_read(missing: str) -> None:
    assert catalog_from("clinics/acme", SPEC, observed(**{missing: None})) is None


def test_a_pms_without_a_version_gives_a_catalog_without_one() -> None:
    c = catalog_from("clinics/acme", SPEC, observed(pms_version=""))
    assert c is not None and c.pms_version is None
    assert "version" not in c.to_object()["pms"]


# --- publish_due ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "changed", "now", "due"),
    [
        (None, False, 0.0, True),  # never written
        ("same", False, 599.0, False),  # unchanged, refreshed recently
        ("same", False, 600.0, True),  # unchanged, due for a refresh
        ("same", True, 1.0, True),  # content changed
    ],
)
def test_a_catalog_is_written_when_new_changed_or_due_for_a_refresh(
    last: str | None, changed: bool, now: float, due: bool
) -> None:
    catalog = sample()
    other = catalog_from("clinics/acme", SPEC, observed(note_types=(NoteType("224", "Texting"),)))
    assert other is not None
    previous = None if last is None else Published(content_hash(catalog), 0.0)
    result = publish_due(previous, other if changed else catalog, now, 600.0)
    assert (result is not None) is due
    if result is not None:
        assert result.at == now


def test_the_content_hash_ignores_the_read_time_and_sees_every_name() -> None:
    a = sample()
    later = catalog_from("clinics/acme", SPEC, observed(checked_at=NOW.replace(hour=15)))
    renamed = catalog_from("clinics/acme", SPEC, observed(note_types=(NoteType("224", "Txt"),)))
    assert later is not None and renamed is not None
    assert content_hash(a) == content_hash(later)
    assert content_hash(a) != content_hash(renamed)


# --- the object -------------------------------------------------------------------------------


def test_the_object_round_trips_and_is_valid_for_the_hand_written_schema() -> None:
    c = sample()
    obj = c.to_object()
    schema = json.loads((ROOT / "schemas" / "practicecatalog.v1alpha1.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(obj)
    assert obj["summary"] == {"providers": 2, "noteTypes": 2, "documentCategories": 3}
    assert Catalog.from_object(json.loads(json.dumps(obj))) == c


def test_an_object_without_its_pms_is_refused_with_its_name() -> None:
    obj = sample().to_object()
    del obj["pms"]
    with pytest.raises(ValueError, match="PracticeCatalog acme: missing or mistyped field 'pms'"):
        Catalog.from_object(obj)


def test_an_export_list_and_a_single_object_both_read_and_other_kinds_are_refused() -> None:
    obj = sample().to_object()
    assert list(catalogs_from_document(obj)) == [obj]
    listed = {"kind": "PracticeCatalogList", "items": [obj, {"kind": "Secret"}]}
    assert list(catalogs_from_document(listed)) == [obj]
    with pytest.raises(ValueError, match="'Secret' is not PracticeCatalog"):
        list(catalogs_from_document({"kind": "Secret"}))


# --- pmsctl up's files and pmsctl catalog ---------------------------------------------------


async def test_local_catalogs_are_written_whole_read_back_and_removed(tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    writer = LocalCatalogs(folder)
    await writer("clinics/acme", sample())
    path = catalog_path(folder, "clinics/acme")
    assert path.name == "clinics_acme.json"
    assert sorted(p.name for p in folder.iterdir()) == ["clinics_acme.json"]  # no temp file left
    assert Catalog.from_object(read_catalog_folder(folder)["clinics/acme"]) == sample()
    await writer("clinics/acme", None)
    assert read_catalog_folder(folder) == {}


def test_a_broken_catalog_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "x_y.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x_y\.json: not a PracticeCatalog"):
        read_catalog_folder(tmp_path)


async def test_catalog_get_and_export_read_the_state_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await LocalCatalogs(tmp_path / "catalogs")("clinics/acme", sample())
    assert main(["catalog", "get", "acme", "--state-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "clinics/acme: OpenDental 24.3.36" in table
    assert "KIND" in table and "provider" in table
    row = next(line for line in table.splitlines() if "Pictures" in line)
    assert row.split() == ["documentCategory", "190", "Pictures", "write,read,patientPhotos"]
    assert "inactive" in next(line for line in table.splitlines() if "Dr. Gone" in line)

    assert main(["catalog", "get", "clinics/acme", "--state-dir", str(tmp_path), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["noteTypes"][0]["name"] == "Text Message"

    assert main(["catalog", "get", "nobody", "--state-dir", str(tmp_path)]) == 1
    assert "no catalog for nobody" in capsys.readouterr().err

    out = tmp_path / "catalogs.yaml"
    assert main(["catalog", "export", "-o", str(out), "--state-dir", str(tmp_path)]) == 0
    doc = yaml.safe_load(out.read_text())
    assert doc["kind"] == "PracticeCatalogList"
    assert [Catalog.from_object(o) for o in doc["items"]] == [sample()]
    # The export is itself a catalog source.
    assert main(["catalog", "get", "acme", "--catalogs", str(out), "-o", "yaml"]) == 0
    assert "Text Message" in capsys.readouterr().out


def test_two_catalog_sources_at_once_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["catalog", "get", "acme", "--state-dir", str(tmp_path), "--catalogs", str(tmp_path)]
    )
    assert code == 2
    assert "use one catalog source" in capsys.readouterr().err


# --- the engine ---------------------------------------------------------------------------------


class Catalogs:
    """A catalog listener that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Catalog | None]] = []

    async def __call__(self, key: str, catalog: Catalog | None) -> None:
        self.calls.append((key, catalog))


@pytest.mark.looptime(end=3600)
async def test_the_engine_hands_over_a_catalog_when_it_changes_or_is_due_and_none_on_removal(
    sim: Simulator,  # noqa: F811
    tmp_path: Path,
) -> None:
    listener = Catalogs()
    settings = EngineSettings(**{**FAST.__dict__, "drift_interval": 30.0, "catalog_refresh": 600.0})
    engine = make_engine(sim, tmp_path, settings=settings, on_catalog=listener)
    await engine.start()
    try:
        assert (await engine.apply("clinics/acme", spec_for(sim))).ready
        assert [k for k, _ in listener.calls] == ["clinics/acme"]
        first = listener.calls[0][1]
        assert first is not None
        assert "Text Message" in {t.name for t in first.note_types}
        assert first.pms_type == "OpenDental" and first.providers

        await elapse(95)  # three drift checks, nothing changed: no write
        assert len(listener.calls) == 1

        sim.rename_note_type("acme", "Text Message", "Texting")
        await elapse(30)  # the next drift check reads the rename
        assert len(listener.calls) == 2
        renamed = listener.calls[1][1]
        assert renamed is not None and "Texting" in {t.name for t in renamed.note_types}

        await elapse(600)  # unchanged, but due for a refresh of its readAt
        assert len(listener.calls) == 3
        refreshed = listener.calls[2][1]
        assert refreshed is not None and refreshed.read_at > renamed.read_at

        await engine.remove("clinics/acme")
        assert listener.calls[-1] == ("clinics/acme", None)
    finally:
        await engine.stop()


def test_an_export_is_indexed_by_line_and_any_other_layout_is_parsed_whole() -> None:
    objects = [
        {**sample().to_object(), "metadata": {"namespace": "clinics", "name": n}}
        for n in ("b", "a")
    ]
    text = dump_catalog_list(objects)
    assert json.loads(text)["items"] == sorted(objects, key=lambda o: o["metadata"]["name"])
    index = CatalogIndex.from_text(text)
    assert all(isinstance(v, str) for v in index._raw.values())  # nothing parsed yet
    assert index["clinics/a"] == objects[1]
    assert list(index) == ["clinics/a", "clinics/b"]
    for other in (json.dumps(json.loads(text), indent=2), yaml.safe_dump(json.loads(text))):
        assert dict(CatalogIndex.from_text(other)) == dict(index)
    assert len(CatalogIndex.from_text(dump_catalog_list([]))) == 0


def test_pmsctl_up_writes_a_catalog_per_practice_that_catalog_and_plan_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pmsctl up --simulate --once` as a subprocess (real files, simulator, engine)."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(ROOT / "practices", tmp_path / "practices")
    state = tmp_path / ".pmsctl"
    done = subprocess.run(
        [Path(sys.executable).with_name("pmsctl"), "up", "--simulate", "--once", "practices",
         "--state-dir", str(state), "--no-writeback"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in (state / "catalogs").iterdir())
    assert files == [
        "dental-practices_bright-smiles.json",
        "dental-practices_lakeside-dental.json",
        "dental-practices_riverside-smiles.json",
    ]
    assert main(["catalog", "get", "lakeside-dental", "--state-dir", str(state)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["noteType", "201", "Text", "Message", "visible"] in rows
