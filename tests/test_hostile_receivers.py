"""Receivers that misbehave: trickle bytes, reset the connection, answer with 10 MB. The
worker gives up on time, logs why, keeps memory bounded, and is free for the next delivery."""

import socket
import time
from pathlib import Path

import pytest
from django.conf import settings

from agents_hooks.models import Step
from deliveries.models import Attempt, Delivery
from tests.receiver import RawServer
from tests.support import wait_until


def trickle(conn):
    """Headers one byte at a time, each well inside the read timeout: only a deadline stops it."""
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
        conn.sendall(bytes([byte]))
        time.sleep(0.25)


def reset(conn):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def huge_body(conn):
    size = 10 * 1024 * 1024
    conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        conn.sendall(chunk)


@pytest.fixture
def raw_server():
    servers = []

    def make(behaviour):
        server = RawServer(behaviour)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def complete_a_step(agent):
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()


def worker_rss_kb(worker) -> int:
    """Resident memory of the worker process and its children, in KiB."""
    total = 0
    for status in Path("/proc").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        pid = int(fields["Pid"])
        if pid == worker.proc.pid or int(fields.get("PPid", 0)) == worker.proc.pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def test_trickling_receiver_is_cut_off_at_the_deadline(live, agent, make_endpoint, raw_server):
    slow = raw_server(trickle)
    make_endpoint(url=slow.url())
    complete_a_step(agent)
    delivery = wait_until(lambda: Attempt.objects.first(), timeout=30, message="first attempt logged").delivery
    first = delivery.attempts.order_by("number").first()
    assert first.status_code is None
    assert "timeout" in first.error.lower()
    # Deadline WEBHOOK_TIMEOUT (2 s in tests), not 10,000 bytes * 0.25 s.
    assert first.duration_ms < (settings.WEBHOOK_TIMEOUT + 1.5) * 1000, first.duration_ms


def test_reset_connection_is_logged_and_retried(live, agent, make_endpoint, raw_server):
    server = raw_server(reset)
    make_endpoint(url=server.url())
    complete_a_step(agent)
    delivery = wait_until(lambda: Delivery.objects.filter(status="dead").first(), timeout=30, message="dead")
    attempts = list(delivery.attempts.order_by("number"))
    assert len(attempts) == len(settings.WEBHOOK_RETRY_SCHEDULE) + 1
    assert all(a.status_code is None and a.error for a in attempts)


def test_huge_response_is_truncated_and_memory_stays_bounded(live, worker, agent, make_endpoint, raw_server):
    big = raw_server(huge_body)
    make_endpoint(url=big.url())
    before = worker_rss_kb(worker)
    for _ in range(5):
        complete_a_step(agent)
    wait_until(lambda: Delivery.objects.filter(status="succeeded").count() == 5, timeout=30, message="5 successes")
    for attempt in Attempt.objects.all():
        assert attempt.status_code == 200
        assert len(attempt.response_body) == settings.WEBHOOK_RESPONSE_BODY_LIMIT
    grown_mb = (worker_rss_kb(worker) - before) / 1024
    assert grown_mb < 40, f"worker grew {grown_mb:.0f} MB answering five 10 MB bodies"


def test_a_stuck_receiver_does_not_hold_up_the_next_delivery(live, agent, make_endpoint, raw_server):
    slow = raw_server(trickle)
    make_endpoint("/fast")
    stuck = make_endpoint(url=slow.url())
    complete_a_step(agent)
    # Both deliveries go out together; the fast one is not held up by the slow one: it arrived
    # before the stuck request's deadline ended it (times of the worker's own log, not luck).
    (fast,) = live.wait_for(1, path="/fast")
    attempt = wait_until(lambda: Attempt.objects.filter(delivery__endpoint=stuck).first(), message="the stuck attempt")
    assert attempt.duration_ms >= settings.WEBHOOK_TIMEOUT * 1000 - 50  # it was stuck to its deadline
    assert fast.at < attempt.started_at.timestamp() + attempt.duration_ms / 1000


def nul_bytes(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nok\x00\x00ok")


def test_nul_bytes_in_an_answer_do_not_cost_the_batch_its_log(live, agent, make_endpoint, raw_server):
    # PostgreSQL text cannot hold NUL; the answer shares a batch with a well-behaved endpoint.
    server = raw_server(nul_bytes)
    odd = make_endpoint(url=server.url() + "/nul")
    fine = make_endpoint("/fine")
    complete_a_step(agent)
    live.wait_for(1, path="/fine")
    wait_until(lambda: Delivery.objects.filter(status="succeeded").count() == 2, message="both recorded")
    assert Attempt.objects.get(delivery__endpoint=odd).response_body == "ok\ufffd\ufffdok"
    assert Attempt.objects.get(delivery__endpoint=fine).status_code == 200
