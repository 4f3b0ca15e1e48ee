"""The HTTP machinery every emulated API shares.

A real threaded HTTP/1.1 server on 127.0.0.1 (keep-alive, a free port), a route table, an auth
hook, a sliding-window rate limit, per-test fault injection and a record of every request. Each
emulator (Copper, Planhat, Hull) supplies routes and state; this module knows none of them.

Faults and the request record are reachable from Python (``server.faults``, ``server.requests``)
and over HTTP (``/_sandbox/faults``, ``/_sandbox/requests``) for tests in other processes.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    params: dict[str, str] = field(default_factory=dict)
    """Named groups of the matched route pattern."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


_BODY = msgspec.json.Encoder(enc_hook=str)
"""Answers in compact UTF-8 JSON, as the real APIs send them (non-ASCII text unescaped); about
ten times faster than ``json``'s encoder, which matters when both sandboxes answer from the
process they are measured in (a page of a thousand records, thousands of pages a full load)."""


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """Sent as is instead of ``body`` (malformed JSON, empty bodies)."""

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        try:
            return _BODY.encode(self.body)
        except (msgspec.EncodeError, TypeError, UnicodeEncodeError, OverflowError):
            # what the real APIs would still answer (an echoed lone surrogate): escaped
            return json.dumps(self.body, separators=(",", ":"), default=str).encode()


def error(status: int, message: str, **extra: Any) -> Response:
    return Response(status, {"error": message, **extra})


Handler = Callable[[Request], Response]
AuthCheck = Callable[[Request], Response | None]


@dataclass
class Fault:
    """An injected failure for requests whose method and path match; used ``times`` times."""

    status: int = 500
    path: str = ".*"
    """A regular expression matched (``re.search``) against the request path."""
    method: str | None = None
    times: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    """Seconds to wait before answering (with ``status`` 0: wait, then answer normally)."""
    raw_body: str | None = None
    """Sent instead of the JSON error body, e.g. malformed JSON with status 200."""
    after: int = 0
    """Matching requests let through untouched before the fault starts (e.g. a 401 on the
    fourth call of a run)."""
    drop: bool = False
    """With ``status`` 0: apply the request, then close the connection without an answer (a
    reset after the write landed: the client cannot know it did)."""

    def matches(self, request: Request) -> bool:
        if self.method and self.method.upper() != request.method:
            return False
        return re.search(self.path, request.path) is not None


class DropConnection(Exception):
    """Raised by dispatch: close the connection without writing any answer."""


class FaultPlan:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault | None = None, **kw: Any) -> Fault:
        fault = fault or Fault(**kw)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, request: Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(request):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    return fault
        return None

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults if f.times > 0]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int
    at: float


class RateLimit:
    """At most ``per_minute`` requests in any 60 seconds, else 429 (optionally with Retry-After)."""

    def __init__(self, per_minute: int | None, retry_after: bool, clock: Callable[[], float]):
        self.per_minute = per_minute
        self.retry_after = retry_after
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def check(self) -> Response | None:
        """None to let the request through (``headers`` then says what is left), else a 429."""
        if not self.per_minute:
            return None
        with self._lock:
            now = self._clock()
            while self._times and now - self._times[0] >= 60:
                self._times.popleft()
            if len(self._times) >= self.per_minute:
                headers = self._headers(0)
                if self.retry_after:
                    headers["Retry-After"] = str(max(1, int(60 - (now - self._times[0])) + 1))
                return Response(429, {"error": "Too Many Requests"}, headers)
            self._times.append(now)
        return None

    def headers(self) -> dict[str, str]:
        """``X-Rate-Limit-Limit`` / ``-Remaining`` (Planhat's older documented headers)."""
        if not self.per_minute:
            return {}
        with self._lock:
            return self._headers(max(0, self.per_minute - len(self._times)))

    def _headers(self, remaining: int) -> dict[str, str]:
        return {
            "X-Rate-Limit-Limit": str(self.per_minute),
            "X-Rate-Limit-Remaining": str(remaining),
        }


class SandboxServer:
    """A threaded HTTP server for one emulated API.

    ``routes`` are ``(method, pattern, handler)``; patterns are regular expressions over the path
    with named groups passed to the handler in ``request.params``. ``auth`` returns a response to
    refuse a request (401) or ``None`` to let it through; admin paths skip it.
    """

    def __init__(
        self,
        name: str,
        routes: list[tuple[str, str, Handler]],
        *,
        auth: AuthCheck | None = None,
        rate_limit_per_minute: int | None = None,
        rate_limit_retry_after: bool = False,
        clock: Callable[[], float] = time.monotonic,
        record_bodies: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_routes: Sequence[tuple[str, str, Handler]] = (),
    ) -> None:
        self.name = name
        self._routes = [(m.upper(), re.compile(f"^{p}$"), h) for m, p, h in routes]
        self._admin_routes = [(m.upper(), re.compile(f"^{p}$"), h) for m, p, h in admin_routes]
        """Emulator-specific ``/_sandbox/...`` controls: no auth, no faults, no rate limit."""
        self._auth = auth
        self.rate_limit = RateLimit(rate_limit_per_minute, rate_limit_retry_after, clock)
        self.faults = FaultPlan()
        self.requests: list[Recorded] = []
        self.record_bodies = record_bodies
        self.cpu_seconds = 0.0
        """CPU time its handler threads spent on requests: in the same process as the client
        (tests, benchmarks), time the client's own threads could not have."""
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{self.name} sandbox is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SandboxServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request record ----------------------------------------------------------------------
    def recorded(self, method: str | None = None, path: str | None = None) -> list[Recorded]:
        with self._lock:
            rows = list(self.requests)
        return [
            r
            for r in rows
            if (method is None or r.method == method.upper())
            and (path is None or re.search(path, r.path))
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: Request, status: int) -> None:
        row = Recorded(
            request.method,
            request.path,
            request.query,
            request.headers,
            request.body if self.record_bodies else None,
            status,
            time.time(),
        )
        with self._lock:
            self.requests.append(row)

    # -- dispatch ----------------------------------------------------------------------------
    def _admin(self, request: Request) -> Response | None:
        if not request.path.startswith("/_sandbox/"):
            return None
        if request.path == "/_sandbox/faults":
            if request.method == "POST":
                body = request.body if isinstance(request.body, dict) else {}
                try:
                    fault = self.faults.add(Fault(**body))
                except TypeError as exc:
                    return error(400, str(exc))
                return Response(201, asdict(fault))
            if request.method == "DELETE":
                self.faults.clear()
                return Response(204)
            return Response(200, self.faults.pending())
        if request.path == "/_sandbox/requests":
            if request.method == "DELETE":
                self.clear_requests()
                return Response(204)
            return Response(200, [asdict(r) for r in self.recorded()])
        for method, pattern, handler in self._admin_routes:
            match = pattern.match(request.path)
            if match is not None and method == request.method:
                request.params = {k: v for k, v in match.groupdict().items() if v is not None}
                return handler(request)
        return error(404, "not_found")

    def dispatch(self, request: Request) -> Response:
        admin = self._admin(request)
        if admin is not None:
            return admin
        fault = self.faults.take(request)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop and not fault.status:
                self._route(request)  # the write lands; its answer never leaves
                raise DropConnection()
            if fault.status:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                if fault.raw_body is not None:
                    return Response(fault.status, headers=headers, raw=fault.raw_body.encode())
                return Response(fault.status, {"error": "injected fault"}, headers)
        limited = self.rate_limit.check()
        if limited is not None:
            return limited
        response = self._route(request)
        response.headers = {**self.rate_limit.headers(), **response.headers}
        return response

    def _route(self, request: Request) -> Response:
        if self._auth is not None:
            refused = self._auth(request)
            if refused is not None:
                return refused
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            request.params = {k: v for k, v in match.groupdict().items() if v is not None}
            return handler(request)
        if path_matched:
            return error(405, "method_not_allowed")
        return error(404, "not_found")


def _make_handler(server: SandboxServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as separate writes
        server_version = f"{server.name}-sandbox"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _handle(self) -> None:
            started = time.thread_time()
            try:
                self._answer()
            finally:
                spent = time.thread_time() - started
                with server._lock:
                    server.cpu_seconds += spent

        def _answer(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            body: Any = None
            request = Request(self.command, parts.path, query, headers, None, raw)
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(request, error(400, "request body is not valid JSON"))
                    return
            request.body = body
            try:
                response = server.dispatch(request)
            except DropConnection:
                server._record(request, 0)
                self.close_connection = True
                return
            except Exception as exc:  # an emulator bug must surface as a 500, not a hang
                response = error(500, f"sandbox error: {type(exc).__name__}: {exc}")
            self._send(request, response)

        def _send(self, request: Request, response: Response) -> None:
            payload = response.encode()
            # Recorded before the answer leaves, so a client that got its answer sees its request.
            if not request.path.startswith("/_sandbox/"):
                server._record(request, response.status)
            self.send_response(response.status)
            has_type = any(k.lower() == "content-type" for k in response.headers)
            if payload and not has_type:
                self.send_header("Content-Type", "application/json")
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            try:
                self.end_headers()
                if payload and request.method != "HEAD":
                    self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client is gone (killed, or timed out)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return _Handler
