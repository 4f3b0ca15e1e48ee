"""Planhat REST and analytics client.

Two ``ApiSession``s: the REST API (Bearer token, throttled under the 200-a-minute soft quota)
and the analytics host (tenant token in the path, not subject to that quota). Retries, backoff
and redaction come from ``clients.http``; this module adds Planhat's paging, keys, bulk limits,
the regional hint on auth failures, and per-record outcomes of bulk writes.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import requests

from hull_planhat_pipelines.clients.http import (
    ApiAuthError,
    ApiError,
    ApiResponseError,
    ApiSession,
    Clock,
    RetryPolicy,
    Sleeper,
    SlidingWindowLimiter,
    redact,
)
from hull_planhat_pipelines.clients.planhat_outcomes import (
    AnalyticsResult,
    BulkResult,
    RecordOutcome,
    error_message,
    is_bulk_body,
    reconcile_bulk,
    reconcile_metrics,
)
from hull_planhat_pipelines.sync.batching import MAX_ANALYTICS_RECORDS, MAX_BULK_RECORDS

__all__ = [
    "COMPANY_PAGE_CAP",
    "DEFAULT_POLICY",
    "ENDUSER_PAGE_CAP",
    "USER_PAGE_CAP",
    "AnalyticsResult",
    "ApiAuthError",
    "ApiError",
    "BulkResult",
    "PlanhatClient",
    "RecordOutcome",
    "SendResult",
    "external_key",
    "path_segment",
    "render_path",
]

COMPANY_PAGE_CAP = 5000
ENDUSER_PAGE_CAP = 2000
USER_PAGE_CAP = 2000
"""No source gives the users cap (one client pages users at 10,000); 2,000 is the smallest cap
any source shows for a list, so a server-side cap cannot make a full page look short."""
DEFAULT_POLICY = RetryPolicy()
BulkModel = Literal["companies", "endusers"]
BULK_MODELS: tuple[BulkModel, ...] = ("companies", "endusers")
ACTIVITIES_NOTE = "no per-item outcome: Planhat acknowledges every activity, kept or dropped"
SEND_METHODS = frozenset({"PUT", "POST", "PATCH"})
_RESERVED_HEADERS = frozenset({"authorization", "content-type"})


def external_key(external_id: object) -> str:
    """The ``{id}`` that addresses a record by its external id: ``extid-<externalId>``."""
    text = str(external_id)
    if not text.strip():
        raise ValueError("an external id is required to address a Planhat record")
    return f"extid-{text}"


def path_segment(key: str) -> str:
    """``key`` quoted as one path segment (external ids may hold ``/``, spaces, ``?``)."""
    return quote(str(key), safe="!$&'()*+,;=:@")


def render_path(template: str, external_id: object) -> str:
    """A configured path with its ``{external_id}`` placeholder filled as ``extid-<value>``."""
    if "{external_id}" not in template:
        return template
    return template.replace("{external_id}", path_segment(external_key(external_id)))


def _check_destination(path: str, headers: Mapping[str, str] | None) -> None:
    """A configured call stays on the REST host and cannot replace the client's headers."""
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"a destination path must start with one '/': {path!r}")
    if headers and _RESERVED_HEADERS & {name.lower() for name in headers}:
        raise ValueError("Authorization and Content-Type are set by the client")


@dataclass(frozen=True)
class SendResult:
    """The answer to one configured-destination call: status, decoded body (or text)."""

    status: int
    body: Any
    attempts: int


class _RedactingFilter(logging.Filter):
    """urllib3 logs request lines at DEBUG, and analytics paths carry the tenant token."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[PlanhatClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for client in list(self.clients) for s in client._secrets]
        if secrets:
            message = record.getMessage()
            cleaned = redact(message, secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


_LOG_FILTER = _RedactingFilter()
logging.getLogger("urllib3.connectionpool").addFilter(_LOG_FILTER)


def _attempts(response: requests.Response) -> int:
    history = getattr(getattr(response.raw, "retries", None), "history", ()) or ()
    return len(history) + 1


class PlanhatClient:
    """Everything the pipeline asks of Planhat; no Dagster, no configuration loading."""

    api = "planhat"

    def __init__(
        self,
        api_url: str,
        analytics_url: str,
        api_token: str,
        tenant_token: str,
        *,
        requests_per_minute: int | None = 200,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleeper: Sleeper = time.sleep,
        clock: Clock = time.monotonic,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        """``limiter``: the REST quota shared across clients of the tenant (``RateLimiters``);
        the analytics host is not subject to it."""
        if not api_token:
            raise ValueError("a Planhat API token is required")
        self._secrets = [s for s in (api_token, tenant_token, quote(tenant_token or "")) if s]
        self._tenant = tenant_token
        self._bearer = {"Authorization": f"Bearer {api_token}"}
        self.rest = ApiSession(
            "planhat",
            api_url,
            headers=self._bearer,
            secrets=self._secrets,
            policy=policy,
            requests_per_minute=requests_per_minute,
            limiter=limiter,
            sleeper=sleeper,
            clock=clock,
        )
        self.analytics = ApiSession(
            "planhat-analytics",
            analytics_url,
            secrets=self._secrets,
            policy=policy,
            sleeper=sleeper,
            clock=clock,
        )
        _LOG_FILTER.clients.add(self)

    def __repr__(self) -> str:
        return f"PlanhatClient({self.rest.base_url!r}, {self.analytics.base_url!r})"

    def close(self) -> None:
        self.rest.close()
        self.analytics.close()

    def __enter__(self) -> PlanhatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def attempts(self) -> int:
        """HTTP requests sent so far by both sessions, retries included."""
        return self.rest.stats.requests + self.analytics.stats.requests

    def requests_by_kind(self) -> dict[str, int]:
        kinds = dict(self.rest.stats.by_kind)
        for kind, count in self.analytics.stats.by_kind.items():
            kinds[kind] = kinds.get(kind, 0) + count
        return kinds

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _request(
        self, session: ApiSession, method: str, path: str, *, kind: str, **kw: Any
    ) -> requests.Response:
        """``session.request`` with Planhat's explanation of an auth failure."""
        try:
            return session.request(method, path, kind=kind, **kw)
        except ApiAuthError as exc:
            # ApiSession says "<api>: Unauthorized (<status>) on <method> <path>: <message>".
            upstream = str(exc).split(": ", 2)[-1]
            raise self._auth_error(session, exc.status, kind, upstream) from None

    def _auth_error(
        self, session: ApiSession, status: int | None, kind: str, upstream: str
    ) -> ApiAuthError:
        """Say what to check; a Planhat 401 most often means the wrong regional base URL."""
        if session is self.analytics:
            hint = (
                "check the tenant token (and, for dimension data, the API token); the analytics "
                f"base URL {session.base_url} is the same for every region"
            )
        elif status == 403:
            hint = (
                "the service account's token lacks permission for this call, or "
                f"{session.base_url} is not your tenant's regional base URL"
            )
        else:
            hint = (
                f"check the API token and that {session.base_url} is your tenant's regional "
                "base URL (https://api-<region>.planhat.com, e.g. api-eu, api-us2): a 401 "
                "often means the wrong region"
            )
        upstream = self.redact(upstream)  # only Planhat's words can hold a token, not the hint
        return ApiAuthError(
            session.api, f"refused ({status}) on {kind}: {upstream}; {hint}", status, upstream
        )

    def _decode(self, session: ApiSession, response: requests.Response, kind: str) -> Any:
        return session.decode(response, *kind.split(" ", 1))

    # -- reading -----------------------------------------------------------------------------
    def _pages(
        self, collection: str, page_size: int, cap: int, params: Mapping[str, Any]
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of one listing: ``limit`` rows from ``offset``, until a short or empty page.

        Lists carry no total, so a short page is the only end marker: ``page_size`` must not
        exceed the server's cap (``cap``), or a capped full page would look like the last one.
        The offset advances by the rows received.
        """
        if not 1 <= page_size <= cap:
            raise ValueError(f"page_size for /{collection} must be 1..{cap}, got {page_size}")
        kind = f"GET /{collection}"
        offset = 0
        while True:
            query = {**params, "limit": page_size, "offset": offset}
            response = self._request(self.rest, "GET", f"/{collection}", kind=kind, params=query)
            page = self._decode(self.rest, response, kind)
            if not isinstance(page, list):
                raise ApiResponseError(
                    self.api, f"{kind} answered {type(page).__name__}, not a list", 200
                )
            if page:
                yield page
            if len(page) < page_size:
                return
            offset += len(page)

    @staticmethod
    def _list_params(select: Sequence[str] | None, sort: str | None) -> dict[str, str]:
        params = {}
        if select:
            params["select"] = ",".join(select)
        if sort:
            params["sort"] = sort
        return params

    def iter_companies(
        self,
        page_size: int = COMPANY_PAGE_CAP,
        select: Sequence[str] | None = None,
        sort: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every company, one page at a time (the API has no time filter: always a snapshot)."""
        params = self._list_params(select, sort)
        return self._pages("companies", page_size, COMPANY_PAGE_CAP, params)

    def iter_endusers(
        self,
        page_size: int = ENDUSER_PAGE_CAP,
        select: Sequence[str] | None = None,
        sort: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every enduser (archived ones are hidden by Planhat), one page at a time."""
        params = self._list_params(select, sort)
        return self._pages("endusers", page_size, ENDUSER_PAGE_CAP, params)

    def list_users(self, page_size: int = USER_PAGE_CAP) -> list[dict[str, Any]]:
        """All Planhat team members (valid ``owner``/``coOwner`` ids)."""
        return [
            user for page in self._pages("users", page_size, USER_PAGE_CAP, {}) for user in page
        ]

    def _get_one(self, collection: str, key: str) -> dict[str, Any] | None:
        kind = f"GET /{collection}/{{id}}"
        path = f"/{collection}/{path_segment(key)}"
        response = self._request(self.rest, "GET", path, kind=kind, ok_statuses=(404,))
        if response.status_code == 404:
            return None
        record = self._decode(self.rest, response, kind)
        if not isinstance(record, dict):
            raise ApiResponseError(self.api, f"{kind} answered no object", response.status_code)
        return record

    def read(self, path: str) -> dict[str, Any] | None:
        """``GET`` one record by its REST path (``/conversations/extid-…``); None if unknown."""
        _check_destination(path, None)
        kind = "GET " + path.rsplit("/", 1)[0] + "/{id}"
        response = self._request(self.rest, "GET", path, kind=kind, ok_statuses=(404,))
        if response.status_code == 404:
            return None
        record = self._decode(self.rest, response, kind)
        return record if isinstance(record, dict) else None

    def get_company(self, key: str) -> dict[str, Any] | None:
        """One company by ``_id``, ``extid-…`` (see ``external_key``) or ``srcid-…``; None if unknown."""
        return self._get_one("companies", key)

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        return self._get_one("users", user_id)

    # -- single-record writes ----------------------------------------------------------------
    def _write_one(
        self, method: str, path: str, kind: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        response = self._request(
            self.rest, method, path, kind=kind, json_body=dict(body), idempotent=method != "POST"
        )
        record = self._decode(self.rest, response, kind)
        if not isinstance(record, dict):
            raise ApiResponseError(self.api, f"{kind} answered no object", response.status_code)
        return record

    def create_user(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /users``; a 4xx raises ``ApiError`` with ``.status`` and Planhat's message."""
        return self._write_one("POST", "/users", "POST /users", body)

    def update_user(self, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /users/{id}`` (partial update); returns the whole updated user."""
        return self._write_one("PUT", f"/users/{path_segment(user_id)}", "PUT /users/{id}", body)

    def send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: Mapping[str, str] | None = None,
        *,
        kind: str | None = None,
    ) -> SendResult:
        """One call to a configured destination (one record, or a list for a bulk PUT).

        The path must be relative to the REST base: the Bearer token never goes elsewhere.
        A non-2xx answer raises ``ApiError``; a non-JSON body is returned as text.
        """
        method = method.upper()
        if method not in SEND_METHODS:
            raise ValueError(f"method must be one of {sorted(SEND_METHODS)}, got {method}")
        _check_destination(path, headers)
        label = kind or f"{method} {path}"
        response = self._request(
            self.rest,
            method,
            path,
            kind=label,
            json_body=body,
            headers=headers,
            idempotent=method != "POST",
        )
        try:
            decoded = self._decode(self.rest, response, label)
        except ApiResponseError:
            decoded = response.text
        return SendResult(response.status_code, decoded, _attempts(response))

    # -- bulk writes -------------------------------------------------------------------------
    def bulk_upsert(self, model: BulkModel, items: Sequence[Mapping[str, Any]]) -> BulkResult:
        """``PUT /companies`` or ``PUT /endusers``: at most 5,000 items, one outcome each.

        A partly failed call (206, or 400/403 with error lists) is a result, not an exception.
        """
        if model not in BULK_MODELS:
            raise ValueError(f"bulk_upsert model must be one of {BULK_MODELS}, got {model!r}")
        return self.bulk_put(f"/{model}", items, strict=True)

    def bulk_put(
        self,
        path: str,
        items: Sequence[Mapping[str, Any]],
        *,
        strict: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> BulkResult:
        """A bulk upsert to any model's collection path (``/licenses``, ``/assets`` ...).

        ``strict``: a 2xx body without the bulk shape is a ``ApiResponseError`` (the known
        models); otherwise every item is "sent" (a configured endpoint may answer anything).
        """
        items = list(items)
        if len(items) > MAX_BULK_RECORDS:
            raise ValueError(
                f"Planhat takes at most {MAX_BULK_RECORDS} items per bulk call, got {len(items)}"
            )
        _check_destination(path, headers)
        if not items:
            return BulkResult(path, None, 0)
        kind = f"PUT {path}"
        response = self._request(
            self.rest,
            "PUT",
            path,
            kind=kind,
            json_body=items,
            headers=headers,
            ok_statuses=(400, 403),
        )
        status = response.status_code
        body = self._decode(self.rest, response, kind)
        if status == 403 and not is_bulk_body(body):
            raise self._auth_error(self.rest, status, kind, error_message(body))
        if not is_bulk_body(body):
            if status < 300 and strict:
                raise ApiResponseError(self.api, f"{kind} answered {status} without counts", status)
            if status < 300:
                sent = tuple(RecordOutcome(i, None, "sent") for i in range(len(items)))
                return BulkResult(
                    path, status, len(items), outcomes=sent, attempts=_attempts(response)
                )
        outcomes, counts = reconcile_bulk(items, body, status)
        summary = {"status": status, **counts}
        if isinstance(body, dict) and body.get("error"):
            summary["error"] = self.redact(str(body["error"]))[:300]
        return BulkResult(
            path,
            status,
            len(items),
            outcomes=tuple(outcomes),
            attempts=_attempts(response),
            summary=summary,
            **counts,
        )

    # -- analytics ---------------------------------------------------------------------------
    def _analytics_path(self, prefix: str) -> str:
        if not self._tenant:
            raise ValueError("a Planhat tenant token is required for the analytics endpoints")
        return f"{prefix}/{path_segment(self._tenant)}"

    @staticmethod
    def _check_analytics_size(items: Sequence[Any]) -> None:
        if len(items) > MAX_ANALYTICS_RECORDS:
            raise ValueError(
                f"at most {MAX_ANALYTICS_RECORDS} items per analytics call, got {len(items)}"
            )

    def bulk_activities(self, items: Sequence[Mapping[str, Any]]) -> AnalyticsResult:
        """``POST /analytics/bulk/{tenant}``. Planhat answers 200 even for bad items and drops
        activities that match nobody, so every item of a 2xx call is "sent", nothing more."""
        items = list(items)
        self._check_analytics_size(items)
        kind = "POST /analytics/bulk"
        if not items:
            return AnalyticsResult(kind, None, 0)
        path = self._analytics_path("/analytics/bulk")
        response = self._request(
            self.analytics, "POST", path, kind=kind, json_body=items, idempotent=False
        )
        outcomes = tuple(RecordOutcome(i, None, "sent") for i in range(len(items)))
        return AnalyticsResult(
            kind,
            response.status_code,
            len(items),
            outcomes=outcomes,
            attempts=_attempts(response),
            summary={"status": response.status_code, "note": ACTIVITIES_NOTE},
        )

    def dimension_data(self, items: Sequence[Mapping[str, Any]]) -> AnalyticsResult:
        """``POST /dimensiondata/{tenant}`` with the Bearer token; outcomes from
        ``processed`` and ``errors``."""
        items = list(items)
        self._check_analytics_size(items)
        kind = "POST /dimensiondata"
        if not items:
            return AnalyticsResult(kind, None, 0)
        path = self._analytics_path("/dimensiondata")
        response = self._request(
            self.analytics,
            "POST",
            path,
            kind=kind,
            json_body=items,
            headers=self._bearer,
            idempotent=False,
        )
        body = self._decode(self.analytics, response, kind)
        outcomes, processed, errors = reconcile_metrics(items, body)
        return AnalyticsResult(
            kind,
            response.status_code,
            len(items),
            processed=processed,
            errors=errors,
            outcomes=tuple(outcomes),
            attempts=_attempts(response),
            summary={"status": response.status_code, "processed": processed, "errors": errors},
        )
