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


def test_overhead_and_fanout_scenarios_run():
    over = bench("overhead", "--saves", "60", "--endpoints", "3")
    assert over["hooked_save"]["n"] == over["bare_save"]["n"] > 0
    fan = bench("fanout", "--endpoints", "20")
    assert fan["received"] == fan["verified"] == 20
