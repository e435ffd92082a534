"""The HTTP client's edges, against raw sockets on 127.0.0.1 that answer exactly as scripted:
the forms of response a real receiver may give, and keep-alive across them."""

import email.utils
import socket
import threading
import time

import pytest

from deliveries import transport
from tests.support import wait_until


def answer(raw: bytes):
    def behaviour(conn):
        conn.sendall(raw)
        time.sleep(0.2)  # let the client read before the server side closes

    return behaviour


def post(server, path="/hook") -> transport.Response:
    return transport.post(f"http://127.0.0.1:{server.port}{path}", b'{"a": 1}', {}, timeout=2, connect_timeout=2)


@pytest.mark.parametrize(
    "reply, status, body",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok"),
        (
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
            201,
            "abcde",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", 202, ""),
        (b"HTTP/1.0 500 Oops\r\n\r\nbody until close", 500, "body until close"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204, ""),
        # "\xb2" is a digit to str.isdigit() but not to int(): read to the end instead.
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\nRetry-After: \xb2\r\n\r\nok", 200, "ok"),
        (b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n", 302, ""),
    ],
)
def test_response_forms(raw, reply, status, body):
    response = post(raw(answer(reply)))
    assert (response.status_code, response.body, response.error) == (status, body, "")


def test_redirect_is_not_followed(raw):
    server = raw(answer(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"))
    assert post(server).status_code == 307
    assert server.connections == 1


def test_garbage_is_an_error_not_an_answer(raw):
    response = post(raw(answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")))
    assert response.status_code is None
    assert "not an HTTP response" in response.error


def test_retry_after_as_http_date(raw):
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    reply = f"HTTP/1.1 503 Busy\r\nRetry-After: {when}\r\nContent-Length: 0\r\n\r\n".encode()
    response = post(raw(answer(reply)))
    assert response.status_code == 503
    assert 100 < response.retry_after <= 120


def test_keep_alive_reuses_one_connection(receiver, settings):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    receiver.reset()
    transport._process().idle.clear()
    for _ in range(5):
        assert transport.post(receiver.url("/ka"), b"{}", {}, timeout=2, connect_timeout=2).status_code == 200
    receiver.wait_for(5, path="/ka")
    # Five POSTs one after another: one connection, back in the pool after each.
    assert sum(len(v) for v in transport._process().idle.values()) == 1


def test_stale_keep_alive_connection_is_retried_once_on_a_fresh_one(raw):
    """The receiver closes an idle connection; the next POST sees it closed before writing
    (the pool checks an idle socket before reuse) and goes on a new connection, transparently.
    A POST already written is never sent again: tests/test_http_framing.py."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def once_then_close(conn):
        conn.sendall(reply)  # answers, then closes while the client keeps it for reuse

    server = raw(once_then_close)
    assert post(server).status_code == 200
    time.sleep(0.2)
    assert post(server).status_code == 200
    assert server.connections == 2


def test_body_over_the_limit_is_cut_and_the_connection_dropped(raw, settings):
    settings.WEBHOOK_RESPONSE_BODY_LIMIT = 10
    server = raw(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100))
    response = post(server)
    assert response.status_code == 200 and response.body == "x" * 10
    assert not any(transport._process().idle.get(k) for k in transport._process().idle if k[2] == server.port)


def test_header_values_cannot_inject_headers(receiver, settings):
    """Custom headers are checked by the API and admin; the transport refuses CR/LF anyway,
    for a row written any other way."""
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    receiver.reset()
    headers = {"X-Team": "a\r\nX-Injected: 1", "X-Fine": "yes"}
    assert transport.post(receiver.url("/inj"), b"{}", headers, timeout=2, connect_timeout=2).status_code == 200
    (request,) = receiver.wait_for(1, path="/inj")
    assert "X-Injected" not in request.headers and "X-Team" not in request.headers
    assert request.headers["X-Fine"] == "yes"


def test_non_ascii_host_and_path_are_encoded(monkeypatch, receiver, settings):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    receiver.reset()
    real = socket.getaddrinfo
    monkeypatch.setattr(
        socket, "getaddrinfo",
        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        if host == "bücher.example" else real(host, port, *a, **k),
    )  # fmt: skip
    transport._process().dns.clear()
    url = f"http://bücher.example:{receiver.port}/é/x"
    assert transport.post(url, b"{}", {}, timeout=2, connect_timeout=2).status_code == 200
    (request,) = receiver.wait_for(1, path="/%C3%A9/x")
    assert request.headers["Host"] == f"xn--bcher-kva.example:{receiver.port}"


def test_a_hung_resolver_costs_a_request_its_connect_timeout_only(monkeypatch, settings):
    # A resolver is outside this machine, so here it is the one thing faked: it never answers.
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    released = threading.Event()
    real = socket.getaddrinfo

    def hung(host, port, *args, **kwargs):
        if host == "hung.example":
            released.wait(10)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    transport._process().dns.clear()
    try:
        started = time.monotonic()
        response = transport.post("http://hung.example/", b"{}", {}, timeout=30, connect_timeout=1)
        took = time.monotonic() - started
        assert response.status_code is None and "did not resolve in time" in response.error
        assert 0.95 < took < 5  # its connect timeout, not the request's 30 s nor the resolver's 10 s
        assert not response.refused  # worth retrying: DNS outages pass
    finally:
        released.set()


def test_an_answer_slower_than_the_connect_timeout_is_still_cached_for_the_next_request(
    monkeypatch, receiver, settings
):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    receiver.reset()
    real = socket.getaddrinfo

    def slow(host, port, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(0.5)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    transport._process().dns.clear()
    url = f"http://slow-dns.example:{receiver.port}/cached"
    first = transport.post(url, b"{}", {}, timeout=2, connect_timeout=0.2)
    assert "did not resolve in time" in first.error
    cached = ("slow-dns.example", receiver.port)
    wait_until(lambda: cached in transport._process().dns, message="the late answer cached")
    assert transport.post(url, b"{}", {}, timeout=2, connect_timeout=0.2).status_code == 200
