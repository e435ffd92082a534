"""HTTPS, proven against real TLS servers on 127.0.0.1 with a CA and certificates made here:
what is trusted delivers, what is not is refused with a clear error (and retried as a
connection failure), the endpoint's name travels in SNI and Host while the socket goes to the
pinned address, TLS 1.2 is the floor, a handshake is cut at the deadline, an operator's extra
CA bundle is trusted, and an endpoint's client certificate is presented (mutual TLS)."""

import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import reverse

from agents_hooks.models import Step
from deliveries import transport
from deliveries.models import Attempt, Delivery
from tests.receiver import RawServer
from tests.support import ROOT, Worker, wait_until
from webhooks.models import Endpoint

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


class Issued:
    """A certificate and its key, as PEM text."""

    def __init__(self, cert: x509.Certificate, key):
        self.cert, self.key = cert, key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def files(self, tmp_path, name: str) -> tuple[str, str]:
        cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        cert.write_text(self.cert_pem)
        key.write_text(self.key_pem)
        return str(cert), str(key)


def issue(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
    not_before=NOW - DAY,
    not_after=NOW + 30 * DAY,
    client: bool = False,
) -> Issued:
    """A certificate for `common_name`, signed by `issuer` (self-signed without one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


class TLSServer:
    """An HTTPS server on 127.0.0.1 answering every request 200, noting the SNI name and Host
    header it was sent and the client certificate it saw."""

    def __init__(
        self,
        tmp_path,
        served: Issued,
        *,
        chain: tuple[Issued, ...] = (),
        client_ca: Issued | None = None,
        maximum_version=None,
    ):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert_file = tmp_path / f"served-{id(self)}.pem"
        cert_file.write_text(served.cert_pem + "".join(c.cert_pem for c in chain) + served.key_pem)
        self.context.load_cert_chain(str(cert_file))
        if maximum_version:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.context.minimum_version = ssl.TLSVersion.TLSv1
                self.context.maximum_version = maximum_version
            self.context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 above level 0
        if client_ca:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cadata=client_ca.cert_pem)
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        self.peers: list[dict | None] = []
        self.context.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw):
        raw.settimeout(5)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        try:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
                self.hosts += [line.split(":", 1)[1].strip() for line in head if line.lower().startswith("host:")]
                self.peers.append(conn.getpeercert())
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def pki(tmp_path, settings):
    """A test CA, trusted through WEBHOOK_CA_BUNDLE as an operator would."""
    ca = issue("Test Webhooks CA", ca=True)
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.cert_pem)
    settings.WEBHOOK_CA_BUNDLE = str(bundle)
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    return ca


@pytest.fixture
def serve(tmp_path):
    servers = []

    def make(served, **kwargs):
        servers.append(TLSServer(tmp_path, served, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def post(url: str, **kwargs) -> transport.Response:
    return transport.post(url, b'{"a": 1}', {}, timeout=2, connect_timeout=2, **kwargs)


def test_a_trusted_certificate_delivers_with_the_endpoints_name_in_sni_and_host(pki, serve):
    server = serve(issue("localhost", pki, hosts=("localhost",)))

    response = post(f"https://localhost:{server.port}/hook")

    assert (response.status_code, response.body, response.error) == (200, "ok", "")
    # The socket went to the pinned 127.0.0.1; the name the endpoint was configured with is
    # what the server was told, in the handshake and in the request.
    assert server.server_names == ["localhost"]
    assert server.hosts == [f"localhost:{server.port}"]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("self-signed", "TLS certificate refused: self-signed certificate"),
        ("expired", "TLS certificate refused: certificate has expired"),
        ("wrong host name", "TLS certificate refused: Hostname mismatch, certificate is not valid for 'localhost'."),
        ("untrusted CA", "TLS certificate refused: unable to get local issuer certificate"),
    ],
)
def test_a_certificate_not_to_be_trusted_is_refused_with_a_clear_error(pki, serve, case, expected):
    served = {
        "self-signed": lambda: issue("localhost", hosts=("localhost",)),
        "expired": lambda: issue(
            "localhost", pki, hosts=("localhost",), not_before=NOW - 60 * DAY, not_after=NOW - DAY
        ),
        "wrong host name": lambda: issue("example.org", pki, hosts=("example.org",)),
        "untrusted CA": lambda: issue("localhost", issue("Another CA", ca=True), hosts=("localhost",)),
    }[case]()
    server = serve(served)

    response = post(f"https://localhost:{server.port}/hook")

    assert response.status_code is None
    assert response.error.startswith(expected), response.error
    # A connection failure, retried on the schedule: not a timeout, not a refused URL.
    assert not response.timed_out and not response.refused
    assert transport.outcome_class(None, response.error) == "connection_error"
    assert server.hosts == []  # not a byte of the POST went to it


def test_without_the_ca_bundle_the_test_ca_is_not_trusted(pki, serve, settings):
    server = serve(issue("localhost", pki, hosts=("localhost",)))
    settings.WEBHOOK_CA_BUNDLE = ""

    response = post(f"https://localhost:{server.port}/hook")

    assert response.error.startswith("TLS certificate refused: unable to get local issuer certificate")


def test_tls_1_2_is_the_floor(pki, serve):
    server = serve(issue("localhost", pki, hosts=("localhost",)), maximum_version=ssl.TLSVersion.TLSv1_1)
    assert transport._tls_context("", None).minimum_version == ssl.TLSVersion.TLSv1_2

    # Proof the server really speaks TLS 1.1: a client that allows it gets through.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lenient = ssl.create_default_context(cadata=pki.cert_pem)
        lenient.minimum_version = ssl.TLSVersion.TLSv1
        lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:
            with lenient.wrap_socket(raw, server_hostname="localhost") as tls:
                offered = tls.version()
    except ssl.SSLError:
        offered = None
    if offered != "TLSv1.1":
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all (got {offered}); the minimum_version check stands")

    response = post(f"https://localhost:{server.port}/hook")

    assert response.status_code is None
    assert response.error == "TLS handshake failed: TLSV1_ALERT_PROTOCOL_VERSION", response.error
    assert server.hosts == []


def test_a_handshake_that_never_ends_is_a_timeout_within_the_deadline(settings, monkeypatch):
    settings.WEBHOOK_ALLOWED_CIDRS = ["127.0.0.0/8"]
    silent = RawServer(lambda conn: time.sleep(10))  # reads the ClientHello, never answers it
    # The network is slow to connect: the handshake must get what is left, not a fresh timeout.
    real_connect = socket.create_connection

    def slow_connect(*args, **kwargs):
        time.sleep(2.0)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(transport.socket, "create_connection", slow_connect)
    try:
        response = transport.post(f"https://localhost:{silent.port}/hook", b"{}", {}, timeout=3, connect_timeout=3)
    finally:
        silent.close()

    assert response.timed_out
    assert response.error == "timeout after 3s"
    assert transport.outcome_class(None, response.error) == "timeout"
    # Within the 3 s deadline (and a loaded machine's slack); a fresh handshake timeout would
    # take 2 + 3 = 5 s or more.
    assert response.duration_ms < 4500, response.duration_ms


def test_mutual_tls_presents_the_endpoints_client_certificate(pki, serve):
    server = serve(issue("localhost", pki, hosts=("localhost",)), client_ca=pki)
    client = issue("org-1 endpoint", pki, client=True)
    url = f"https://localhost:{server.port}/hook"

    without = post(url)
    with_cert = post(url, client_cert=(client.cert_pem, client.key_pem))
    # The connection that presented the certificate is pooled for that certificate only.
    without_again = post(url)

    # TLS 1.3 sends the server's refusal after the handshake: the client reads either its
    # alert (CERTIFICATE_REQUIRED) or, if the server closed first, the end of the stream.
    assert without.status_code is None, without
    assert "CERTIFICATE_REQUIRED" in without.error or "EOF" in without.error, without
    assert (with_cert.status_code, with_cert.body) == (200, "ok")
    assert without_again.status_code is None
    assert [dict(p["subject"][0]) for p in server.peers] == [{"commonName": "org-1 endpoint"}]


# --- mutual TLS: setting the certificate (API, admin) and the worker presenting it ----------


PUBLIC = "https://93.184.216.34/hook"


def test_a_client_certificate_is_set_through_the_api_and_never_shown_again(api):
    ca = issue("Test CA", ca=True)
    client = issue("acme-webhooks", ca, client=True)

    created = api.post(
        "/api/v1/webhooks/",
        {"url": PUBLIC, "client_certificate": client.cert_pem, "client_key": client.key_pem},
        format="json",
    )

    assert created.status_code == 201, created.json()
    listed = api.get(f"/api/v1/webhooks/{created.json()['id']}/").json()
    for shown in (created.json(), listed):
        assert shown["has_client_certificate"] is True
        assert shown["client_certificate_subject"] == "CN=acme-webhooks"
        assert shown["client_certificate_expires_at"]
        assert "client_key" not in shown and "client_certificate" not in shown
        assert "PRIVATE KEY" not in json.dumps(shown) and "BEGIN CERTIFICATE" not in json.dumps(shown)
    endpoint = Endpoint.objects.get(pk=created.json()["id"])
    assert client.key_pem.split("\n")[1] not in endpoint.client_key_encrypted  # stored encrypted
    assert endpoint.client_certificate == (client.cert_pem, client.key_pem)

    # Another PATCH leaves it; blank removes it.
    api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"description": "x"}, format="json")
    endpoint.refresh_from_db()
    assert endpoint.has_client_certificate
    removed = api.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"client_certificate": "", "client_key": ""}, format="json")
    assert removed.json()["has_client_certificate"] is False
    endpoint.refresh_from_db()
    assert endpoint.client_certificate is None and endpoint.client_cert_subject == ""


def test_a_bad_client_certificate_is_a_400_naming_the_field(api):
    ca = issue("Test CA", ca=True)
    client = issue("acme-webhooks", ca, client=True)
    other = issue("someone-else", ca, client=True)
    expired = issue("old", ca, client=True, not_before=NOW - 60 * DAY, not_after=NOW - DAY)
    cases = [
        ({"client_certificate": "-----BEGIN CERTIFICATE-----\nnope\n", "client_key": client.key_pem},
         "client_certificate", "not a PEM certificate"),
        ({"client_certificate": client.cert_pem, "client_key": "garbage"}, "client_key", "not a PEM private key"),
        ({"client_certificate": client.cert_pem, "client_key": other.key_pem}, "client_key",
         "does not match the certificate"),
        ({"client_certificate": expired.cert_pem, "client_key": expired.key_pem}, "client_certificate", "expired on"),
        ({"client_certificate": client.cert_pem}, "client_key", "required with the other half"),
    ]  # fmt: skip
    for body, field, message in cases:
        response = api.post("/api/v1/webhooks/", {"url": PUBLIC, **body}, format="json")
        assert response.status_code == 400, response.json()
        assert list(response.json()) == [field]
        assert message in response.json()[field][0]
    assert not Endpoint.objects.exists()


def test_the_admin_sets_keeps_and_removes_a_client_certificate_without_showing_it(admin_client, make_endpoint):
    ca = issue("Test CA", ca=True)
    client = issue("acme-webhooks", ca, client=True)
    endpoint = make_endpoint()
    page = reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])
    form = {
        "url": endpoint.url,
        "agent": "",
        "description": "",
        "event_types": "[]",
        "headers": "{}",
        "is_active": "on",
    }

    bad = admin_client.post(page, {**form, "client_certificate": client.cert_pem, "client_key": "nope"})
    assert bad.status_code == 200
    assert "not a PEM private key" in bad.context["adminform"].form.errors["client_key"][0]

    assert (
        admin_client.post(
            page, {**form, "client_certificate": client.cert_pem, "client_key": client.key_pem}
        ).status_code
        == 302
    )
    endpoint.refresh_from_db()
    assert endpoint.client_certificate == (client.cert_pem, client.key_pem)

    html = admin_client.get(page).content.decode()
    assert "CN=acme-webhooks" in html
    assert client.cert_pem.split("\n")[1] not in html  # only the placeholder's "-----BEGIN CERTIFICATE-----"
    assert client.key_pem.split("\n")[1] not in html

    assert admin_client.post(page, form).status_code == 302  # left empty: kept
    endpoint.refresh_from_db()
    assert endpoint.has_client_certificate

    assert admin_client.post(page, {**form, "remove_client_certificate": "on"}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.client_certificate is None


def test_someone_who_may_only_view_an_endpoint_sees_only_its_client_certificates_status(
    client, django_user_model, make_endpoint
):
    ca = issue("Test CA", ca=True)
    cert = issue("acme-webhooks", ca, client=True)
    endpoint = make_endpoint()
    endpoint.set_client_certificate(cert.cert_pem, cert.key_pem)
    endpoint.save()
    viewer = django_user_model.objects.create_user("viewer", password="unused", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_endpoint", content_type__app_label="webhooks"))
    client.force_login(viewer)

    html = client.get(reverse("admin:webhooks_endpoint_change", args=[quote(endpoint.pk)])).content.decode()

    assert "CN=acme-webhooks" in html
    assert "BEGIN" not in html
    assert cert.cert_pem.split("\n")[1] not in html and cert.key_pem.split("\n")[1] not in html


def test_the_worker_presents_the_client_certificate_and_logs_a_certificate_refusal(
    receiver_only, tmp_path, org, agent, serve
):
    """End to end: the worker trusts WEBHOOK_CA_BUNDLE, presents an endpoint's client
    certificate, and logs (then retries, as a connection failure) a certificate it refuses."""
    ca = issue("Test CA", ca=True)
    bundle = tmp_path / "ca.pem"
    bundle.write_text(ca.cert_pem)
    mtls = serve(issue("localhost", ca, hosts=("localhost",)), client_ca=ca)
    self_signed = serve(issue("localhost", hosts=("localhost",)))
    client = issue("acme-webhooks", ca, client=True)
    good = Endpoint(organization=org, url=f"https://localhost:{mtls.port}/hook")
    good.set_client_certificate(client.cert_pem, client.key_pem)
    good.save()
    bad = Endpoint.objects.create(organization=org, url=f"https://localhost:{self_signed.port}/hook")

    worker = Worker(tmp_path / "worker.log", extra_env={"WEBHOOK_CA_BUNDLE": str(bundle)})
    try:
        step = Step.objects.create(agent=agent)
        step.status = "success"
        step.save()
        wait_until(lambda: Delivery.objects.filter(endpoint=good, status="succeeded").exists(), 30, message="mTLS")
        dead = wait_until(lambda: Delivery.objects.filter(endpoint=bad, status="dead").first(), 30, message="dead")
    finally:
        worker.stop()

    assert [dict(p["subject"][0]) for p in mtls.peers] == [{"commonName": "acme-webhooks"}]
    attempts = list(Attempt.objects.filter(delivery=dead).order_by("number"))
    assert len(attempts) == len(settings.WEBHOOK_RETRY_SCHEDULE) + 1  # retried like a connection failure
    assert all(a.error.startswith("TLS certificate refused: self-signed certificate") for a in attempts)


@pytest.mark.parametrize("content", [None, "", "not a certificate\n"])
def test_a_ca_bundle_that_cannot_be_loaded_stops_start_up_naming_the_variable(tmp_path, content):
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webhooks_project.settings", "WEBHOOK_CA_BUNDLE": str(bundle)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured: WEBHOOK_CA_BUNDLE: cannot load" in result.stderr.splitlines()[-1], result.stderr


def test_client_certificates_survive_an_encryption_key_rotation(org, settings):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.WEBHOOK_ENCRYPTION_KEYS = [old_key]
    client = issue("acme-webhooks", issue("Test CA", ca=True), client=True)
    endpoint = Endpoint(organization=org, url=PUBLIC)
    endpoint.set_client_certificate(client.cert_pem, client.key_pem)
    endpoint.save()

    settings.WEBHOOK_ENCRYPTION_KEYS = [new_key, old_key]
    call_command("reencrypt_secrets")
    settings.WEBHOOK_ENCRYPTION_KEYS = [new_key]

    assert Endpoint.objects.get(pk=endpoint.pk).client_certificate == (client.cert_pem, client.key_pem)
