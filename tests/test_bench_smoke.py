"""The benchmark keeps working: our scenarios at a tiny size (the full run and the peer are
`python bench/run.py`, not a test). Figures at this size mean nothing; only that every
delivery arrived, verified, and was logged."""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT


def bench(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "bench/ours.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["live", "drain"])
def test_throughput_scenario_delivers_everything(mode):
    result = bench("throughput", "-n", "20", "--endpoints", "5", "--mode", mode)
    assert result["received"] == result["verified"] == result["deliveries"] == 100
    assert result["attempt_rows"] == result["succeeded_rows"] == 100
    assert result["failed_signatures"] == 0


def test_ordered_throughput_with_a_slow_run_delivers_everything():
    """Ordering "run" over 5 runs, the first answered after 0.2 s: every delivery arrived,
    verified, and the figures split the slow run from the others."""
    result = bench("throughput", "-n", "20", "--endpoints", "3", "--ordered", "--runs", "5", "--slow-run", "0.2")
    assert result["ordered"] and result["runs"] == 5
    assert result["verified"] == result["deliveries"] == result["succeeded_rows"] == 60
    assert result["slow_run_deliveries"] == 12 and result["other_runs_deliveries"] == 48  # 4 of 20 steps x 3
    # Its 4 events one after another: the last arrives once the 3 before it were answered, 0.2 s each.
    assert result["slow_run_seconds"] >= 3 * 0.2


def test_overhead_and_fanout_scenarios_run():
    over = bench("overhead", "--saves", "60", "--endpoints", "3")
    assert over["hooked_save"]["n"] == over["bare_save"]["n"] > 0
    fan = bench("fanout", "--endpoints", "20")
    assert fan["received"] == fan["verified"] == 20


def test_isolation_scenario_runs():
    """A slow endpoint (0.2 s here, not 3) beside two fast ones: every delivery that arrived at
    either receiver verified; without the slow one, all of them arrived."""
    sizes = ["-n", "5", "--endpoints", "2", "--rate", "20", "--seconds", "0.5"]
    result = bench("isolation", *sizes, "--slow", "0.2", "--timeout", "30")
    alone, shared, lat = result["without_slow"], result["with_slow"], result["latency"]
    assert alone["complete"] and alone["received"] == alone["verified"] == 10
    assert shared["received"] == shared["verified"] and shared["slow_received"] == shared["slow_verified"]
    assert lat["events"] == 10 and lat["received"] == lat["verified"] and lat["slow_received"] == lat["slow_verified"]
    assert lat["latency"]["n"] == 10 and result["cost_pct"] is not None


def test_backlog_scenario_drains_with_one_worker_process():
    result = bench("backlog", "-n", "30", "--endpoints", "5", "--workers", "1")
    assert result["received"] == result["verified"] == result["succeeded_rows"] == 150
    assert result["worker_rss_mb"]["peak_mb"] > 0 and result["deliveries_per_s"] > 0


def test_outage_scenario_delivers_everything_once():
    """A receiver down through two retry waves (2 s apart here) beside three healthy ones;
    after it recovers, every delivery arrived once, none dead."""
    result = bench(
        "outage", "--outage-deliveries", "200", "--waves", "2", "--outage-schedule", "2,2,3600",
        "--rate", "20", "--endpoints", "3", "--timeout", "120",
    )  # fmt: skip
    assert result["succeeded"] == 200 and result["dead"] == 0
    assert result["events_with_one_success"] == 200 and result["events_with_more_successes"] == 0
    assert [w["attempts"] for w in result["retry_waves"]] == [200, 200]
    assert result["verified_all"] and result["healthy_latency"]["missing"] == 0
    assert result["broker"]["queue_peak_messages"] >= 0 and result["worker_rss_mb"]["peak_mb"] > 0
