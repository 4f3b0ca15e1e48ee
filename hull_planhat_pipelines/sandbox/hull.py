"""The emulated Hull firehose: one real HTTP endpoint on 127.0.0.1 that checks what Hull checks.

Rules (Hull documented little; where it did not, the stricter reading is taken, because a
sandbox kinder than the real service hides bugs):

- ``POST /`` only. The ``Hull-Organization`` header must name the sandbox's organization, else
  401 ``{"error": "Unknown organization"}`` and nothing is read.
- The body is ``{"batch": [message, ...], "timestamp", "sentAt"}``; anything else is 400.
- Each message needs ``type`` in traits/track/alias/link, a non-empty ``message_id``, an object
  ``body`` (``track``: a string ``event``) and a ``headers.Hull-Access-Token`` JWT that verifies
  with the connector secret (HS256) with ``iss`` = organization and ``sub`` = connector id. The
  token must claim what the type needs: ``traits`` a user or an account, ``track`` and
  ``alias`` a user, ``link`` both.
- A message failing any rule is rejected on its own; the others in its batch are kept. The
  answer is 200 ``{"accepted", "duplicates", "rejected": [{"index", "message_id", "error"}]}``.
  When no token of a non-empty batch verifies, the connector's credentials are wrong rather
  than one message: 401 ``{"error": "Invalid access token: ..."}`` and nothing is kept.
- A ``message_id`` already accepted is acknowledged again and counted as a duplicate, never
  kept twice: that is what makes a resend harmless.

Faults (429 with Retry-After, 5xx, delays) come from ``SandboxServer`` (``.server.faults``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt

from hull_planhat_pipelines.sandbox.server import Request, Response, SandboxServer, error

__all__ = ["Envelope", "FirehoseRecord", "HullFirehoseSandbox"]

MESSAGE_TYPES = frozenset({"traits", "track", "alias", "link"})
AS_USER = "io.hull.asUser"
AS_ACCOUNT = "io.hull.asAccount"
_NEEDS: dict[str, tuple[str, ...]] = {"track": (AS_USER,), "alias": (AS_USER,)}
_NEEDS["link"] = (AS_USER, AS_ACCOUNT)


class Rejected(Exception):
    """One message refused; ``token`` tells a credential failure from a malformed message."""

    def __init__(self, reason: str, *, token: bool = False) -> None:
        super().__init__(reason)
        self.token = token


@dataclass(frozen=True)
class FirehoseRecord:
    """One accepted message, with the subjects its verified token named."""

    type: str
    message_id: str
    timestamp: Any
    body: dict[str, Any]
    user: dict[str, Any] | None
    account: dict[str, Any] | None
    batch: int
    """The number of the request (of those the firehose accepted) that brought it."""


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


class HullFirehoseSandbox:
    """A Hull firehose on 127.0.0.1 (``base_url``) recording what it accepted, for tests."""

    def __init__(
        self,
        *,
        organization: str = "sandbox-org",
        connector_id: str = "sandbox-connector",
        connector_secret: str = "sandbox-secret",
        port: int = 0,
    ) -> None:
        self.organization = organization
        self.connector_id = connector_id
        self.connector_secret = connector_secret
        self.server = SandboxServer(
            "hull-firehose", [("POST", "/", self._batch)], auth=self._check_organization, port=port
        )
        self._lock = threading.Lock()
        self._messages: list[FirehoseRecord] = []
        self._ids: set[str] = set()
        self._rejected: list[dict[str, Any]] = []
        self._envelopes: list[Envelope] = []
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

    def reset(self) -> None:
        """Forget accepted messages, rejections, faults and recorded requests."""
        with self._lock:
            self._messages.clear()
            self._ids.clear()
            self._rejected.clear()
            self._envelopes.clear()
            self._batches = 0
        self.server.faults.clear()
        self.server.clear_requests()

    # -- what was accepted -------------------------------------------------------------------
    @property
    def messages(self) -> list[FirehoseRecord]:
        """Every accepted message, once each, in arrival order."""
        with self._lock:
            return list(self._messages)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Messages refused one by one: ``{"index", "message_id", "error"}``."""
        with self._lock:
            return list(self._rejected)

    @property
    def envelopes(self) -> list[Envelope]:
        """Every request that reached the endpoint (organization checked), as received.

        Kept before the answer goes out, unlike ``server.recorded()`` (written after the
        response is sent, so a client can see the answer before the record exists).
        """
        with self._lock:
            return list(self._envelopes)

    @property
    def batches(self) -> int:
        """Batches the firehose processed (faults, bad organizations and 401s not counted;
        ``server.recorded()`` has every request)."""
        with self._lock:
            return self._batches

    def traits_for_user(self, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        """The user's traits, later messages winning; ``claim`` is a claim value or a mapping."""
        return self._traits("user", claim)

    def traits_for_account(self, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        """The account's traits (messages whose token claims only the account)."""
        return self._traits("account", claim)

    def _traits(self, subject: str, claim: str | Mapping[str, Any]) -> dict[str, Any]:
        """A traits message is about its user when the token claims one, else its account."""
        merged: dict[str, Any] = {}
        for message in self.messages:
            if message.type != "traits":
                continue
            about = "user" if message.user is not None else "account"
            if about == subject and _matches(getattr(message, subject), claim):
                merged.update(message.body)
        return merged

    def events(self, claim: str | Mapping[str, Any] | None = None) -> list[FirehoseRecord]:
        """Accepted ``track`` messages, of one user when ``claim`` is given."""
        return [
            m
            for m in self.messages
            if m.type == "track" and (claim is None or _matches(m.user, claim))
        ]

    def links(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(user claims, account claims) of every accepted ``link``."""
        return [(m.user or {}, m.account or {}) for m in self.messages if m.type == "link"]

    # -- the endpoint ------------------------------------------------------------------------
    def _check_organization(self, request: Request) -> Response | None:
        if request.header("Hull-Organization") != self.organization:
            return error(401, "Unknown organization")
        return None

    def _batch(self, request: Request) -> Response:
        body = request.body
        with self._lock:
            self._envelopes.append(Envelope(dict(request.headers), body))
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            return error(400, 'the body must be {"batch": [message, ...]}')
        checked = [self._check(message) for message in body["batch"]]
        failures = [c for c in checked if isinstance(c, Rejected)]
        if checked and all(isinstance(c, Rejected) and c.token for c in checked):
            return error(401, f"Invalid access token: {failures[0]}")
        return self._keep(body["batch"], checked)

    def _keep(self, batch: list[Any], checked: list[FirehoseRecord | Rejected]) -> Response:
        accepted = duplicates = 0
        rejected: list[dict[str, Any]] = []
        with self._lock:
            self._batches += 1
            for index, (raw, result) in enumerate(zip(batch, checked, strict=True)):
                if isinstance(result, Rejected):
                    mid = raw.get("message_id") if isinstance(raw, dict) else None
                    rejected.append({"index": index, "message_id": mid, "error": str(result)})
                elif result.message_id in self._ids:
                    duplicates += 1
                else:
                    self._ids.add(result.message_id)
                    self._messages.append(replace(result, batch=self._batches))
                    accepted += 1
            self._rejected.extend(rejected)
        return Response(200, {"accepted": accepted, "duplicates": duplicates, "rejected": rejected})

    def _check(self, message: Any) -> FirehoseRecord | Rejected:
        try:
            return self._record(message)
        except Rejected as exc:
            return exc

    def _record(self, message: Any) -> FirehoseRecord:
        if not isinstance(message, dict):
            raise Rejected("a message must be an object")
        kind, mid, body = message.get("type"), message.get("message_id"), message.get("body")
        if kind not in MESSAGE_TYPES:
            raise Rejected(f"type must be one of {sorted(MESSAGE_TYPES)}, got {kind!r}")
        if not isinstance(mid, str) or not mid.strip():
            raise Rejected("message_id is required")
        if not isinstance(body, dict):
            raise Rejected("body must be an object")
        if kind == "track" and not (isinstance(body.get("event"), str) and body["event"]):
            raise Rejected("a track body needs an event name")
        claims = self._verify(message.get("headers"))
        needed = _NEEDS.get(kind, ())
        missing = [name for name in needed if not claims.get(name)]
        if missing or not (claims.get(AS_USER) or claims.get(AS_ACCOUNT)):
            raise Rejected(
                f"the access token of a {kind} message must claim {needed or 'a subject'}"
            )
        return FirehoseRecord(
            kind,
            mid,
            message.get("timestamp"),
            body,
            claims.get(AS_USER),
            claims.get(AS_ACCOUNT),
            0,
        )

    def _verify(self, headers: Any) -> dict[str, Any]:
        """The token's claims; any failure is a credential failure (never echoes the token)."""
        token = headers.get("Hull-Access-Token") if isinstance(headers, dict) else None
        if not isinstance(token, str) or not token:
            raise Rejected("Hull-Access-Token is missing", token=True)
        try:
            claims = jwt.decode(
                token,
                self.connector_secret,
                algorithms=["HS256"],
                issuer=self.organization,
                options={"require": ["iss", "sub", "iat"]},
            )
        except jwt.PyJWTError as exc:
            raise Rejected(f"{type(exc).__name__}: {exc}", token=True) from None
        if claims.get("sub") != self.connector_id:
            raise Rejected("the token's subject is not this connector", token=True)
        for name in (AS_USER, AS_ACCOUNT):
            if name in claims and not (isinstance(claims[name], dict) and claims[name]):
                raise Rejected(f"{name} must be an object of claims", token=True)
        return claims
