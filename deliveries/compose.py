"""The signed request for one attempt of one delivery: URL, body, headers, timeout.

Endpoint deliveries POST the event envelope as published, signed with the endpoint's keys
(Standard Webhooks and seed 004's `X-Letta-Signature`), with its custom headers under ours.
An endpoint with a payload shape (thin, or fields excluded: webhooks/payload_shape.py) gets
its body cut from the envelope here and signed as sent; the others get the recorded text.
Seed targets (STEP_COMPLETE_WEBHOOK, run and job callbacks) POST their own body.
"""

import logging
from dataclasses import dataclass

import orjson
from django.conf import settings

from webhooks import payload_shape, signing

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


def build(delivery: Delivery, timestamp: int, keys: dict) -> Request:
    """The request for `delivery` (with `event` and `endpoint` loaded), stamped `timestamp`.
    `keys` caches across a batch each endpoint's signing keys (by endpoint id) and, for shaped
    payloads, each event's parsed envelope and shaped bodies (by tuples). Never raises: a
    request that cannot be built (a secret encrypted with a key no longer configured) carries
    `error`."""
    try:
        return _build(delivery, timestamp, keys)
    except Exception as exc:
        logger.exception("delivery %s: cannot build its request", delivery.pk)
        return Request(delivery.target_url, b"", {}, 0, error=f"cannot build the request: {type(exc).__name__}")


def _build(delivery: Delivery, timestamp: int, keys: dict) -> Request:
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
        body = _body_for(event, endpoint, keys)
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


def _body_for(event, endpoint, cache: dict) -> bytes:
    """What `endpoint` is sent of `event`: the recorded envelope, or its shape of it. A batch
    parses an event once and shapes it once per distinct shape, however many endpoints share it."""
    if not payload_shape.shapes(endpoint.payload, endpoint.exclude_fields):
        return event.body.encode()
    key = ("body", event.id, endpoint.payload, tuple(endpoint.exclude_fields))
    body = cache.get(key)
    if body is None:
        envelope = cache.get(("envelope", event.id))
        if envelope is None:
            envelope = cache[("envelope", event.id)] = orjson.loads(event.body)
        body = cache[key] = payload_shape.shaped_body(event.body, endpoint.payload, endpoint.exclude_fields, envelope)
    return body
