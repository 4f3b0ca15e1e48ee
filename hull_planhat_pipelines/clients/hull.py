"""Forwarding profile changes to a Hull-compatible firehose.

Each applied upsert or event becomes one firehose message (``traits``, ``track`` or ``link``)
whose ``Hull-Access-Token`` is a JWT signed with the connector secret and naming the profile it
is about. Messages go out in batches, one request at a time, through the shared ``ApiSession``
(retries, backoff, redaction). Every message gets one outcome row shaped like the Planhat
delivery rows, so both can land in the same deliveries table.

Message ids are derived from the message's content, not drawn at random: a batch resent after a
timeout or a killed run carries the same ids and the firehose drops the copies.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
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
    redact,
)
from hull_planhat_pipelines.clients.planhat_outcomes import DELIVERED, OutcomeStatus
from hull_planhat_pipelines.sync.batching import batch_bounds, jsonable

__all__ = [
    "ACCOUNT_CLAIMS",
    "DEFAULT_POLICY",
    "MAX_BATCH_SIZE",
    "NOT_SENT_AUTH",
    "OUTCOME_COLUMNS",
    "USER_CLAIMS",
    "FirehoseMessage",
    "FirehoseOutcome",
    "FirehoseStopped",
    "HullFirehoseClient",
    "message_id",
]

API = "hull-firehose"
DEFAULT_POLICY = RetryPolicy()
MAX_BATCH_SIZE = 100
"""Messages per request: the batch size Hull's own clients used; larger is unverified."""
USER_CLAIMS = ("email", "external_id", "anonymous_id")
ACCOUNT_CLAIMS = ("domain", "external_id", "anonymous_id")
AS_USER = "io.hull.asUser"
AS_ACCOUNT = "io.hull.asAccount"
SUBJECT_TYPE = "io.hull.subjectType"
EXCERPT_CHARS = 500
NOT_SENT_AUTH = "not sent: the forwarding stopped on an authentication failure"
_MESSAGE_NAMESPACE = uuid.UUID("6f1d0c4e-3a57-5b2e-9c1d-4b8e2f7a9d30")
_JWT_PATTERN = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]+")
"""Any JWT: never shown in an error or excerpt (a token lets its holder write to a profile)."""

MessageType = Literal["traits", "track", "link"]
MessageKind = Literal["user_traits", "account_traits", "track", "link"]
Claims = Mapping[str, Any]


@dataclass(frozen=True)
class FirehoseMessage:
    """One message ready to send: its wire form plus what the outcome row needs.

    ``kind`` tells user from account traits (same wire ``type``); ``key`` is the caller's id
    for the record (e.g. a ``hull_id``), echoed in the outcome row; default: the message id.
    """

    kind: MessageKind
    type: MessageType
    message_id: str
    timestamp: str
    token: str = field(repr=False)
    body: dict[str, Any]
    key: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "timestamp": self.timestamp,
            "message_id": self.message_id,
            "headers": {"Hull-Access-Token": self.token},
            "body": self.body,
        }


@dataclass(frozen=True)
class FirehoseOutcome:
    """What happened to one message; the columns of a Planhat delivery row, with the message
    id where Planhat rows carry ``planhat_id``.

    ``status`` is "sent" (the firehose took it: it answers no more than that, like Planhat's
    analytics) or "error". ``request`` numbers the calls of one ``send`` (None: not sent);
    ``attempts`` counts HTTP tries of that call, retries included.
    """

    target: str
    key: str | None
    status: OutcomeStatus
    error: str | None
    response: str | None
    request: int | None
    attempts: int | None
    batch: int
    message_id: str

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


def _canonical(value: Any) -> str:
    """Stable JSON text; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def message_id(
    message_type: str, claims: Mapping[str, Any], body: Any, revision: str | None = None
) -> str:
    """A name-based UUID of the message content: same content, same id, whenever it is built.

    ``revision`` separates genuine repeats: without it, a trait set back to an earlier value
    gets the id of the earlier message and a deduplicating firehose drops it.
    """
    material = _canonical([message_type, claims, body, revision])
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, material))


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


def _subjects(
    user: Claims | None, account: Claims | None
) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    if user is None and account is None:
        raise ValueError("an access token needs user claims, account claims or both")
    return (
        None if user is None else _claims(user, USER_CLAIMS, "user"),
        None if account is None else _claims(account, ACCOUNT_CLAIMS, "account"),
    )


def _iso(value: dt.datetime | str | float) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``; numbers are Unix seconds (Copper's dates)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return str(jsonable(value))


def _object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    body = jsonable(dict(value or {}))
    _canonical(body)  # fail here, naming the message, rather than inside the HTTP call
    if not isinstance(body, dict):
        raise ValueError(f"{what} must be an object")
    return body


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
    ) -> None:
        for name, value in (
            ("organization", organization),
            ("connector id", connector_id),
            ("connector secret", connector_secret),
        ):
            if not value:
                raise ValueError(f"a Hull {name} is required to forward to a firehose")
        batch_bounds(0, batch_size, MAX_BATCH_SIZE)  # validates batch_size
        self.organization = organization
        self.connector_id = connector_id
        self.batch_size = batch_size
        self._secret = connector_secret
        self._clock = clock
        base, self._path = _split_url(firehose_url)
        self.session = ApiSession(
            API,
            base,
            headers={"Hull-Organization": organization},
            secrets=[connector_secret],
            policy=policy,
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
        """A JWT (HS256, connector secret) naming the user and/or account a message is about."""
        user, account = _subjects(user_claims, account_claims)
        return self._token(user, account)

    def _token(self, user: dict[str, str] | None, account: dict[str, str] | None) -> str:
        payload: dict[str, Any] = {
            "iss": self.organization,
            "sub": self.connector_id,
            "iat": int(self._clock()),
            SUBJECT_TYPE: "user" if user is not None else "account",
        }
        if user is not None:
            payload[AS_USER] = user
        if account is not None:
            payload[AS_ACCOUNT] = account
        return jwt.encode(payload, self._secret, algorithm="HS256")

    def _message(
        self,
        kind: MessageKind,
        message_type: MessageType,
        subjects: tuple[Claims | None, Claims | None],
        body: dict[str, Any],
        *,
        key: str | None,
        revision: str | None,
    ) -> FirehoseMessage:
        user, account = _subjects(*subjects)
        mid = message_id(message_type, {AS_USER: user, AS_ACCOUNT: account}, body, revision)
        token = self._token(user, account)
        return FirehoseMessage(kind, message_type, mid, self._now(), token, body, key)

    def user_traits_message(
        self,
        claims: Claims,
        attributes: Mapping[str, Any],
        *,
        key: str | None = None,
        revision: str | None = None,
    ) -> FirehoseMessage:
        """``traits`` on the user ``claims`` names (``email``/``external_id``/``anonymous_id``)."""
        body = _object(attributes, "attributes")
        return self._message(
            "user_traits", "traits", (claims, None), body, key=key, revision=revision
        )

    def account_traits_message(
        self,
        claims: Claims,
        attributes: Mapping[str, Any],
        *,
        key: str | None = None,
        revision: str | None = None,
    ) -> FirehoseMessage:
        """``traits`` on an account: the token claims only the account (``domain``/...)."""
        body = _object(attributes, "attributes")
        return self._message(
            "account_traits", "traits", (None, claims), body, key=key, revision=revision
        )

    def track_message(
        self,
        user_claims: Claims,
        event_id: str,
        name: str,
        properties: Mapping[str, Any],
        occurred_at: dt.datetime | str | float,
        *,
        source: str | None = None,
        key: str | None = None,
        revision: str | None = None,
    ) -> FirehoseMessage:
        """``track``: one event on the user; ``event_id`` also lets Hull deduplicate events."""
        if not event_id or not name:
            raise ValueError("an event needs an event_id and a name")
        context: dict[str, Any] = {"created_at": _iso(occurred_at)}
        if source:
            context["source"] = source
        body = {
            "event": name,
            "properties": _object(properties, "properties"),
            "context": context,
            "event_id": str(event_id),
        }
        return self._message(
            "track", "track", (user_claims, None), body, key=key or str(event_id), revision=revision
        )

    def link_message(
        self,
        user_claims: Claims,
        account_claims: Claims,
        *,
        key: str | None = None,
        revision: str | None = None,
    ) -> FirehoseMessage:
        """``link``: the token's user joins the token's account; the body is empty."""
        return self._message(
            "link", "link", (user_claims, account_claims), {}, key=key, revision=revision
        )

    # -- sending -----------------------------------------------------------------------------
    def send(self, messages: Sequence[FirehoseMessage]) -> list[FirehoseOutcome]:
        """Send ``messages`` in batches of ``batch_size``, one request at a time.

        Returns one outcome per message, in input order. A 2xx batch marks its messages "sent"
        (except those the answer lists under ``rejected``); a batch that still fails after the
        policy's retries marks its messages "error" and the next batch goes out. 401/403 stops
        everything: ``FirehoseStopped`` (an ``ApiAuthError``) carries the rows.
        """
        messages = list(messages)
        outcomes: list[FirehoseOutcome] = []
        bounds = batch_bounds(len(messages), self.batch_size, MAX_BATCH_SIZE)
        for number, positions in enumerate(bounds, start=1):
            batch = messages[positions.start : positions.stop]
            try:
                outcomes.extend(self._send_batch(batch, number))
            except ApiAuthError as exc:
                unsent = messages[positions.start :]
                outcomes.extend(
                    _row(m, "error", NOT_SENT_AUTH, None, None, None, number) for m in unsent
                )
                message = self.redact(str(exc).removeprefix(f"{exc.api}: "))
                raise FirehoseStopped(message, exc.status, outcomes) from None
        return outcomes

    def _send_batch(self, batch: list[FirehoseMessage], number: int) -> list[FirehoseOutcome]:
        now = self._now()
        body = {"batch": [m.wire() for m in batch], "timestamp": now, "sentAt": now}
        before = self.attempts()
        try:
            response = self.session.request("POST", self._path, json_body=body, kind="POST batch")
        except ApiAuthError:
            raise
        except ApiError as exc:
            attempts = self.attempts() - before
            excerpt = None if exc.body is None else _excerpt(self.redact(str(exc.body)))
            error = self.redact(str(exc))
            return [_row(m, "error", error, excerpt, number, attempts, number) for m in batch]
        attempts = self.attempts() - before
        answer = _decode(response.content)
        rejected = _rejected(answer)
        excerpt = _excerpt(self.redact(response.text)) if response.content else None
        rows = []
        for message in batch:
            reason = rejected.get(message.message_id)
            if reason is None:
                rows.append(_row(message, "sent", None, excerpt, number, attempts, number))
            else:
                error = f"rejected by the firehose: {self.redact(reason)}"
                rows.append(_row(message, "error", error, excerpt, number, attempts, number))
        return rows


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
        key=message.key if message.key is not None else message.message_id,
        status=status,
        error=error,
        response=response,
        request=request,
        attempts=attempts,
        batch=batch,
        message_id=message.message_id,
    )


def _decode(content: bytes) -> Any:
    if not content.strip():
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


def _rejected(answer: Any) -> dict[str, str]:
    """Message ids the firehose says it refused -> why. Hull documents no per-message answer;
    one that names refusals (as the sandbox does) must not be reported as delivered."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("rejected"), list):
        return {}
    refused: dict[str, str] = {}
    for entry in answer["rejected"]:
        if isinstance(entry, Mapping) and entry.get("message_id"):
            refused[str(entry["message_id"])] = str(entry.get("error") or "rejected")
    return refused
