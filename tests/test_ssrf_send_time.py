"""An endpoint URL that slipped past create-time checks (or whose DNS changed since) is still
refused at send time, against the address the worker would connect to."""

import socket

from agents_hooks.models import Step
from deliveries import transport
from deliveries.models import Delivery
from tests.support import wait_until


def complete_a_step(agent):
    step = Step.objects.create(agent=agent)
    step.status = "success"
    step.save()


def test_private_address_is_refused_at_send_time_without_retry(live, agent, make_endpoint):
    # Written straight to the database, as an old row or a bypassed API would be.
    make_endpoint(url="http://169.254.169.254/latest/meta-data/")
    complete_a_step(agent)
    delivery = wait_until(lambda: Delivery.objects.exclude(status="pending").first(), message="delivery finished")
    assert delivery.status == "failed"
    (attempt,) = delivery.attempts.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused:")
    assert "169.254.169.254" in attempt.error and "link-local" in attempt.error


def test_unresolvable_host_is_retried_then_given_up(live, agent, make_endpoint):
    make_endpoint(url="http://rebind.invalid/hook")  # .invalid never resolves (RFC 6761)
    complete_a_step(agent)
    delivery = wait_until(lambda: Delivery.objects.exclude(status="pending").first(), timeout=30, message="finished")
    assert delivery.status == "dead"  # a DNS failure may pass: retried, unlike a refused address
    assert all("does not resolve" in a.error for a in delivery.attempts.all())


def fake_dns(monkeypatch, answers: dict[str, str]):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    transport._process().dns.clear()


def test_rebinding_name_is_refused_before_any_connection(monkeypatch, settings):
    """The name passed the create-time check while it answered a public address; now it
    answers a private one. The worker's own lookup decides, and nothing is connected."""
    settings.WEBHOOK_ALLOWED_CIDRS = []
    fake_dns(monkeypatch, {"hooks.example.com": "10.1.2.3"})
    connects = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a))
    response = transport.post("http://hooks.example.com/x", b"{}", {}, timeout=2, connect_timeout=2)
    assert response.refused and response.status_code is None
    assert "10.1.2.3" in response.error and "private" in response.error
    assert connects == []


def test_connection_goes_to_the_checked_address_with_the_original_host(monkeypatch, receiver):
    """The request reaches the address the check approved, carrying the endpoint's own Host."""
    receiver.reset()
    fake_dns(monkeypatch, {"receiver.example": "127.0.0.1"})
    url = f"http://receiver.example:{receiver.port}/pinned?x=1"
    response = transport.post(url, b"{}", {"Content-Type": "application/json"}, timeout=2, connect_timeout=2)
    assert response.status_code == 200
    (request,) = receiver.wait_for(1, path="/pinned?x=1")
    assert request.headers["Host"] == f"receiver.example:{receiver.port}"
