"""Webhook signatures: the one place that knows how a POST is signed.

Every POST to an endpoint carries two signatures made with the endpoint's secret
(`whsec_` + base64 of 32 random bytes; the HMAC key is the decoded bytes):

* Standard Webhooks (https://www.standardwebhooks.com):
  ``webhook-signature: v1,<base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}"))>``
  Any Standard Webhooks library verifies it, e.g. in Python::

      from standardwebhooks.webhooks import Webhook
      Webhook(secret).verify(body, request_headers)   # raises on a bad signature

  During a secret rotation the header holds several space-separated signatures; accept the
  request if any one matches.

* Letta style (seed 004): ``X-Letta-Signature: sha256=<hex(HMAC-SHA256(key, f"{X-Letta-Timestamp}.{body}"))>``
  The timestamp is part of the signed text, so a captured request cannot be replayed with a
  fresh timestamp. To verify by hand::

      key = base64.b64decode(secret.removeprefix("whsec_"))
      expected = "sha256=" + hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
      ok = hmac.compare_digest(expected, headers["X-Letta-Signature"])

Receivers should also refuse timestamps more than a few minutes old (`TOLERANCE`).
`body` is always the exact bytes received, before any JSON parsing.
"""

import base64
import hashlib
import hmac
import os
import time

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
TOLERANCE = 5 * 60


class SignatureError(ValueError):
    """The request is not signed by the secret, or its timestamp is out of tolerance."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_...` secret."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError as exc:
        raise SignatureError("secret is not whsec_ followed by base64") from exc


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def letta_signature(key: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The signature headers for one POST. `keys[0]` is the current secret's key; any
    further keys (a secret being rotated out) add signatures to `webhook-signature` only."""
    return {
        "webhook-signature": " ".join(standard_signature(k, msg_id, timestamp, body) for k in keys),
        "X-Letta-Signature": letta_signature(keys[0], timestamp, body),
    }


def verify(secret: str, body: bytes, headers: dict[str, str], *, now: float | None = None) -> None:
    """Verify a received POST's Standard Webhooks signature; raise SignatureError if not.

    The reference for receivers written in Python; other languages follow the recipe above.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp = lower["webhook-id"], int(lower["webhook-timestamp"])
        received = lower["webhook-signature"].split()
        # A timestamp too large for a float, or an id that is not text, is just a bad request.
        skew = abs((now if now is not None else time.time()) - timestamp)
        expected = standard_signature(secret_key(secret), msg_id, timestamp, body)
    except (KeyError, ValueError, OverflowError, UnicodeError) as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError("missing or malformed webhook-id / webhook-timestamp / webhook-signature") from exc
    if skew > TOLERANCE:
        raise SignatureError("timestamp outside tolerance")
    if not any(hmac.compare_digest(expected, sig) for sig in received):
        raise SignatureError("no signature matches")
