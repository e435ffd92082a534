"""How the HTTP client reads an answer whose framing is odd or hostile: chunk sizes that are not
hex, conflicting lengths, "Connection: keep-alive, close", bodies that run to the close, bare-LF
lines, oversized heads, impossible statuses, and a stale keep-alive connection (a POST is never
sent twice). Then a fuzzer compares the parser with h11: the same status and body, or both refuse.

HTTP_FUZZ_EXAMPLES=5000 runs the fuzzer longer than the suite's default."""

import os
import time

import h11
import pytest
from django.test import override_settings
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from agents_hooks.models import ApiKey
from deliveries import transport

hsettings.register_profile(
    "http-fuzz",
    max_examples=int(os.environ.get("HTTP_FUZZ_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def answer(raw: bytes, linger: float = 0.2):
    def behaviour(conn):
        conn.sendall(raw)
        time.sleep(linger)  # let the client read before the server side closes

    return behaviour


def post(server, timeout: float = 2, headers=None) -> transport.Response:
    url = f"http://127.0.0.1:{server.port}/hook"
    return transport.post(url, b'{"a": 1}', headers or {}, timeout=timeout, connect_timeout=2)


def pooled(server) -> int:
    return sum(len(v) for k, v in transport._process().idle.items() if server.port in k)


@pytest.mark.parametrize("size", [b"-2", b"0x10", b"1_0", b"+10", b" 10", b"", b"g"])
def test_a_chunk_size_that_is_not_hex_digits_is_a_broken_answer(raw, settings, size):
    settings.WEBHOOK_RESPONSE_BODY_LIMIT = 16
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"
    server = raw(answer(reply))
    response = post(server)
    assert response.status_code is None
    assert "malformed chunked body" in response.error
    assert pooled(server) == 0


def test_a_negative_chunk_size_cannot_carry_a_body_past_the_limit(raw, settings):
    """int("-2", 16) took what follows, less two bytes, as a chunk and the last-chunk line after
    it as the end: 132 bytes under a 16-byte limit, on a connection kept for reuse."""
    settings.WEBHOOK_RESPONSE_BODY_LIMIT = 16
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\n0;" + b"x" * 128 + b"\r\n\r\n"
    server = raw(answer(reply))
    response = post(server)
    assert len(response.body) <= 16
    assert response.status_code is None and "malformed chunked body" in response.error
    assert pooled(server) == 0


def test_a_chunk_longer_than_its_size_is_a_broken_answer(raw):
    server = raw(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n"))
    response = post(server)
    assert response.status_code is None and "malformed chunked body" in response.error
    assert pooled(server) == 0


def test_chunk_sizes_in_either_case_with_extensions_are_read(raw):
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0A;name=v\r\n0123456789\r\n1 \r\n!\r\n0\r\n\r\n"
    response = post(raw(answer(reply)))
    assert (response.status_code, response.body, response.error) == (200, "0123456789!", "")


def test_a_reused_connection_closed_without_an_answer_does_not_resend_the_post(raw):
    """The issue's receiver: answers the first POST on a connection, reads the next and closes.
    Three POSTs sent must be three received; the unanswered one is a connection error."""
    received = []
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def answer_once_then_swallow(conn):
        received.append(1)  # RawServer read the connection's first request
        conn.sendall(ok)
        if conn.recv(65536):  # the next POST on this connection: read, never answered
            received.append(1)

    server = raw(answer_once_then_swallow)
    responses = [post(server) for _ in range(3)]
    time.sleep(0.2)
    assert len(received) == 3
    assert [r.status_code for r in responses] == [200, None, 200]
    assert "reused connection" in responses[1].error


def test_an_idle_connection_the_receiver_closed_is_not_used(raw):
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    server = raw(answer(ok, linger=0))  # answers, then closes while the client pools it
    assert post(server).status_code == 200
    time.sleep(0.2)
    response = post(server)
    assert (response.status_code, response.error) == (200, "")
    assert server.connections == 2


@pytest.mark.parametrize(
    "connection",
    [
        b"Connection: keep-alive, close\r\n",
        b"Connection: Keep-Alive\r\nConnection: CLOSE\r\n",
        b"Connection: x,Close\r\n",
        b"Connection: keep-alive,\tclose\r\n",
    ],
)
def test_close_among_the_connection_tokens_closes(raw, connection):
    server = raw(answer(b"HTTP/1.1 200 OK\r\n" + connection + b"Content-Length: 2\r\n\r\nok"))
    assert post(server).status_code == 200
    assert pooled(server) == 0


def test_conflicting_content_lengths_are_refused(raw):
    server = raw(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokokok"))
    response = post(server)
    assert response.status_code is None and "conflicting Content-Length" in response.error
    assert pooled(server) == 0


@pytest.mark.parametrize("lengths", [b"Content-Length: 2\r\nContent-Length: 2\r\n", b"Content-Length: 2, 2\r\n"])
def test_identical_content_lengths_are_accepted(raw, lengths):
    response = post(raw(answer(b"HTTP/1.1 200 OK\r\n" + lengths + b"\r\nok")))
    assert (response.status_code, response.body, response.error) == (200, "ok", "")


def test_a_body_to_the_close_on_a_connection_left_open_keeps_its_status(raw):
    server = raw(answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial", linger=3))
    response = post(server, timeout=0.5)
    assert (response.status_code, response.body, response.timed_out) == (200, "partial", False)
    assert "deadline" in response.error
    assert transport.outcome_class(response.status_code, response.error) == "2xx"
    assert pooled(server) == 0


def test_a_body_to_the_close_stops_at_the_limit(raw, settings):
    settings.WEBHOOK_RESPONSE_BODY_LIMIT = 10
    response = post(raw(answer(b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * 100, linger=3)), timeout=1)
    assert (response.status_code, response.body, response.error) == (200, "y" * 10, "")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_bare_lf_line_endings_are_read(raw, reply):
    response = post(raw(answer(reply)))
    assert (response.status_code, response.body, response.error) == (200, "ok", "")


def test_the_header_limit_is_exact(raw):
    status = b"HTTP/1.1 200 OK\r\n"
    filler = transport.MAX_HEADER_BYTES - len(status) - len(b"X: \r\nContent-Length: 2\r\n\r\n")
    head = status + b"X: " + b"a" * filler + b"\r\nContent-Length: 2\r\n\r\n"
    assert len(head) == transport.MAX_HEADER_BYTES
    assert post(raw(answer(head + b"ok"))).status_code == 200
    one_more = status + b"X: " + b"a" * (filler + 1) + b"\r\nContent-Length: 2\r\n\r\nok"
    response = post(raw(answer(one_more)))
    assert response.status_code is None and "over 64 KiB" in response.error
    # what the issue found: ~128 KiB let through
    response = post(raw(answer(status + b"X: " + b"a" * 100_000 + b"\r\n\r\nok")))
    assert response.status_code is None and "over 64 KiB" in response.error


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 999 Odd", b"HTTP/1.1 600 Odd", b"HTTP/1.1 099 Low", b"HTTP/1.1 2000"]
)
def test_a_status_outside_100_to_599_is_a_protocol_error(raw, status_line):
    response = post(raw(answer(status_line + b"\r\nContent-Length: 0\r\n\r\n")))
    assert response.status_code is None
    assert "not an HTTP response" in response.error
    assert transport.outcome_class(response.status_code, response.error) == "connection_error"


def test_a_non_latin1_header_value_is_never_sent_mangled(raw):
    seen = []

    def record(conn):
        seen.append(1)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = raw(record)
    response = post(server, headers={"X-Currency": "\u20acuro"})
    assert response.status_code is None and response.refused
    assert "Latin-1" in response.error
    assert seen == []


@pytest.mark.django_db
@pytest.mark.parametrize("headers", [{"X-Currency": "\u20acuro"}, {"X-Tab": "a\x7fb"}, {"X-A\n": "v"}])
def test_the_api_refuses_header_values_that_are_not_http_field_values(org, headers):
    _, key = ApiKey.issue(org)
    api = APIClient(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api.post("/api/v1/webhooks/", {"url": "https://93.184.216.34/hook", "headers": headers}, format="json")
    assert response.status_code == 400
    assert list(response.json()) == ["headers"]


# --- the fuzzer: our parser against h11 ------------------------------------------------------


class _Script:
    """A socket stand-in that answers recv() with the scripted pieces, then EOF."""

    def __init__(self, pieces: list[bytes]):
        self.pieces = pieces

    def settimeout(self, timeout):
        pass

    def sendall(self, data):
        pass

    def recv(self, size):
        return self.pieces.pop(0) if self.pieces else b""


def ours(pieces: list[bytes]):
    """(status, body) as the transport reads it, or None for a refused answer."""
    conn = transport._Connection(_Script(pieces))
    try:
        status, _, body, _, _ = transport._exchange(conn, b"", time.monotonic() + 60)
    except transport._Broken:
        return None
    return status, body


def reference(raw: bytes):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    status, body = None, b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body.decode("utf-8", "replace")
            else:  # NEED_DATA after EOF, ConnectionClosed
                return None
    except h11.RemoteProtocolError:
        return None


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=9)
VALUE = st.text("abcdefghijklmnopqrstuvwxyz0123456789 ,;=/-", max_size=20).map(str.strip)
BODY = st.binary(max_size=40)
HEX = "0123456789abcdefABCDEF"
BAD_SIZES = [b"-2", b"0x10", b"1_0", b"+1", b" 1", b"", b"g", b"1\t;x", b"1" * 21]


@st.composite
def chunk_line(draw, size: int) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(BAD_SIZES))
    digits = format(size, "x")
    digits = draw(st.sampled_from([digits, digits.upper(), "0" + digits]))
    return digits.encode() + draw(st.sampled_from([b"", b";ext", b";a=b;c", b" ", b"\t"]))


@st.composite
def answers(draw) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 4 + [b"\n"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    code = draw(
        st.one_of(
            st.integers(200, 599).map(lambda c: str(c).encode()),
            st.integers(200, 599).map(lambda c: str(c).encode()),
            st.integers(600, 999).map(lambda c: str(c).encode()),
            st.sampled_from([b"20", b"2000", b"-20", b"+20", b"2_0", b" 200", b"abc"]),
        )
    )
    reason = draw(st.sampled_from([b" OK", b"", b" ", b" Some Reason"]))
    head = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"])) + version + b" " + code + reason + eol
    headers = draw(st.lists(st.tuples(TOKEN, VALUE), max_size=4))
    headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
    for name, value in headers:
        head += f"{name}: {value}".encode() + eol
    body = draw(BODY)
    framing = draw(st.sampled_from(["none", "length", "same-lengths", "conflicting-lengths", "chunked"]))
    if framing == "length":
        stated = draw(st.sampled_from([len(body), max(0, len(body) - 1), len(body) + 3]))
        head += f"Content-Length: {stated}".encode() + eol
    elif framing == "same-lengths":
        head += f"Content-Length: {len(body)}".encode() + eol + f"content-length: {len(body)}".encode() + eol
    elif framing == "conflicting-lengths":
        head += f"Content-Length: {len(body)}".encode() + eol + f"Content-Length: {len(body) + 1}".encode() + eol
    elif framing == "chunked":
        head += b"Transfer-Encoding: chunked" + eol
        pieces = draw(st.lists(st.binary(min_size=1, max_size=12), max_size=4))
        body = b"".join(draw(chunk_line(len(p))) + b"\r\n" + p + b"\r\n" for p in pieces)
        body += b"0\r\n" + draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"])) + b"\r\n"
    raw = head + eol + body
    if draw(st.integers(0, 7)) == 0:  # cut short
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@hsettings(hsettings.get_profile("http-fuzz"))
@given(raw=answers(), data=st.data())
def test_the_parser_agrees_with_h11(raw, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=4)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if raw[a:b]]
    with override_settings(WEBHOOK_RESPONSE_BODY_LIMIT=1 << 20):
        got = ours(pieces)
    want = reference(raw)
    if want is not None and want[0] >= 600:
        want = None  # h11 takes 600-999; we refuse what no HTTP status means (documented)
    event("both refuse" if want is None else "both answer")  # --hypothesis-show-statistics
    assert got == want, raw
