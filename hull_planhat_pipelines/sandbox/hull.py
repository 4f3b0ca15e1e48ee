"""The emulated Hull firehose: one real HTTP endpoint on 127.0.0.1 that accepts what Hull's
official Node client (npm ``hull`` 0.14.2 / ``hull-client`` 2.0.4) sends, and nothing else.

A batch is taken or refused as a whole (nothing of a refused batch is kept), as Hull answers:

- ``POST /`` only, ``Content-Type: application/json``. Headers ``Hull-Organization`` (this
  organization), ``Hull-App-Id`` (the connector id) and ``Hull-Access-Token`` (the connector
  secret, or a token signed with it whose issuer is the connector): else 401.
- The body is exactly ``{"batch", "timestamp", "sentAt"}`` with 1 to 50 messages: else 400.
- A message is ``{"type", "body", "headers": {"Hull-Access-Token"}, "timestamp"}`` (plus
  ``requestId``); no other key (no ``message_id``: the official client has none). ``type`` is
  ``traits``, ``track``, ``alias`` or ``unalias``: else 400.
- Its token verifies with the connector secret (HS256), ``iss`` is the connector id, ``iat`` is
  set, ``io.hull.subjectType`` is ``user`` or ``account``, and the subject is named by its claims
  (``io.hull.asUser``: id/email/external_id/anonymous_id; ``io.hull.asAccount``: id/domain/
  external_id/anonymous_id/aliases) or by ``sub``, a 24-hex Hull id: else 401.
- ``track``, ``alias`` and ``unalias`` are about a user. A ``traits`` body is flat: values are
  scalars, lists, or operations ``{"operation", "value"}``. A ``track`` body is flat too
  (``event``, ``properties``, ``event_id``, ``ip``, ``url``, ``referer``, optional
  ``created_at``, ``source``, ``type``, ...): no nested ``context``. Else 400.

Traits are idempotent (later values win) and a track with an ``event_id`` already seen replaces
the earlier copy: a resent batch is harmless. ``refuse_batches`` makes the endpoint refuse the
next batches (a 400 from the endpoint itself); 429/5xx/delays come from ``.server.faults``.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from hull_planhat_pipelines.sandbox.server import Request, Response, SandboxServer, error

__all__ = ["DEFAULT_CONNECTOR_ID", "Envelope", "FirehoseRecord", "HullFirehoseSandbox"]

MESSAGE_TYPES = frozenset({"traits", "track", "alias", "unalias"})
USER_TYPES = frozenset({"track", "alias", "unalias"})
MESSAGE_KEYS = frozenset({"type", "body", "headers", "timestamp", "requestId"})
REQUIRED_MESSAGE_KEYS = frozenset({"type", "body", "headers", "timestamp"})
BATCH_KEYS = frozenset({"batch", "timestamp", "sentAt"})
MAX_BATCH = 50
AS_USER = "io.hull.asUser"
AS_ACCOUNT = "io.hull.asAccount"
SUBJECT_TYPE = "io.hull.subjectType"
CLAIMS = {
    AS_USER: frozenset({"id", "email", "external_id", "anonymous_id"}),
    AS_ACCOUNT: frozenset({"id", "domain", "external_id", "anonymous_id", "aliases"}),
}
TOKEN_CLAIMS = frozenset(
    {"iss", "iat", "sub", "nbf", "exp", AS_USER, AS_ACCOUNT, SUBJECT_TYPE}
    | {"scopes", "io.hull.create", "io.hull.active"}
)
OPERATIONS = frozenset({"set", "setIfNull", "inc", "dec"})
TRACK_REQUIRED = ("event", "properties", "event_id", "ip", "url", "referer")
HULL_ID = re.compile(r"[0-9a-fA-F]{24}")
DEFAULT_CONNECTOR_ID = "5a1e5a1e5a1e5a1e5a1e0001"
DEFAULT_SECRET = "sandbox-connector-secret-4f1b9c2d7e"


class Refused(Exception):
    """The batch is refused; ``status`` is the answer's (400 malformed, 401 credentials)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class FirehoseRecord:
    """One accepted message, with what its verified token says it is about."""

    type: str
    subject_type: str
    user: dict[str, Any] | None
    account: dict[str, Any] | None
    sub: str | None
    body: dict[str, Any]
    timestamp: str
    batch: int
    """The number of the batch (of those the firehose accepted) that brought it."""

    @property
    def is_link(self) -> bool:
        """Account-subject traits whose token also claims a user: the user joins the account."""
        return self.type == "traits" and self.subject_type == "account" and bool(self.user)


@dataclass(frozen=True)
class Envelope:
    """One request as the endpoint received it: lower-cased headers and the decoded body."""

    headers: dict[str, str]
    body: Any


def _matches(claims: Mapping[str, Any] | None, claim: str | Mapping[str, Any]) -> bool:
    """A string matches any claim value; a mapping must agree on every key it gives."""
    if not claims:
        return False
    if isinstance(claim, str):
        return claim in claims.values()
    return all(claims.get(name) == value for name, value in claim.items())


def _is_time(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class HullFirehoseSandbox:
    """A Hull firehose on 127.0.0.1 (``base_url``) recording what it accepted, for tests."""

    def __init__(
        self,
        *,
        organization: str = "sandbox.hullapp.io",
        connector_id: str = DEFAULT_CONNECTOR_ID,
        connector_secret: str = DEFAULT_SECRET,
        port: int = 0,
    ) -> None:
        self.organization = organization
        self.connector_id = connector_id
        self.connector_secret = connector_secret
        self.server = SandboxServer(
            "hull-firehose", [("POST", "/", self._batch)], auth=self._authenticate, port=port
        )
        self._lock = threading.Lock()
        self._messages: list[FirehoseRecord] = []
        self._envelopes: list[Envelope] = []
        self._refusals: list[dict[str, Any]] = []
        self._refuse_next = 0
        self._refuse_after = 0
        self._batches = 0

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The firehose URL to configure (``HULL_FIREHOSE_URL``)."""
        return f"{self.server.base_url}/"

    def start(self) -> HullFirehoseSandbox:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> HullFirehoseSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """The variables that point the pipeline's forwarding at this sandbox."""
        return {
            "HULL_FIREHOSE_URL": self.base_url,
            "HULL_ORGANIZATION": self.organization,
            "HULL_CONNECTOR_ID": self.connector_id,
            "HULL_CONNECTOR_SECRET": self.connector_secret,
        }

    def refuse_batches(self, times: int = 1, *, after: int = 0) -> None:
        """Refuse ``times`` well-formed batches as a whole (400, nothing kept), once ``after``
        more batches were accepted."""
        with self._lock:
            self._refuse_next = times
            self._refuse_after = after

    def reset(self) -> None:
        """Forget accepted messages, refusals, faults and recorded requests."""
        with self._lock:
            self._messages.clear()
            self._envelopes.clear()
            self._refusals.clear()
            self._refuse_next = self._refuse_after = 0
            self._batches = 0
        self.server.faults.clear()
        self.server.clear_requests()

    # -- what was accepted -------------------------------------------------------------------
    @property
    def messages(self) -> list[FirehoseRecord]:
        """Every accepted message in arrival order, resends included."""
        with self._lock:
            return list(self._messages)

    @property
    def refusals(self) -> list[dict[str, Any]]:
        """Batches refused by the endpoint: ``{"status", "error"}``."""
        with self._lock:
            return list(self._refusals)

    @property
    def envelopes(self) -> list[Envelope]:
        """Every request that reached the endpoint (headers checked), as received.

        Kept before the answer goes out, unlike ``server.recorded()`` (written after the
        response is sent, so a client can see the answer before the record exists).
        """
        with self._lock:
            return list(self._envelopes)

    @property
    def batches(self) -> int:
        """Batches the firehose accepted (``server.recorded()`` has every request)."""
        with self._lock:
            return self._batches

    def traits_for_user(self, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        """The user's traits, later messages winning; ``claim`` is a claim value or a mapping."""
        return self._traits("user", claim)

    def traits_for_account(self, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        """The account's traits (account-subject messages, links included: their body is {})."""
        return self._traits("account", claim)

    def _traits(self, subject: str, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for message in self.messages:
            about = message.type == "traits" and message.subject_type == subject
            if about and _matches(getattr(message, subject), claim):
                merged.update(message.body)
        return merged

    def events(self, claim: str | Mapping[str, Any] | None = None) -> list[FirehoseRecord]:
        """Tracks, of one user when ``claim`` is given; one per ``event_id`` (the last copy)."""
        latest: dict[str, FirehoseRecord] = {}
        for message in self.messages:
            if message.type == "track" and (claim is None or _matches(message.user, claim)):
                latest.pop(message.body["event_id"], None)
                latest[message.body["event_id"]] = message
        return list(latest.values())

    def links(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(user claims, account claims) of every accepted link."""
        return [(m.user or {}, m.account or {}) for m in self.messages if m.is_link]

    # -- the endpoint ------------------------------------------------------------------------
    def _authenticate(self, request: Request) -> Response | None:
        if request.header("Hull-Organization") != self.organization:
            return error(401, "Unknown organization")
        if request.header("Hull-App-Id") != self.connector_id:
            return error(401, "Invalid Hull-App-Id: not a connector of this organization")
        token = request.header("Hull-Access-Token")
        if token != self.connector_secret:
            try:
                self._decode(token or "")
            except Refused:
                return error(401, "Invalid Hull-Access-Token")
        return None

    def _batch(self, request: Request) -> Response:
        with self._lock:
            self._envelopes.append(Envelope(dict(request.headers), request.body))
        try:
            records = self._check_batch(request)
        except Refused as exc:
            return self._refuse(exc.status, str(exc))
        with self._lock:
            refused = bool(self._refuse_next) and not self._refuse_after
            if refused:
                self._refuse_next -= 1
            else:
                self._refuse_after = max(0, self._refuse_after - 1)
                self._batches += 1
                number = self._batches
                self._messages.extend(
                    FirehoseRecord(**{**r.__dict__, "batch": number}) for r in records
                )
        if refused:
            return self._refuse(400, "batch refused (sandbox fault)")
        return Response(200, {"ok": True})

    def _refuse(self, status: int, reason: str) -> Response:
        with self._lock:
            self._refusals.append({"status": status, "error": reason})
        return error(status, reason)

    def _check_batch(self, request: Request) -> list[FirehoseRecord]:
        content_type = (request.header("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise Refused(400, "Content-Type must be application/json")
        body = request.body
        if not isinstance(body, dict) or set(body) != BATCH_KEYS:
            raise Refused(400, f"the body must be an object with exactly {sorted(BATCH_KEYS)}")
        if not _is_time(body["timestamp"]) or not _is_time(body["sentAt"]):
            raise Refused(400, "timestamp and sentAt must be ISO-8601 times")
        batch = body["batch"]
        if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
            raise Refused(400, f"batch must be a list of 1 to {MAX_BATCH} messages")
        records = []
        for index, message in enumerate(batch):
            try:
                records.append(self._record(message))
            except Refused as exc:
                raise Refused(exc.status, f"message {index}: {exc}") from None
        return records

    def _record(self, message: Any) -> FirehoseRecord:
        if not isinstance(message, dict):
            raise Refused(400, "a message must be an object")
        unknown, missing = set(message) - MESSAGE_KEYS, REQUIRED_MESSAGE_KEYS - set(message)
        if unknown or missing:
            raise Refused(400, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        kind, body, headers = message["type"], message["body"], message["headers"]
        if kind not in MESSAGE_TYPES:
            raise Refused(400, f"type must be one of {sorted(MESSAGE_TYPES)}, got {kind!r}")
        if not _is_time(message["timestamp"]):
            raise Refused(400, "timestamp must be an ISO-8601 time")
        if not isinstance(headers, dict) or set(headers) != {"Hull-Access-Token"}:
            raise Refused(401, "headers must carry exactly a Hull-Access-Token")
        claims = self._decode(headers["Hull-Access-Token"])
        subject = claims[SUBJECT_TYPE]
        if kind in USER_TYPES and subject != "user":
            raise Refused(400, f"a {kind} message must be about a user")
        if not isinstance(body, dict):
            raise Refused(400, "body must be an object")
        (self._check_track if kind == "track" else self._check_traits)(body)
        return FirehoseRecord(
            kind,
            subject,
            claims.get(AS_USER),
            claims.get(AS_ACCOUNT),
            claims.get("sub"),
            body,
            message["timestamp"],
            0,
        )

    def _decode(self, token: Any) -> dict[str, Any]:
        """A message token's claims; never echoes the token."""
        if not isinstance(token, str) or not token:
            raise Refused(401, "Hull-Access-Token is missing")
        try:
            claims = jwt.decode(
                token,
                self.connector_secret,
                algorithms=["HS256"],
                issuer=self.connector_id,
                options={"require": ["iss", "iat"], "verify_iat": True},
            )
        except jwt.PyJWTError as exc:
            raise Refused(401, f"invalid access token: {type(exc).__name__}: {exc}") from None
        unknown = set(claims) - TOKEN_CLAIMS
        if unknown:
            raise Refused(401, f"unknown token claims {sorted(unknown)}")
        subject = claims.get(SUBJECT_TYPE)
        if subject not in ("user", "account"):
            raise Refused(401, f"{SUBJECT_TYPE} must be 'user' or 'account'")
        sub = claims.get("sub")
        if sub is not None and not (isinstance(sub, str) and HULL_ID.fullmatch(sub)):
            raise Refused(401, "sub must be a Hull id (24 hexadecimal digits)")
        for name, allowed in CLAIMS.items():
            if name in claims:
                self._check_claims(name, claims[name], allowed)
        named = AS_USER if subject == "user" else AS_ACCOUNT
        if not (claims.get(named) or sub):
            raise Refused(401, f"a {subject} token must name its subject ({named} or sub)")
        return claims

    @staticmethod
    def _check_claims(name: str, value: Any, allowed: frozenset[str]) -> None:
        if not isinstance(value, dict) or not value:
            raise Refused(401, f"{name} must be a non-empty object of claims")
        if set(value) - allowed:
            raise Refused(401, f"{name} has unknown claims {sorted(set(value) - allowed)}")
        # null or empty claims pass (the official client keeps them) but name nothing
        named = {k: v for k, v in value.items() if v not in (None, "", [])}
        for key, claim in named.items():
            ok = (
                all(isinstance(a, str) and a for a in claim)
                if key == "aliases" and isinstance(claim, list)
                else isinstance(claim, str) and claim.strip()
            )
            if not ok:
                raise Refused(401, f"{name}.{key} must be a non-empty string")
        if not named:
            raise Refused(401, f"{name} names no one: every claim is empty")
        if "id" in named and not HULL_ID.fullmatch(named["id"]):
            raise Refused(401, f"{name}.id must be a Hull id (24 hexadecimal digits)")

    @staticmethod
    def _check_traits(body: dict[str, Any]) -> None:
        for name, value in body.items():
            if not name:
                raise Refused(400, "a trait needs a name")
            if isinstance(value, dict):
                if set(value) != {"operation", "value"} or value["operation"] not in OPERATIONS:
                    raise Refused(
                        400, f"trait {name!r}: traits are flat (an object must be an operation)"
                    )
            elif isinstance(value, list):
                if not all(_scalar(v) for v in value):
                    raise Refused(400, f"trait {name!r}: a list holds plain values only")
            elif not _scalar(value):
                raise Refused(400, f"trait {name!r} is not a JSON value")

    @staticmethod
    def _check_track(body: dict[str, Any]) -> None:
        missing = [key for key in TRACK_REQUIRED if key not in body]
        if missing:
            raise Refused(400, f"a track body needs {missing}")
        if "context" in body:
            raise Refused(400, "a track body is flat: no 'context' object")
        if not (isinstance(body["event"], str) and body["event"]):
            raise Refused(400, "a track needs an event name")
        if not (isinstance(body["event_id"], str) and body["event_id"]):
            raise Refused(400, "a track needs an event_id")
        if not isinstance(body["properties"], dict):
            raise Refused(400, "track properties must be an object")
        if "created_at" in body and not _is_time(body["created_at"]):
            raise Refused(400, "created_at must be an ISO-8601 time")
