"""A small local HTTP server for the web tool tests: pages to fetch, redirects, a large body, and a SearXNG-compatible
`/search?format=json` endpoint. It counts connections, so a test can prove that a refused URL opened none."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PAGE = """<!doctype html><html><head><title>Tide tables</title><style>body { color: red }</style>
<script>var secret = "do not show";</script></head>
<body><nav><a href="/">Home</a></nav><main><h1>High tide</h1><p>High tide at <b>Porthleven</b> is at 14:32.</p>
<ul><li>Low tide: 08:10</li><li>Sunset: 19:45</li></ul><p>See <a href="https://example.org/tides">the tables</a>.</p>
</main><footer>footer text</footer></body></html>"""


class LocalWeb:
    """`LocalWeb().start()`; `redirect_to` sets where /redirect points; `connections` counts TCP connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self.redirect_to = "/page"
        self.search_queries: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                owner.connections += 1
                super().setup()

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                owner.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/page":
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                elif parts.path == "/text":
                    self._send(200, b"plain words", "text/plain")
                elif parts.path == "/redirect":
                    self._send(302, b"", "text/plain", {"Location": owner.redirect_to})
                elif parts.path == "/loop":
                    self._send(302, b"", "text/plain", {"Location": "/loop"})
                elif parts.path == "/huge":
                    # Claims and streams far more than the cap; the client must stop reading early.
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    try:
                        for _ in range(4096):
                            self.wfile.write(b"x" * 1024)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                elif parts.path == "/search":
                    query = parse_qs(parts.query)
                    owner.search_queries.append(query.get("q", [""])[0])
                    if query.get("format") != ["json"]:
                        self._send(403, b"format not allowed", "text/plain")
                        return
                    q = query.get("q", [""])[0]
                    results = [
                        {"title": f"Result {n} for {q}", "url": f"https://example.org/{n}",
                         "content": f"Snippet {n}  about\n{q}.", "engine": "fake"}
                        for n in range(1, 9)
                    ]
                    self._send(200, json.dumps({"query": q, "results": results}).encode(), "application/json")
                else:
                    self._send(404, b"<html><body><p>nothing here</p></body></html>", "text/html")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalWeb:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
