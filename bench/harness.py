"""Shared helpers: start/stop a receiver process, read its counters, wait for deliveries,
summarise timings. Standard library only, so both the project venv and the peer venv use it."""

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"  # loopback only: every benchmark target lives on this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def new_standard_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def control(port: int, path: str, payload=None):
    """GET (or POST with `payload`) a receiver control endpoint; return the decoded JSON."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        body = None if payload is None else json.dumps(payload)
        conn.request("GET" if body is None else "POST", path, body=body)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"receiver {path}: HTTP {resp.status}")
        return json.loads(data)
    finally:
        conn.close()


def stats(port: int) -> dict:
    return control(port, "/_stats")


def reset(port: int) -> None:
    control(port, "/_reset", {})


def fail(port: int, path: str, status: int | None) -> None:
    """Make the receiver answer `status` on `path` from now on (None: 200 again)."""
    control(port, "/_fail", {path: status})


def records(port: int, since: int = 0) -> list:
    return control(port, f"/_records?since={since}")


def wait_for_requests(port: int, n: int, timeout: float, interval: float = 0.1) -> dict:
    """Poll until the receiver has seen `n` requests or `timeout` passes; return its stats."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(port)
        if s["requests"] >= n or time.monotonic() > deadline:
            return s
        time.sleep(interval)


@contextlib.contextmanager
def receiver(
    secrets: dict,
    port: int | None = None,
    slow: dict | None = None,
    python: str | None = None,
    slow_bodies: dict | None = None,
    max_seconds: float = 3600,
    log: Path | None = None,
):
    """Run bench/receiver.py as its own process for the duration of the block; yield its port."""
    port = port or free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(secrets, f)
    cmd = [
        python or sys.executable,
        str(BENCH / "receiver.py"),
        "--port",
        str(port),
        "--secrets-file",
        f.name,
        "--max-seconds",
        str(max_seconds),
    ]
    for path, seconds in (slow or {}).items():
        cmd += ["--slow", f"{path}={seconds}"]
    for text, seconds in (slow_bodies or {}).items():
        cmd += ["--slow-body", f"{text}={seconds}"]
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                stats(port)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"receiver did not start: {cmd}") from None
                time.sleep(0.05)
        yield port
    finally:
        stop_process(proc)
        os.unlink(f.name)
        if log:
            out.close()


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the one process we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary_ms(seconds: list[float]) -> dict:
    """median / p99 / mean in milliseconds of a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def latencies(recs: list, sent_at: dict[str, float], missing_at: float | None = None) -> dict:
    """Arrival minus send time (both unix seconds) per webhook-id seen by the receiver, e.g.
    sent_at = {event.id: event.created_at.timestamp()} for our service. With `missing_at` (when
    the wait gave up), a message never seen counts as arriving then: a lower bound on its
    latency, so a run that loses or strands messages cannot report a better percentile."""
    first = {}
    for record in recs:  # [arrived, path, webhook-id, ok, status]
        arrived, msg_id = record[0], record[2]
        if msg_id in sent_at and msg_id not in first:
            first[msg_id] = arrived - sent_at[msg_id]
    missing = [missing_at - sent for msg_id, sent in sent_at.items() if msg_id not in first] if missing_at else []
    values = list(first.values()) + missing
    result = summary_ms(values) if values else {"n": 0}
    if missing_at is not None:
        result["missing"] = len(missing)
    return result
