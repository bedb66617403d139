"""The pure and file-level parts of `pmsctl up` (`reconciler.local`): the planner, the folder
watcher, the local credentials source and the display (writing to a StringIO; one that says it is
a terminal stands in for a TTY).

Real: files in a temporary folder, the real spec model, environment mappings. The watcher tests
pass a small loader that counts calls (so the test sees what was re-validated); the real loader,
which runs the validator, is exercised by tests/test_up.py end to end.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pms_drivers.base import Credentials
from reconciler.api.spec import PracticeSpec
from reconciler.local.display import Display
from reconciler.local.errors import CredentialsNotFound, UpError
from reconciler.local.folder import FolderWatcher, load_text, yaml_files
from reconciler.local.plan import (
    Applied,
    FileResult,
    LoadedPractice,
    display_names,
    plan,
    practice_key,
)
from reconciler.local.secrets import (
    LocalSecrets,
    env_var_name,
    parse_credentials_env,
    parse_credentials_file,
)
from reconciler.local.table import PollerCell, Row


def spec(practice_id: str = "p1", interval: str = "15s", pms: str = "OpenDental") -> PracticeSpec:
    return PracticeSpec.from_spec(
        {
            "practiceId": practice_id,
            "pms": {
                "type": pms,
                "url": "http://127.0.0.1:8830/api/v1",
                "credentialsSecretRef": {"name": f"{practice_id}-pms"},
            },
            "providerId": "7",
            "sync": {"appointmentStatus": {"enabled": True, "interval": interval}},
        }
    )


def practice(name: str, path: str, interval: str = "15s") -> LoadedPractice:
    return LoadedPractice(f"default/{name}", name, path, spec(name, interval))


def ok(path: str, *practices: LoadedPractice) -> FileResult:
    return FileResult(path, practices=practices)


def bad(path: str, message: str = "spec.pms.type: 'X' is not one of ...") -> FileResult:
    return FileResult(path, problems=(f"{path}:3:9: {message}",))


def test_new_files_are_applied_at_generation_one() -> None:
    result = plan({}, {"p/a.yaml": ok("p/a.yaml", practice("a", "p/a.yaml"))})
    assert [(a.practice.key, a.generation) for a in result.apply] == [("default/a", 1)]
    assert result.remove == ()
    assert result.problems == {}
    assert set(result.applied) == {"default/a"}


def test_unchanged_spec_is_not_reapplied() -> None:
    a = practice("a", "p/a.yaml")
    result = plan({a.key: Applied(a, 3)}, {"p/a.yaml": ok("p/a.yaml", a)})
    assert result.apply == ()
    assert result.applied[a.key].generation == 3


def test_changed_spec_is_reapplied_with_the_next_generation() -> None:
    a = practice("a", "p/a.yaml")
    edited = practice("a", "p/a.yaml", interval="20s")
    result = plan({a.key: Applied(a, 3)}, {"p/a.yaml": ok("p/a.yaml", edited)})
    assert [(x.practice.spec, x.generation) for x in result.apply] == [(edited.spec, 4)]


def test_removed_file_removes_its_practices() -> None:
    a, b = practice("a", "p/a.yaml"), practice("b", "p/b.yaml")
    result = plan({a.key: Applied(a, 1), b.key: Applied(b, 1)}, {"p/b.yaml": ok("p/b.yaml", b)})
    assert result.remove == ("default/a",)
    assert set(result.applied) == {"default/b"}


def test_document_removed_from_a_valid_file_is_removed() -> None:
    a, b = practice("a", "p/ab.yaml"), practice("b", "p/ab.yaml")
    result = plan({a.key: Applied(a, 1), b.key: Applied(b, 1)}, {"p/ab.yaml": ok("p/ab.yaml", b)})
    assert result.remove == ("default/a",)


def test_broken_file_keeps_the_last_good_version_running_and_is_reported() -> None:
    a, b = practice("a", "p/a.yaml"), practice("b", "p/b.yaml")
    result = plan(
        {a.key: Applied(a, 2), b.key: Applied(b, 1)},
        {"p/a.yaml": bad("p/a.yaml"), "p/b.yaml": ok("p/b.yaml", b)},
    )
    assert result.apply == ()
    assert result.remove == ()
    assert result.applied[a.key] == Applied(a, 2)
    assert result.problems == {"p/a.yaml": ("p/a.yaml:3:9: spec.pms.type: 'X' is not one of ...",)}


def test_broken_new_file_is_reported_and_not_applied() -> None:
    result = plan({}, {"p/a.yaml": bad("p/a.yaml")})
    assert (result.apply, result.remove, dict(result.applied)) == ((), (), {})
    assert list(result.problems) == ["p/a.yaml"]


def test_fixed_file_applies_the_new_version() -> None:
    a = practice("a", "p/a.yaml")
    fixed = practice("a", "p/a.yaml", interval="45s")
    result = plan({a.key: Applied(a, 2)}, {"p/a.yaml": ok("p/a.yaml", fixed)})
    assert [(x.practice.spec, x.generation) for x in result.apply] == [(fixed.spec, 3)]
    assert result.problems == {}


def test_same_key_in_two_files_first_path_wins_and_the_other_is_reported() -> None:
    a1, a2 = practice("a", "p/1.yaml"), practice("a", "p/2.yaml", interval="30s")
    result = plan({}, {"p/2.yaml": ok("p/2.yaml", a2), "p/1.yaml": ok("p/1.yaml", a1)})
    assert [x.practice.path for x in result.apply] == ["p/1.yaml"]
    assert result.problems == {
        "p/2.yaml": ("p/2.yaml: default/a is also defined in p/1.yaml; this copy is not applied",)
    }


def test_key_held_by_a_broken_file_is_not_taken_over_by_a_copy() -> None:
    a = practice("a", "p/1.yaml")
    copy = practice("a", "p/2.yaml", interval="30s")
    result = plan(
        {a.key: Applied(a, 1)}, {"p/1.yaml": bad("p/1.yaml"), "p/2.yaml": ok("p/2.yaml", copy)}
    )
    assert result.apply == ()
    assert result.applied[a.key] == Applied(a, 1)
    assert "also defined in p/1.yaml" in result.problems["p/2.yaml"][0]


def test_practice_moved_to_another_file_with_the_same_spec_is_not_reapplied() -> None:
    a = practice("a", "p/old.yaml")
    moved = LoadedPractice(a.key, a.name, "p/new.yaml", a.spec)
    result = plan({a.key: Applied(a, 2)}, {"p/new.yaml": ok("p/new.yaml", moved)})
    assert (result.apply, result.remove) == ((), ())
    assert result.applied[a.key] == Applied(moved, 2)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"name": "a"}, ("default/a", "a")),
        ({"name": "a", "namespace": "default"}, ("default/a", "a")),
        ({"name": "a", "namespace": "dental"}, ("dental/a", "a")),
    ],
)
def test_practice_key_is_namespace_and_name(metadata: dict, expected: tuple[str, str]) -> None:
    assert practice_key(metadata) == expected


# ---- the watcher ------------------------------------------------------------------------------


class CountingLoader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, text: str, path: str) -> FileResult:
        self.calls.append(path)
        return FileResult(path, problems=() if text.startswith("ok") else (f"{path}: broken",))


def test_yaml_files_are_found_recursively_skipping_hidden_and_other_files(tmp_path: Path) -> None:
    for rel in [
        "a.yaml",
        "sub/b.yml",
        "notes.txt",
        ".hidden.yaml",
        ".git/c.yaml",
        "sub/.d.yaml.swp",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("ok")
    assert [p.relative_to(tmp_path).as_posix() for p in yaml_files(tmp_path)] == [
        "a.yaml",
        "sub/b.yml",
    ]
    assert yaml_files(tmp_path / "a.yaml") == [tmp_path / "a.yaml"]


def test_watcher_revalidates_only_changed_content_and_sees_adds_and_removes(tmp_path: Path) -> None:
    loader = CountingLoader()
    watcher = FolderWatcher(tmp_path, loader)
    (tmp_path / "a.yaml").write_text("ok 1")
    (tmp_path / "b.yaml").write_text("ok 1")
    files, changed = watcher.scan()
    assert changed and len(files) == 2 and len(loader.calls) == 2

    files, changed = watcher.scan()
    assert not changed and len(loader.calls) == 2

    # Touched with the same content: re-read, hash equal, not re-validated, not a change.
    os.utime(tmp_path / "a.yaml", ns=(1, 1))
    files, changed = watcher.scan()
    assert not changed and len(loader.calls) == 2

    (tmp_path / "a.yaml").write_text("bad now")
    files, changed = watcher.scan()
    assert changed and loader.calls[-1].endswith("a.yaml")
    assert not next(r for p, r in files.items() if p.endswith("a.yaml")).valid

    (tmp_path / "b.yaml").unlink()
    (tmp_path / "c.yml").write_text("ok")
    files, changed = watcher.scan()
    assert changed
    assert sorted(Path(p).name for p in files) == ["a.yaml", "c.yml"]


def test_watcher_refuses_a_file_over_the_size_cap_without_reading_it(tmp_path: Path) -> None:
    loader = CountingLoader()
    (tmp_path / "big.yaml").write_bytes(b"ok" + b" " * (2 << 20))
    files, _ = FolderWatcher(tmp_path, loader).scan()
    (result,) = files.values()
    assert "over the limit" in result.problems[0] and loader.calls == []


def test_watcher_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_bytes(b"\xff\xfe bad")
    files, _ = FolderWatcher(tmp_path, CountingLoader()).scan()
    (result,) = files.values()
    assert "not UTF-8" in result.problems[0]


# ---- credentials ------------------------------------------------------------------------------


def test_env_var_name_upper_cases_and_replaces_punctuation() -> None:
    assert env_var_name("bright-smiles.od") == "PMSCTL_CREDENTIALS_BRIGHT_SMILES_OD"


def test_credentials_file_plain_mapping_and_secret_manifests() -> None:
    text = """
bright-smiles-od:
  developerKey: dev1
  customerKey: cust1
---
apiVersion: v1
kind: Secret
metadata: {name: alpine-bridge}
data: {token: c2VjcmV0LXRva2Vu}
stringData: {extra: plain}
"""
    assert parse_credentials_file(text, "creds.yaml") == {
        "bright-smiles-od": {"developerKey": "dev1", "customerKey": "cust1"},
        "alpine-bridge": {"token": "secret-token", "extra": "plain"},
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1, 2", "creds.yaml:1:"),
        ("- a\n- b\n", "expected a mapping of Secret name"),
        ("a: {k: [hunter2]}", "creds.yaml: a: expected a mapping of key -> string"),
        ("kind: Secret\ndata: {k: dg==}\n", "needs metadata.name"),
        (
            "kind: Secret\nmetadata: {name: s}\ndata: {token: 'hunter2!'}\n",
            "data.token is not base64",
        ),
    ],
)
def test_bad_credentials_files_name_the_problem_without_the_value(text: str, message: str) -> None:
    with pytest.raises(UpError) as info:
        parse_credentials_file(text, "creds.yaml")
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_credentials_env_reads_json_objects_and_rejects_other_values() -> None:
    env = {"PMSCTL_CREDENTIALS_A": json.dumps({"token": "t"}), "HOME": "/root"}
    assert parse_credentials_env(env) == {"PMSCTL_CREDENTIALS_A": {"token": "t"}}
    with pytest.raises(UpError, match="expected a JSON object") as info:
        parse_credentials_env({"PMSCTL_CREDENTIALS_A": "hunter2"})
    assert "hunter2" not in str(info.value)


async def test_local_secrets_prefer_env_over_file_and_never_show_values(tmp_path: Path) -> None:
    creds_file = tmp_path / "creds.json"
    creds_file.write_text(json.dumps({"a-pms": {"token": "from-file"}, "b-pms": {"token": "b"}}))
    secrets = LocalSecrets.load(creds_file, {"PMSCTL_CREDENTIALS_A_PMS": '{"token": "from-env"}'})
    assert secrets.available
    assert await secrets.get("default/a", "a-pms") == Credentials({"token": "from-env"})
    assert await secrets.get("default/b", "b-pms") == Credentials({"token": "b"})
    assert "from-env" not in repr(secrets) and "from-file" not in repr(secrets)
    with pytest.raises(CredentialsNotFound) as info:
        await secrets.get("default/c", "c-pms")
    assert "PMSCTL_CREDENTIALS_C_PMS" in str(info.value) and str(creds_file) in str(info.value)


def test_no_credentials_means_simulate_by_default(tmp_path: Path) -> None:
    assert not LocalSecrets.load(None, {"HOME": "/root"}).available


def test_unreadable_credentials_file_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(UpError, match="cannot read"):
        LocalSecrets.load(tmp_path / "missing.yaml", {})


def test_same_practice_id_under_two_names_is_reported_not_applied_twice() -> None:
    a = practice("a", "p/1.yaml")
    b = LoadedPractice("default/b", "b", "p/2.yaml", a.spec)
    result = plan({}, {"p/1.yaml": ok("p/1.yaml", a), "p/2.yaml": ok("p/2.yaml", b)})
    assert [x.practice.key for x in result.apply] == ["default/a"]
    assert result.problems == {
        "p/2.yaml": (
            "p/2.yaml: default/b: spec.practiceId 'a' is also used by default/a in p/1.yaml; not applied",
        )
    }


def test_display_names_are_plain_names_unless_two_namespaces_share_one() -> None:
    a = LoadedPractice("clinics/a", "a", "p/1.yaml", spec("a1"))
    a2 = LoadedPractice("other/a", "a", "p/2.yaml", spec("a2"))
    b = LoadedPractice("clinics/b", "b", "p/3.yaml", spec("b"))
    applied = {x.key: Applied(x, 1) for x in (a, a2, b)}
    assert display_names(applied) == {
        "clinics/a": "clinics/a",
        "other/a": "other/a",
        "clinics/b": "b",
    }


# ---- the display ------------------------------------------------------------------------------


def _row(name: str, ready: str = "True", interval: str = "15s", events: int = 0) -> Row:
    return Row(
        name,
        "OpenDental",
        "1",
        ready=ready,
        reason="Ready" if ready == "True" else "PMSUnreachable",
        pollers=(PollerCell("appointmentStatus", interval, True, events=events),),
    )


def test_display_lines_print_only_changes_removals_problems_and_fixes() -> None:
    out = io.StringIO()
    display = Display(out, "auto")  # a StringIO is not a terminal: lines
    now = datetime(2026, 11, 26, 19, 1, 2, tzinfo=UTC)
    display.update([_row("a"), _row("b")], {}, {}, now, {"p/a.yaml", "p/b.yaml"})
    display.update([_row("a", events=5), _row("b")], {}, {}, now, {"p/a.yaml", "p/b.yaml"})
    problems = {"p/b.yaml": ("p/b.yaml:3:9: spec.pms.type: bad",)}
    display.update(
        [_row("a", interval="20s"), _row("b")],
        {},
        problems,
        now,
        {"p/a.yaml", "p/b.yaml"},
        {"p/b.yaml": ["b"]},
    )
    display.update(
        [_row("a", interval="20s"), _row("b")],
        {},
        problems,
        now,
        {"p/a.yaml", "p/b.yaml"},
        {"p/b.yaml": ["b"]},
    )
    display.update([_row("a", interval="20s"), _row("b")], {}, {}, now, {"p/a.yaml", "p/b.yaml"})
    display.update([_row("a", interval="20s")], {}, {}, now, {"p/a.yaml"})
    assert out.getvalue().splitlines() == [
        "2026-11-26T19:01:02Z a Ready=True Ready appointmentStatus=15s events=0",
        "2026-11-26T19:01:02Z b Ready=True Ready appointmentStatus=15s events=0",
        "2026-11-26T19:01:02Z invalid p/b.yaml:3:9: spec.pms.type: bad",
        "2026-11-26T19:01:02Z p/b.yaml not applied; b keeps running at the last good version",
        "2026-11-26T19:01:02Z a Ready=True Ready appointmentStatus=20s events=0",
        "2026-11-26T19:01:02Z valid p/b.yaml",
        "2026-11-26T19:01:02Z b removed",
    ]


def test_display_json_prints_one_object_per_change() -> None:
    out = io.StringIO()
    display = Display(out, "json")
    now = datetime(2026, 11, 26, 19, 1, 2, tzinfo=UTC)
    display.update([_row("a")], {"a": {"observedGeneration": 1}}, {}, now, {"p/a.yaml"})
    display.update([], {}, {"p/x.yaml": ("p/x.yaml:1:1: x",)}, now, {"p/x.yaml"})
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(o["type"], o.get("practice") or o.get("file")) for o in objs] == [
        ("status", "a"),
        ("removed", "a"),
        ("invalid", "p/x.yaml"),
    ]
    assert objs[0]["status"] == {"observedGeneration": 1}
    assert objs[2]["problem"] == "p/x.yaml:1:1: x" and objs[2]["running"] == []


def test_display_table_repaints_in_place() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    display = Display(out)
    now = datetime(2026, 11, 26, 19, 1, 2, tzinfo=UTC)
    display.update([_row("a")], {}, {}, now)
    display.update([_row("a")], {}, {}, now)
    first, second = out.getvalue().split("\x1b[J")[:2]
    assert first.startswith("\x1b[2KPRACTICE")
    assert second.startswith("\x1b[2F\x1b[2KPRACTICE")


def test_display_lines_repeat_a_practice_whose_events_moved_after_the_heartbeat() -> None:
    out = io.StringIO()
    display = Display(out, "lines", heartbeat_seconds=30)
    t0 = datetime(2026, 11, 26, 19, 0, 0, tzinfo=UTC)
    display.update([_row("a", events=0)], {}, {}, t0)
    display.update([_row("a", events=10)], {}, {}, t0.replace(second=29))
    display.update([_row("a", events=10)], {}, {}, t0.replace(second=30))
    display.update([_row("a", events=10)], {}, {}, t0.replace(minute=1, second=5))
    assert [line.split()[-1] for line in out.getvalue().splitlines()] == ["events=0", "events=10"]


def test_load_text_lists_each_missing_field_once_from_the_real_validator() -> None:
    text = (
        "apiVersion: writeback.dental.dev/v1alpha1\n"
        "kind: PracticeWriteback\n"
        "metadata: {name: acme}\n"
        "spec:\n"
        "  practiceId: acme\n"
        '  providerId: "1"\n'
        "  pms:\n"
        "    type: OpenDental\n"
    )
    result = load_text(text, "acme.yaml")
    assert result.problems == (
        "acme.yaml:7:3: spec.pms.credentialsSecretRef: is required",
        "acme.yaml:7:3: spec.pms.url: is required",
    )


# --- what the log says about an apply ---


def test_config_changes_name_each_changed_field_as_pmsctl_diff_words_it() -> None:
    from reconciler.local.plan import config_changes

    assert config_changes(spec(interval="15s"), spec(interval="15s")) == []
    (change,) = config_changes(spec(interval="15s"), spec(interval="20s"))
    assert change["field"] == "spec.sync.appointmentStatus.interval"
    assert "15s -> 20s" in change["message"]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, "15s", [("appointmentStatus", "started", None, "15s")]),
        ("15s", "20s", [("appointmentStatus", "rescheduled", "15s", "20s")]),
        ("15s", "15s", []),
    ],
)
def test_poller_changes_say_started_or_rescheduled_with_both_intervals(
    before: str | None, after: str, expected: list[tuple[object, ...]]
) -> None:
    from reconciler.local.plan import poller_changes

    old = spec(interval=before) if before is not None else None
    got = poller_changes(old, spec(interval=after))
    assert [(c["poller"], c["action"], c["before"], c["after"]) for c in got] == expected


def test_a_disabled_poller_is_stopped() -> None:
    from reconciler.local.plan import poller_changes

    off = PracticeSpec.from_spec(
        {
            "practiceId": "p1",
            "pms": {"type": "OpenDental", "url": "http://127.0.0.1:8830/api/v1",
                    "credentialsSecretRef": {"name": "p1-pms"}},
            "providerId": "7",
            "sync": {"appointmentStatus": {"enabled": False}},
        }
    )  # fmt: skip
    (change,) = [c for c in poller_changes(spec(), off) if c["poller"] == "appointmentStatus"]
    assert (change["action"], change["before"], change["after"]) == ("stopped", "15s", None)
