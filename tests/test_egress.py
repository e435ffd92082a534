"""How a POST leaves the worker: every checked address of a name is tried (one dead record does
not fail the endpoint), however many hosts are POSTed to the process keeps a bounded number of
idle connections and names, and with WEBHOOK_PROXY_URL every POST goes through the operator's
CONNECT proxy, with URL safety still judging the endpoint.

DNS for made-up names cannot be served here: it is faked at the lowest level
(socket.getaddrinfo), as the internet would answer."""

import base64
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from deliveries import pipeline, transport
from deliveries.models import Delivery
from tests import test_tls
from tests.support import fanned_out_here, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
# A test CA trusted through WEBHOOK_CA_BUNDLE, and HTTPS servers on loopback noting SNI and Host.
pki, serve, issue = test_tls.pki, test_tls.serve, test_tls.issue


def fake_dns(monkeypatch, answers: dict[str, list[str]]):
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [
                (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in answers[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def fresh_transport(monkeypatch, settings):
    """A process state of its own (pool, DNS cache), receivers on loopback allowed."""
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8", "::1/128"]
    monkeypatch.setattr(transport, "_state", None)
    yield
    state = transport._state
    if state is not None:
        for conns in state.idle.values():
            for conn in conns:
                conn.close()
        state.resolver.shutdown(wait=False)


def post(url: str) -> transport.Response:
    return transport.post(url, b'{"a": 1}', {}, timeout=3, connect_timeout=2)


# --- every address ---------------------------------------------------------------------------


def test_a_dead_first_address_falls_back_to_the_next(fresh_transport, monkeypatch, receiver):
    receiver.reset()
    # Nothing listens on 127.0.0.2 or [::1] at the receiver's port: refused (or unreachable).
    fake_dns(monkeypatch, {"two.example": ["127.0.0.2", "::1", "127.0.0.1"]})
    for _ in range(2):  # and again from the DNS cache: the dead record is not stuck first
        response = post(f"http://two.example:{receiver.port}/two")
        assert (response.status_code, response.error) == (200, "")
    (first, second) = receiver.received("/two")
    assert first.headers["Host"] == f"two.example:{receiver.port}"


def test_a_black_holed_first_address_costs_its_share_of_the_connect_time(fresh_transport, monkeypatch, receiver):
    """A record whose packets vanish (no refusal, just silence) is given up on in time for
    the next address: the connect timeout is shared, not spent on the first."""
    real = socket.create_connection
    waited = []

    def create_connection(address, timeout=None, *args, **kwargs):
        if address[0] == "127.0.0.2":  # the internet, dropping SYNs
            waited.append(timeout)
            threading.Event().wait(timeout)
            raise TimeoutError("timed out")
        return real(address, timeout, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    fake_dns(monkeypatch, {"silent.example": ["127.0.0.2", "127.0.0.1"]})
    receiver.reset()
    response = transport.post(f"http://silent.example:{receiver.port}/silent", b"{}", {}, timeout=3, connect_timeout=1)
    assert (response.status_code, response.error) == (200, "")
    assert len(waited) == 1 and 0.3 < waited[0] <= 0.5


def test_every_address_is_checked_before_any_is_tried(fresh_transport, monkeypatch, settings, receiver):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    fake_dns(monkeypatch, {"mixed.example": ["127.0.0.1", "10.1.2.3"]})
    connects = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a))
    response = post(f"http://mixed.example:{receiver.port}/x")
    assert response.refused and "10.1.2.3" in response.error
    assert connects == []


def test_all_addresses_dead_is_a_connection_error(fresh_transport, monkeypatch):
    port = free_port()
    fake_dns(monkeypatch, {"dead.example": ["127.0.0.2", "127.0.0.3"]})
    response = post(f"http://dead.example:{port}/x")
    assert response.status_code is None and not response.timed_out
    assert "refused" in response.error.lower()


# --- bounded state ---------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def pooled(state) -> int:
    return sum(len(conns) for conns in state.idle.values())


def test_many_hosts_keep_a_bounded_pool_and_dns_cache(fresh_transport, monkeypatch, receiver):
    monkeypatch.setattr(transport, "MAX_IDLE_CONNECTIONS", 4)
    monkeypatch.setattr(transport, "DNS_CACHE_SIZE", 8)
    hosts = [f"host{n}.example" for n in range(40)]
    fake_dns(monkeypatch, {host: ["127.0.0.1"] for host in hosts})
    receiver.reset()
    before = open_fds()
    for host in hosts:
        assert post(f"http://{host}:{receiver.port}/many").status_code == 200
    state = transport._process()
    assert pooled(state) == state.idle_count <= 4
    assert len(state.dns) <= 8
    wait_until(lambda: not state.lookups, message="finished lookups forgotten")
    # Our 4 idle sockets and the receiver's 4 ends of them (this process serves them too).
    wait_until(lambda: open_fds() - before <= 8, message=f"fds bounded (before {before}, now {open_fds()})")


def test_idle_connections_of_hosts_never_used_again_are_closed(fresh_transport, monkeypatch, receiver):
    monkeypatch.setattr(transport, "IDLE_SECONDS", 0.2)
    fake_dns(monkeypatch, {"once.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    receiver.reset()
    assert post(f"http://once.example:{receiver.port}/once").status_code == 200
    state = transport._process()
    (conns,) = state.idle.values()
    (once,) = conns
    threading.Event().wait(0.3)
    assert post(f"http://other.example:{receiver.port}/other").status_code == 200
    assert [key[3] for key in state.idle] == ["other.example"]
    assert once.sock.fileno() == -1  # closed, not merely forgotten


def test_expired_names_leave_the_dns_cache(fresh_transport, monkeypatch, receiver):
    monkeypatch.setattr(transport, "DNS_CACHE_SECONDS", 0.1)
    fake_dns(monkeypatch, {"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})
    receiver.reset()
    assert post(f"http://a.example:{receiver.port}/a").status_code == 200
    threading.Event().wait(0.2)
    assert post(f"http://b.example:{receiver.port}/b").status_code == 200
    state = transport._process()
    wait_until(lambda: list(state.dns) == [("b.example", receiver.port)], message="a.example expired")


# --- egress proxy ----------------------------------------------------------------------------


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that records each request head and relays bytes
    (to `route_to` if given, standing in for the internet; else to the requested target)."""

    def __init__(self, refuse: int | None = None, route_to: tuple[str, int] | None = None):
        self.refuse = refuse
        self.route_to = route_to
        self.heads: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def connect_lines(self) -> list[str]:
        return [head.split("\r\n")[0] for head in self.heads]

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            self.heads.append(head.decode("latin-1").partition("\r\n\r\n")[0])
            if self.refuse:
                client.sendall(f"HTTP/1.1 {self.refuse} Nope\r\nContent-Length: 0\r\n\r\n".encode())
                return
            target = head.split(b" ")[1].decode()
            host, _, port = target.rpartition(":")
            try:
                upstream = socket.create_connection(self.route_to or (host.strip("[]"), int(port)), timeout=5)
            except OSError:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
                self._pipe(client, upstream)

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def proxy(settings, fresh_transport):
    proxies = []

    def start(userinfo: str = "", **options) -> ConnectProxy:
        proxies.append(ConnectProxy(**options))
        settings.WEBHOOK_PROXY_URL = f"http://{userinfo}127.0.0.1:{proxies[-1].port}"
        return proxies[-1]

    yield start
    for p in proxies:
        p.close()


def test_a_delivery_goes_through_the_proxy_signed(proxy, receiver_only, org, make_endpoint):
    through = proxy()
    endpoint = make_endpoint("/proxied")
    (outcome,) = pipeline.send_claimed(fanned_out_here(org))
    assert outcome.status == "succeeded"
    assert through.connect_lines == [f"CONNECT 127.0.0.1:{receiver_only.port} HTTP/1.1"]
    assert "proxy-authorization" not in through.heads[0].lower()
    (request,) = receiver_only.received("/proxied")
    envelope = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert envelope["event_type"] == "agent.custom.thing"


def test_the_tunnel_goes_to_the_checked_address_and_is_kept_alive(proxy, monkeypatch, settings, receiver):
    """The proxy (the operator's, on loopback) is not judged by URL safety; the endpoint is,
    and the tunnel is opened to the address it was judged by, with the Host header its name."""
    settings.WEBHOOK_ALLOWED_CIDRS = []
    through = proxy(route_to=("127.0.0.1", receiver.port))  # the proxy "reaches the internet"
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14"]})
    receiver.reset()
    for _ in range(2):
        response = post("http://hooks.example.com/public")
        assert (response.status_code, response.error) == (200, "")
    assert through.connect_lines == ["CONNECT 93.184.215.14:80 HTTP/1.1"]  # one tunnel, two POSTs
    assert [r.headers["Host"] for r in receiver.received("/public")] == ["hooks.example.com"] * 2


def test_proxy_credentials_are_sent_as_basic_auth(proxy, receiver):
    through = proxy("hooks:p%40ss@")
    receiver.reset()
    assert post(receiver.url("/auth")).status_code == 200
    token = base64.b64encode(b"hooks:p@ss").decode()
    assert f"Proxy-Authorization: Basic {token}" in through.heads[0].split("\r\n")


def test_a_proxy_refusing_the_tunnel_is_a_clear_attempt_error(proxy, receiver_only, org, make_endpoint):
    through = proxy(refuse=403)
    make_endpoint("/refused-by-proxy")
    (delivery,) = fanned_out_here(org)
    pipeline.send_claimed([delivery])
    (attempt,) = Delivery.objects.get(pk=delivery.pk).attempts.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("ProxyError:")
    assert f"127.0.0.1:{through.port}" in attempt.error and "403" in attempt.error
    assert receiver_only.received("/refused-by-proxy") == []


def test_url_safety_still_refuses_a_private_endpoint_through_the_proxy(proxy, settings):
    through = proxy()
    settings.WEBHOOK_ALLOWED_CIDRS = []
    response = post("http://10.0.0.5/hook")
    assert response.refused and "private" in response.error
    assert through.heads == []


@pytest.mark.parametrize(
    "value", ["socks5://127.0.0.1:1080", "http://proxy.internal", "http://proxy:99999", "http://proxy:3128/path"]
)
def test_a_bad_proxy_url_stops_start_up_naming_the_variable(value):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings", "WEBHOOK_PROXY_URL": value}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "WEBHOOK_PROXY_URL" in result.stderr.splitlines()[-1], result.stderr[-500:]


def test_https_through_the_proxy_keeps_the_endpoints_name_in_sni_and_host(proxy, pki, serve):
    server = serve(issue("localhost", pki, hosts=("localhost",)))
    through = proxy()
    response = post(f"https://localhost:{server.port}/hook")
    assert (response.status_code, response.error) == (200, "")
    assert f"CONNECT 127.0.0.1:{server.port} HTTP/1.1" in through.connect_lines  # (after [::1], if it resolves)
    assert server.server_names == ["localhost"]
    assert server.hosts == [f"localhost:{server.port}"]
