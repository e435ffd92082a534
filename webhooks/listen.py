#!/usr/bin/env python3
"""Follow the pull feed and POST each event to a local URL, signed as usual: webhooks for a
receiver the internet cannot reach (a laptop, a desktop agent, a CI runner), as `stripe listen`.

    python3 listen.py --api https://hooks.example.com/api/v1 --key ahk_… \\
        --forward-to http://127.0.0.1:3000/hook

Needs only Python 3.11+ and this file: no project checkout, no database, just the API's URL
and an organization's API key (or WEBHOOKS_API_URL and WEBHOOKS_API_KEY). Inside the project,
`manage.py webhooks listen` runs the same loop against the database directly.

Events come from a pull endpoint (`--endpoint ep_…`): only what it subscribes to, each with the
headers a POST to it would carry, signed with its secret, so the local receiver verifies them
like any webhook (webhooks/receiver.py). Without `--endpoint`, one is created and its secret
printed once; pass its id next time. Each event is POSTed as received (body and headers) and
one line is printed: time, type, id, and the answer. The position is saved in `--cursor-file`
after each event, so a restart goes on where it stopped; the first run starts with events
published from then on (`--from-start` for everything the feed keeps).

The local receiver down (connection refused): the event is tried again, with growing waits,
until it answers; events are forwarded in order, none skipped. Any HTTP answer, 5xx
included, counts as forwarded and is printed: it is your receiver's to look at.

Exit status: 0 stopped (Ctrl-C, or --max-events reached), 1 the API refused (key, endpoint),
2 bad arguments.
"""

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

WAIT = 25  # seconds each feed request waits for new events (the server caps it)
BACKOFF_MAX = 30
RESIGN_AFTER = 120  # seconds: a signature older than this is fetched again before it is sent


class Refused(Exception):
    """The API refused (wrong key, unknown endpoint, bad cursor): going on would not help."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class HttpFeed:
    """The feed over the REST API, with an API key."""

    def __init__(self, api: str, key: str, timeout: float = WAIT + 15):
        self.api, self.key, self.timeout = api.rstrip("/"), key, timeout

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        request = urllib.request.Request(
            self.api + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with _API.open(request, timeout=timeout or self.timeout) as answer:
                return json.loads(answer.read())
        except (ValueError, http.client.HTTPException) as error:  # not JSON, or cut short: a proxy's page
            raise ConnectionError(f"an answer that is not the API's ({type(error).__name__})") from None
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            if error.code in (400, 401, 403, 404):
                raise Refused(
                    f"{method} {self.api + path}: {error.code} {detail}", 2 if error.code == 400 else 1
                ) from None
            raise ConnectionError(f"{error.code} {detail}") from None

    def page(self, after: str | None, endpoint: str, wait: float) -> dict:
        query = {"endpoint": endpoint, "wait": wait}
        if after is not None:
            query["after"] = after
        return self._call("GET", "/events/feed/?" + urllib.parse.urlencode(query))

    def create_endpoint(self, description: str) -> dict:
        return self._call("POST", "/webhooks/", {"kind": "pull", "description": description}, timeout=30)


def forward(url: str, body: bytes, headers: dict) -> str:
    """POST one event to the local receiver; its answer as a word for the printed line.
    Raises OSError if nothing answers (the caller tries again)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
    try:
        with direct.open(request, timeout=30) as answer:
            return f"{answer.status} {answer.reason}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.reason}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer like any other: printed, not followed


# The API's key is never sent on to wherever a redirect points.
_API = urllib.request.build_opener(_NoRedirect)


class Listener:
    """The loop: read a page, forward each event in order, save the position, again."""

    def __init__(
        self,
        page: Callable[[str | None, str, float], dict],
        endpoint: str,
        forward_to: str,
        *,
        cursor_file: Path | None = None,
        max_events: int | None = None,
        out=sys.stdout,
        sleep=time.sleep,
    ):
        self.page, self.endpoint, self.forward_to = page, endpoint, forward_to
        self.cursor_file, self.max_events, self.out, self.sleep = cursor_file, max_events, out, sleep
        self.forwarded = 0

    def say(self, line: str) -> None:
        say(self.out, line)

    def run(self, after: str | None) -> None:
        backoff = 1.0
        while self.max_events is None or self.forwarded < self.max_events:
            try:
                answer = self.page(after, self.endpoint, WAIT)
            except (OSError, ConnectionError) as error:
                self.say(f"feed unreachable ({error}); trying again in {backoff:.0f} s")
                self.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff, fetched = 1.0, time.monotonic()
            for event in answer["events"]:
                if "unsent" in event or "headers" not in event:
                    self.say(f"{time.strftime('%H:%M:%S')}  {event['type']:<28} {event['id']}  not forwarded: "
                             f"{event.get('unsent', 'no signed headers')}")  # fmt: skip
                elif not self._forward(event, fetched):
                    break  # its signature is getting old: read it again, freshly signed
                after = event["cursor"]
                self._save(after)
                if self.max_events is not None and self.forwarded >= self.max_events:
                    return
            else:
                if answer["next"] != after:  # past events this endpoint does not take
                    after = answer["next"]
                    self._save(after)

    def _forward(self, event: dict, fetched: float) -> bool:
        """POST one event, trying again while nothing answers; False (not sent) once its signed
        timestamp is RESIGN_AFTER seconds old, short of the receivers' five-minute tolerance."""
        body = event["body"].encode()
        wait = 1.0
        while True:
            started = time.monotonic()
            if started - fetched > RESIGN_AFTER:
                return False  # a slow receiver, or one that was down: this page's signatures are old
            try:
                result = forward(self.forward_to, body, event["headers"])
                break
            except OSError as error:
                reason = getattr(error, "reason", error)
                self.say(f"{self.forward_to} did not answer ({reason}); {event['id']} again in {wait:.0f} s")
                self.sleep(wait)
                wait = min(wait * 2, BACKOFF_MAX)
        elapsed = (time.monotonic() - started) * 1000
        self.forwarded += 1
        stamp = time.strftime("%H:%M:%S")
        self.say(f"{stamp}  {event['type']:<28} {event['id']}  -> {result} ({elapsed:.0f} ms)")
        return True

    def _save(self, cursor: str) -> None:
        if self.cursor_file is not None:
            self._save_to(self.cursor_file, cursor)

    @staticmethod
    def _save_to(path: Path, cursor: str) -> None:
        try:
            partial = path.with_name(path.name + ".tmp")
            partial.write_text(cursor + "\n")
            partial.replace(path)  # atomic: a crash leaves the old position or the new
        except OSError as error:
            raise Refused(f"--cursor-file: cannot write {path}: {error.strerror or error}", 2) from None


def say(out, line: str) -> None:
    """One line, at once (`out` may be a file or Django's OutputWrapper, which adds no second newline)."""
    out.write(line + "\n")
    out.flush()


def start_position(args) -> str | None:
    """--after, else the cursor file, else `latest` (or the oldest kept with --from-start)."""
    if args.after:
        return args.after
    if args.cursor_file and Path(args.cursor_file).exists():
        try:
            saved = Path(args.cursor_file).read_text().strip()
        except (OSError, UnicodeError) as error:
            raise Refused(f"--cursor-file: cannot read {args.cursor_file}: {error}", 2) from None
        if saved:
            return saved
    return None if args.from_start else "latest"


def arguments(parser: argparse.ArgumentParser, *, standalone: bool) -> None:
    """The options of `listen`, here and in `manage.py webhooks listen`."""
    if standalone:
        parser.add_argument(
            "--api",
            default=os.environ.get("WEBHOOKS_API_URL"),
            help="the API's base URL, e.g. https://hooks.example.com/api/v1 (WEBHOOKS_API_URL)",
        )
        parser.add_argument(
            "--key",
            default=os.environ.get("WEBHOOKS_API_KEY"),
            help="an organization's API key, ahk_… (WEBHOOKS_API_KEY)",
        )
    parser.add_argument("--forward-to", required=True, help="the local URL each event is POSTed to")
    parser.add_argument("--endpoint", help="the pull endpoint to follow (ep_…); without it, one is created")
    parser.add_argument(
        "--cursor-file",
        default=".webhooks-listen-cursor",
        help="where the position is kept between runs (default .webhooks-listen-cursor)",
    )
    parser.add_argument("--after", help="start after this cursor (an event's `cursor` in the feed)")
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="with no saved position, start from the oldest event kept, not from now",
    )
    parser.add_argument("--max-events", type=int, help="stop after forwarding this many events")  # fmt: skip


def check_forward_url(url: str) -> str | None:
    """Why `url` cannot be forwarded to, or None."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--forward-to: {url!r} is not an http(s) URL"
    return None


def listen(page, create_endpoint, args, out=sys.stdout) -> None:
    """Run `listen` with a feed (`page`) and a way to create a pull endpoint, until Ctrl-C or
    --max-events. Raises Refused (its message and exit status) for a bad argument or a refusal."""
    if problem := check_forward_url(args.forward_to):
        raise Refused(problem, 2)
    if args.max_events is not None and args.max_events < 1:
        raise Refused("--max-events: a whole number from 1 up", 2)
    try:
        endpoint = args.endpoint
        if not endpoint:
            created = create_endpoint(f"webhooks listen on {socket.gethostname()}")
            endpoint = created["id"]
            say(out, f"Created pull endpoint {endpoint}. Its signing secret, shown once: {created['secret']}")
            say(out, f"Next time pass --endpoint {endpoint}.")
        cursor_file = Path(args.cursor_file) if args.cursor_file else None
        after = start_position(args)
        if cursor_file is not None and after is not None:
            Listener._save_to(cursor_file, after)  # can it be written? better said now than after an event
        say(out, f"Forwarding endpoint {endpoint}'s events to {args.forward_to} (Ctrl-C stops)")
        listener = Listener(
            page, endpoint, args.forward_to, cursor_file=cursor_file, max_events=args.max_events, out=out
        )
        listener.run(after)
    except KeyboardInterrupt:
        say(out, "stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="listen.py")
    arguments(parser, standalone=True)
    args = parser.parse_args(argv)
    if not args.api or not args.key:
        parser.error("--api and --key (or WEBHOOKS_API_URL and WEBHOOKS_API_KEY) are needed")
    feed = HttpFeed(args.api, args.key)
    try:
        listen(feed.page, feed.create_endpoint, args)
    except Refused as refused:
        print(str(refused), file=sys.stderr)
        return refused.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
