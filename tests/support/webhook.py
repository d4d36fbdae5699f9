"""A webhook receiver on loopback: what a team's channel (Slack, a relay) is to the promotion notifications."""

from __future__ import annotations

import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Hooks:
    url: str
    key: str  # the HMAC key ($ONEVISION_WEBHOOK_SECRET)
    token: str  # the secret part of the URL, as a Slack hook has one
    received: list[dict] = field(default_factory=list)  # {path, headers (lower-case names), body}
    fail_first: int = 0  # answer 503 to this many requests first (the retry is under test)

    @property
    def env(self) -> dict[str, str]:
        return {"ONEVISION_PROMOTION_WEBHOOKS": self.url, "ONEVISION_WEBHOOK_SECRET": self.key}

    @property
    def secrets(self) -> list[str]:
        return [self.key, self.token]

    def events(self, event: str) -> list[dict]:
        import json

        return [json.loads(h["body"]) for h in self.received if h["headers"].get("x-onevision-event") == event]


@contextmanager
def receiver(fail_first: int = 0):
    hooks = Hooks("", secrets.token_hex(16), "canary-hook-" + secrets.token_hex(8), fail_first=fail_first)
    failures = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            if failures[0] < hooks.fail_first:
                failures[0] += 1
                self.send_response(503)
                self.end_headers()
                return
            hooks.received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hooks.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/{hooks.token}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hooks
    finally:
        server.shutdown()
        server.server_close()
