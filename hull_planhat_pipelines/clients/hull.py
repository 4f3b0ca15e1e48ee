"""Forwarding profile changes to a Hull firehose, the way Hull's official Node client does.

The protocol (npm ``hull`` 0.14.2, which wraps ``hull-client`` 2.0.4):

- ``POST`` to the firehose root with ``Hull-App-Id`` (connector id), ``Hull-Access-Token``
  (connector secret) and ``Hull-Organization``; body ``{"batch": [...], "timestamp", "sentAt"}``
  with at most 50 messages.
- A message is ``{"type", "body", "headers": {"Hull-Access-Token": JWT}, "timestamp"}``. The JWT
  (HS256, connector secret) has ``iss`` = connector id, ``iat``, ``io.hull.subjectType`` and the
  claims ``io.hull.asUser`` and/or ``io.hull.asAccount``; ``sub`` only for a Hull id claim.
- User traits, account traits and tracks; a user joins an account by a ``traits`` message with
  an empty body on a token claiming both, subject type ``account``. A track body is flat:
  ``event``, ``properties``, ``event_id``, ``created_at`` (when it happened), ``source``, ...
- There is no message id: resending traits is harmless, a track is deduplicated by its
  ``event_id``. The firehose answers each batch as a whole.

Requests go through the shared ``ApiSession`` (retries, backoff, redaction). Every message gets
one outcome row shaped like the Planhat delivery rows.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import jwt

from hull_planhat_pipelines.clients.http import (
    ApiAuthError,
    ApiError,
    ApiSession,
    Clock,
    RetryPolicy,
    Sleeper,
    SlidingWindowLimiter,
    redact,
)
from hull_planhat_pipelines.clients.planhat_outcomes import DELIVERED, OutcomeStatus
from hull_planhat_pipelines.sync.batching import batch_bounds, jsonable
from hull_planhat_pipelines.sync.canonical import canonical_json

__all__ = [
    "ACCOUNT_CLAIMS",
    "AS_ACCOUNT",
    "AS_USER",
    "DEFAULT_POLICY",
    "MAX_BATCH_SIZE",
    "NOT_SENT_AUTH",
    "OUTCOME_COLUMNS",
    "SUBJECT_TYPE",
    "USER_CLAIMS",
    "FirehoseMessage",
    "FirehoseOutcome",
    "FirehoseStopped",
    "HullFirehoseClient",
    "check_connector_id",
]

API = "hull-firehose"
DEFAULT_POLICY = RetryPolicy(attempts=3, read_timeout=30.0)
"""Three tries, as the official client (which retries a timeout or a 5xx twice)."""
MAX_BATCH_SIZE = 50
"""Messages per request: the official client flushes at 50."""
USER_CLAIMS = ("id", "email", "external_id", "anonymous_id")
ACCOUNT_CLAIMS = ("id", "domain", "external_id", "anonymous_id")
AS_USER = "io.hull.asUser"
AS_ACCOUNT = "io.hull.asAccount"
SUBJECT_TYPE = "io.hull.subjectType"
CONNECTOR_ID = re.compile(r"[0-9a-fA-F]{24}")
EXCERPT_CHARS = 500
NOT_SENT_AUTH = "not sent: the forwarding stopped on an authentication failure"
_JWT_PATTERN = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]+")
"""Any JWT: never shown in an error or excerpt (a token lets its holder write to a profile)."""

MessageType = Literal["traits", "track"]
MessageKind = Literal["user_traits", "account_traits", "track", "link"]
Claims = Mapping[str, Any]


def check_connector_id(connector_id: str | None) -> str:
    """The connector id as Hull issues it (24 hex digits); the error never shows the value,
    which might be a secret pasted into the wrong variable."""
    value = (connector_id or "").strip()
    if not CONNECTOR_ID.fullmatch(value):
        raise ValueError(
            "the Hull connector id (HULL_CONNECTOR_ID) must be the connector's 24-character "
            f"hexadecimal id, as shown in the connector's settings; got {len(value)} characters"
            + ("" if not value or value.isalnum() else " including non-alphanumeric ones")
        )
    return value


@dataclass(frozen=True)
class FirehoseMessage:
    """One message ready to send: its wire form plus what the outcome row needs.

    ``kind`` tells user traits, account traits and links apart (all three are ``traits`` on the
    wire); ``key`` is the caller's id for the record (e.g. a ``hull_id``), echoed in the outcome.
    """

    kind: MessageKind
    type: MessageType
    timestamp: str
    token: str = field(repr=False)
    body: dict[str, Any]
    key: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "body": self.body,
            "headers": {"Hull-Access-Token": self.token},
            "timestamp": self.timestamp,
        }


@dataclass(frozen=True)
class FirehoseOutcome:
    """What happened to one message; the columns of a Planhat delivery row (without an id:
    the firehose gives none back).

    ``status`` is "sent" (the firehose took its batch) or "error". ``request`` numbers the
    calls of one ``send`` (None: not sent); ``attempts`` counts HTTP tries of that call.
    """

    target: str
    key: str | None
    status: OutcomeStatus
    error: str | None
    response: str | None
    request: int | None
    attempts: int | None
    batch: int

    @property
    def delivered(self) -> bool:
        return self.status in DELIVERED

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OUTCOME_COLUMNS}


OUTCOME_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(FirehoseOutcome))


class FirehoseStopped(ApiAuthError):
    """401/403 stopped the forwarding; ``outcomes`` holds a row for every message (those of the
    refused batch and after it are errors "not sent")."""

    def __init__(self, message: str, status: int | None, outcomes: list[FirehoseOutcome]) -> None:
        super().__init__(API, message, status)
        self.outcomes = outcomes


def _claims(value: Claims, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    """The non-empty claims, as text; a subject with no claim at all cannot be addressed."""
    unknown = set(value) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what} claim(s) {sorted(unknown)}; allowed: {list(allowed)}")
    kept = {
        name: str(value[name])
        for name in allowed
        if jsonable(value.get(name)) is not None and str(value[name]).strip()
    }
    if not kept:
        raise ValueError(f"{what} claims need at least one of {list(allowed)}")
    return kept


def _iso(value: dt.datetime | str | float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as JavaScript writes dates; numbers are Unix
    seconds (Copper's dates); text is parsed, so an unreadable date fails here."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value!r}") from None
        value = value.astimezone(dt.UTC) if value.tzinfo else value
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(jsonable(value))


def _object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    body = jsonable(dict(value or {}))
    # fail here, naming the message, rather than inside the HTTP call
    json.dumps(body, allow_nan=False)
    if not isinstance(body, dict):
        raise ValueError(f"{what} must be an object")
    return body


OPERATIONS = frozenset({"set", "setIfNull", "inc", "dec"})


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _flat(attributes: dict[str, Any]) -> dict[str, Any]:
    """Traits as Hull takes them: flat. A value that is neither plain, a list of plain values
    nor an operation (e.g. a currency field's ``{"amount", "currency"}``) goes as its JSON text,
    so it stays one trait that a later null still clears."""
    flat: dict[str, Any] = {}
    for name, value in attributes.items():
        operation = (
            isinstance(value, dict)
            and set(value) == {"operation", "value"}
            and value["operation"] in OPERATIONS
        )
        plain = _scalar(value) or (isinstance(value, list) and all(map(_scalar, value)))
        flat[name] = value if plain or operation else canonical_json(value)
    return flat


def _excerpt(text: str) -> str:
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _split_url(url: str) -> tuple[str, str]:
    """(scheme://host, path): the path shows in error messages instead of an empty string."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the firehose URL must be an http(s) URL, got {url!r}")
    base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return base, path


def firehose_url(organization: str) -> str:
    """Hull's firehose for an organization: ``acme.hullapp.io`` -> ``https://firehose.hullapp.io``."""
    _, _, domain = organization.partition(".")
    if not domain:
        raise ValueError(f"cannot derive a firehose URL from organization {organization!r}")
    return f"https://firehose.{domain}"


@dataclass(frozen=True)
class BatchResult:
    """One request's outcome: its rows, and whether the firehose is worth trying again now
    (False after a 5xx, a timeout or a refused connection that outlived the retries)."""

    outcomes: list[FirehoseOutcome]
    reachable: bool = True

    @property
    def delivered(self) -> bool:
        return all(o.delivered for o in self.outcomes)


class HullFirehoseClient:
    """Builds signed firehose messages and sends them in sequential batches; no Dagster here."""

    api = API

    def __init__(
        self,
        firehose_url: str,
        organization: str,
        connector_id: str,
        connector_secret: str,
        *,
        batch_size: int = MAX_BATCH_SIZE,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleeper: Sleeper = time.sleep,
        clock: Clock = time.time,
        limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        """``limiter``: a throttle shared by every client of the organization (Hull documents
        no firehose quota: None unless one is configured)."""
        for name, value in (("organization", organization), ("connector secret", connector_secret)):
            if not value:
                raise ValueError(f"a Hull {name} is required to forward to a firehose")
        batch_bounds(0, batch_size, MAX_BATCH_SIZE)  # validates batch_size
        self.organization = organization
        self.connector_id = check_connector_id(connector_id)
        self.batch_size = batch_size
        self._secret = connector_secret
        self._clock = clock
        base, self._path = _split_url(firehose_url)
        self.session = ApiSession(
            API,
            base,
            headers={
                "Hull-App-Id": self.connector_id,
                "Hull-Access-Token": connector_secret,
                "Hull-Organization": organization,
            },
            secrets=[connector_secret],
            policy=policy,
            limiter=limiter,
            sleeper=sleeper,
        )

    def __repr__(self) -> str:
        return f"HullFirehoseClient({self.session.base_url + self._path!r}, {self.organization!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HullFirehoseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attempts(self) -> int:
        """HTTP requests sent so far, retries included."""
        return self.session.stats.requests

    def redact(self, text: str) -> str:
        """``text`` without the connector secret or any access token."""
        return _JWT_PATTERN.sub("***", redact(text, self.session.secrets))

    # -- tokens and messages -----------------------------------------------------------------
    def _now(self) -> str:
        return _iso(self._clock())

    def access_token(
        self, user_claims: Claims | None = None, account_claims: Claims | None = None
    ) -> str:
        """A JWT naming the user and/or account a message is about; the subject is the account
        when account claims are given (a link), else the user."""
        if user_claims is None and account_claims is None:
            raise ValueError("an access token needs user claims, account claims or both")
        user = None if user_claims is None else _claims(user_claims, USER_CLAIMS, "user")
        account = (
            None if account_claims is None else _claims(account_claims, ACCOUNT_CLAIMS, "account")
        )
        subject = "account" if account is not None else "user"
        payload: dict[str, Any] = {"iss": self.connector_id, "iat": int(self._clock())}
        subject_id = (account if subject == "account" else user or {}).get("id")
        if subject_id:
            payload["sub"] = subject_id
        if user is not None:
            payload[AS_USER] = user
        if account is not None:
            payload[AS_ACCOUNT] = account
        payload[SUBJECT_TYPE] = subject
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def user_traits_message(
        self, claims: Claims, attributes: Mapping[str, Any], *, key: str | None = None
    ) -> FirehoseMessage:
        """``traits`` on the user the claims name (``id``/``email``/``external_id``/...)."""
        body = _flat(_object(attributes, "attributes"))
        token = self.access_token(claims)
        return FirehoseMessage("user_traits", "traits", self._now(), token, body, key)

    def account_traits_message(
        self, claims: Claims, attributes: Mapping[str, Any], *, key: str | None = None
    ) -> FirehoseMessage:
        """``traits`` on an account: the token claims only the account (``domain``/...)."""
        body = _flat(_object(attributes, "attributes"))
        token = self.access_token(account_claims=claims)
        return FirehoseMessage("account_traits", "traits", self._now(), token, body, key)

    def link_message(
        self, user_claims: Claims, account_claims: Claims, *, key: str | None = None
    ) -> FirehoseMessage:
        """The user joins the account: empty ``traits`` on a token claiming both, subject the
        account (what ``asUser(user).account(account).traits({})`` sends)."""
        token = self.access_token(user_claims, account_claims)
        return FirehoseMessage("link", "traits", self._now(), token, {}, key)

    def track_message(
        self,
        user_claims: Claims,
        event_id: str,
        name: str,
        properties: Mapping[str, Any],
        occurred_at: dt.datetime | str | float,
        *,
        source: str | None = None,
        event_type: str | None = None,
        key: str | None = None,
    ) -> FirehoseMessage:
        """``track``: one event on the user, dated when it happened; ``event_id`` makes a
        resend overwrite the earlier copy instead of adding an event."""
        if not event_id or not name:
            raise ValueError("an event needs an event_id and a name")
        body: dict[str, Any] = {"ip": None, "url": None, "referer": None}
        body["event_id"] = str(event_id)
        body["created_at"] = _iso(occurred_at)
        if source:
            body["source"] = source
        if event_type:
            body["type"] = event_type
        body["properties"] = _object(properties, "properties")
        body["event"] = name
        token = self.access_token(user_claims)
        return FirehoseMessage("track", "track", self._now(), token, body, key or str(event_id))

    # -- sending -----------------------------------------------------------------------------
    def batches(self, messages: Sequence[FirehoseMessage]) -> Iterator[BatchResult]:
        """Send ``messages`` in batches of ``batch_size``, one request at a time, yielding each
        batch's result before the next goes out (so the caller can checkpoint in between).

        A batch that still fails after the policy's retries marks its messages "error"; 401/403
        stops everything: ``FirehoseStopped`` (an ``ApiAuthError``) carries the unsent rows.
        """
        messages = list(messages)
        bounds = batch_bounds(len(messages), self.batch_size, MAX_BATCH_SIZE)
        for number, positions in enumerate(bounds, start=1):
            batch = messages[positions.start : positions.stop]
            try:
                yield self.send_batch(batch, number)
            except ApiAuthError as exc:
                unsent = messages[positions.start :]
                rows = [_row(m, "error", NOT_SENT_AUTH, None, None, None, number) for m in unsent]
                message = self.redact(str(exc).removeprefix(f"{exc.api}: "))
                raise FirehoseStopped(message, exc.status, rows) from None

    def send(self, messages: Sequence[FirehoseMessage]) -> list[FirehoseOutcome]:
        """Every batch of ``messages``; one outcome per message, in input order."""
        outcomes: list[FirehoseOutcome] = []
        try:
            for result in self.batches(messages):
                outcomes.extend(result.outcomes)
        except FirehoseStopped as exc:
            exc.outcomes = outcomes + exc.outcomes
            raise
        return outcomes

    def send_batch(self, batch: Sequence[FirehoseMessage], number: int = 1) -> BatchResult:
        """One request; the firehose takes or refuses the batch as a whole (401/403 raise)."""
        if not 1 <= len(batch) <= MAX_BATCH_SIZE:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_SIZE} messages, got {len(batch)}")
        now = self._now()
        body = {"batch": [m.wire() for m in batch], "timestamp": now, "sentAt": now}
        before = self.attempts()
        request = number
        try:
            response = self.session.request("POST", self._path, json_body=body, kind="POST batch")
        except ApiAuthError:
            raise
        except ApiError as exc:
            attempts = self.attempts() - before
            excerpt = None if exc.body is None else _excerpt(self.redact(str(exc.body)))
            error = self.redact(str(exc))
            rows = [_row(m, "error", error, excerpt, request, attempts, number) for m in batch]
            reachable = exc.status is not None and exc.status < 500 and exc.status != 429
            return BatchResult(rows, reachable)
        attempts = self.attempts() - before
        excerpt = _excerpt(self.redact(response.text)) if response.content else None
        return BatchResult(
            [_row(m, "sent", None, excerpt, request, attempts, number) for m in batch]
        )


def _row(
    message: FirehoseMessage,
    status: OutcomeStatus,
    error: str | None,
    response: str | None,
    request: int | None,
    attempts: int | None,
    batch: int,
) -> FirehoseOutcome:
    return FirehoseOutcome(
        target=f"hull.{message.kind}",
        key=message.key,
        status=status,
        error=error,
        response=response,
        request=request,
        attempts=attempts,
        batch=batch,
    )
