"""Properties of webhooks/signing.py, for any body, id, timestamp and secret.

Checked against our own `verify` and, independently, the `standardwebhooks` reference library
(which verifies against the clock, so those cases sign with the current time).
"""

import base64
import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhooks import signing
from webhooks.receiver import Receiver
from webhooks.signing import TOLERANCE, SignatureError, signature_headers, verify

PROPS = hsettings(max_examples=200, deadline=None)

secrets = st.one_of(
    st.builds(signing.generate_secret),
    st.binary(min_size=1, max_size=64).map(lambda b: signing.SECRET_PREFIX + base64.b64encode(b).decode()),
)
bodies = st.binary(max_size=2048)
# Ids as a sender makes them: non-empty header-safe text (any printable Unicode but whitespace).
msg_ids = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=64)
timestamps = st.integers(0, 2**40)


def headers_for(secrets_: list[str], msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    keys = [signing.secret_key(s) for s in secrets_]
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), **signature_headers(keys, msg_id, ts, body)}


def rejected(secret: str, body: bytes, headers: dict[str, str], now: float) -> bool:
    try:
        verify(secret, body, headers, now=now)
    except SignatureError:
        return True
    return False


@PROPS
@given(st.binary(max_size=64))
def test_secret_key_round_trip(raw):
    assert signing.secret_key(signing.SECRET_PREFIX + base64.b64encode(raw).decode()) == raw


def test_generated_secrets_are_32_random_bytes():
    keys = {signing.secret_key(signing.generate_secret()) for _ in range(50)}
    assert len(keys) == 50 and all(len(k) == signing.SECRET_BYTES for k in keys)


@PROPS
@given(st.text(max_size=40))
def test_secret_key_refuses_non_base64_with_signature_error_only(text):
    try:
        signing.secret_key(text)
    except SignatureError:
        pass


@PROPS
@given(secrets, bodies, msg_ids, timestamps)
def test_round_trip(secret, body, msg_id, ts):
    headers = headers_for([secret], msg_id, ts, body)
    verify(secret, body, headers, now=ts)
    # Header names are case-insensitive.
    verify(secret, body, {k.upper(): v for k, v in headers.items()}, now=ts)
    # The Letta-style signature is HMAC(key, "ts.body"), as the module docstring tells receivers.
    key = signing.secret_key(secret)
    expected = "sha256=" + hmac.new(key, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Letta-Signature"], expected)


@PROPS
@given(secrets, bodies.filter(bool), msg_ids, timestamps, st.data())
def test_any_changed_body_byte_fails(secret, body, msg_id, ts, data):
    headers = headers_for([secret], msg_id, ts, body)
    i = data.draw(st.integers(0, len(body) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != body[i]))
    assert rejected(secret, body[:i] + bytes([new]) + body[i + 1 :], headers, ts)
    assert rejected(secret, body + b"\x00", headers, ts)
    assert rejected(secret, body[:-1], headers, ts)


@PROPS
@given(secrets, bodies, msg_ids, timestamps, st.data())
def test_any_changed_id_character_fails(secret, body, msg_id, ts, data):
    headers = headers_for([secret], msg_id, ts, body)
    i = data.draw(st.integers(0, len(msg_id) - 1))
    new = data.draw(msg_ids.map(lambda s: s[0]).filter(lambda c: c != msg_id[i]))
    assert rejected(secret, body, {**headers, "webhook-id": msg_id[:i] + new + msg_id[i + 1 :]}, ts)


@PROPS
@given(secrets, bodies, msg_ids, timestamps, st.integers(-TOLERANCE, TOLERANCE).filter(bool))
def test_any_changed_timestamp_fails(secret, body, msg_id, ts, delta):
    """Within tolerance, so it is the signature that refuses the replayed-with-new-time request."""
    headers = headers_for([secret], msg_id, ts, body)
    assert rejected(secret, body, {**headers, "webhook-timestamp": str(ts + delta)}, ts)


@PROPS
@given(secrets, bodies, msg_ids, timestamps, st.data())
def test_any_changed_signature_byte_fails(secret, body, msg_id, ts, data):
    headers = headers_for([secret], msg_id, ts, body)
    digest = bytearray(base64.b64decode(headers["webhook-signature"].removeprefix("v1,")))
    i = data.draw(st.integers(0, len(digest) - 1))
    digest[i] ^= data.draw(st.integers(1, 255))
    forged = "v1," + base64.b64encode(bytes(digest)).decode()
    assert rejected(secret, body, {**headers, "webhook-signature": forged}, ts)


@PROPS
@given(secrets, secrets, bodies, msg_ids, timestamps)
def test_another_secret_fails(secret, other, body, msg_id, ts):
    if signing.secret_key(secret) == signing.secret_key(other):
        return
    assert rejected(other, body, headers_for([secret], msg_id, ts, body), ts)


@PROPS
@given(secrets, secrets, st.text(max_size=500).map(str.encode), msg_ids)
def test_two_keys_verify_under_either_secret(current, previous, body, msg_id):
    """A rotation: both secrets verify, with our verify and with the reference library."""
    ts = int(time.time())
    headers = headers_for([current, previous], msg_id, ts, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (current, previous):
        verify(secret, body, headers, now=ts)
        Webhook(secret).verify(body, headers, json_parse=False)
    # The Letta-style header too: one signature per secret, the current one first, and the
    # receivers' kit accepts it under either secret alone.
    assert headers["X-Letta-Signature"] == " ".join(
        signing.letta_signature(signing.secret_key(s), ts, body) for s in (current, previous)
    )
    letta_only = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    letta_only["X-Letta-Timestamp"] = str(ts)
    for secret in (current, previous):
        assert Receiver(secret, styles=["letta"]).check_signature(body, letta_only, now=ts)[0] == "letta"


@PROPS
@given(secrets, secrets, st.text(max_size=500).map(str.encode), msg_ids)
def test_reference_library_refuses_a_stranger(secret, stranger, body, msg_id):
    if signing.secret_key(secret) == signing.secret_key(stranger):
        return
    headers = headers_for([secret], msg_id, int(time.time()), body)
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers, json_parse=False)


@PROPS
@given(secrets, bodies, msg_ids, timestamps, st.floats(-10 * TOLERANCE, 10 * TOLERANCE))
def test_timestamp_tolerance_is_enforced(secret, body, msg_id, ts, skew):
    headers = headers_for([secret], msg_id, ts, body)
    now = ts + skew
    assert rejected(secret, body, headers, now) == (abs(now - ts) > TOLERANCE)


def test_tolerance_edges():
    secret, body, ts = signing.generate_secret(), b"{}", 1_700_000_000
    headers = headers_for([secret], "msg_1", ts, body)
    for now in (ts - TOLERANCE, ts + TOLERANCE):
        verify(secret, body, headers, now=now)
    for now in (ts - TOLERANCE - 1, ts + TOLERANCE + 1):
        assert rejected(secret, body, headers, now)
    # Without `now`, the clock: a day-old signature is refused.
    with pytest.raises(SignatureError, match="tolerance"):
        verify(secret, body, headers_for([secret], "msg_1", int(time.time()) - 86400, body))


header_values = st.one_of(st.text(max_size=40), st.integers().map(str), st.sampled_from(["", "v1,", "v1,abc", "1e9"]))


@PROPS
@given(
    secrets,
    bodies,
    st.dictionaries(
        st.sampled_from(["webhook-id", "Webhook-Timestamp", "webhook-signature", "other"]), header_values, max_size=4
    ),
)
def test_garbage_headers_raise_signature_error(secret, body, headers):
    """A receiver can catch SignatureError alone: nothing else escapes verify for junk headers
    (ids limited to what HTTP delivers: no lone surrogates)."""
    headers = {k: v.encode("utf-8", "replace").decode() for k, v in headers.items()}
    try:
        verify(secret, body, headers, now=time.time())
    except SignatureError:
        pass


def test_huge_timestamp_is_a_signature_error():
    """A 400-digit webhook-timestamp is a bad request (SignatureError), not an OverflowError
    that a receiver catching SignatureError would turn into a 500."""
    headers = {"webhook-id": "m", "webhook-timestamp": "1" + "0" * 400, "webhook-signature": "v1,x"}
    with pytest.raises(SignatureError):
        verify(signing.generate_secret(), b"", headers, now=time.time())
