"""A lean HTTP/1.1 keep-alive webhook receiver for benchmarks (stdlib asyncio, uvloop if present).

    python bench/receiver.py --port 9100 --secrets-file secrets.json [--slow /slow=2.5] [--max-seconds 3600]
        [--slow-body run-123=0.5]   # answers to bodies containing "run-123" after 0.5 s (one slow run)

Every POST is answered `200` (empty body) after its signature is checked; the result is only
counted, never refused, so a bad signature cannot change the sender's behaviour mid-run. A
path made to fail (`POST /_fail`) is answered with that status instead, until told otherwise.

Secrets file (JSON): request path -> secret, "*" for any other path. A plain string is a
Standard Webhooks secret; an object may name another scheme:

    {"*": "whsec_...",                                             # Standard Webhooks (ours)
     "/ep/1": "whsec_...",
     "/peer": {"scheme": "django-webhook", "secret": "raw-token"}}

* standard: `webhook-signature: v1,<b64 HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")>`,
  key = base64-decoded secret after `whsec_`, several space-separated signatures allowed,
  timestamp within 5 minutes.
* django-webhook (0.0.15): `Django-Webhook-Signature-v1: <hex HMAC-SHA256(token.encode(),
  f"{Django-Webhook-Request-Timestamp}:{body}")>[,<hex>...]`, key = the raw token string. It
  sends no per-message id, so its records carry id "".

Control endpoints (GET unless said):
  /_stats              {"verified", "failed", "requests", "connections", "loop", "first", "last", "paths"}
                       (connections: those that carried a POST; first/last: unix arrival
                       times of the first and last POST; paths: per-path verified/failed and
                       "answered": {status: count})
  /_records?since=K    JSON list of [arrival_unix_time, path, webhook_id, ok, status answered]
                       from record K on
  POST /_reset         forget counts and records (and failing paths)
  POST /_secrets       merge a JSON object of more secrets (same format as the file)
  POST /_fail          {"/path": 503} answers 503 there from now on; {"/path": null} 200 again

With --records-file, the records are also written there as CSV when the process stops.
The process exits by itself after --max-seconds (default 2 hours).
"""

import argparse
import asyncio
import base64
import csv
import hashlib
import hmac
import json
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

TOLERANCE = 5 * 60
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
FAILED = "HTTP/1.1 {} Failing\r\nContent-Length: 0\r\n\r\n"
MAX_HEAD = 64 * 1024


class Verifier:
    """Checks one request against the secret configured for its path."""

    def __init__(self, table: dict):
        self.keys: dict[str, tuple[str, bytes]] = {}
        self.update(table)

    def update(self, table: dict) -> None:
        for path, value in table.items():
            if isinstance(value, str):
                value = {"scheme": "standard", "secret": value}
            scheme, secret = value.get("scheme", "standard"), value["secret"]
            if scheme == "standard":
                key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            elif scheme == "django-webhook":
                key = secret.encode()
            else:
                raise ValueError(f"{path}: unknown scheme {scheme!r}")
            self.keys[path] = (scheme, key)

    def check(self, path: str, headers: dict[str, str], body: bytes) -> tuple[bool, str]:
        """(signature ok, message id)."""
        scheme, key = self.keys.get(path) or self.keys.get("*") or ("none", b"")
        try:
            if scheme == "standard":
                msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
                if abs(time.time() - int(ts)) > TOLERANCE:
                    return False, msg_id
                digest = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
                expected = "v1," + base64.b64encode(digest).decode()
                return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split()), msg_id
            if scheme == "django-webhook":
                ts = headers["django-webhook-request-timestamp"]
                if abs(time.time() - int(ts)) > TOLERANCE:
                    return False, ""
                expected = hmac.new(key, f"{ts}:".encode() + body, hashlib.sha256).hexdigest()
                return any(
                    hmac.compare_digest(expected, s) for s in headers["django-webhook-signature-v1"].split(",")
                ), ""
        except (KeyError, ValueError):
            return False, headers.get("webhook-id", "")
        return False, headers.get("webhook-id", "")  # no secret for this path


class Receiver:
    def __init__(self, verifier: Verifier, slow: dict[str, float], slow_bodies: dict[bytes, float] | None = None):
        self.verifier = verifier
        self.slow = slow
        self.slow_bodies = slow_bodies or {}
        self.loop_name = ""
        self.reset()

    def reset(self) -> None:
        self.records: list[tuple[float, str, str, bool, int]] = []
        self.failing: dict[str, int] = {}  # path -> status answered there
        self.verified = self.failed = self.connections = 0
        self.paths: dict[str, list[int]] = {}  # path -> [verified, failed]
        self.answered: dict[str, dict[int, int]] = {}  # path -> status -> count

    def stats(self) -> dict:
        return {
            "verified": self.verified,
            "failed": self.failed,
            "requests": len(self.records),
            "connections": self.connections,
            "loop": self.loop_name,
            "first": self.records[0][0] if self.records else None,
            "last": self.records[-1][0] if self.records else None,
            "paths": {
                p: {"verified": v, "failed": f, "answered": self.answered.get(p, {})}
                for p, (v, f) in self.paths.items()
            },
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False  # a connection counts once it carries a webhook POST (not control polls)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                arrived = time.time()
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await self._body(reader, headers)
                path = target.split("?", 1)[0]
                if method == "POST" and not path.startswith("/_"):
                    ok, msg_id = self.verifier.check(path, headers, body)
                    if not counted:
                        self.connections, counted = self.connections + 1, True
                    status = self.failing.get(path, 200)
                    self._count(arrived, path, msg_id, ok, status)
                    if path in self.slow:
                        await asyncio.sleep(self.slow[path])
                    for needle, seconds in self.slow_bodies.items():
                        if needle in body:
                            await asyncio.sleep(seconds)
                    writer.write(OK if status == 200 else FAILED.format(status).encode())
                else:
                    writer.write(self._control(method, target, body))
                if headers.get("connection", "").lower() == "close":
                    return
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                chunks.append(await reader.readexactly(size))
                await reader.readuntil(b"\r\n")
            await reader.readuntil(b"\r\n")  # no trailers expected
            return b"".join(chunks)
        return b""

    def _count(self, arrived: float, path: str, msg_id: str, ok: bool, status: int) -> None:
        self.records.append((arrived, path, msg_id, ok, status))
        statuses = self.answered.setdefault(path, {})
        statuses[status] = statuses.get(status, 0) + 1
        counts = self.paths.setdefault(path, [0, 0])
        if ok:
            self.verified += 1
            counts[0] += 1
        else:
            self.failed += 1
            counts[1] += 1

    def _control(self, method: str, target: str, body: bytes) -> bytes:
        url = urlsplit(target)
        if url.path == "/_stats":
            payload = self.stats()
        elif url.path == "/_records":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            payload = self.records[since:]
        elif url.path == "/_reset" and method == "POST":
            self.reset()
            payload = {"reset": True}
        elif url.path == "/_fail" and method == "POST":
            for path, status in json.loads(body).items():
                if status is None:
                    self.failing.pop(path, None)
                else:
                    self.failing[path] = int(status)
            payload = {"failing": self.failing}
        elif url.path == "/_secrets" and method == "POST":
            self.verifier.update(json.loads(body))
            payload = {"paths": sorted(self.verifier.keys)}
        else:
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        data = json.dumps(payload).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


def write_records(receiver: Receiver, path: str) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["arrived", "path", "webhook_id", "ok", "status"])
        out.writerows(receiver.records)


async def serve(args) -> Receiver:
    secrets = json.load(open(args.secrets_file)) if args.secrets_file else {}
    slow = {p: float(s) for p, _, s in (item.partition("=") for item in args.slow)}
    slow_bodies = {n.encode(): float(s) for n, _, s in (item.rpartition("=") for item in args.slow_body)}
    receiver = Receiver(Verifier(secrets), slow, slow_bodies)
    server = await asyncio.start_server(receiver.handle, args.host, args.port, backlog=1024, limit=MAX_HEAD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    receiver.loop_name = type(loop).__module__
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"receiver listening on {args.host}:{args.port} ({type(loop).__module__})", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except TimeoutError:
        print("receiver: --max-seconds reached, exiting", flush=True)
    server.close()
    return receiver


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--secrets-file", help="JSON: path -> secret (see module doc)")
    parser.add_argument("--slow", action="append", default=[], metavar="PATH=SECONDS", help="delay answers on PATH")
    parser.add_argument(
        "--slow-body", action="append", default=[], metavar="TEXT=SECONDS", help="delay answers to bodies with TEXT"
    )
    parser.add_argument("--max-seconds", type=float, default=7200.0, help="exit by itself after this long")
    parser.add_argument("--records-file", help="write records as CSV here on exit")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("receiver: loopback addresses only")
    if args.loop != "asyncio":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            if args.loop == "uvloop":
                raise
    receiver = asyncio.run(serve(args))
    if args.records_file:
        write_records(receiver, args.records_file)
    print(f"receiver: {json.dumps(receiver.stats())}", flush=True)


if __name__ == "__main__":
    main()
