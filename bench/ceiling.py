"""The receiver's own ceiling: how many signed POSTs per second it verifies and answers.

    python bench/ceiling.py [-n 20000] [-c 4] [--max-seconds 60] [--python PATH]

Starts bench/receiver.py as its own process (with `--python`'s interpreter, e.g. one that has
uvloop), then `-c` processes each open ONE keep-alive raw-socket connection to 127.0.0.1 and
send their share of `-n` Standard-Webhooks-signed POSTs one after the other (no pipelining,
like a real sender). Requests are built and signed before the clock starts. Bounded: stops
after `-n` requests or `--max-seconds`, whichever comes first.

Prints client-side req/s (all requests / wall time), receiver-side req/s (first to last arrival),
client round-trip median/p99, and the receiver's verified/failed counts (must be n / 0).
"""

import argparse
import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

BODY = json.dumps(
    {
        "event_type": "agent.step.completed",
        "agent_id": "agent-" + "0" * 36,
        "organization_id": "org-" + "0" * 36,
        "timestamp": "2025-01-01T00:00:00Z",
        "data": {"step_id": "step-" + "0" * 36, "status": "success", "tokens": 123},
    }
).encode()


def build_requests(worker: int, count: int, secret: str, port: int) -> list[bytes]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    ts = str(int(time.time()))
    out = []
    for i in range(count):
        msg_id = f"msg_{worker}_{i}"
        sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + BODY, hashlib.sha256).digest()).decode()
        head = (
            f"POST /ceiling HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\nwebhook-id: {msg_id}\r\nwebhook-timestamp: {ts}\r\n"
            f"webhook-signature: v1,{sig}\r\n\r\n"
        )
        out.append(head.encode() + BODY)
    return out


def client(worker: int, count: int, secret: str, port: int, deadline_s: float, start, results) -> None:
    reqs = build_requests(worker, count, secret, port)
    sock = socket.create_connection((harness.HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start.wait()
    deadline = time.monotonic() + deadline_s
    rtts, done, buf = [], 0, b""
    for req in reqs:
        if time.monotonic() > deadline:
            break
        t = time.perf_counter()
        sock.sendall(req)
        while b"\r\n\r\n" not in buf:  # answers are header-only (Content-Length: 0)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("receiver closed the connection")
            buf += chunk
        buf = buf.split(b"\r\n\r\n", 1)[1]
        rtts.append(time.perf_counter() - t)
        done += 1
    sock.close()
    results.put((done, rtts))


def run(n: int, connections: int, max_seconds: float, port: int, secret: str) -> dict:
    harness.reset(port)
    start, results = mp.Event(), mp.Queue()
    shares = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
    procs = [
        mp.Process(target=client, args=(i, shares[i], secret, port, max_seconds, start, results))
        for i in range(connections)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let every client build its requests and connect
    t0 = time.perf_counter()
    start.set()
    outcomes = [results.get(timeout=max_seconds + 30) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    done = sum(d for d, _ in outcomes)
    rtts = [r for _, rs in outcomes for r in rs]
    s = harness.wait_for_requests(port, done, timeout=10)
    span = (s["last"] - s["first"]) if s["requests"] > 1 else 0
    return {
        "requests": done,
        "connections": connections,
        "client_req_per_s": round(done / wall, 1),
        "receiver_req_per_s": round((s["requests"] - 1) / span, 1) if span else None,
        "rtt": harness.summary_ms(rtts),
        "receiver_loop": s["loop"],
        "verified": s["verified"],
        "failed": s["failed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure the bench receiver's ceiling.")
    parser.add_argument("-n", type=int, default=20000, help="total requests (bounded)")
    parser.add_argument("-c", type=int, default=4, help="keep-alive connections, one process each")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long")
    parser.add_argument("--python", help="interpreter for the receiver (e.g. one with uvloop)")
    args = parser.parse_args()
    secret = harness.new_standard_secret()
    with harness.receiver({"*": secret}, python=args.python) as port:
        result = run(args.n, args.c, args.max_seconds, port, secret)
    print(json.dumps({"receiver_ceiling": result}, indent=2))


if __name__ == "__main__":
    main()
