"""Benchmark the peer, django-webhook 0.0.15: save() overhead and end-to-end deliveries/s.

    bench/.peer-venv/bin/python bench/peer/run.py [-n 2000] [--overhead 2000] [--mode live|drain|both] [--ceiling 20000]

Run bench/peer/setup.sh once first. Each run:

0. ceiling: bench/ceiling.py's load (--ceiling signed POSTs over 4 keep-alive connections)
   against the same receiver process, so the report says what the receiver itself can take;

1. empties the peer's tables and its Celery queue (Redis db 14), points one django-webhook
   Webhook (topic peerapp.Item/create) at a fresh bench receiver on 127.0.0.1;
2. overhead: with no worker running, times `--overhead` saves of Item (django-webhook's
   post_save listener attached: model_to_dict + json.dumps + a Celery publish to Redis) and
   as many of Plain (same table shape, no webhook), interleaved so machine noise hits both
   alike; reports median/p99 of each and of the difference. The queued tasks are purged.
3. deliveries: `-n` Item saves, each one webhook, with a prefork worker (-c 2):
   * live:  worker running while the saves happen; rate = n / (first save -> n-th arrival);
   * drain: saves first, worker started after; rate = n / (worker ready -> n-th arrival).
   Each waits until the receiver has seen n requests or --timeout passes.

The receiver verifies django-webhook's own signature (`Django-Webhook-Signature-v1`, hex
HMAC-SHA256 of f"{timestamp}:{body}" keyed with the raw token); it is not Standard Webhooks
and carries no per-message id, so no per-message latency is reported for the peer.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PEER = Path(__file__).resolve().parent
BENCH = PEER.parent
sys.path[:0] = [str(PEER), str(BENCH)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")

import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="Accessing the database during app initialization")

import django  # noqa: E402

django.setup()

import ceiling  # noqa: E402
import harness  # noqa: E402
from django.db import connection  # noqa: E402
from django_webhook.models import Webhook, WebhookEvent, WebhookSecret, WebhookTopic  # noqa: E402
from peerapp.models import Item, Plain  # noqa: E402
from peerproj.celery import app as celery_app  # noqa: E402

VAR = BENCH / "var"
PATH = "/peer"


def reset_state() -> None:
    with connection.cursor() as cur:
        cur.execute("TRUNCATE peerapp_item, peerapp_plain, django_webhook_webhookevent RESTART IDENTITY")
    celery_app.control.purge()


def create_webhook(port: int, token: str) -> None:
    """Once per run, before any Item save: django-webhook caches the topic's webhook ids per
    process for a minute, so a webhook replaced mid-run would be fired under a stale id."""
    Webhook.objects.all().delete()
    webhook = Webhook.objects.create(url=f"http://{harness.HOST}:{port}{PATH}")
    webhook.topics.add(WebhookTopic.objects.get(name="peerapp.Item/create"))
    WebhookSecret.objects.create(webhook=webhook, token=token)


def timed_save(obj) -> float:
    t = time.perf_counter()
    obj.save()
    return time.perf_counter() - t


def measure_overhead(count: int, warmup: int = 200) -> dict:
    """save() with django-webhook's listener (Item) vs without (Plain); no worker running."""
    for i in range(warmup):
        Plain(name=f"w{i}").save()
        Item(name=f"w{i}").save()
    bare, hooked = [], []
    for i in range(count):
        if i % 2:
            bare.append(timed_save(Plain(name=f"p{i}", tokens=i)))
            hooked.append(timed_save(Item(name=f"i{i}", tokens=i)))
        else:
            hooked.append(timed_save(Item(name=f"i{i}", tokens=i)))
            bare.append(timed_save(Plain(name=f"p{i}", tokens=i)))
    celery_app.control.purge()
    b, h = harness.summary_ms(bare), harness.summary_ms(hooked)
    return {
        "bare_save": b,
        "hooked_save": h,
        "overhead_median_ms": round(h["median_ms"] - b["median_ms"], 3),
        "overhead_p99_ms": round(h["p99_ms"] - b["p99_ms"], 3),
    }


class Worker:
    """`celery worker` of the peer project: prefork, concurrency 2, log level WARNING."""

    def __init__(self, concurrency: int = 2):
        self.ready_file = Path(tempfile.mkdtemp()) / "ready"
        env = {**os.environ, "PEER_READY_FILE": str(self.ready_file), "PYTHONWARNINGS": "ignore::RuntimeWarning"}
        VAR.mkdir(exist_ok=True)
        self.log = open(VAR / "peer-worker.log", "ab")
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "peerproj",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            "bench_peer",
            "-l",
            "warning",
            "-n",
            f"bench-peer-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
        self.proc = subprocess.Popen(cmd, cwd=PEER, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"peer worker not ready; see {VAR / 'peer-worker.log'}")
            time.sleep(0.02)
        return time.time()

    def stop(self) -> None:
        harness.stop_process(self.proc, timeout=30)
        self.log.close()


def deliveries(port: int, n: int, mode: str, timeout: float) -> dict:
    harness.reset(port)
    worker = Worker() if mode == "live" else None
    if worker:
        worker.wait_ready()
    t0 = time.time()
    for i in range(n):
        Item(name=f"d{i}", tokens=i).save()
    saves_s = time.time() - t0
    if not worker:
        worker = Worker()
        t0 = worker.wait_ready()
    try:
        s = harness.wait_for_requests(port, n, timeout)
    finally:
        worker.stop()
    seen = s["requests"]
    elapsed = (s["last"] - t0) if seen else None
    return {
        "mode": mode,
        "n": n,
        "received": seen,
        "verified": s["verified"],
        "failed": s["failed"],
        "connections": s["connections"],
        "saves_s": round(saves_s, 3),
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "deliveries_per_s": round(seen / elapsed, 1) if elapsed else None,
        "events_success": WebhookEvent.objects.filter(status="SUCCESS").count(),
        "complete": seen >= n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="django-webhook peer benchmark")
    parser.add_argument("-n", type=int, default=2000, help="deliveries (model saves) per mode")
    parser.add_argument("--overhead", type=int, default=2000, help="timed saves of each kind; 0 to skip")
    parser.add_argument("--mode", choices=("live", "drain", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=600, help="max seconds to wait for n deliveries")
    parser.add_argument("--ceiling", type=int, default=20000, help="receiver ceiling requests; 0 to skip")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args()

    token = secrets.token_urlsafe(24)
    port = harness.free_port()
    result = {"peer": "django-webhook 0.0.15", "loadavg_before": os.getloadavg(), "receiver": {}}
    VAR.mkdir(exist_ok=True)
    ceiling_secret = harness.new_standard_secret()
    table = {PATH: {"scheme": "django-webhook", "secret": token}, "/ceiling": ceiling_secret}
    with harness.receiver(table, port=port, log=VAR / "peer-receiver.log") as port:
        if args.ceiling:
            result["receiver"]["ceiling"] = ceiling.run(args.ceiling, 4, 60, port, ceiling_secret)
        reset_state()
        create_webhook(port, token)
        if args.overhead:
            result["save_overhead"] = measure_overhead(args.overhead)
        for mode in ("live", "drain") if args.mode == "both" else (args.mode,):
            reset_state()
            result[mode] = deliveries(port, args.n, mode, args.timeout)
        result["receiver"]["loop"] = harness.stats(port)["loop"]
    result["loadavg_after"] = os.getloadavg()  # the machine is shared: high numbers mean noisy figures
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
