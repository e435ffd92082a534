"""The benchmark: our service and django-webhook on this machine, same receiver program, one
table. Every figure is the median of --runs runs; ratios use medians from this same run.

    python bench/run.py                           # full: 3 runs of every scenario (about 30 minutes, estimated)
    python bench/run.py --smoke                   # tiny sizes, one run (CI keeps ours.py's side working)
    python bench/run.py --only isolation --runs 1 # one scenario (comma-separate several)

Scenarios (--only): throughput (live and drain), overhead, latency, fanout, isolation (one
endpoint answering in --slow seconds beside --isolation-endpoints fast ones), backlog (worker
RSS while draining --backlog-events x --backlog-endpoints deliveries), outage (one endpoint
answering 503 to --outage-deliveries events through --outage-waves retry waves while nine
others get --outage-rate events/s; then it recovers), scale (one worker
process; RabbitMQ at --amqp-url instead of Redis; the two-process Redis figure is the
throughput row, measured for scale too), metrics (live throughput with Prometheus counting
off, beside the same run's live figure: their cost), peer (django-webhook). --smoke leaves scale out
unless named: it is the throughput scenario again, with other flags.

Needs PostgreSQL and Redis on 127.0.0.1 (as the tests do), and RabbitMQ for its scale row
(reported as not reachable otherwise). The peer's virtualenv is made by bench/peer/setup.sh on
first use. Loopback only; every loop is bounded in count and time.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
PEER_PY = BENCH / ".peer-venv" / "bin" / "python"
SCENARIOS = (
    "throughput", "overhead", "latency", "fanout", "isolation", "backlog", "outage", "scale", "metrics", "peer"
)  # fmt: skip


def run_json(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    environ = {**os.environ, **env} if env else None
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent, env=environ)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    text = out.stdout.strip()
    return json.loads(text[text.index("{") :]) if text.startswith("{") or "\n{" in text else json.loads(text)


def ours(scenario: str, *args, timeout: float = 900, env: dict | None = None) -> dict:
    return run_json([sys.executable, str(BENCH / "ours.py"), scenario, *map(str, args)], timeout, env)


def peer(n: int, overhead: int) -> dict:
    if not PEER_PY.exists():
        subprocess.run(["bash", str(BENCH / "peer" / "setup.sh")], check=True)
    cmd = [str(PEER_PY), str(BENCH / "peer" / "run.py"), "-n", str(n), "--overhead", str(overhead)]
    return run_json([*cmd, "--mode", "live", "--ceiling", "20000" if n >= 1000 else "2000"], 1800)


def reachable(url: str) -> bool:
    """Whether something listens at the URL's host and port (a broker that is not installed
    makes its row say so instead of failing the whole run)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def parse_args() -> argparse.Namespace:
    """Every scenario's size is a flag; unset ones take the full or the --smoke default."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: checks the benchmark works")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    sizes = {  # flag: (full, smoke, help)
        "events": (2000, 30, "events of throughput and scale (x --endpoints)"),
        "endpoints": (10, 10, "endpoints of throughput, scale and overhead"),
        "saves": (2000, 200, "saves of each kind (overhead)"),
        "rate": (200.0, 200.0, "events/s (latency, isolation)"),
        "seconds": (10.0, 1.0, "duration at --rate (latency, isolation)"),
        "fanout_endpoints": (500, 50, "endpoints of the one fanned-out event"),
        "isolation_events": (2000, 10, "events for the isolation throughput phases (x 9 endpoints: 18,000 deliveries)"),
        "isolation_endpoints": (9, 3, "fast endpoints beside the slow one"),
        "slow": (3.0, 0.2, "seconds the slow endpoint takes to answer"),
        "isolation_rounds": (1, 1, "throughput phases of each kind, alternated (2: without, with, with, without)"),
        "isolation_timeout": (60.0, 30.0, "seconds an isolation phase waits for the fast deliveries"),
        "backlog_events": (10000, 30, "events of the backlog (x --backlog-endpoints)"),
        "backlog_endpoints": (10, 5, "endpoints of the backlog"),
        "outage_deliveries": (100_000, 2000, "events to the endpoint that is down (outage)"),
        "outage_waves": (2, 2, "retry waves the down endpoint fails before it recovers (outage)"),
        "outage_schedule": ("120,120,3600,3600", "3,3,3600", "the down endpoint's retry schedule, seconds (outage)"),
        "outage_rate": (200.0, 20.0, "events/s to the 9 healthy endpoints during the outage"),
        "peer_events": (2000, 200, "django-webhook deliveries (live) and saves (overhead)"),
    }
    for name, (full, smoke, text) in sizes.items():
        kind = type(full)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} (default {full}; smoke {smoke})")
    parser.add_argument(
        "--isolation-baseline", choices=["none", "prompt"], default="prompt",
        help="isolation's 'without' phase: the tenth endpoint answering at once (prompt: what its slowness"
        " costs) or no tenth endpoint (none: also what its deliveries cost on two CPU-bound cores)",
    )  # fmt: skip
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672//", help="RabbitMQ (scale)")
    args = parser.parse_args()
    for name, (full, smoke, _text) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.only = set(chosen or (s for s in SCENARIOS if not (args.smoke and s == "scale")))
    args.runs = 1 if args.smoke else args.runs
    return args


def check_throughput(result: dict) -> dict:
    """Every delivery arrived, verified, and logged, or the figure means nothing."""
    assert result["received"] == result["verified"] == result["deliveries"], result
    assert result["attempt_rows"] == result["succeeded_rows"] == result["deliveries"], result
    return result


def throughput(args, *extra, env: dict | None = None) -> dict:
    return check_throughput(ours("throughput", "-n", args.events, "--endpoints", args.endpoints, *extra, env=env))


def run_once(args, rows: dict, peer_rows: dict) -> None:
    """One run of every chosen scenario, figures appended to `rows` / `peer_rows`."""

    def add(key: str, value) -> None:
        rows.setdefault(key, []).append(value)

    if args.only & {"throughput", "scale"}:
        add("live", throughput(args, "--mode", "live")["deliveries_per_s"])
    if "metrics" in args.only:  # the same live run with Prometheus counting switched off, interleaved
        off = throughput(args, "--mode", "live", env={"WEBHOOK_METRICS_ENABLED": "false"})["deliveries_per_s"]
        add("metrics_off", off)
        if not args.only & {"throughput", "scale"}:
            add("live", throughput(args, "--mode", "live")["deliveries_per_s"])
        add("metrics_cost", round(100 * (1 - rows["live"][-1] / off), 1))
    if "throughput" in args.only:
        add("drain", throughput(args, "--mode", "drain")["deliveries_per_s"])
    if "overhead" in args.only:
        over = ours("overhead", "--saves", args.saves, "--endpoints", args.endpoints)
        add("over_med", over["overhead_median_ms"])
        add("over_p99", over["overhead_p99_ms"])
    if "latency" in args.only:
        lat = ours("latency", "--rate", args.rate, "--seconds", args.seconds)
        add("lat_p50", lat["latency"].get("median_ms"))
        add("lat_p99", lat["latency"].get("p99_ms"))
    if "fanout" in args.only:
        add("fan", ours("fanout", "--endpoints", args.fanout_endpoints)["seconds_to_all"])
    if "isolation" in args.only:
        iso = isolation(args)
        add("iso_alone", iso["without_slow"]["deliveries_per_s"])
        add("iso_shared", iso["with_slow"]["deliveries_per_s"])
        add("iso_cost", iso["cost_pct"])
        add("iso_p99", iso["latency"]["latency"].get("p99_ms"))
    if "backlog" in args.only:
        back = backlog(args)
        add("backlog_rss", back["worker_rss_mb"]["peak_mb"])
        add("backlog_rate", back["deliveries_per_s"])
    if "outage" in args.only:
        out = outage(args)
        add("retry_rate", out["retry_attempts_per_s"])
        add("rss_over_idle", out["worker_rss_mb"]["over_idle_mb"])
        add("queue_peak", out["broker"].get("queue_peak_messages"))
        add("broker_mem", out["broker"].get("memory_peak_mb"))
        add("healthy_p50", out["healthy_latency_while_retrying"].get("median_ms"))
        add("healthy_p99", out["healthy_latency_while_retrying"].get("p99_ms"))
        add("healthy_p99_all", out["healthy_latency"].get("p99_ms"))
        add("drain_s", out["drain_seconds"])
        add("drain_rate", out["drain_per_s"])
    if "scale" in args.only:
        add("one_worker", throughput(args, "--mode", "live", "--workers", 1)["deliveries_per_s"])
        if reachable(args.amqp_url):
            add("rabbitmq", throughput(args, "--mode", "live", "--broker", args.amqp_url)["deliveries_per_s"])
    if "peer" in args.only:
        p = peer(args.peer_events, args.peer_events)
        for key, value in (
            ("live", p["live"]["deliveries_per_s"]),
            ("over_med", p["save_overhead"]["overhead_median_ms"]),
            ("over_p99", p["save_overhead"]["overhead_p99_ms"]),
            ("ceiling", p["receiver"]["ceiling"]["receiver_req_per_s"]),
        ):
            peer_rows.setdefault(key, []).append(value)


def isolation(args) -> dict:
    """The slow-endpoint scenario. Its figures stand even when the service never finished a
    phase (they are then bounded by --isolation-timeout); only signatures must all verify."""
    phases = 2 * args.isolation_rounds + 1  # each may wait its full timeout, plus a worker start and stop
    result = ours(
        "isolation", "-n", args.isolation_events, "--endpoints", args.isolation_endpoints, "--slow", args.slow,
        "--rate", args.rate, "--seconds", args.seconds, "--timeout", args.isolation_timeout,
        "--rounds", args.isolation_rounds, "--baseline", args.isolation_baseline,
        timeout=120 + phases * (args.isolation_timeout + args.seconds + 30),
    )  # fmt: skip
    for phase in (result["without_slow"], result["with_slow"], result["latency"]):
        assert phase["received"] == phase["verified"], result
        assert phase.get("slow_received", 0) == phase.get("slow_verified", 0), result
    assert result["without_slow"]["complete"], result  # without the slow endpoint it must all arrive
    return result


def outage(args) -> dict:
    """A receiver down through two retry waves; every figure stands only if, after recovery,
    every delivery arrived once: none dead, one 200 per event, every signature verified."""
    result = ours(
        "outage", "--outage-deliveries", args.outage_deliveries, "--waves", args.outage_waves,
        "--outage-schedule", args.outage_schedule, "--rate", args.outage_rate, "--endpoints", 9,
        timeout=1800,
    )  # fmt: skip
    n = result["deliveries"]
    assert result["succeeded"] == n and result["dead"] == 0, result
    assert result["events_with_one_success"] == n and result["events_with_more_successes"] == 0, result
    assert result["verified_all"], result
    return result


def backlog(args) -> dict:
    result = ours("backlog", "-n", args.backlog_events, "--endpoints", args.backlog_endpoints)
    assert result["received"] == result["verified"] == result["succeeded_rows"] == result["deliveries"], result
    return result


def table(args, m: dict, pm: dict) -> list[tuple]:
    """(scenario, ours, peer, ratio, target, ok) for every figure measured; ok None: reported."""
    ratio = round(m["live"] / pm["live"], 1) if m.get("live") and pm.get("live") else None

    def at_most(key: str, limit: float) -> bool | None:
        return None if m.get(key) is None else m[key] <= limit

    def at_least(key: str, limit: float) -> bool | None:
        return None if m.get(key) is None else m[key] >= limit

    def below(key: str, limit: float) -> bool | None:
        return None if m.get(key) is None else m[key] < limit

    if m.get("live") is None:
        live_target, live_ok = ">= 1000 and >= 10x peer", None
    elif pm.get("live"):
        live_target, live_ok = ">= 1000 and >= 10x peer", m["live"] >= 1000 and (ratio or 0) >= 10
    else:  # the peer was not run (--only): judge what was measured
        live_target, live_ok = ">= 1000 (peer not run)", m["live"] >= 1000
    cost_ok, iso_p99_ok = None if m.get("iso_cost") is None else m["iso_cost"] < 10, at_most("iso_p99", 250)
    backlog = f"{args.backlog_events * args.backlog_endpoints:,}"
    outage = f"{args.outage_deliveries:,}"
    retry_ok, rss_ok = at_least("retry_rate", 1000), at_most("rss_over_idle", 100)
    healthy_ok = at_most("healthy_p99", 250)
    fast, slow = args.isolation_endpoints, f"{args.slow:g} s"
    alone = "+ one prompt ep" if args.isolation_baseline == "prompt" else "alone"
    rows = [
        ("live", "throughput, live (deliveries/s)", pm.get("live"), ratio, live_target, live_ok),
        ("drain", "throughput, drain backlog (deliveries/s)", None, None, "(reported)", None),
        ("metrics_off", "throughput, live, metrics off (deliveries/s)", None, None, "(reported)", None),
        ("metrics_cost", "metrics: live throughput they cost (%)", None, None, "< 5", below("metrics_cost", 5)),
        ("over_med", "emission overhead p50 (ms)", pm.get("over_med"), None, "<= 1", at_most("over_med", 1)),
        ("over_p99", "emission overhead p99 (ms)", pm.get("over_p99"), None, "<= 2", at_most("over_p99", 2)),
        ("lat_p50", f"latency at {args.rate:g} ev/s p50 (ms)", None, None, "<= 50", at_most("lat_p50", 50)),
        ("lat_p99", f"latency at {args.rate:g} ev/s p99 (ms)", None, None, "<= 250", at_most("lat_p99", 250)),
        ("fan", f"fan-out 1 event -> {args.fanout_endpoints} endpoints (s)", None, None, "<= 2", at_most("fan", 2)),
        ("iso_alone", f"isolation: {fast} fast eps {alone} (deliveries/s)", None, None, "(reported)", None),
        ("iso_shared", f"isolation: same + one {slow} ep (deliveries/s)", None, None, "(reported)", None),
        ("iso_cost", "isolation: fast eps' throughput lost (%)", None, None, "< 10", cost_ok),
        ("iso_p99", f"isolation: fast eps' p99 at {args.rate:g} ev/s (ms)", None, None, "<= 250", iso_p99_ok),
        ("backlog_rss", f"backlog {backlog}: worker peak RSS (MiB)", None, None, "(reported)", None),
        ("backlog_rate", f"backlog {backlog}: drain (deliveries/s)", None, None, "(reported)", None),
        ("one_worker", "throughput, live, 1 worker process (del/s)", None, None, "(reported)", None),
        ("rabbitmq", "throughput, live, RabbitMQ broker (del/s)", None, None, "(reported)", None),
        ("retry_rate", f"outage {outage}: retry attempts/s (slowest wave)", None, None, ">= 1000", retry_ok),
        ("rss_over_idle", "outage: worker peak RSS over idle (MiB)", None, None, "<= 100", rss_ok),
        ("queue_peak", "outage: broker queue peak (messages)", None, None, "< 5000", below("queue_peak", 5000)),
        ("broker_mem", "outage: Redis memory peak (MiB)", None, None, "(reported)", None),
        ("healthy_p50", "outage: healthy eps' p50 while retrying (ms)", None, None, "(reported)", None),
        ("healthy_p99", "outage: healthy eps' p99 while retrying (ms)", None, None, "<= 250", healthy_ok),
        ("healthy_p99_all", "outage: healthy eps' p99 incl. the burst (ms)", None, None, "(reported)", None),
        ("drain_s", "outage: drain after recovery (s)", None, None, "(reported)", None),
        ("drain_rate", "outage: drain after recovery (deliveries/s)", None, None, "(reported)", None),
    ]  # fmt: skip
    out = [(name, m.get(key), p, r, target, ok) for key, name, p, r, target, ok in rows if key in m or p is not None]
    if "scale" in args.only and "rabbitmq" not in m:
        out.append(("throughput, live, RabbitMQ broker (del/s)", None, None, None, "(RabbitMQ not reachable)", None))
    if pm.get("ceiling") is not None:
        out.append(("receiver ceiling (req/s)", pm["ceiling"], None, None, "not the bottleneck", None))
    return out


def main() -> None:
    args = parse_args()
    rows: dict[str, list] = {}
    peer_rows: dict[str, list] = {}
    for _ in range(args.runs):
        run_once(args, rows, peer_rows)
    m = {k: median(v) for k, v in rows.items()}
    pm = {k: median(v) for k, v in peer_rows.items()}
    print(f"machine: {os.cpu_count()} cpus, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, load {os.getloadavg()}, runs={args.runs}"
          f"{' (SMOKE: sizes too small to mean anything)' if args.smoke else ''}")  # fmt: skip
    print(f"{'scenario':50} {'ours':>10} {'peer':>10} {'ratio':>6}  {'target':24} result")
    for name, value, peer_value, r, target, ok in table(args, m, pm):
        verdict = "-" if ok is None else ("pass" if ok else "FAIL")
        print(f"{name:50} {value!s:>10} {peer_value!s:>10} {r!s:>6}  {target:24} {verdict}")
    print(json.dumps({"ours": rows, "peer": peer_rows}))


if __name__ == "__main__":
    main()
