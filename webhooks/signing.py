"""Webhook signatures, the sending side: the secret, and the headers of one POST.

Every POST to an endpoint carries two signatures made with the endpoint's secret
(`whsec_` + base64 of 32 random bytes; the HMAC key is the decoded bytes):

* Standard Webhooks (https://www.standardwebhooks.com):
  ``webhook-signature: v1,<base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}"))>``
  Any Standard Webhooks library verifies it, e.g. ``standardwebhooks.Webhook(secret).verify(body, headers)``.

* Letta style (seed 004): ``X-Letta-Signature: sha256=<hex(HMAC-SHA256(key, f"{X-Letta-Timestamp}.{body}"))>``
  The timestamp is part of the signed text, so a captured request cannot be replayed with a
  fresh timestamp.

During a secret rotation both headers hold one signature per active secret, space-separated,
the current secret's first: a receiver that still has only the old secret keeps verifying.
The receiving side (verification, tolerance, replays) is `webhooks/receiver.py`, which
receivers copy whole; the HMAC recipes live there, so both sides compute the same bytes.
"""

import base64
import os

from .receiver import (  # noqa: F401 - the recipes, shared with the receivers' kit
    SECRET_PREFIX,
    STANDARD,
    TOLERANCE,
    Receiver,
    VerificationError,
    letta_signature,
    secret_key,
    standard_signature,
)

SECRET_BYTES = 32
SignatureError = VerificationError  # the name the sending side has always used


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def signature_headers(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The signature headers for one POST: one signature per key in each, `keys[0]` (the
    current secret's) first, then any secret being rotated out."""
    return {
        "webhook-signature": " ".join(standard_signature(k, msg_id, timestamp, body) for k in keys),
        "X-Letta-Signature": " ".join(letta_signature(k, timestamp, body) for k in keys),
    }


def verify(secret: str, body: bytes, headers: dict[str, str], *, now: float | None = None) -> None:
    """Verify a received POST's Standard Webhooks signature (no replay check); raise
    SignatureError if not. The tests' reference; receivers use `receiver.Receiver`."""
    Receiver(secret, styles=(STANDARD,)).check_signature(body, headers, now=now)
