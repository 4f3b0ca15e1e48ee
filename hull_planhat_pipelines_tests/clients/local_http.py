"""A local HTTP server for client tests: it records each request line and answers a GET with
the body registered for its path (``{"ok":true}`` as JSON otherwise), as a proxy too (a
proxied request names the whole URL; its path is what is looked up)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

OK = (b'{"ok":true}', "application/json")


class LocalHttp(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bodies: dict[str, tuple[bytes, str]] = {}
        """Path -> (body, content type) of its answer."""
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.lines.append(self.requestline)
                body, content_type = server.bodies.get(urlsplit(self.path).path, OK)
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving() -> Iterator[LocalHttp]:
    """A ``LocalHttp`` answering from a thread until the block ends."""
    server = LocalHttp()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
