"""Our service's scenarios, on PostgreSQL (database bench_ours) + Redis (db 13) + a real worker.

    python bench/ours.py throughput -n 2000 --endpoints 10     # 20,000 deliveries
    python bench/ours.py overhead --saves 2000 --endpoints 10
    python bench/ours.py latency --rate 200 --seconds 10
    python bench/ours.py isolation -n 1000 --endpoints 10 --slow 3
    python bench/ours.py fanout --endpoints 500
    python bench/ours.py backlog -n 10000 --endpoints 10       # 100,000 deliveries, worker RSS
Each prints one JSON object. `bench/run.py` runs them all with the peer and prints the table.
Loopback only; every loop is bounded in count and time.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

import harness  # noqa: E402

DB_NAME = "bench_ours"
ENV = {
    "DJANGO_SETTINGS_MODULE": "webhooks_project.settings",
    "DJANGO_DEBUG": "false",  # DEBUG keeps every SQL query in memory: not what production runs
    "DJANGO_SECRET_KEY": "bench-only",
    "WEBHOOK_ENCRYPTION_KEYS": os.environ.get("WEBHOOK_ENCRYPTION_KEYS") or Fernet.generate_key().decode(),
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB_NAME}",
    "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"),
    "CELERY_QUEUE": "bench_ours",
    "WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",
    "WEBHOOKS_VAR_DIR": str(BENCH / "var" / "ours"),
    "LOG_LEVEL": "WARNING",
    "WEBHOOK_SWEEP_INTERVAL": "3600",  # the sweeper is not what we measure
}
os.environ.update(ENV)


def setup_django() -> None:
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):  # a fresh schema each run
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], capture_output=True, check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def reset_data() -> None:
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            "TRUNCATE deliveries_attempt, deliveries_delivery, deliveries_event, webhooks_endpoint,"
            " agents_hooks_step, agents_hooks_agent, agents_hooks_organization CASCADE"
        )
    import redis

    redis.Redis.from_url(ENV["CELERY_BROKER_URL"]).delete(ENV["CELERY_QUEUE"])


class Worker:
    """`celery worker` processes on the bench database (prefork, one child per core by default)."""

    def __init__(self, concurrency: int = 2, pool: str = "prefork", extra_env: dict | None = None):
        log = BENCH / "var" / "ours-worker.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "ab")
        cmd = [
            sys.executable, "-m", "celery", "-A", "webhooks_project", "worker", "--pool", pool,
            "-c", str(concurrency), "-Q", ENV["CELERY_QUEUE"], "-l", "warning",
            "--without-mingle", "--without-gossip", "-n", f"bench-{os.getpid()}@%h",
        ]  # fmt: skip
        ready = BENCH / "var" / f"ours-worker-{os.getpid()}.ready"
        ready.unlink(missing_ok=True)
        env = {**os.environ, **(extra_env or {}), "CELERY_READY_FILE": str(ready)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; see {log}")
            time.sleep(0.05)

    def _pids(self) -> list[int]:
        pids = []
        for status in Path("/proc").glob("*/status"):
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except OSError:
                continue
            if int(fields["Pid"]) == self.proc.pid or int(fields.get("PPid", 0)) == self.proc.pid:
                pids.append(int(fields["Pid"]))
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the worker and its children."""
        total = 0
        for pid in self._pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory of the worker and its children."""
        total = 0
        for pid in self._pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return round(total / 1024, 1)

    def stop(self) -> None:
        harness.stop_process(self.proc, timeout=30)
        self.log.close()


def make_org(endpoints: int, port: int, secret: str, slow_paths: int = 0):
    from agents_hooks.models import Agent, Organization
    from webhooks.models import Endpoint

    org = Organization.objects.create(name="bench")
    agent = Agent.objects.create(organization=org, name="bench")
    eps = []
    for i in range(endpoints):
        ep = Endpoint(organization=org, url=f"http://127.0.0.1:{port}/ep{i}")
        ep.secret = secret
        eps.append(ep)
    for i in range(slow_paths):
        ep = Endpoint(organization=org, url=f"http://127.0.0.1:{port}/slow{i}")
        ep.secret = secret
        eps.append(ep)
    Endpoint.objects.bulk_create(eps)
    return agent


def complete_steps(agent, n: int, rate: float | None = None, deadline: float = 300) -> list[float]:
    """Finish `n` steps (one transaction each, as an agent would); return each save's seconds."""
    from agents_hooks.models import Step

    steps = Step.objects.bulk_create([Step(agent=agent) for _ in range(n)])
    durations = []
    start = time.monotonic()
    for i, step in enumerate(steps):
        if rate:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        step._loaded_status = "pending"
        step.status = "success"
        t0 = time.perf_counter()
        step.save()
        durations.append(time.perf_counter() - t0)
        if time.monotonic() - start > deadline:
            break
    return durations


def complete_steps_concurrently(agent, n: int, agents: int) -> None:
    """`agents` threads finishing n steps between them, as several agent processes would (each
    thread has its own database connection; the saves mostly wait on PostgreSQL)."""
    from django.db import connection

    def one(count: int) -> None:
        try:
            complete_steps(agent, count)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n // agents + (i < n % agents),)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_delivered(port: int, n: int, timeout: float) -> dict:
    return harness.wait_for_requests(port, n, timeout, interval=0.05)


def throughput(args) -> dict:
    """N events x E endpoints; deliveries/s until the last arrival, every one verified by the
    receiver and logged. `live`: saved while the worker runs, timed from the first save.
    `drain`: saved first, then the worker started, timed from its first to last delivery."""
    from deliveries.models import Attempt, Delivery

    secret = harness.new_standard_secret()
    total = args.n * args.endpoints
    with harness.receiver({"*": secret}) as port:
        reset_data()
        agent = make_org(args.endpoints, port, secret)
        worker = Worker(args.workers, extra_env=args.worker_env) if args.mode == "live" else None
        cpu0 = worker.cpu_seconds() if worker else 0.0
        try:
            t0 = time.time()
            complete_steps_concurrently(agent, args.n, args.agents)
            saved = time.time()
            if worker is None:
                from deliveries import enqueue

                enqueue.flush(30)
                worker = Worker(args.workers, extra_env=args.worker_env)
            stats = wait_delivered(port, total, timeout=args.timeout)
            rss = worker.rss_mb()
            cpu = worker.cpu_seconds() - cpu0
        finally:
            worker.stop()
        done = stats["last"] or time.time()
        publish_seconds = saved - t0
        if args.mode == "drain":
            t0 = stats["first"] or t0
        return {
            "scenario": f"throughput-{args.mode}",
            "deliveries": total,
            "received": stats["requests"],
            "verified": stats["verified"],
            "failed_signatures": stats["failed"],
            "succeeded_rows": Delivery.objects.filter(status="succeeded").count(),
            "attempt_rows": Attempt.objects.count(),
            "publish_seconds": round(publish_seconds, 2),
            "deliveries_per_s": round(stats["requests"] / (done - t0), 1),
            "worker_rss_mb": rss,
            "worker_cpu_ms_per_delivery": round(cpu * 1000 / max(1, stats["requests"]), 3),
        }


def overhead(args) -> dict:
    """Save time of a step reaching success with publishing on, minus the same save with it off
    (a bare Django UPDATE), interleaved so both see the same machine. No worker runs; the
    enqueue thread hands ids to Redis off the saving thread, as in production."""
    from django.db.models.signals import post_save

    from agents_hooks import signals
    from agents_hooks.models import Step

    secret = harness.new_standard_secret()
    reset_data()
    agent = make_org(args.endpoints, 9, secret)
    hooked, bare = [], []
    steps = Step.objects.bulk_create([Step(agent=agent) for _ in range(2 * args.saves)])
    for i, step in enumerate(steps):
        step._loaded_status = "pending"
        step.status = "success"
        publishing = i % 2 == 0
        if not publishing:
            post_save.disconnect(signals.step_saved, sender=Step)
            step.publishes_on_save = lambda: False
        t0 = time.perf_counter()
        step.save()
        (hooked if publishing else bare).append(time.perf_counter() - t0)
        if not publishing:
            post_save.connect(signals.step_saved, sender=Step)
    from deliveries import enqueue

    enqueue.flush(10)
    h, b = harness.summary_ms(hooked[50:]), harness.summary_ms(bare[50:])  # after warm-up
    return {
        "scenario": "overhead",
        "endpoints": args.endpoints,
        "hooked_save": h,
        "bare_save": b,
        "overhead_median_ms": round(h["median_ms"] - b["median_ms"], 3),
        "overhead_p99_ms": round(h["p99_ms"] - b["p99_ms"], 3),
    }


def latency(args) -> dict:
    """Steps completed at a steady rate (default 200/s) for a while, one endpoint: time from the
    event's creation (inside the save) to its arrival at the receiver."""
    from deliveries.models import Event

    secret = harness.new_standard_secret()
    with harness.receiver({"*": secret}) as port:
        reset_data()
        agent = make_org(1, port, secret)
        worker = Worker(args.workers)
        try:
            n = int(args.rate * args.seconds)
            complete_steps(agent, n, rate=args.rate)
            stats = wait_delivered(port, n, timeout=args.timeout)
            records = harness.records(port)
        finally:
            worker.stop()
        sent = {pk: created.timestamp() for pk, created in Event.objects.values_list("pk", "created_at")}
        return {
            "scenario": "latency",
            "rate_per_s": args.rate,
            "events": n,
            "received": stats["requests"],
            "latency": harness.latencies(records, sent),
        }


def fanout(args) -> dict:
    """One event to N endpoints (default 500): time from the save to the last arrival."""
    secret = harness.new_standard_secret()
    with harness.receiver({"*": secret}) as port:
        reset_data()
        agent = make_org(args.endpoints, port, secret)
        worker = Worker(args.workers)
        try:
            t0 = time.time()
            complete_steps(agent, 1)
            stats = wait_delivered(port, args.endpoints, timeout=args.timeout)
        finally:
            worker.stop()
        return {
            "scenario": "fanout",
            "endpoints": args.endpoints,
            "received": stats["requests"],
            "verified": stats["verified"],
            "seconds_to_all": round((stats["last"] or time.time()) - t0, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["throughput", "overhead", "latency", "fanout"])
    parser.add_argument("--rate", type=float, default=200, help="events per second (latency)")
    parser.add_argument("--seconds", type=float, default=10, help="duration (latency)")
    parser.add_argument("--saves", type=int, default=2000, help="saves of each kind (overhead)")
    parser.add_argument("-n", type=int, default=2000, help="events")
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (prefork children)")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--mode", choices=["live", "drain"], default="live")
    parser.add_argument("--agents", type=int, default=4, help="concurrent publishing threads (throughput)")
    args = parser.parse_args()
    args.worker_env = {}
    setup_django()
    scenarios = {"throughput": throughput, "overhead": overhead, "latency": latency, "fanout": fanout}
    result = scenarios[args.scenario](args)
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
