"""A session reads the environment once per host, not on every call: an API behind a proxy is
reached through it, one named in ``NO_PROXY`` directly, host by host."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from hull_planhat_pipelines.clients.http import ApiSession, RetryPolicy

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")


class _Recorder(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.lines: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.lines.append(self.requestline)
                body = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _session(base_url: str) -> ApiSession:
    return ApiSession("planhat", base_url, policy=RetryPolicy(attempts=1))


def _environment(monkeypatch: pytest.MonkeyPatch, proxy: str, no_proxy: str | None) -> None:
    """Every proxy variable set to ``proxy``; ``NO_PROXY`` set to ``no_proxy``, or unset."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, proxy)
    for name in NO_PROXY_VARIABLES:
        if no_proxy is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, no_proxy)


DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there


def test_an_api_behind_a_proxy_is_reached_through_it(
    recorder: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, recorder.url, None)
    with _session("http://planhat.example.test") as session:
        assert session.json("GET", "/companies") == {"ok": True}
        assert session.json("GET", "/endusers") == {"ok": True}
    assert recorder.lines == [
        "GET http://planhat.example.test/companies HTTP/1.1",
        "GET http://planhat.example.test/endusers HTTP/1.1",
    ]


def test_an_api_named_in_no_proxy_is_reached_directly(
    recorder: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _environment(monkeypatch, DEAD_PROXY, "127.0.0.1")
    with _session(recorder.url) as session:
        assert session.json("GET", "/companies") == {"ok": True}
    assert recorder.lines == ["GET /companies HTTP/1.1"]


def test_no_proxy_is_judged_per_host_not_once_for_the_api(
    recorder: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's calls to another host (an absolute URL) follow that host's rule."""
    _environment(monkeypatch, DEAD_PROXY, "127.0.0.1")
    with _session("http://planhat.example.test") as session:
        assert session.json("GET", f"{recorder.url}/companies") == {"ok": True}
    assert recorder.lines == ["GET /companies HTTP/1.1"]
