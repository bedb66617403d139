"""deploy/monitoring/: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`, promtool built from the pinned Prometheus module by
`hack/promtool/build.sh`), every metric a rule or a dashboard panel names is one pmsctl registers,
the lag thresholds are the product's default intervals, each alert has a runbook section, and the
kustomization renders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "deploy" / "monitoring"
RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RUNBOOKS = REPO / "docs" / "runbooks.md"
PROMTOOL_BUILD = REPO / "hack" / "promtool" / "build.sh"

#: The alerts the operator's users asked for, each with a runbook section of the same name.
ALERTS = {
    "PmsctlPracticeNotReady",
    "PmsctlPollerLagging",
    "PmsctlWritebackBacklogGrowing",
    "PmsctlWritebacksFailed",
    "PmsctlPmsRateLimited",
    "PmsctlNoLeader",
    "PmsctlShareUnclaimed",
}


@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool from the pinned Prometheus module (built once, cached outside the checkout)."""
    result = subprocess.run(["bash", str(PROMTOOL_BUILD)], capture_output=True, text=True)
    assert result.returncode == 0, f"hack/promtool/build.sh failed:\n{result.stderr[-3000:]}"
    return Path(result.stdout.strip().splitlines()[-1]) / "promtool"


def _rule_doc() -> dict[str, Any]:
    doc = yaml.safe_load(RULE.read_text())
    assert isinstance(doc, dict)
    return doc


def _rules() -> list[dict[str, Any]]:
    return [r for g in _rule_doc()["spec"]["groups"] for r in g["rules"]]


@pytest.fixture
def rule_dir(tmp_path: Path) -> Iterator[Path]:
    """spec.groups of the PrometheusRule as a plain rule file, beside the promtool tests."""
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": _rule_doc()["spec"]["groups"]}, sort_keys=False)
    )
    for test in (MONITORING / "tests").glob("*_test.yaml"):
        shutil.copy(test, tmp_path / test.name)
    yield tmp_path


def test_promtool_checks_the_rules(promtool: Path, rule_dir: Path) -> None:
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rule_dir / "rules.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: Path, rule_dir: Path) -> None:
    tests = sorted(str(p) for p in rule_dir.glob("*_test.yaml"))
    assert tests
    result = subprocess.run(
        [str(promtool), "test", "rules", *tests], capture_output=True, text=True, cwd=rule_dir
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is exercised by at least one case where it fires.
    exercised = set()
    for test in tests:
        for case in yaml.safe_load(Path(test).read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    exercised.add(check["alertname"])
    assert exercised == ALERTS


def test_promtool_unit_tests_can_fail(promtool: Path, rule_dir: Path) -> None:
    # The same tests against rules whose NotReady delay is shorter must fail.
    rules = (rule_dir / "rules.yaml").read_text().replace("for: 10m", "for: 1m", 1)
    (rule_dir / "rules.yaml").write_text(rules)
    tests = sorted(str(p) for p in rule_dir.glob("*_test.yaml"))
    result = subprocess.run(
        [str(promtool), "test", "rules", *tests], capture_output=True, text=True, cwd=rule_dir
    )
    assert result.returncode != 0
    assert "PmsctlPracticeNotReady" in result.stdout + result.stderr


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    headings = {
        line[3:].strip() for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")
    }
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"].endswith(f"docs/runbooks.md#{name.lower()}")
        assert name in headings, f"docs/runbooks.md has no '## {name}' section"


def test_lag_thresholds_are_the_default_intervals() -> None:
    from reconciler.api.spec import DEFAULT_INTERVALS

    (lag,) = [r for r in _rules() if r["alert"] == "PmsctlPollerLagging"]
    found = {
        kind: int(seconds)
        for seconds, kind in re.findall(
            r'label_replace\(vector\((\d+)\), "kind", "(\w+)"', lag["expr"]
        )
    }
    assert found == {str(kind): seconds for kind, seconds in DEFAULT_INTERVALS.items()}


# ----------------------------------------------------------------------------------------------
# Metric names


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def _exposed(registry: CollectorRegistry) -> set[str]:
    """Every series name `registry` can expose, whether or not a labelled child exists yet."""
    names = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def registered_metric_names() -> set[str]:
    """The names pmsctl's code registers: the process-wide registry after importing every module
    that defines metrics, plus any registry the writeback path creates for itself."""
    import importlib

    for module in (
        "reconciler.engine.metrics",
        "reconciler.kube.leader",
        "reconciler.kube.membership",
    ):
        importlib.import_module(module)
    names = _exposed(REGISTRY)
    writeback = importlib.import_module("reconciler.writeback.metrics")
    factory = getattr(writeback, "WritebackMetrics", None)
    if factory is not None:
        names |= _exposed(factory.create(CollectorRegistry()).registry)
    return {n for n in names if n.startswith("pmsctl_")}


_PROMQL_WORDS = re.compile(r"\bpmsctl_[a-z0-9_]+\b")


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def used_metric_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for rule in _rules():
        for name in _PROMQL_WORDS.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for expr in _dashboard_exprs():
        for name in _PROMQL_WORDS.findall(expr):
            used.setdefault(name, set()).add("dashboard")
    return used


def test_every_metric_a_rule_or_panel_uses_is_registered_by_the_code() -> None:
    registered = registered_metric_names()
    assert "pmsctl_reconciles_total" in registered and "pmsctl_writebacks_total" in registered
    used = used_metric_names()
    assert len(used) >= 10
    unknown = {name: sorted(where) for name, where in used.items() if name not in registered}
    assert not unknown, f"not registered by pmsctl: {unknown}"


def test_the_name_check_catches_a_metric_the_code_does_not_have() -> None:
    registered = registered_metric_names()
    assert "pmsctl_poll_lag_seconds_bucket" in registered
    assert "pmsctl_practice_ready" in registered and "pmsctl_leader" in registered
    assert "pmsctl_poll_lag_seconds" not in registered  # a histogram has no bare series
    assert "pmsctl_writeback_backlog_age_seconds" not in registered


def test_the_dashboard_covers_the_fleet_pms_writebacks_and_lag() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
    titles = " | ".join(p["title"] for p in dash["panels"])
    for words in ("Fleet Ready ratio", "PMS calls", "Poll duration", "Writeback rate",
                  "Writeback backlog", "age", "lag percentiles"):  # fmt: skip
        assert words in titles, words
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]


@pytest.mark.kube
def test_the_monitoring_kustomization_renders(kube: Any) -> None:
    out = kube.kubectl("kustomize", str(MONITORING)).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert set(docs) == {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
    cm = docs["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["pmsctl-dashboard.json"]) == json.loads(DASHBOARD.read_text())
    ports = {e["port"] for e in docs["ServiceMonitor"]["spec"]["endpoints"]}
    # The ServiceMonitor scrapes ports the rendered metrics Service has.
    service = yaml.safe_load(
        (REPO / "deploy" / "base" / "operator" / "service.yaml").read_text().split("---")[-1]
    )
    assert ports == {p["name"] for p in service["spec"]["ports"]}
    assert docs["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
