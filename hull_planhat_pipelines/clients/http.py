"""HTTP plumbing shared by the Copper, Planhat and Hull clients.

One ``requests.Session`` per API with urllib3 retries declared once as a policy: which statuses
retry, how to back off, when to give up. The clock and the sleeper are injected so tests never
wait for real time. Secrets are redacted from every message this module produces.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.sessions import merge_setting
from requests.utils import get_environ_proxies, get_netrc_auth
from urllib3.util import Retry

from hull_planhat_pipelines.sync.canonical import wire_json

_DECODER = msgspec.json.Decoder()
"""UTF-8 JSON as the APIs send it, twice as fast as ``requests``' own decoding (a full Copper
load decodes a page of 200 records about 2,000 times). Integers keep every digit. What it
refuses, ``Response.json`` is asked next, so nothing decodable before is refused now."""


def _utf8(encoding: str | None) -> bool:
    """Whether an answer is read as UTF-8 (no charset named, or a name of UTF-8): one in
    another declared charset is left to ``Response.json``, which reads it in that charset."""
    if encoding is None:
        return True
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


Sleeper = Callable[[float], None]
Clock = Callable[[], float]


class ApiError(RuntimeError):
    """A request that did not succeed; the message never contains a credential."""

    def __init__(
        self,
        api: str,
        message: str,
        status: int | None = None,
        body: Any = None,
        *,
        ambiguous: bool = False,
        attempts: int | None = None,
    ):
        self.api = api
        self.status = status
        self.body = body
        self.ambiguous = ambiguous
        """No answer came back after the request left (read timeout, connection reset): the
        server may have applied it. A non-idempotent call must not be re-sent blindly."""
        self.attempts = attempts
        super().__init__(f"{api}: {message}")


class ApiAuthError(ApiError):
    """401/403: wrong credentials (or, for Planhat, often the wrong region). Never retried."""


class ApiResponseError(ApiError):
    """A response that is not what the API documents (malformed JSON, wrong shape)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How an API's transient failures are retried; declared once per API."""

    attempts: int = 6
    """Total tries of one call (the first included)."""
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    backoff_factor: float = 0.5
    """Exponential backoff base in seconds: 0.5, 1, 2, 4 ... when no Retry-After is given."""
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    """A Retry-After larger than this is capped (a misbehaving server must not stall a run)."""
    connect_timeout: float = 10.0
    read_timeout: float = 120.0


@dataclass
class RequestStats:
    """What a client did: calls made by code, HTTP requests sent (retries included)."""

    calls: int = 0
    requests: int = 0
    retries: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, kind: str, attempts: int, statuses: Iterable[int]) -> None:
        with self._lock:
            self.calls += 1
            self.requests += attempts
            self.retries += attempts - 1
            self.by_kind[kind] += attempts
            self.statuses.update(statuses)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": self.calls,
                "requests": self.requests,
                "retries": self.retries,
                "by_kind": dict(self.by_kind),
            }


class SlidingWindowLimiter:
    """At most ``max_requests`` in any ``window`` seconds: stay under a rate limit, not bounce off it."""

    def __init__(
        self,
        max_requests: int,
        window: float = 60.0,
        *,
        clock: Clock = time.monotonic,
        sleeper: Sleeper = time.sleep,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.max_requests = max_requests
        self.window = window
        self._clock = clock
        self._sleeper = sleeper
        self._sent: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            while self._sent and now - self._sent[0] >= self.window:
                self._sent.popleft()
            if len(self._sent) >= self.max_requests:
                pause = self.window - (now - self._sent[0])
                if pause > 0:
                    self._sleeper(pause)
                now = self._clock()
                self._sent.popleft()
            self._sent.append(now)


class RateLimiters:
    """One limiter per API account per process: every client of that account shares it.

    A quota is per account (Copper: 180 requests a minute), not per client, so the assets and
    sensors of one process draw from one window. ``key`` names the account (API, base URL,
    who); it is kept hashed, so no credential stays in memory in the clear here.
    """

    def __init__(self, *, clock: Clock = time.monotonic, sleeper: Sleeper = time.sleep) -> None:
        self._clock = clock
        self._sleeper = sleeper
        self._limiters: dict[str, SlidingWindowLimiter] = {}
        self._lock = threading.Lock()

    def get(
        self, key: Iterable[str], requests_per_minute: int | None
    ) -> SlidingWindowLimiter | None:
        """The shared limiter of ``key`` at ``requests_per_minute`` (None: no throttle)."""
        if not requests_per_minute:
            return None
        digest = hashlib.sha256("\x1f".join(key).encode()).hexdigest()
        name = f"{digest}:{requests_per_minute}"
        with self._lock:
            limiter = self._limiters.get(name)
            if limiter is None:
                limiter = SlidingWindowLimiter(
                    requests_per_minute, clock=self._clock, sleeper=self._sleeper
                )
                self._limiters[name] = limiter
            return limiter


PROCESS_LIMITERS = RateLimiters()
"""The limiters of this process (the Dagster resources draw from it)."""


class _Failures(threading.local):
    """Failed tries of the current call, per thread (urllib3 keeps them on the Retry object,
    which an exception does not carry back): the attempts an error message reports."""

    count = 0


class _Retry(Retry):
    """urllib3 Retry whose waits go through an injected sleeper."""

    sleeper: Sleeper = staticmethod(time.sleep)
    failures: _Failures = _Failures()

    def new(self, **kw: Any) -> _Retry:
        retry = super().new(**kw)
        retry.sleeper = self.sleeper
        retry.failures = self.failures
        return retry

    def increment(self, *args: Any, **kw: Any) -> Retry:
        self.failures.count += 1
        return super().increment(*args, **kw)

    def sleep_for_retry(self, response: Any) -> bool:
        retry_after = self.get_retry_after(response)
        if retry_after:
            self.sleeper(min(retry_after, self.retry_after_max))
            return True
        return False

    def get_backoff_time(self) -> float:
        """Exponential from the first retry (urllib3 retries the first failure at once)."""
        failures = len(self.history)
        if failures == 0:
            return 0.0
        return min(self.backoff_max, self.backoff_factor * (2 ** (failures - 1)))

    def _sleep_backoff(self) -> None:
        backoff = self.get_backoff_time()
        if backoff > 0:
            self.sleeper(backoff)


def _maybe_applied(exc: requests.RequestException) -> bool:
    """Whether the request may have reached the server: everything but a connection that was
    never made (refused, DNS, connect timeout)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    never_sent = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
    return not isinstance(reason, never_sent)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _AsSent(AuthBase):
    """No credentials beyond the request's own headers (a host ``~/.netrc`` names none for)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class _EnvironmentOnce(requests.Session):
    """A session that reads the environment once per host: its proxies (``NO_PROXY`` included),
    ``~/.netrc`` and the CA bundle variables, as ``requests`` does, but not again on every call
    (a scan of the environment and a look for ``~/.netrc``: a tenth of a one-record call to a
    near server, tens of thousands of calls a full delivery). Redirects are resolved as
    ``requests`` resolves them."""

    def __init__(self) -> None:
        super().__init__()
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._netrc: dict[tuple[str, str], Any] = {}
        self._bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")

    @staticmethod
    def _host(url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.lower()

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        if self.trust_env and not request.auth and not self.auth:
            host = self._host(request.url)
            if host not in self._netrc:
                self._netrc[host] = get_netrc_auth(request.url) or _AsSent()
            request.auth = self._netrc[host]
        return super().prepare_request(request)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        proxies = {} if proxies is None else proxies
        host = self._host(url)
        if host not in self._proxies:
            self._proxies[host] = get_environ_proxies(url, no_proxy=proxies.get("no_proxy"))
        for scheme, proxy in self._proxies[host].items():
            proxies.setdefault(scheme, proxy)
        if verify is True or verify is None:
            verify = self._bundle or verify
        return {
            "proxies": merge_setting(proxies, self.proxies),
            "stream": merge_setting(stream, self.stream),
            "verify": merge_setting(verify, self.verify),
            "cert": merge_setting(cert, self.cert),
        }


class ApiSession:
    """One API's base URL, headers, retry policy, throttle and request counters."""

    def __init__(
        self,
        api: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        secrets: Iterable[str] = (),
        policy: RetryPolicy = RetryPolicy(),
        requests_per_minute: int | None = None,
        limiter: SlidingWindowLimiter | None = None,
        sleeper: Sleeper = time.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        """``limiter``: a throttle shared with other sessions of the same account (it wins
        over ``requests_per_minute``, which builds one for this session alone)."""
        self.api = api
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.secrets = [s for s in secrets if s]
        self.stats = RequestStats()
        self.limiter = limiter or (
            SlidingWindowLimiter(requests_per_minute, clock=clock, sleeper=sleeper)
            if requests_per_minute
            else None
        )
        self.session = self._session(self._retry(policy, sleeper, idempotent=True))
        self._once = self._session(self._retry(policy, sleeper, idempotent=False))
        for session in (self.session, self._once):
            session.headers.update({"Accept": "application/json", **(headers or {})})
            if auth is not None:
                session.auth = auth

    @staticmethod
    def _retry(policy: RetryPolicy, sleeper: Sleeper, *, idempotent: bool) -> _Retry:
        """Idempotent calls retry every transient failure; others only what was not processed:
        429 (refused before processing) and failed connections. A 5xx or a read timeout on a
        POST that creates something may have created it, so it is not sent again."""
        tries = policy.attempts - 1
        retry = _Retry(
            total=tries,
            connect=tries,
            read=tries if idempotent else 0,
            status=tries,
            other=0,
            allowed_methods=None,  # every method: Copper searches are POSTs, upserts are keyed
            status_forcelist=policy.retry_statuses if idempotent else frozenset({429}),
            backoff_factor=policy.backoff_factor,
            backoff_max=policy.backoff_max,
            respect_retry_after_header=True,
            raise_on_status=False,
            retry_after_max=int(policy.retry_after_max),
        )
        retry.sleeper = sleeper
        retry.failures = _Failures()
        return retry

    @staticmethod
    def _session(retry: _Retry) -> requests.Session:
        session = _EnvironmentOnce()
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    @staticmethod
    def _failures(session: requests.Session) -> _Failures:
        adapter = session.get_adapter("http://")
        retry = getattr(adapter, "max_retries", None)
        return getattr(retry, "failures", None) or _Failures()

    def close(self) -> None:
        self.session.close()
        self._once.close()

    def __enter__(self) -> ApiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def _safe(self, text: str) -> str:
        return redact(text, self.secrets)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        kind: str | None = None,
        ok_statuses: Iterable[int] = (),
        idempotent: bool = True,
    ) -> requests.Response:
        """Send one call (retried per the policy); raise ``ApiError`` unless it succeeded.

        ``ok_statuses`` lists non-2xx statuses the caller interprets itself (e.g. 404 on a get).
        ``idempotent=False`` for calls that create something: no resend after a 5xx.
        """
        if self.limiter is not None:
            self.limiter.acquire()
        label = kind or f"{method} {path.split('?')[0]}"
        data = None
        send_headers = dict(headers or {})
        if json_body is not None:
            data = wire_json(json_body).encode()
            send_headers.setdefault("Content-Type", "application/json")
        session = self.session if idempotent else self._once
        failures = self._failures(session)
        failures.count = 0
        try:
            response = session.request(
                method,
                self.url(path),
                data=data,
                params=params,
                headers=send_headers,
                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
            )
        except requests.RequestException as exc:
            attempts = max(1, failures.count)
            self.stats.record(label, attempts, ())
            cause = getattr(exc.args[0] if exc.args else None, "reason", None)
            reason = type(cause if isinstance(cause, Exception) else exc).__name__
            tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            ambiguous = _maybe_applied(exc)
            doubt = " (no answer: it may have been applied)" if ambiguous else ""
            raise ApiError(
                self.api,
                self._safe(f"{method} {path} failed after {tries}: {reason}{doubt}"),
                ambiguous=ambiguous,
                attempts=attempts,
            ) from None
        history = getattr(getattr(response.raw, "retries", None), "history", ()) or ()
        statuses = [h.status for h in history if h.status] + [response.status_code]
        self.stats.record(label, len(history) + 1, statuses)
        status = response.status_code
        if status < 400 or status in set(ok_statuses):
            return response
        message = self._safe(self._error_message(response))
        if status in (401, 403):
            raise ApiAuthError(
                self.api,
                f"Unauthorized ({status}) on {method} {self._safe(path)}: {message}",
                status,
            )
        if status in self.policy.retry_statuses:
            message = f"gave up after {len(history) + 1} attempts: {message}"
        raise ApiError(
            self.api, f"{method} {self._safe(path)} answered {status}: {message}", status, message
        )

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """``request`` and decode the JSON body; an empty body is ``None``."""
        response = self.request(method, path, **kw)
        return self.decode(response, method, path)

    def decode(self, response: requests.Response, method: str, path: str) -> Any:
        content = response.content
        if not content or content.isspace():
            return None
        if _utf8(response.encoding):
            try:
                return _DECODER.decode(content)
            except msgspec.DecodeError:
                pass  # refused by the strict decoder (a number out of range, a BOM, not UTF-8)
        try:
            return response.json()
        except ValueError:
            excerpt = response.text[:120].replace("\n", " ")
            raise ApiResponseError(
                self.api,
                self._safe(
                    f"{method} {path} answered {response.status_code} with malformed JSON: {excerpt!r}"
                ),
                response.status_code,
            ) from None

    @staticmethod
    def _error_message(response: requests.Response) -> str:
        """Copper answers ``{"message": ...}`` or ``{"error": ...}``; Planhat ``{"error": ...}``."""
        try:
            body = response.json()
        except ValueError:
            return (response.text or response.reason or "").strip()[:300]
        if isinstance(body, dict):
            for key in ("message", "error", "detail"):
                if body.get(key):
                    return str(body[key])[:300]
        return json.dumps(body)[:300]
