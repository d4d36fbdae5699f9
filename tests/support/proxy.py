"""A loopback HTTP proxy that injects faults in front of a real server (moto's S3, an MLflow tracking server).

Subclasses decide per request: :meth:`FaultProxy.fault` returns ``(status, content type, body)`` to answer in
the upstream's place, or ``None`` to relay the request unchanged.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = ("content-length", "transfer-encoding", "connection")


class FaultProxy:
    def __init__(self, upstream: str):
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                injected = proxy.fault(self.command, self.path)
                if injected is not None:
                    status, content_type, data = injected
                    self._answer(status, [("Content-Type", content_type)], data)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    self._answer(resp.status, resp.getheaders(), resp.read())
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_PATCH = do_DELETE = _relay  # noqa: N815 - http.server API

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def fault(self, method: str, path: str) -> tuple[int, str, bytes] | None:
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
