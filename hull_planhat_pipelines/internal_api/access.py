"""Who may call the internal API: the Hull connector's id and secret, for its organization.

The rules run in a fixed order so a caller learns no more than it must: a request without
``org`` is malformed (400), then the credentials are checked (401 with a Basic challenge),
then the organization (403). They run before any body or query validation and before any call
to Planhat, so a refused request costs nothing upstream and reveals nothing about the API.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials

REALM = "hull-planhat internal API"


def parse_basic(authorization: str | None) -> HTTPBasicCredentials | None:
    """Credentials of a ``Basic`` header, or ``None`` when absent or malformed (never raises)."""
    scheme, _, param = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not param.strip():
        return None
    try:
        raw = base64.b64decode(param.strip(), validate=True)
    except (ValueError, binascii.Error):
        return None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:  # RFC 7617 asks for UTF-8; many clients still send Latin-1
        decoded = raw.decode("latin-1")
    username, separator, password = decoded.partition(":")
    if not separator:
        return None
    return HTTPBasicCredentials(username=username, password=password)


class ConnectorBasic(HTTPBasic):
    """Declares Basic auth in the OpenAPI schema but never refuses by itself.

    FastAPI's ``HTTPBasic`` answers 401 on a malformed header before the ``org`` check could
    answer 400; the access rules below decide instead, in their documented order.
    """

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return parse_basic(request.headers.get("authorization"))


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also accepts non-ASCII input (compare bytes, not str)."""
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True)
class Access:
    """The connector credentials and organization every request must present."""

    connector_id: str
    connector_secret: str
    organization: str

    def __post_init__(self) -> None:
        if not (self.connector_id and self.connector_secret and self.organization):
            raise ValueError("connector id, connector secret and organization are all required")

    def check(self, org: str | None, credentials: HTTPBasicCredentials | None) -> None:
        """Raise the refusal (400, 401 or 403) for a request, or return to let it through."""
        if not org:
            raise HTTPException(400, "the org query parameter is required")
        if credentials is None or not self._valid(credentials):
            raise HTTPException(
                401,
                "missing or invalid connector credentials",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        if not _same(org, self.organization):
            raise HTTPException(403, "this connector does not serve that organization")

    def check_request(self, request: Request) -> None:
        """``check`` for a raw request: used where FastAPI has not parsed the parameters."""
        self.check(
            request.query_params.get("org"), parse_basic(request.headers.get("authorization"))
        )

    def _valid(self, credentials: HTTPBasicCredentials) -> bool:
        # Both comparisons always run: the time taken says nothing about which part was wrong.
        user_ok = _same(credentials.username, self.connector_id)
        secret_ok = _same(credentials.password, self.connector_secret)
        return user_ok & secret_ok
