"""The signed request for one attempt of one delivery: URL, body, headers, timeout.

Endpoint deliveries POST the event envelope as published, signed with the endpoint's keys
(Standard Webhooks and seed 004's `X-Letta-Signature`), with its custom headers under ours.
Seed targets (STEP_COMPLETE_WEBHOOK, run and job callbacks) POST their own body.
"""

import logging
from dataclasses import dataclass

from django.conf import settings

from webhooks import signing

from . import transport
from .models import Delivery, DeliveryKind

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]
    timeout: float
    error: str = ""  # set when the request could not be built: nothing is sent
    client_cert: tuple[str, str] | None = None  # (certificate, key) PEM for mutual TLS


def build(delivery: Delivery, timestamp: int, keys: dict[str, list[bytes]]) -> Request:
    """The request for `delivery` (with `event` and `endpoint` loaded), stamped `timestamp`.
    `keys` caches each endpoint's signing keys across a batch. Never raises: a request that
    cannot be built (a secret encrypted with a key no longer configured) carries `error`."""
    try:
        return _build(delivery, timestamp, keys)
    except Exception as exc:
        logger.exception("delivery %s: cannot build its request", delivery.pk)
        return Request(delivery.target_url, b"", {}, 0, error=f"cannot build the request: {type(exc).__name__}")


def _build(delivery: Delivery, timestamp: int, keys: dict[str, list[bytes]]) -> Request:
    event = delivery.event
    headers = {
        "Content-Type": "application/json",
        "User-Agent": transport.USER_AGENT,
        "webhook-id": event.id,
        "webhook-timestamp": str(timestamp),
        "X-Letta-Event-Type": event.type,
        "X-Letta-Event-Id": event.id,
        "X-Letta-Timestamp": str(timestamp),
    }
    timeout = settings.WEBHOOK_TIMEOUT
    client_cert = None
    if delivery.kind == DeliveryKind.ENDPOINT:
        endpoint = delivery.endpoint
        body = event.body.encode()
        if endpoint.pk not in keys:
            keys[endpoint.pk] = endpoint.signing_keys()
        headers.update(signing.signature_headers(keys[endpoint.pk], event.id, timestamp, body))
        headers = {**endpoint.custom_headers(), **headers}
        url = endpoint.url
        client_cert = endpoint.client_certificate
    else:
        body = delivery.body.encode()
        url = delivery.url
        if delivery.kind == DeliveryKind.STEP_COMPLETE:
            timeout = settings.STEP_COMPLETE_TIMEOUT
            if settings.STEP_COMPLETE_KEY:
                headers["Authorization"] = f"Bearer {settings.STEP_COMPLETE_KEY}"
    return Request(url, body, headers, timeout, client_cert=client_cert)
