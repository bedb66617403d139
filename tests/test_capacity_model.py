"""The capacity model (bench/capacity_model.py): its formulas on hand-computed cases, the model
against the measured bench_scale points it claims to match, and the discrete-event simulation.

The simulation keeps its own simulated clock (no real time passes, nothing sleeps): it is
deterministic for a seed, so its properties are checked exactly. Sizes are kept small so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "capacity_model.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capacity_model", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capacity_model"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cm = _load()
DEFAULTS = {"appointmentStatus": 15.0, "patients": 30.0, "appointments": 60.0}


# ----- the formulas ------------------------------------------------------------------------------


def test_polls_per_second_sums_each_poller() -> None:
    # 1/15 + 1/30 + 1/60 = 7/60 polls a second per practice.
    assert cm.polls_per_second(6000, DEFAULTS) == pytest.approx(700.0)
    # The period jitter U(0, 0.1) stretches the mean period by 5%.
    assert cm.polls_per_second(6000, DEFAULTS, jitter=0.1) == pytest.approx(700.0 / 1.05)


def test_pages_per_poll() -> None:
    assert cm.pages_per_poll(0.0, 30.0, 100) == 1.0
    # 0.5 changes a second for 30 s: 15 rows, 0.15 of a page more.
    assert cm.pages_per_poll(0.5, 30.0, 100) == pytest.approx(1.15)


def test_pms_requests_per_practice() -> None:
    # One poller every 10 s without changes (0.1), four reads every 20 s (0.2), 0.01 writebacks.
    got = cm.pms_requests_per_practice({"a": 10.0}, {"a": 0.0}, 100, 20.0, 4, 0.01)
    assert got == pytest.approx(0.31)
    # No drift check at all.
    assert cm.pms_requests_per_practice({"a": 10.0}, {}, 100, 0.0, 4, 0.0) == pytest.approx(0.1)


def test_cpu_cores() -> None:
    assert cm.cpu_cores(1000.0, 0.001) == pytest.approx(1.0)
    # 1000 polls at 1 ms + 100 checks at 2.6 ms + 10 deliveries at 2 ms + 20 writes at 2 ms.
    assert cm.cpu_cores(1000.0, 0.001, 100.0, 0.0026, 10.0, 0.002, 20.0, 0.002) == pytest.approx(
        1.0 + 0.26 + 0.02 + 0.04
    )


def test_rss() -> None:
    assert cm.rss_bytes(1000, 100e6, 37e3) == pytest.approx(137e6)


def test_status_writes_are_capped_by_the_budget() -> None:
    assert cm.status_writes_per_second(7000, 10.0, 20.0) == 20.0
    assert cm.status_writes_per_second(100, 10.0, 20.0) == 10.0
    assert cm.status_writes_per_second(7000, 10.0, 0.0) == 700.0  # 0: no cap


def test_api_writes_per_second() -> None:
    # Two replicas of 5,000: 20 status writes each; 0.1 condition changes a second, each one
    # status write and two Events; 10,000 catalogs every 600 s.
    got = cm.api_writes_per_second(10_000, 2, 10.0, 20.0, 0.1, 2.0, 600.0)
    assert got == pytest.approx(40.0 + 0.3 + 10_000 / 600)


def test_cursor_saves_only_when_a_poll_saw_a_change() -> None:
    assert cm.cursor_saves_per_second(1, {"a": 10.0}, {"a": 0.1}) == pytest.approx(
        (1 - math.exp(-1.0)) / 10.0
    )
    assert cm.cursor_saves_per_second(1000, {"a": 10.0}, {}) == 0.0
    # A busy practice saves at every poll, never more.
    assert cm.cursor_saves_per_second(1, {"a": 10.0}, {"a": 100.0}) == pytest.approx(0.1)


def test_db_writes_and_size() -> None:
    assert cm.db_writes_per_second(10.0, 5.0, 3.0) == pytest.approx(25.0)
    assert cm.db_writes_per_second(10.0, 5.0, 3.0, sink_batches_s=7.0) == pytest.approx(32.0)
    size = cm.db_size_bytes(1000, 3, 200.0, 100.0, 900.0, 30.0)
    assert size == pytest.approx(1000 * 3 * 200 + 1000 * 100 * 30 * 900)


def test_practices_per_replica_and_locks() -> None:
    assert cm.practices_per_replica(0.0001, 0.7) == 7000
    assert cm.max_locks_per_transaction(650, 100) == 64  # the default is room enough
    assert cm.max_locks_per_transaction(6500, 100) == 130


def test_plan_covers_the_fleet_within_the_cpu_budget() -> None:
    inp = cm.Inputs()
    for n in cm.FLEETS:
        row = cm.plan(n, inp)
        assert row["replicas"] * row["practices_per_replica"] >= n
        assert row["cores_per_replica"] <= inp.target_cores
        assert row["pods"] == row["replicas"] + inp.spare_pods  # --share: one spare pod
    # Cheaper polls, fewer replicas; rarer drift checks, fewer still.
    now = cm.plan(100_000, inp)["replicas"]
    goal = cm.plan(100_000, replace(inp, cpu_per_poll_ms=0.3))["replicas"]
    rarer = cm.plan(100_000, replace(inp, cpu_per_poll_ms=0.3, drift_interval=300.0))["replicas"]
    assert now > goal > rarer


# ----- the model against the measured points -----------------------------------------------------


def test_model_matches_the_measured_cpu_and_memory() -> None:
    """bench_scale engine at 7,000-9,000 practices: the model's cores (polls a second at the
    measured CPU per poll) are within 10% of the measured ones, RSS within 5%."""
    inp = cm.Inputs()
    for m in cm.MEASURED:
        n = int(m["practices"])
        cores = cm.polls_per_second(n, DEFAULTS, 0.1) * m["cpu_ms_per_poll"] / 1000
        assert cores == pytest.approx(m["cpu_cores"], rel=0.10)
        rss = cm.rss_bytes(n, inp.rss_base_mb * cm.MB, inp.rss_per_practice_kb * 1024) / cm.MB
        assert rss == pytest.approx(m["rss_mb"], rel=0.05)


def test_inputs_from_a_bench_scale_output(tmp_path: Path) -> None:
    out = tmp_path / "bench.jsonl"
    rows = [
        {"bench": "engine", "practices": 4000, "cpu_ms_per_poll": 1.2, "rss_mb": 205.0},
        {"bench": "engine", "practices": 8000, "cpu_ms_per_poll": 0.8, "rss_mb": 355.0},
        {"bench": "engine", "practices": 6000, "cpu_ms_per_poll": 0.9, "rss_mb": 280.0},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\np99 schedule lag passes 1 s at: none\n"
    out.write_text(text)
    inp = cm.inputs_from_bench(out, cm.Inputs())
    assert inp.cpu_per_poll_ms == 0.9  # the median
    assert inp.rss_base_mb == pytest.approx(55.0)  # 205 = 55 + 4000 x 37.5 KB
    assert inp.rss_per_practice_kb == pytest.approx(37.5 * 1.024, rel=1e-3)
    out.write_text("no engine row here\n")
    with pytest.raises(SystemExit):
        cm.inputs_from_bench(out, cm.Inputs())


# ----- the simulation ----------------------------------------------------------------------------

#: One poller a second per practice: a small fleet loads the loop as a large one would.
FAST = {"a": 1.0}


def small(practices: int, **kw: float) -> object:
    params = {"intervals": FAST, "warmup": 3.0, "duration": 10.0, "status_interval": 0.0}
    return cm.SimParams(practices=practices, **{**params, **kw})


def test_simulation_is_deterministic_for_a_seed() -> None:
    a = cm.simulate(small(400, seed=7))
    b = cm.simulate(small(400, seed=7))
    c = cm.simulate(small(400, seed=8))
    assert a == b
    assert a != c


def test_simulated_cpu_matches_the_formula_below_saturation() -> None:
    r = cm.simulate(small(400))
    # 400 polls a second (1.05 s mean period) at 1 ms each: 0.38 cores.
    assert r.cores == pytest.approx(cm.polls_per_second(400, FAST, 0.1) * 0.001, rel=0.05)
    assert r.polls == pytest.approx(10 * 400 / 1.05, rel=0.05)
    assert r.lag_p50_ms < 5.0


def test_simulated_lag_grows_with_load() -> None:
    lags = [cm.simulate(small(n)).lag_p99_ms for n in (200, 600, 900, 2500)]
    assert lags == sorted(lags)
    assert lags[0] < 10.0  # a fifth of a core: milliseconds
    # 2.4 cores of work: a poller's next run is due one interval after its late start, so the
    # lag settles near (2.4 - 1) x the interval instead of growing without end.
    assert lags[-1] > 1000.0


def test_drift_checks_and_the_flush_take_their_share_of_the_loop() -> None:
    plain = cm.simulate(small(400))
    checks = cm.simulate(small(400, drift_interval=2.0, cpu_per_check_ms=2.0))
    # 200 checks a second at 2 ms: 0.4 cores more.
    assert checks.cores - plain.cores == pytest.approx(0.4, rel=0.1)
    flush = cm.simulate(small(400, status_interval=1.0, decide_ms=0.5))
    # 400 decides a second at 0.5 ms (taken out of the poll's all-in CPU, as measured)...
    assert flush.cores == pytest.approx(plain.cores, rel=0.05)
    # ...but run in slices that hold polls back.
    assert flush.lag_p99_ms > plain.lag_p99_ms


def test_the_worker_limit_caps_polls_in_flight() -> None:
    free = cm.simulate(small(400, pms_latency_ms=100.0))
    capped = cm.simulate(small(400, pms_latency_ms=100.0, workers=8))
    assert free.max_in_flight > 8
    assert capped.max_in_flight == 8
    assert capped.lag_p99_ms > 10 * free.lag_p99_ms


def test_crossing_moves_out_when_polls_get_cheaper() -> None:
    now = cm.crossing(small(0, cpu_per_poll_ms=1.0), limit_ms=50.0)
    goal = cm.crossing(small(0, cpu_per_poll_ms=0.5), limit_ms=50.0)
    # One loop holds 1,050 practices at 1 ms (a core); p99 passes 50 ms below that.
    assert cm.loop_saturation(small(0, cpu_per_poll_ms=1.0)) == 1050
    assert 525 < now < 1155
    assert goal > 1.6 * now


def test_cli_prints_the_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cm.main(["--practices", "10000,30000"]) == 0
    text = capsys.readouterr().out
    assert "replicas" in text and "30,000" in text
    assert cm.main(["--practices", "100000", "--json", "--cpu-per-poll-ms", "0.3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["practices"] for r in rows] == [100_000]
    assert rows[0]["replicas"] == cm.plan(100_000, cm.Inputs(cpu_per_poll_ms=0.3))["replicas"]


def test_the_plan_in_the_docs_is_the_models() -> None:
    """docs/scale.md's plan table holds what the model computes from its defaults: rerunning the
    model with new measurements means updating that table too."""
    doc = (BENCH.parent.parent / "docs" / "scale.md").read_text()
    for n in cm.FLEETS:
        row = cm.plan(n, cm.Inputs())
        prefix = f"| {n:,} | {row['replicas']} ({row['pods']}) | {row['practices_per_replica']:,} |"
        assert prefix in doc, prefix
