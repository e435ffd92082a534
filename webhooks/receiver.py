"""The receiver's kit: verify the webhooks this service sends, in one file you can copy.

It needs only Python's standard library; Redis, Django and FastAPI are imported only by the
parts that use them. Copy this file into your receiver (as `webhook_receiver.py`, say), or
import `webhooks.receiver` inside this project::

    from webhook_receiver import Receiver
    hooks = Receiver(["whsec_new…", "whsec_old…"])    # every secret you accept
    webhook = hooks.verify(raw_body, headers)          # VerificationError if not ours
    with hooks.once(webhook):                          # Replayed if seen in the window
        handle(webhook.payload)

or let a Django view decorator (`django_view`) or a FastAPI dependency (`fastapi_dependency`)
do all of it. `examples/` holds a runnable receiver of each kind.

What it checks, and why:

* **Signature, against the raw body.** Both styles this service sends: Standard Webhooks'
  `webhook-signature` (`v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`)
  and the Letta style `X-Letta-Signature` (`sha256=<hex HMAC-SHA256 of "{X-Letta-Timestamp}.{body}">`).
  The key is the base64 after `whsec_`. Parse the JSON only after verifying: re-serialised JSON
  is not the bytes that were signed.
* **Several secrets.** While a secret is rotated, both headers carry one signature per active
  secret (space-separated), and a receiver may hold several secrets of its own: the request
  passes if any signature matches any secret. So a receiver keeps working through a rotation
  with the old secret alone, and can be given the new one at leisure.
* **Timestamp tolerance** (5 minutes either way by default): a captured request cannot be
  replayed later, since the timestamp is inside the signed text.
* **Replays within the tolerance**: `once` claims the event id (`webhook-id`, or the body's
  `event_id` in the Letta style: both are signed) in a store, in memory for one process or in
  Redis for several. A second request with the same id is not handled again. The claim is
  released if handling fails, so the sender's retry is handled; it is kept for twice the
  tolerance after success. The sender uses the same id for every retry of an event, so this
  also drops a retry sent because a success answer was lost. Beyond the window, make handling
  idempotent on `webhook.id` yourself.

The decorator and the dependency answer 400 for a request that does not verify, 409 for one
whose id is being handled right now (the sender retries later), and 200 `{"status": "duplicate"}`
for one already handled: a 4xx would make the sender retry something that is done.
"""

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SECRET_PREFIX = "whsec_"
TOLERANCE = 5 * 60
STANDARD, LETTA = "standard", "letta"


class VerificationError(ValueError):
    """Not signed by any accepted secret, malformed, or outside the time tolerance."""


class Replayed(Exception):
    """This event id was handled (or is being handled) within the replay window."""

    def __init__(self, webhook: "Webhook", in_flight: bool):
        self.webhook, self.in_flight = webhook, in_flight
        state = "is being handled now" if in_flight else "was handled already"
        super().__init__(f"webhook {webhook.id} {state}")


@dataclass(frozen=True)
class Webhook:
    """A verified webhook: `id` is the event id (the same on every retry), `payload` the parsed body."""

    id: str
    event_type: str
    timestamp: int
    style: str  # "standard" or "letta": which signature was checked
    payload: dict = field(repr=False)


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_…` secret."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise VerificationError("secret is not whsec_ followed by base64") from exc


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def letta_signature(key: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class Receiver:
    """Verifies webhooks for one endpoint: its secrets, the tolerance, and where seen ids go.

    `styles` limits which signature headers are accepted (both by default, Standard Webhooks
    first when a request has both). `replay_store` defaults to one in this process's memory:
    with several processes or hosts, pass a `RedisReplayStore` so they share it."""

    def __init__(
        self,
        secrets: str | Iterable[str],
        *,
        tolerance: int = TOLERANCE,
        styles: Iterable[str] = (STANDARD, LETTA),
        replay_store: "MemoryReplayStore | RedisReplayStore | None" = None,
    ):
        secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        if not secrets:
            raise ValueError("give at least one secret (whsec_…)")
        self.keys = [secret_key(s) for s in secrets]
        self.tolerance = tolerance
        self.styles = tuple(styles)
        if not self.styles or set(self.styles) - {STANDARD, LETTA}:
            raise ValueError(f"styles: choose from {STANDARD!r} and {LETTA!r}")
        self.replay_store = replay_store if replay_store is not None else MemoryReplayStore()

    def verify(self, body: bytes, headers: Mapping[str, str], *, now: float | None = None) -> Webhook:
        """The webhook in `body` (the exact bytes received), or VerificationError saying why not."""
        if isinstance(body, str):
            body = body.encode()
        style, msg_id, timestamp = self.check_signature(body, headers, now=now)
        try:
            payload = json.loads(body)
        except ValueError:
            raise VerificationError("the body is not JSON") from None
        if not isinstance(payload, dict):
            raise VerificationError("the body is not a JSON object")
        event_id = msg_id if style == STANDARD else payload.get("event_id")
        if not isinstance(event_id, str) or not event_id:
            raise VerificationError("no event id (webhook-id, or event_id in the body)")
        event_type = payload.get("event_type") or payload.get("type") or ""
        return Webhook(id=event_id, event_type=str(event_type), timestamp=timestamp, style=style, payload=payload)

    def check_signature(
        self, body: bytes, headers: Mapping[str, str], *, now: float | None = None
    ) -> tuple[str, str, int]:
        """The signature alone: (style, webhook-id, timestamp) if one matches, else VerificationError."""
        lower = {k.lower(): v for k, v in headers.items()}
        for style in self.styles:
            if style == STANDARD and "webhook-signature" in lower:
                msg_id = lower.get("webhook-id", "")
                timestamp = self._timestamp(lower.get("webhook-timestamp"), "webhook-timestamp", now)
                expected = {standard_signature(k, msg_id, timestamp, body) for k in self.keys}
                received = lower["webhook-signature"]
                break
            if style == LETTA and "x-letta-signature" in lower:
                msg_id = ""
                timestamp = self._timestamp(lower.get("x-letta-timestamp"), "X-Letta-Timestamp", now)
                expected = {letta_signature(k, timestamp, body) for k in self.keys}
                received = lower["x-letta-signature"]
                break
        else:
            names = {STANDARD: "webhook-signature", LETTA: "X-Letta-Signature"}
            raise VerificationError("no " + " or ".join(names[s] for s in self.styles) + " header")
        # As bytes: compare_digest refuses str with non-ASCII characters (a junk header is a 400, not a 500).
        given = [r.encode("utf-8", "surrogateescape") for r in received.split()]
        if not any(hmac.compare_digest(e.encode(), r) for r in given for e in expected):
            raise VerificationError(f"no {style} signature matches any of the {len(self.keys)} accepted secrets")
        return style, msg_id, timestamp

    def _timestamp(self, raw: str | None, name: str, now: float | None) -> int:
        if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 30:
            raise VerificationError(f"{name} is missing or not a Unix time in seconds")
        timestamp = int(raw)
        skew = abs((time.time() if now is None else now) - timestamp)  # a float: 30 digits fit
        if skew > self.tolerance:
            raise VerificationError(f"{name} is {skew:.0f} s from now; the tolerance is {self.tolerance} s")
        return timestamp

    @contextlib.contextmanager
    def once(self, webhook: Webhook):
        """Handle `webhook` at most once within the replay window: raises Replayed for an id
        already handled or in hand; releases the id if the block raises, so a retry is handled."""
        ttl = 2 * self.tolerance
        state = self.replay_store.claim(webhook.id, ttl)
        if state is not None:
            raise Replayed(webhook, in_flight=state == PENDING)
        try:
            yield webhook
        except BaseException:
            self.replay_store.release(webhook.id)
            raise
        self.replay_store.finish(webhook.id, ttl)


PENDING, DONE = "pending", "done"


class MemoryReplayStore:
    """Seen ids in this process's memory: right for one process, lost on restart."""

    def __init__(self):
        self._seen: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._sweep_at = 1024  # entries; doubled past what a sweep leaves, so sweeps stay rare

    def claim(self, key: str, ttl: float) -> str | None:
        """None if `key` is now claimed by the caller, else its state (PENDING or DONE)."""
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > self._sweep_at:  # drop the expired now and then, not on every call
                self._seen = {k: v for k, v in self._seen.items() if v[1] > now}
                self._sweep_at = max(1024, 2 * len(self._seen))
            state = self._seen.get(key)
            if state is not None and state[1] > now:
                return state[0]
            self._seen[key] = (PENDING, now + ttl)
            return None

    def finish(self, key: str, ttl: float) -> None:
        with self._lock:
            self._seen[key] = (DONE, time.monotonic() + ttl)

    def release(self, key: str) -> None:
        with self._lock:
            self._seen.pop(key, None)


class RedisReplayStore:
    """Seen ids in Redis, shared by every process and host of the receiver. `client` is a
    redis-py client (`redis.Redis.from_url(...)`); keys expire on their own."""

    def __init__(self, client, prefix: str = "webhook-seen:"):
        self.client, self.prefix = client, prefix

    def claim(self, key: str, ttl: float) -> str | None:
        name = self.prefix + key
        seconds = max(1, int(ttl))  # Redis refuses ex=0
        if self.client.set(name, PENDING, nx=True, ex=seconds):
            return None
        state = self.client.get(name)
        if state is None:  # expired between the two calls: try once more
            return None if self.client.set(name, PENDING, nx=True, ex=seconds) else PENDING
        return state.decode() if isinstance(state, bytes) else state

    def finish(self, key: str, ttl: float) -> None:
        self.client.set(self.prefix + key, DONE, ex=max(1, int(ttl)))

    def release(self, key: str) -> None:
        self.client.delete(self.prefix + key)


def django_view(receiver: Receiver):
    """Decorate a Django view `view(request, webhook)`: it runs only for a verified webhook not
    seen before, and a non-2xx answer from it (or an exception) lets the sender's retry in."""
    from django.http import HttpResponseNotAllowed, JsonResponse
    from django.views.decorators.csrf import csrf_exempt

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        def wrapped(request, *args, **kwargs):
            if request.method != "POST":
                return HttpResponseNotAllowed(["POST"])
            try:
                webhook = receiver.verify(request.body, request.headers)
            except VerificationError as exc:
                return JsonResponse({"error": str(exc)}, status=400)
            try:
                with receiver.once(webhook):
                    response = view(request, webhook, *args, **kwargs)
                    if not 200 <= response.status_code < 300:
                        raise _NotHandled(response)
            except Replayed as replay:
                status, body = _replay_answer(replay)
                return JsonResponse(body, status=status)
            except _NotHandled as refused:
                return refused.response
            return response

        return wrapped

    return decorate


def fastapi_dependency(receiver: Receiver):
    """A FastAPI dependency giving the verified `Webhook`: `webhook: Webhook = Depends(dep)`.
    The route runs only for a verified webhook not seen before; an exception from it lets the
    sender's retry in (a non-2xx it returns without raising still counts as handled). The
    answers of the module docstring come as `{"detail": …}`, FastAPI's error shape."""
    from fastapi import HTTPException, Request

    async def verified_webhook(request: Request):
        try:
            webhook = receiver.verify(await request.body(), request.headers)
        except VerificationError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        try:
            with receiver.once(webhook):
                yield webhook
        except Replayed as replay:
            status, body = _replay_answer(replay)
            raise HTTPException(status_code=status, detail=body) from None

    return verified_webhook


class _NotHandled(Exception):
    def __init__(self, response):
        self.response = response


def _replay_answer(replay: Replayed) -> tuple[int, dict]:
    """409 while the first is in hand (the sender retries later), 200 once it is done."""
    if replay.in_flight:
        return 409, {"error": str(replay)}
    return 200, {"status": "duplicate", "id": replay.webhook.id}
