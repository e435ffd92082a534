"""The benchmark: our service and django-webhook on this machine, same receiver program, one
table. Every figure is the median of --runs runs; ratios use medians from this same run.

    python bench/run.py                 # full: 3 runs of every scenario (about 15 minutes)
    python bench/run.py --smoke         # a few hundred deliveries, one run (CI keeps it working)

Needs PostgreSQL and Redis on 127.0.0.1 (as the tests do). The peer's virtualenv is made by
bench/peer/setup.sh on first use. Loopback only; every loop is bounded in count and time.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEER_PY = BENCH / ".peer-venv" / "bin" / "python"


def run_json(cmd: list[str], timeout: float) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    text = out.stdout.strip()
    return json.loads(text[text.index("{") :]) if text.startswith("{") or "\n{" in text else json.loads(text)


def ours(scenario: str, *args: str, timeout: float = 900) -> dict:
    return run_json([sys.executable, str(BENCH / "ours.py"), scenario, *args], timeout)


def peer(n: int, overhead: int) -> dict:
    if not PEER_PY.exists():
        subprocess.run(["bash", str(BENCH / "peer" / "setup.sh")], check=True)
    cmd = [str(PEER_PY), str(BENCH / "peer" / "run.py"), "-n", str(n), "--overhead", str(overhead)]
    return run_json([*cmd, "--mode", "live", "--ceiling", "20000" if n >= 1000 else "2000"], 1800)


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the benchmark works")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    events = 30 if args.smoke else 2000  # x 10 endpoints
    peer_n = 200 if args.smoke else 2000

    rows: dict[str, list] = {k: [] for k in ("live", "drain", "over_med", "over_p99", "lat_p50", "lat_p99", "fan")}
    peer_rows: dict[str, list] = {k: [] for k in ("live", "over_med", "over_p99", "ceiling")}
    for _ in range(runs):
        live = ours("throughput", "-n", str(events), "--endpoints", "10", "--mode", "live")
        drain = ours("throughput", "-n", str(events), "--endpoints", "10", "--mode", "drain")
        for result in (live, drain):
            assert result["received"] == result["verified"] == result["deliveries"], result
            assert result["attempt_rows"] == result["succeeded_rows"] == result["deliveries"], result
        rows["live"].append(live["deliveries_per_s"])
        rows["drain"].append(drain["deliveries_per_s"])
        over = ours("overhead", "--saves", "200" if args.smoke else "2000", "--endpoints", "10")
        rows["over_med"].append(over["overhead_median_ms"])
        rows["over_p99"].append(over["overhead_p99_ms"])
        lat = ours("latency", "--rate", "200", "--seconds", "1" if args.smoke else "10")
        rows["lat_p50"].append(lat["latency"].get("median_ms"))
        rows["lat_p99"].append(lat["latency"].get("p99_ms"))
        fan = ours("fanout", "--endpoints", "50" if args.smoke else "500")
        rows["fan"].append(fan["seconds_to_all"])
        p = peer(peer_n, 200 if args.smoke else 2000)
        peer_rows["live"].append(p["live"]["deliveries_per_s"])
        peer_rows["over_med"].append(p["save_overhead"]["overhead_median_ms"])
        peer_rows["over_p99"].append(p["save_overhead"]["overhead_p99_ms"])
        peer_rows["ceiling"].append(p["receiver"]["ceiling"]["receiver_req_per_s"])

    m = {k: median(v) for k, v in rows.items()}
    pm = {k: median(v) for k, v in peer_rows.items()}
    ratio = round(m["live"] / pm["live"], 1) if m["live"] and pm["live"] else None
    table = [
        ("throughput, live (deliveries/s)", m["live"], pm["live"], ratio, ">= 1000 and >= 10x peer",
         m["live"] is not None and m["live"] >= 1000 and (ratio or 0) >= 10),
        ("throughput, drain backlog (deliveries/s)", m["drain"], None, None, "(reported)", None),
        ("emission overhead p50 (ms)", m["over_med"], pm["over_med"], None, "<= 1", m["over_med"] <= 1),
        ("emission overhead p99 (ms)", m["over_p99"], pm["over_p99"], None, "<= 2", m["over_p99"] <= 2),
        ("latency at 200 ev/s p50 (ms)", m["lat_p50"], None, None, "<= 50", (m["lat_p50"] or 1e9) <= 50),
        ("latency at 200 ev/s p99 (ms)", m["lat_p99"], None, None, "<= 250", (m["lat_p99"] or 1e9) <= 250),
        ("fan-out 1 event -> 500 endpoints (s)", m["fan"], None, None, "<= 2", (m["fan"] or 1e9) <= 2),
        ("receiver ceiling (req/s)", pm["ceiling"], None, None, "not the bottleneck", None),
    ]  # fmt: skip
    print(f"machine: {os.cpu_count()} cpus, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, load {os.getloadavg()}, runs={runs}"
          f"{' (SMOKE: sizes too small to mean anything)' if args.smoke else ''}")  # fmt: skip
    print(f"{'scenario':42} {'ours':>10} {'peer':>10} {'ratio':>6}  {'target':24} result")
    for name, value, peer_value, r, target, ok in table:
        verdict = "-" if ok is None else ("pass" if ok else "FAIL")
        print(f"{name:42} {value!s:>10} {peer_value!s:>10} {r!s:>6}  {target:24} {verdict}")
    print(json.dumps({"ours": rows, "peer": peer_rows}))


if __name__ == "__main__":
    main()
