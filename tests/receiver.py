"""A real HTTP receiver on 127.0.0.1 for tests: records every request, answers from a script.

receiver.script("/hook", [500, 500, 200])           # statuses in order, then 200s
receiver.script("/slow", [Reply(200, delay=2)])
receiver.fail_first("/flaky", 503)                  # each message's first POST fails
receiver.wait_for(3, path="/hook")                   # -> the three requests
"""

import http.server
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    at: float  # time.time() on arrival


class _Server(http.server.ThreadingHTTPServer):
    # The default listen backlog of 5 drops the SYNs of a burst of new connections, which the
    # kernel retries a second later: a fast receiver would look slow.
    request_queue_size = 128


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._fail_first: dict[str, tuple[int, set]] = {}
        self._answers: dict[str, object] = {}
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                reply = owner._next_reply(self.path, self.headers.get("webhook-id"), body)
                with owner._arrived:  # recorded on arrival, before any scripted delay
                    owner.requests.append(Received(self.path, dict(self.headers.items()), body, time.time()))
                    owner._arrived.notify_all()
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, replies: list) -> None:
        with self._lock:
            self._scripts[path] = [r if isinstance(r, Reply) else Reply(r) for r in replies]

    def fail_first(self, path: str, status: int) -> None:
        """Answer `status` to the first POST of each message (by webhook-id) to `path`, 200 after."""
        with self._lock:
            self._fail_first[path] = (status, set())

    def answer(self, path: str, status_of) -> None:
        """Answer each POST to `path` with the status `status_of(body)` returns (200 for None)."""
        with self._lock:
            self._answers[path] = status_of

    def _next_reply(self, path: str, message_id: str | None = None, body: bytes = b"") -> Reply:
        with self._lock:
            if path in self._answers:
                return Reply(self._answers[path](body) or 200)
            if path in self._fail_first and message_id:
                status, seen = self._fail_first[path]
                if message_id not in seen:
                    seen.add(message_id)
                    return Reply(status)
                return Reply()
            queue = self._scripts.get(path)
            return queue.pop(0) if queue else Reply()

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 20.0) -> list[Received]:
        """Block until `count` requests (to `path`) have arrived; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                got = [r for r in self.requests if path is None or r.path == path]
                if len(got) >= count:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} requests to {path or 'any path'}, got {len(got)}")
                self._arrived.wait(remaining)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._scripts.clear()
            self._fail_first.clear()
            self._answers.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawServer:
    """A TCP server on 127.0.0.1 that answers every connection with `behaviour(conn)`."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            conn.settimeout(30)
            conn.recv(65536)  # the request (small enough for one read here)
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self):
        self.closed = True
        self.sock.close()
