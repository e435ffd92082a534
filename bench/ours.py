"""Our service's scenarios, on PostgreSQL (database bench_ours) + Redis (db 13) + a real worker.

    python bench/ours.py throughput -n 2000 --endpoints 10     # 20,000 deliveries
    python bench/ours.py throughput -n 2000 --workers 1        # scale: one worker process
    python bench/ours.py throughput -n 500 --endpoints 100 --filters   # every endpoint with a content filter
    python bench/ours.py throughput -n 20000 --endpoints 10 --ordered --runs 1000   # ordering "run", 1,000 runs
    python bench/ours.py throughput -n 20000 --ordered --runs 1000 --slow-run 0.5   # one run's answers take 0.5 s
    python bench/ours.py throughput -n 2000 --endpoints 10 --shape exclude   # every endpoint redacting fields
    python bench/ours.py throughput -n 2000 --broker amqp://guest:guest@127.0.0.1:5672//
    python bench/ours.py overhead --saves 2000 --endpoints 10
    python bench/ours.py latency --rate 200 --seconds 10
    python bench/ours.py isolation -n 2000 --endpoints 9 --slow 3 --rate 200 --seconds 10
    python bench/ours.py fanout --endpoints 500
    python bench/ours.py backlog -n 10000 --endpoints 10       # 100,000 deliveries, worker RSS
    python bench/ours.py outage --outage-deliveries 100000 --waves 2 --rate 200   # a receiver down
Each prints one JSON object. `bench/run.py` runs them all with the peer and prints the table.
Loopback only; every loop is bounded in count and time. `--broker` (or BENCH_BROKER_URL)
swaps Redis for another broker, e.g. RabbitMQ; the worker and the publisher both use it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
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
}
os.environ.update(ENV)


def setup_django() -> None:
    for sql in (f"DROP DATABASE IF EXISTS {DB_NAME}", f"CREATE DATABASE {DB_NAME}"):  # a fresh schema each run
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], capture_output=True, check=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def use_broker(url: str) -> None:
    """Point the publisher (this process) and the workers it starts at `url`; before Django
    reads its settings."""
    ENV["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"] = url


def reset_data() -> None:
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            "TRUNCATE deliveries_attempt, deliveries_delivery, deliveries_event, webhooks_endpoint,"
            " agents_hooks_step, agents_hooks_agent, agents_hooks_organization CASCADE"
        )
    purge_queue()


def purge_queue() -> None:
    """Drop messages a previous run left in the bench queue (they name rows just truncated)."""
    url, name = ENV["CELERY_BROKER_URL"], ENV["CELERY_QUEUE"]
    if url.startswith(("redis://", "rediss://")):
        import redis

        redis.Redis.from_url(url).delete(name)
        return
    from kombu import Connection
    from kombu.exceptions import ChannelError

    with Connection(url, connect_timeout=5) as conn:
        try:
            conn.default_channel.queue_purge(name)
        except ChannelError:  # not declared yet (AMQP 404): nothing to purge
            pass


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


class RssSampler:
    """Samples the worker's total RSS on a thread every `interval` seconds until stopped: a
    peak read once at the end would miss a drain's high point."""

    def __init__(self, worker: Worker, interval: float):
        self.worker, self.interval = worker, interval
        self.samples: list[float] = [worker.rss_mb()]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self.samples.append(self.worker.rss_mb())

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        self.samples.append(self.worker.rss_mb())
        return {"start_mb": self.samples[0], "peak_mb": max(self.samples), "end_mb": self.samples[-1],
                "samples": len(self.samples)}  # fmt: skip


# --filters: what a receiver of finished steps might ask for, and every step here passes it (so
# the deliveries, and the work of sending them, are the same as without): three conditions of
# three kinds over the envelope, one nested, as the filter fan-out evaluates per event and endpoint.
BENCH_FILTER = {
    "and": [
        {"path": "event_type", "in": ["agent.step.completed", "agent.step.failed"]},
        {"or": [{"path": "data.status", "eq": "success"}, {"path": "data.usage.total_tokens", "gt": 10000}]},
        {"not": {"path": "data.error", "exists": True}},
    ]
}

# --shape: per-endpoint payload shapes. `exclude` removes fields every step has (a receiver that
# must not see usage or errors), so each body is parsed, cut and serialised again.
BENCH_SHAPES = {
    "full": None,
    "exclude": {"exclude_fields": ["usage", "error"]},
    "thin": {"payload": "thin"},
}


def make_org(
    endpoints: int, port: int, secret: str, extra_urls: tuple[str, ...] = (), filter: dict | None = None,
    shape: dict | None = None,
):  # fmt: skip
    """An organization with one agent and `endpoints` endpoints on the receiver at `port`,
    plus one endpoint per URL in `extra_urls` (another receiver); every one takes every event
    (with `filter`, each through that content filter, which every step passes; with `shape`,
    each with those payload fields: BENCH_SHAPES)."""
    from agents_hooks.models import Agent, Organization

    org = Organization.objects.create(name="bench")
    agent = Agent.objects.create(organization=org, name="bench")
    urls = [f"http://127.0.0.1:{port}/ep{i}" for i in range(endpoints)] + list(extra_urls)
    add_endpoints(org, urls, secret, filter=filter, shape=shape)
    return agent


def make_scoped_org(endpoints: int, port: int, secret: str, shared_url: str) -> list:
    """An organization with one agent per endpoint, endpoint i taking agent i's events only,
    plus one endpoint at `shared_url` taking every event; return the agents. Steps completed
    round robin over the agents send each event to one of these endpoints and to the shared
    one, so the endpoints here share the event rate between them."""
    from agents_hooks.models import Agent, Organization

    org = Organization.objects.create(name="bench")
    agents = Agent.objects.bulk_create([Agent(organization=org, name=f"bench{i}") for i in range(endpoints)])
    add_endpoints(org, [f"http://127.0.0.1:{port}/ep{i}" for i in range(endpoints)], secret, agents)
    add_endpoints(org, [shared_url], secret)
    return agents


def add_endpoints(
    org, urls: list[str], secret: str, agents: list | None = None, filter: dict | None = None,
    shape: dict | None = None,
) -> None:  # fmt: skip
    from webhooks.models import Endpoint

    eps = []
    for i, url in enumerate(urls):
        ep = Endpoint(organization=org, url=url, agent=agents[i] if agents else None, **(shape or {}))
        if filter is not None:
            ep.filter = filter
        ep.secret = secret
        eps.append(ep)
    Endpoint.objects.bulk_create(eps)


def new_steps(agents: list, n: int, runs: list | None = None) -> list:
    """`n` pending steps, spread round robin over `agents` (in that order when completed), and
    over `runs` if given."""
    from agents_hooks.models import Step

    return Step.objects.bulk_create(
        [Step(agent=agents[i % len(agents)], run=runs[i % len(runs)] if runs else None) for i in range(n)]
    )


def complete_steps(
    agent, n: int, rate: float | None = None, deadline: float = 300, runs: list | None = None
) -> list[float]:
    """Finish `n` steps (one transaction each, as an agent would); return each save's seconds."""
    return save_steps(new_steps([agent], n, runs), rate, deadline)


def save_steps(steps: list, rate: float | None = None, deadline: float = 300) -> list[float]:
    """Move the steps to success one save at a time, at `rate` per second if given."""
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


def complete_steps_concurrently(agent, n: int, agents: int, runs: list | None = None) -> None:
    """`agents` threads finishing n steps between them, as several agent processes would (each
    thread has its own database connection; the saves mostly wait on PostgreSQL)."""
    from django.db import connection

    def one(count: int) -> None:
        try:
            complete_steps(agent, count, runs=runs)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(n // agents + (i < n % agents),)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def make_runs(agent, count: int, first_id: str | None = None) -> list:
    """`count` runs of `agent`, the first with id `first_id` if given (the slow one)."""
    from agents_hooks.models import Run

    runs = [Run(agent=agent) for _ in range(count)]
    if first_id:
        runs[0].id = first_id
    return Run.objects.bulk_create(runs)


def split_slow_run(port: int, slow_run: str, t0: float) -> tuple[int, float, dict]:
    """The other runs' deliveries and their last arrival, and the slow run's figures, from the
    receiver's records (each names its event, whose run the database knows)."""
    from deliveries.models import Event

    slow_ids = set(Event.objects.filter(run_id=slow_run).values_list("id", flat=True))
    arrivals = harness.records(port)
    others = [r[0] for r in arrivals if r[2] not in slow_ids]
    slow = [r[0] for r in arrivals if r[2] in slow_ids]
    figures = {
        "slow_run_deliveries": len(slow),
        "other_runs_deliveries": len(others),
        "slow_run_seconds": round(max(slow) - t0, 2) if slow else None,
        "other_runs_seconds": round(max(others) - t0, 2) if others else None,
    }
    return len(others), max(others, default=time.time()), figures


def wait_delivered(port: int, n: int, timeout: float) -> dict:
    return harness.wait_for_requests(port, n, timeout, interval=0.05)


def throughput(args) -> dict:
    """N events x E endpoints; deliveries/s until the last arrival, every one verified by the
    receiver and logged. `live`: saved while the worker runs, timed from the first save.
    `drain`: saved first, then the worker started, timed from its first to last delivery.

    `--ordered`: the endpoints deliver runs in order (deliveries/ordering.py), the steps spread
    round robin over `--runs` runs. `--slow-run S`: the receiver answers the first run's events
    after S seconds; the rate is then the other runs' (until their last arrival), and the slow
    run's own finish is reported beside it: what one slow run costs the others."""
    from deliveries.models import Attempt, Delivery

    secret = harness.new_standard_secret()
    total = args.n * args.endpoints
    slow_run = f"run-slow-{os.getpid()}" if args.slow_run else None
    with harness.receiver({"*": secret}, slow_bodies={slow_run: args.slow_run} if slow_run else None) as port:
        reset_data()
        fields = {**(BENCH_SHAPES[args.shape] or {}), **({"ordering": "run"} if args.ordered else {})}
        agent = make_org(
            args.endpoints, port, secret, filter=BENCH_FILTER if args.filters else None, shape=fields or None
        )
        runs = make_runs(agent, args.runs, slow_run) if args.runs else None
        worker = Worker(args.workers, extra_env=args.worker_env) if args.mode == "live" else None
        cpu0 = worker.cpu_seconds() if worker else 0.0
        try:
            t0 = time.time()
            complete_steps_concurrently(agent, args.n, args.agents, runs)
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
        received, slow = stats["requests"], {}
        if slow_run:
            received, done, slow = split_slow_run(port, slow_run, t0)
        return {
            "scenario": f"throughput-{args.mode}",
            "ordered": args.ordered,
            "runs": args.runs,
            **slow,
            "filters": args.filters,
            "shape": args.shape,
            "workers": args.workers,
            "broker": ENV["CELERY_BROKER_URL"].split("://", 1)[0],
            "deliveries": total,
            "received": stats["requests"],
            "verified": stats["verified"],
            "failed_signatures": stats["failed"],
            "succeeded_rows": Delivery.objects.filter(status="succeeded").count(),
            "attempt_rows": Attempt.objects.count(),
            "publish_seconds": round(publish_seconds, 2),
            "deliveries_per_s": round(received / (done - t0), 1),
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


def isolation(args) -> dict:
    """One endpoint answering in --slow seconds (default 3) beside --endpoints fast ones (9).
    The slow one has a receiver process of its own, as another customer's server would be; it
    verifies every signature too. Measured in this one run:

    * throughput: the fast endpoints' deliveries/s for n events each, live, first without the
      slow endpoint, then with it subscribed to the same events; `cost_pct` is the drop.
      --rounds 2 or more alternates the phases (without, with, with, without, ...) and
      compares medians, so a load that comes or goes mid-run on a shared machine does not
      land on one side only. `--baseline prompt` subscribes a tenth endpoint that answers at
      once in the "without" phases: on two busy cores one more endpoint's deliveries cost
      throughput by themselves, and this tells that cost from the cost of slowness.
    * latency: --rate events/s for --seconds, each event to one fast endpoint in turn (200/s
      in all, as the latency scenario) and to the slow one; creation to arrival at the fast
      endpoints.

    A phase waits at most --timeout seconds (default 60) for the fast deliveries: a rate is
    then what arrived by that time, and a missing delivery counts in the latency percentiles
    with the time waited, so the figures never look better than the service was."""
    secret = harness.new_standard_secret()
    with (
        harness.receiver({"*": secret}) as port,
        harness.receiver({"*": secret}, slow={"/slow": args.slow}) as slow_port,
    ):
        slow_url = f"http://127.0.0.1:{slow_port}/slow"
        prompt = (slow_port, f"http://127.0.0.1:{slow_port}/prompt") if args.baseline == "prompt" else ()
        alone, shared = [], []
        for i in range(2 * args.rounds):
            if (i % 2 == 0) == (i // 2 % 2 == 0):  # A B B A A B ...
                alone.append(fast_throughput(args, port, secret, *prompt))
            else:
                shared.append(fast_throughput(args, port, secret, slow_port, slow_url))
        lat = fast_latency(args, port, secret, slow_port, slow_url)
    without, with_slow = merge_phases(alone), merge_phases(shared)
    cost = 1 - with_slow["deliveries_per_s"] / without["deliveries_per_s"] if without["deliveries_per_s"] else None
    return {
        "scenario": "isolation",
        "fast_endpoints": args.endpoints,
        "slow_seconds": args.slow,
        "baseline": args.baseline,
        "without_slow": without,
        "with_slow": with_slow,
        "cost_pct": None if cost is None else round(100 * cost, 1),
        "latency": lat,
    }


def merge_phases(phases: list[dict]) -> dict:
    """Several runs of one throughput phase as one: counts summed, the median rate, every rate."""
    counts = ("deliveries", "received", "verified", "slow_received", "slow_verified")
    merged = {k: sum(p[k] for p in phases) for k in counts if k in phases[0]}
    merged["complete"] = all(p["complete"] for p in phases)
    merged["deliveries_per_s"] = round(statistics.median(p["deliveries_per_s"] for p in phases), 1)
    merged["rates"] = [p["deliveries_per_s"] for p in phases]
    return merged


def fast_throughput(args, port: int, secret: str, slow_port: int | None = None, slow_url: str = "") -> dict:
    """n events to the fast endpoints (and to `slow_url` on the receiver at `slow_port`, if
    given): the fast endpoints' deliveries/s from the first save to their last arrival (or to
    giving up)."""
    total = args.n * args.endpoints
    reset_data()
    for p in (port, slow_port) if slow_port else (port,):
        harness.reset(p)
    agent = make_org(args.endpoints, port, secret, (slow_url,) if slow_url else ())
    worker = Worker(args.workers)
    try:
        t0 = time.time()
        complete_steps_concurrently(agent, args.n, args.agents)
        stats = wait_delivered(port, total, timeout=args.timeout)
        gave_up = time.time()
        slow = harness.stats(slow_port) if slow_port else None
    finally:
        worker.stop()
    complete = stats["requests"] >= total
    result = {
        "deliveries": total,
        "received": stats["requests"],
        "verified": stats["verified"],
        "complete": complete,
        "deliveries_per_s": round(stats["requests"] / ((stats["last"] if complete else gave_up) - t0), 1),
    }
    if slow is not None:
        result["slow_received"], result["slow_verified"] = slow["requests"], slow["verified"]
    return result


def fast_latency(args, port: int, secret: str, slow_port: int, slow_url: str) -> dict:
    """--rate events/s for --seconds, round robin over the fast endpoints, all to the slow one."""
    from deliveries.models import Event

    reset_data()
    harness.reset(port)
    harness.reset(slow_port)
    agents = make_scoped_org(args.endpoints, port, secret, slow_url)
    n = int(args.rate * args.seconds)
    warmup = int(args.rate * args.warmup)
    steps = new_steps(agents, warmup + n)
    worker = Worker(args.workers)
    try:
        # Steady state: the worker learns the slow endpoint is slow once (each process waits
        # WEBHOOK_STRAGGLER_AFTER for it one time), during a warm-up that is not measured.
        save_steps(steps[:warmup], rate=args.rate)
        wait_delivered(port, warmup, timeout=args.timeout)
        harness.reset(port)
        measured_from = Event.objects.order_by("-created_at").values_list("created_at", flat=True).first()
        save_steps(steps[warmup:], rate=args.rate)
        stats = wait_delivered(port, n, timeout=args.timeout)
        gave_up = time.time()
        records = harness.records(port)
        slow = harness.stats(slow_port)
    finally:
        worker.stop()
    events = Event.objects.filter(created_at__gt=measured_from) if measured_from else Event.objects.all()
    sent = {pk: created.timestamp() for pk, created in events.values_list("pk", "created_at")}
    return {
        "rate_per_s": args.rate,
        "warmup_events": warmup,
        "events": n,
        "received": stats["requests"],
        "verified": stats["verified"],
        "slow_received": slow["requests"],
        "slow_verified": slow["verified"],
        "latency": harness.latencies(records, sent, missing_at=gave_up),
    }


def backlog(args) -> dict:
    """n events x E endpoints (default 10,000 x 10 = 100,000 deliveries) published while no
    worker runs, then one worker drains them: the peak RSS of all its processes, sampled
    every --sample-interval s during the drain (a steady peak says memory is bounded by the
    batch, not by the backlog), and the drain rate from its first to its last delivery."""
    from deliveries import enqueue
    from deliveries.models import Delivery

    secret = harness.new_standard_secret()
    total = args.n * args.endpoints
    with harness.receiver({"*": secret}) as port:
        reset_data()
        agent = make_org(args.endpoints, port, secret)
        t0 = time.time()
        complete_steps_concurrently(agent, args.n, args.agents)
        enqueue.flush(60)
        published = time.time() - t0
        worker = Worker(args.workers, extra_env=args.worker_env)
        sampler = RssSampler(worker, args.sample_interval)
        try:
            stats = wait_delivered(port, total, timeout=args.timeout)
        finally:
            rss = sampler.stop()
            worker.stop()
        drain_seconds = (stats["last"] or time.time()) - (stats["first"] or time.time())
        return {
            "scenario": "backlog",
            "workers": args.workers,
            "deliveries": total,
            "received": stats["requests"],
            "verified": stats["verified"],
            "succeeded_rows": Delivery.objects.filter(status="succeeded").count(),
            "publish_seconds": round(published, 2),
            "drain_seconds": round(drain_seconds, 2),
            "deliveries_per_s": round(stats["requests"] / drain_seconds, 1) if drain_seconds > 0 else None,
            "worker_rss_mb": rss,
        }


class BrokerSampler:
    """Samples the broker's queue length (messages waiting, and those handed to a worker and
    not yet acknowledged) and Redis's memory every `interval` seconds until stopped."""

    def __init__(self, interval: float):
        import redis

        self.url, self.queue = ENV["CELERY_BROKER_URL"], ENV["CELERY_QUEUE"]
        self.client = redis.Redis.from_url(self.url) if self.url.startswith("redis") else None
        self.interval = interval
        self.queued: list[int] = []
        self.memory: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        if self.client is None:
            return
        pipe = self.client.pipeline()
        pipe.llen(self.queue)
        pipe.hlen("unacked")
        pipe.info("memory")
        waiting, unacked, memory = pipe.execute()
        self.queued.append(waiting + unacked)
        self.memory.append(memory["used_memory"])

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        if not self.queued:
            return {"broker": self.url.split("://", 1)[0], "sampled": False}
        return {
            "queue_peak_messages": max(self.queued),
            "memory_start_mb": round(self.memory[0] / 2**20, 1),
            "memory_peak_mb": round(max(self.memory) / 2**20, 1),
            "samples": len(self.queued),
        }


class Vacuumer:
    """VACUUM (ANALYZE) the tables a scenario churns, every `interval` seconds, standing in for
    autovacuum: this machine's PostgreSQL runs with `autovacuum = off`, and a queue table that is
    never vacuumed (dead row versions piling up in its indexes, statistics from when it was
    empty) measures a database nobody runs in production. The bench database has per-table
    autovacuum settings from the migrations (deliveries/migrations/0003), which a production
    server honours; here the harness does their job."""

    TABLES = "deliveries_delivery, deliveries_event, deliveries_attempt, agents_hooks_step"

    def __init__(self, interval: float):
        self.interval, self.runs = interval, 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self.done.wait(self.interval):
                with connection.cursor() as cursor:
                    cursor.execute(f"VACUUM (ANALYZE) {self.TABLES}")
                self.runs += 1
        finally:
            connection.close()

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.runs


def outage(args) -> dict:
    """One endpoint is down: --outage-deliveries (100,000) events to it, answered 503 through
    their first attempt and --waves (2) retry waves, then 200 again; meanwhile --endpoints (9)
    healthy endpoints receive --rate (200) events/s in turn. The down endpoint's schedule is
    --outage-schedule (120 s, 120 s, then an hour: long enough that the first wave of retries
    comes after the burst's first attempts, so each wave's rate is the retry path's own;
    jittered as in production).
    When the receiver recovers, the operator sends the waiting deliveries at once
    (`retry_pending`, the API's retry-pending) and they drain.

    The burst is published and gets its first attempts (all 503) first; then the healthy stream
    starts and runs through the retry waves until recovery. Reports: retry attempts/s within
    each wave (its attempts over its first to last: the rate they are made at as they come
    due), the worker's peak RSS against its idle figure, the broker's queue (waiting +
    unacknowledged) and Redis memory peaks, the healthy endpoints' latency from creation to
    arrival (all of the stream, and from the first retry on), the rate the stream reached,
    the drain after recovery (everything due at once: the retry path's capacity); and that
    every delivery succeeded once: no dead, one 200 per event at the receiver."""
    from django.db.models import Max, Min

    from deliveries import enqueue, recovery
    from deliveries.models import Attempt, Delivery, Event
    from webhooks.models import Endpoint

    secret = harness.new_standard_secret()
    n = args.outage_deliveries
    with harness.receiver({"*": secret}) as port:
        reset_data()
        healthy_agents = make_scoped_org(args.endpoints, port, secret, f"http://127.0.0.1:{port}/unused")
        org = healthy_agents[0].organization
        Endpoint.objects.filter(url__endswith="/unused").delete()
        down_agent = type(healthy_agents[0]).objects.create(organization=org, name="outage")
        add_endpoints(org, [f"http://127.0.0.1:{port}/down"], secret, [down_agent])
        down = Endpoint.objects.get(url__endswith="/down")
        Endpoint.objects.filter(pk=down.pk).update(retry_schedule=args.outage_schedule)
        harness.fail(port, "/down", 503)

        worker = Worker(args.workers)
        rss = RssSampler(worker, args.sample_interval)
        time.sleep(2)  # idle: the figure the peak is held against
        idle_mb = max(rss.samples)
        broker = BrokerSampler(args.sample_interval)
        vacuum = Vacuumer(args.vacuum_every)
        stop_stream = threading.Event()
        streamed: list[int] = []
        # The healthy agents' steps, made beforehand (as the latency scenario does): finishing
        # one is the save measured, and this process spends no more on them than it must.
        pending_steps = new_steps(healthy_agents, int(args.rate * min(args.timeout, 600)))

        def stream() -> None:
            """Healthy agents finish steps at --rate, round robin, until told to stop."""
            from django.db import connection

            try:
                start = time.monotonic()
                for i, step in enumerate(pending_steps):
                    if stop_stream.is_set():
                        break
                    wait = start + i / args.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    step._loaded_status = "pending"
                    step.status = "success"
                    step.save()
                    streamed.append(i)
            finally:
                connection.close()

        streamer = threading.Thread(target=stream, daemon=True)

        # Watched at the receiver, which counts what it answered: a query over the delivery
        # table twice a second would take the database's time from the service measured.
        def answered(status: int) -> int:
            return harness.stats(port)["paths"].get("/down", {}).get("answered", {}).get(str(status), 0)

        deadline = time.monotonic() + args.timeout
        t0 = time.time()
        try:
            # The outage's events arrive at once and get their first attempts (all 503); that
            # drain is the backlog scenario's subject, and events of other endpoints queue
            # behind it like any FIFO. Then the healthy endpoints' events start, and the retry
            # waves come while they run: what is measured here.
            publish_burst(org, down_agent, n)
            enqueue.flush(60)
            published = time.time() - t0
            while answered(503) < n and time.monotonic() < deadline:
                time.sleep(0.5)
            first_pass = time.time() - t0
            stream_started = time.time()
            streamer.start()
            while answered(503) < n * (1 + args.waves) and time.monotonic() < deadline:
                time.sleep(0.5)
            harness.fail(port, "/down", None)  # the receiver is back
            recovered = time.time()
            retried = recovery.retry_pending(down)
            while answered(200) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            drained = time.time()
            stop_stream.set()
            streamer.join(30)
            healthy_deadline = time.monotonic() + 30  # the stream's last events arrive
            while time.monotonic() < healthy_deadline:
                paths = harness.stats(port)["paths"]
                if sum(v["verified"] + v["failed"] for p, v in paths.items() if p != "/down") >= len(streamed):
                    break
                time.sleep(0.2)
        finally:
            stop_stream.set()
            peak = rss.stop()
            queue = broker.stop()
            vacuums = vacuum.stop()
            worker.stop()
        records = harness.records(port)

    waves = []
    for number in range(2, args.waves + 2):
        span = Attempt.objects.filter(delivery__endpoint=down, number=number).aggregate(
            first=Min("started_at"), last=Max("started_at")
        )
        count = Attempt.objects.filter(delivery__endpoint=down, number=number).count()
        seconds = (span["last"] - span["first"]).total_seconds() if count > 1 else None
        waves.append({"attempts": count, "seconds": seconds and round(seconds, 1),
                      "attempts_per_s": round(count / seconds, 1) if seconds else None})  # fmt: skip
    healthy = Event.objects.filter(agent__in=healthy_agents, created_at__lte=datetime_from(recovered))
    sent = {pk: c.timestamp() for pk, c in healthy.values_list("pk", "created_at")}
    first_retry = Attempt.objects.filter(delivery__endpoint=down, number=2).aggregate(t=Min("started_at"))["t"]
    while_retrying = healthy.filter(created_at__gte=first_retry) if first_retry else healthy.none()
    sent_retrying = {pk: c.timestamp() for pk, c in while_retrying.values_list("pk", "created_at")}
    stream_seconds = recovered - stream_started
    successes = Counter(r[2] for r in records if r[1] == "/down" and r[4] == 200)
    return {
        "scenario": "outage",
        "deliveries": n,
        "schedule": args.outage_schedule,
        "failing_waves": args.waves,
        "publish_seconds": round(published, 1),
        "first_pass_seconds": round(first_pass, 1),
        "first_pass_per_s": round(n / first_pass, 1) if first_pass else None,
        "healthy_rate_per_s": round(len(sent) / stream_seconds, 1) if stream_seconds > 0 else None,
        "vacuums": vacuums,
        "retry_waves": waves,
        "retry_attempts_per_s": min((w["attempts_per_s"] for w in waves if w["attempts_per_s"]), default=None),
        "worker_rss_mb": {**peak, "idle_mb": idle_mb, "over_idle_mb": round(peak["peak_mb"] - idle_mb, 1)},
        "broker": queue,
        "healthy_latency": harness.latencies(records, sent, missing_at=drained),
        "healthy_latency_while_retrying": harness.latencies(records, sent_retrying, missing_at=drained),
        "healthy_events": len(sent),
        "retried_on_recovery": retried,
        "drain_seconds": round(drained - recovered, 1),
        "drain_per_s": round(retried / (drained - recovered), 1) if drained > recovered else None,
        "succeeded": Delivery.objects.filter(endpoint=down, status="succeeded").count(),
        "dead": Delivery.objects.filter(status="dead").count(),
        "events_with_one_success": sum(1 for c in successes.values() if c == 1),
        "events_with_more_successes": sum(1 for c in successes.values() if c > 1),
        "verified_all": all(r[3] for r in records),
    }


def publish_burst(org, agent, n: int, chunk: int = 5000) -> None:
    """`n` events as publish() records them (the Event row; its id to the broker after
    commit), written 5,000 to an INSERT: a burst from the platform, without this process's
    Python spending minutes on it beside the worker it measures."""
    from django.db import transaction
    from django.utils import timezone

    from deliveries import enqueue
    from deliveries.events import dumps, isoformat
    from deliveries.models import Event

    for start in range(0, n, chunk):
        rows = []
        for i in range(start, min(n, start + chunk)):
            event = Event(
                type="agent.custom.outage", organization_id=org.pk, agent_id=agent.pk, created_at=timezone.now()
            )
            envelope = {"event_id": event.id, "event_type": event.type, "timestamp": isoformat(event.created_at),
                        "agent_id": agent.pk, "organization_id": org.pk, "data": {"n": i}}  # fmt: skip
            event.body = dumps(envelope)
            rows.append(event)
        with transaction.atomic():
            Event.objects.bulk_create(rows)
            ids = [e.pk for e in rows]
            transaction.on_commit(lambda ids=ids: enqueue.submit_events(ids))


def datetime_from(unix: float):
    import datetime

    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC)


# Sizes that differ by scenario: the backlog is the 100,000-delivery one; isolation's phases
# give up sooner, since a service that fails it may never finish them.
DEFAULTS = {
    "*": {"n": 2000, "endpoints": 10, "timeout": 300.0, "sample_interval": 0.25},
    "isolation": {"n": 2000, "endpoints": 9, "timeout": 60.0},
    "backlog": {"n": 10000},
    "outage": {"endpoints": 9, "timeout": 900.0, "sample_interval": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenarios = {
        "throughput": throughput,
        "overhead": overhead,
        "latency": latency,
        "fanout": fanout,
        "isolation": isolation,
        "backlog": backlog,
        "outage": outage,
    }
    parser.add_argument("scenario", choices=list(scenarios))
    parser.add_argument("--rate", type=float, default=200, help="events per second (latency, isolation)")
    parser.add_argument("--seconds", type=float, default=10, help="duration (latency, isolation)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds at --rate first (isolation)")
    parser.add_argument("--saves", type=int, default=2000, help="saves of each kind (overhead)")
    parser.add_argument("-n", type=int, help="events (default 2000, isolation too; backlog 10000)")
    parser.add_argument("--endpoints", type=int, help="endpoints (default 10; isolation: the fast ones, 9)")
    parser.add_argument("--slow", type=float, default=3.0, help="seconds the slow endpoint takes to answer (isolation)")
    parser.add_argument("--rounds", type=int, default=1, help="throughput phases of each kind (isolation)")
    parser.add_argument(
        "--baseline",
        choices=["none", "prompt"],
        default="none",
        help="isolation: without the slow endpoint, nothing else (none) or a prompt endpoint in its place (prompt)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (prefork children)")
    parser.add_argument("--broker", default=ENV["CELERY_BROKER_URL"], help="Celery broker URL (Redis db 13)")
    parser.add_argument("--sample-interval", type=float, help="seconds between RSS samples (backlog 0.25, outage 1)")
    parser.add_argument("--timeout", type=float, help="seconds to wait for deliveries (default 300; isolation 60)")
    parser.add_argument("--mode", choices=["live", "drain"], default="live")
    parser.add_argument(
        "--filters", action="store_true",
        help="throughput: every endpoint has a content filter (BENCH_FILTER) that every step passes",
    )  # fmt: skip
    parser.add_argument(
        "--shape", choices=list(BENCH_SHAPES), default="full",
        help="throughput: every endpoint's payload shape (webhooks/payload_shape.py): the whole envelope (full), "
        "fields of data excluded (exclude), or ids only (thin); each body then cut from the envelope and signed",
    )  # fmt: skip
    parser.add_argument("--agents", type=int, default=4, help="concurrent publishing threads (throughput, backlog)")
    parser.add_argument("--ordered", action="store_true", help='throughput: every endpoint has ordering "run"')
    parser.add_argument("--runs", type=int, default=0, help="throughput: spread the steps over this many runs")
    parser.add_argument(
        "--slow-run", type=float, default=0.0, metavar="SECONDS",
        help="throughput with --runs: the receiver answers the first run's events after SECONDS",
    )  # fmt: skip
    parser.add_argument(
        "--vacuum-every", type=float, default=20.0,
        help="seconds between VACUUM (ANALYZE) runs standing in for autovacuum, which is off here (outage)",
    )  # fmt: skip
    parser.add_argument("--outage-deliveries", type=int, default=100_000, help="events to the down endpoint (outage)")
    parser.add_argument("--waves", type=int, default=2, help="retry waves the down endpoint fails (outage)")
    parser.add_argument(
        "--outage-schedule", type=lambda v: [int(x) for x in v.split(",")], default=[120, 120, 3600, 3600],
        help="the down endpoint's retry schedule, seconds (outage; default 120,120,3600,3600)",
    )  # fmt: skip
    args = parser.parse_args()
    for name, value in {**DEFAULTS["*"], **DEFAULTS.get(args.scenario, {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.worker_env = {}
    use_broker(args.broker)
    setup_django()
    result = scenarios[args.scenario](args)
    result["loadavg"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
