"""`pmsctl plan`: a change's names against the practices' catalogs, before rollout.

Pure tables for the resolution (`reconciler.review.plan.resolve`) and the report
(`plan_change`): resolved ids, not found with the closest names, hidden, inactive, a category
that may not be used that way, unverified practices, stale catalogs, the run-time effect. Then
the command on a real git repository with an exported catalog file: a misspelled note type that
`pmsctl validate` and `pmsctl diff` accept makes `pmsctl plan` exit 1.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.api.catalog import (
    Catalog,
    CatalogDocumentCategory,
    CatalogNoteType,
    CatalogProvider,
    DocumentUse,
    catalog_list,
)
from reconciler.api.spec import PracticeSpec
from reconciler.cli import main
from reconciler.review.diff import Resource
from reconciler.review.plan import (
    NameCheck,
    Verdict,
    closest_names,
    line_for,
    plan_change,
    render_json,
    render_markdown,
    render_text,
    resolve,
)

NOW = datetime(2026, 12, 2, 14, 0, 0, tzinfo=UTC)
WR = (DocumentUse.WRITE, DocumentUse.READ)

CATALOG = Catalog(
    namespace="clinics",
    name="acme",
    practice_id="acme",
    pms_type="OpenDental",
    read_at="2026-12-02T13:50:00Z",
    pms_version="24.3.36",
    providers=(
        CatalogProvider("1", "Dr. Smith", True),
        CatalogProvider("2", "Dr. Jones", True),
        CatalogProvider("7", "Dr. Gone", False),
    ),
    note_types=(
        CatalogNoteType("224", "Text Message"),
        CatalogNoteType("225", "Email"),
        CatalogNoteType("226", "Phone Call"),
        CatalogNoteType("230", "Fax", hidden=True),
    ),
    document_categories=(
        CatalogDocumentCategory("187", "Insurance", False, WR),
        CatalogDocumentCategory("188", "Statements", False, WR),
        CatalogDocumentCategory("190", "Scans", False, (DocumentUse.READ,)),
        CatalogDocumentCategory("199", "Old", True, ()),
    ),
)


def spec(**over: Any) -> PracticeSpec:
    body: dict[str, Any] = {
        "practiceId": "acme",
        "pms": {
            "type": "OpenDental",
            "url": "https://od.example.com/api/v1",
            "credentialsSecretRef": {"name": "acme-pms"},
        },
        "providerId": "1",
        "writeback": {"outgoingSms": {"allow": True, "noteType": "Text Message"}},
        "documents": {"accountStatement": {"writeTo": "Statements"}},
        "sync": {"appointments": {"enabled": True, "interval": "60s"}},
    }
    body.update(over)
    return PracticeSpec.from_spec(body)


def only(checks: tuple[NameCheck, ...], field: str) -> NameCheck:
    return next(c for c in checks if c.field == field)


# --- resolution -------------------------------------------------------------------------------


def test_every_name_of_a_good_spec_resolves_to_its_pms_id() -> None:
    checks = resolve(spec(), CATALOG)
    assert [(c.field, c.verdict, c.id) for c in checks] == [
        ("spec.providerId", Verdict.RESOLVED, "1"),
        ("spec.writeback.outgoingSms.noteType", Verdict.RESOLVED, "224"),
        ("spec.documents.accountStatement.writeTo", Verdict.RESOLVED, "188"),
    ]
    assert line_for(checks[0]) == "spec.providerId: provider '1' -> id 1 (Dr. Smith)"


@pytest.mark.parametrize(
    ("over", "field", "verdict", "closest"),
    [
        (
            {"writeback": {"outgoingSms": {"allow": True, "noteType": "Text Msg"}}},
            "spec.writeback.outgoingSms.noteType",
            Verdict.NOT_FOUND,
            ("Text Message",),
        ),
        (
            {"writeback": {"incomingCall": {"allow": True, "noteType": "phone call"}}},
            "spec.writeback.incomingCall.noteType",
            Verdict.NOT_FOUND,  # names are case-sensitive in the PMS, as in the engine
            ("Phone Call",),
        ),
        (
            {"writeback": {"outgoingEmail": {"allow": True, "noteType": "Fax"}}},
            "spec.writeback.outgoingEmail.noteType",
            Verdict.HIDDEN,
            (),
        ),
        ({"providerId": "7"}, "spec.providerId", Verdict.INACTIVE, ()),
        (
            {"providerId": "3"},
            "spec.providerId",
            Verdict.NOT_FOUND,
            ("1 (Dr. Smith)", "2 (Dr. Jones)"),
        ),
        (
            {"documents": {"accountStatement": {"writeTo": "Scans"}}},
            "spec.documents.accountStatement.writeTo",
            Verdict.WRONG_USE,
            (),
        ),
        (
            {"documents": {"insuranceVerification": {"readFrom": "Old"}}},
            "spec.documents.insuranceVerification.readFrom",
            Verdict.HIDDEN,
            (),
        ),
        (
            {"documents": {"insuranceVerification": {"writeTo": "Insurence"}}},
            "spec.documents.insuranceVerification.writeTo",
            Verdict.NOT_FOUND,
            ("Insurance",),
        ),
    ],
)
def test_a_name_that_would_not_resolve_says_why(
    over: dict[str, Any], field: str, verdict: Verdict, closest: tuple[str, ...]
) -> None:
    check = only(resolve(spec(**over), CATALOG), field)
    assert check.verdict is verdict
    assert check.verdict.failing
    assert check.closest == closest


def test_a_disallowed_writeback_names_nothing_to_check() -> None:
    checks = resolve(spec(writeback={"outgoingSms": {"allow": False, "noteType": "Nope"}}), CATALOG)
    assert [c.field for c in checks] == [
        "spec.providerId",
        "spec.documents.accountStatement.writeTo",
    ]


def test_closest_names_are_nearest_first_and_only_near_ones() -> None:
    options = ["Text Message", "Texting", "Email", "Insurance Verification"]
    assert closest_names("Text Msg", options) == ("Texting", "Text Message")
    assert closest_names("Zzzzzzzzzzzz", options) == ()


def test_show_options_lists_every_name_that_would_resolve() -> None:
    check = only(
        resolve(spec(writeback={"outgoingSms": {"allow": True, "noteType": "SMS"}}), CATALOG),
        "spec.writeback.outgoingSms.noteType",
    )
    assert check.closest == ()
    assert "no close name (--show-options lists them all)" in line_for(check)
    assert line_for(check, show_options=True).endswith(
        "options: 'Email', 'Phone Call', 'Text Message'"
    )


# --- the report -------------------------------------------------------------------------------


def side(*items: tuple[str, PracticeSpec]) -> dict[str, Resource]:
    out = {}
    for key, s in items:
        ns, _, name = key.partition("/")
        out[key] = Resource(ns, name, s, file=f"practices/{name}.yaml")
    return out


def test_only_touched_practices_are_checked_and_a_bad_name_fails_the_plan() -> None:
    base = side(("clinics/acme", spec()), ("clinics/other", spec(practiceId="other")))
    head = side(
        ("clinics/acme", spec(writeback={"outgoingSms": {"allow": True, "noteType": "Text Msg"}})),
        ("clinics/other", spec(practiceId="other")),
    )
    report = plan_change(base, head, {"clinics/acme": CATALOG}, now=NOW)
    assert [p.key for p in report.practices] == ["clinics/acme"]
    assert report.unchanged == 1
    assert report.exit_code == 1
    text = render_text(report)
    assert (
        "ERROR spec.writeback.outgoingSms.noteType: note type 'Text Msg' not found; closest: 'Text Message'"
        in text
    )
    assert "catalog read 10m ago" in text


def test_a_new_practice_is_unverified_not_an_error() -> None:
    report = plan_change({}, side(("clinics/new", spec(practiceId="new"))), {}, now=NOW)
    assert report.exit_code == 0
    (p,) = report.practices
    assert p.unverified is not None and "new practice" in p.unverified
    assert report.effect.practices_added == 1
    assert report.effect.pollers_started == 1


def test_a_practice_moved_to_another_pms_is_unverified() -> None:
    dentrix = {
        "type": "Dentrix",
        "url": "https://b/bridge/v1",
        "credentialsSecretRef": {"name": "s"},
    }
    report = plan_change(
        side(("clinics/acme", spec())),
        side(("clinics/acme", spec(pms=dentrix, providerId="DDS1"))),
        {"clinics/acme": CATALOG},
        now=NOW,
    )
    (p,) = report.practices
    assert p.unverified == (
        "the catalog is for OpenDental; the change moves the practice to Dentrix"
    )
    assert report.exit_code == 0


def test_a_renamed_resource_is_checked_against_its_old_catalog() -> None:
    bad = spec(writeback={"outgoingSms": {"allow": True, "noteType": "Txt"}})
    report = plan_change(
        side(("clinics/acme", spec())),
        side(("clinics/acme-2", bad)),
        {"clinics/acme": CATALOG},
        now=NOW,
    )
    (p,) = report.practices
    assert p.key == "clinics/acme-2" and not p.unverified
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("age", "stale"), [(timedelta(minutes=59), False), (timedelta(hours=2), True)]
)
def test_a_catalog_older_than_the_threshold_is_a_warning_not_a_failure(
    age: timedelta, stale: bool
) -> None:
    report = plan_change(
        side(("clinics/acme", spec())),
        side(("clinics/acme", spec(providerId="2"))),
        {"clinics/acme": CATALOG},
        now=datetime(2026, 12, 2, 13, 50, tzinfo=UTC) + age,
        max_age=3600,
    )
    (p,) = report.practices
    assert p.stale is stale
    assert report.exit_code == 0
    assert ("WARNING: older than 1h" in render_text(report)) is stale


def test_the_run_time_effect_counts_pollers_reads_and_writebacks() -> None:
    base = side(
        ("clinics/acme", spec()),
        ("clinics/gone", spec(practiceId="gone")),
    )
    head = side(
        (
            "clinics/acme",
            spec(
                sync={
                    "appointments": {"enabled": True, "interval": "30s"},
                    "patients": {"enabled": True, "interval": "60s"},
                },
                writeback={
                    "outgoingSms": {"allow": False},
                    "incomingSms": {"allow": True, "noteType": "Text Message"},
                },
            ),
        ),
    )
    report = plan_change(base, head, {"clinics/acme": CATALOG}, now=NOW)
    e = report.effect
    assert (e.pollers_started, e.pollers_stopped) == (1, 1)  # acme +patients, gone -appointments
    assert (e.reads_per_minute_before, e.reads_per_minute_after) == (2.0, 3.0)
    assert (e.writebacks_on, e.writebacks_off) == (1, 1)
    assert e.practices_removed == 1
    assert "PMS reads: 2/min -> 3/min (+1/min)" in render_text(report)


def test_markdown_puts_failures_in_a_table_and_json_carries_every_name() -> None:
    head = side(("clinics/acme", spec(providerId="7")))
    report = plan_change(side(("clinics/acme", spec())), head, {"clinics/acme": CATALOG}, now=NOW)
    md = render_markdown(report)
    assert md.startswith("<!-- pmsctl-plan -->\n### :x: pmsctl plan")
    assert "| clinics/acme | `spec.providerId` | inactive |" in md
    data = json.loads(render_json(report))
    assert data["exitCode"] == 1
    names = data["practices"][0]["names"]
    assert names[0] == {
        "field": "spec.providerId",
        "what": "provider",
        "name": "7",
        "verdict": "inactive",
        "failing": True,
        "id": "7",
        "closest": [],
        "options": ["1 (Dr. Smith)", "2 (Dr. Jones)"],
    }


# --- the command on a git repository ---------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with the example practices, and an exported catalog of lakeside-dental."""
    repo = tmp_path / "repo"
    (repo / "practices").mkdir(parents=True)
    for path in (ROOT / "practices").glob("*.yaml"):
        (repo / "practices" / path.name).write_text(path.read_text())
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "base")
    doc = yaml.safe_load((repo / "practices" / "dentrix-lakeside.yaml").read_text())
    names = {v["noteType"] for v in doc["spec"]["writeback"].values()}
    categories = {n for m in doc["spec"]["documents"].values() for n in m.values()}
    catalog = Catalog(
        namespace="dental-practices",
        name="lakeside-dental",
        practice_id="lakeside-dental",
        pms_type="Dentrix",
        read_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        providers=(CatalogProvider("DDS1", "Dr. Alan Moss", True),),
        note_types=tuple(CatalogNoteType(str(i), n) for i, n in enumerate(sorted(names))),
        document_categories=tuple(
            CatalogDocumentCategory(str(100 + i), n, False, WR)
            for i, n in enumerate(sorted(categories))
        ),
    )
    (tmp_path / "catalogs.json").write_text(json.dumps(catalog_list([catalog.to_object()])))
    return repo


def commit_edit(repo: Path, old: str, new: str) -> None:
    path = repo / "practices" / "dentrix-lakeside.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    git(repo, "commit", "-qam", "edit")


def test_plan_catches_a_misspelled_note_type_that_validate_and_diff_accept(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    commit_edit(
        repo,
        "outgoingSms: {allow: true, noteType: Text Message}",
        "outgoingSms: {allow: true, noteType: Text Msg}",
    )
    catalogs = str(repo.parent / "catalogs.json")
    assert main(["validate", "practices"]) == 0
    assert main(["diff", "--base", "main~1", "--head", "main"]) == 1  # a change, not an error
    capsys.readouterr()
    assert main(["plan", "main~1..main", "--catalogs", catalogs]) == 1
    out = capsys.readouterr().out
    assert (
        "ERROR spec.writeback.outgoingSms.noteType: note type 'Text Msg' not found; "
        "closest: 'Text Message'" in out
    )
    assert "ok    spec.providerId: provider 'DDS1' -> id DDS1 (Dr. Alan Moss)" in out
    assert "1 practice checked; 1 name would fail at rollout in 1" in out

    assert main(["plan", "main~1..main", "--catalogs", catalogs, "-o", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["exitCode"] == 1


def test_plan_is_clean_when_every_name_resolves_and_usage_errors_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    commit_edit(
        repo,
        "appointments: {enabled: true, interval: 60s}",
        "appointments: {enabled: true, interval: 30s}",
    )
    catalogs = str(repo.parent / "catalogs.json")
    assert main(["plan", "main~1..main", "--catalogs", catalogs]) == 0
    assert "every name resolves" in capsys.readouterr().out
    assert main(["plan", "main~1..main", "--catalogs", catalogs, "--max-catalog-age", "soon"]) == 2
    assert main(["plan", "..main", "--catalogs", catalogs]) == 2
    assert main(["plan", "main~1..main", "--catalogs", str(repo / "missing.json")]) == 2
    assert "cannot read catalogs" in capsys.readouterr().err


def test_plan_on_files_compares_the_working_tree_with_the_merge_base(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    path = repo / "practices" / "dentrix-lakeside.yaml"
    path.write_text(path.read_text().replace("providerId: DDS1", "providerId: DDS9", 1))
    code = main(
        ["plan", "practices", "--catalogs", str(repo.parent / "catalogs.json"), "-o", "markdown"]
    )
    assert code == 1
    assert (
        "| dental-practices/lakeside-dental | `spec.providerId` | not found |"
        in capsys.readouterr().out
    )
