"""Client certificates for mutual TLS: what an endpoint presents to a receiver that asks.

Checked when set (API, admin), so a bad one is a 400 naming the field rather than a delivery
failing later: the certificate must be PEM, not expired, and the key must be its key. The
certificate and key are stored encrypted like the signing secret (Endpoint.set_client_certificate);
only the subject and expiry are ever shown again.
"""

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["ClientCertificateError", "ClientCertificate", "parse"]


class ClientCertificateError(ValueError):
    """`field` is "client_certificate" or "client_key": the one at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    cert_pem: str
    key_pem: str
    subject: str
    expires_at: datetime.datetime


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse(cert_pem: str, key_pem: str, now: datetime.datetime | None = None) -> ClientCertificate:
    """The certificate (PEM, a chain's leaf first) and its unencrypted private key (PEM),
    checked; raises ClientCertificateError naming the field at fault."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.strip().encode())
    except ValueError:
        raise ClientCertificateError("client_certificate", "not a PEM certificate") from None
    leaf = chain[0]
    now = now or datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        raise ClientCertificateError("client_certificate", f"expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        key = serialization.load_pem_private_key(key_pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise ClientCertificateError(
            "client_key", "not a PEM private key (an unencrypted one: no passphrase can be kept)"
        ) from None
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise ClientCertificateError("client_key", "does not match the certificate")
    return ClientCertificate(
        cert_pem.strip() + "\n", key_pem.strip() + "\n", leaf.subject.rfc4514_string()[:500], leaf.not_valid_after_utc
    )
