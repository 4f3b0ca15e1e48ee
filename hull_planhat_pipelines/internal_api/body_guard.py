"""Refuse before reading: the access rules and a size cap run before any byte of a body is read.

FastAPI reads a whole request body before its dependencies (and so the access rules) run, and
without a cap: an unauthenticated caller could make the service hold gigabytes. This ASGI
middleware answers a refused caller (400/401/403) without reading the body, and ends any body
larger than ``max_body_bytes`` with a 413, whether it declares its length or streams chunks.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hull_planhat_pipelines.internal_api.access import Access, parse_basic

MAX_BODY_BYTES = 1_048_576
"""1 MiB: a user body is a few hundred bytes; nothing legitimate comes near it."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class BodyGuard:
    """Access rules first, then the cap, then the app (which may now read the body)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access: Access,
        prefix: str,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.app = app
        self.access = access
        self.prefix = prefix
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or not scope["path"].startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            self.access.check(
                QueryParams(scope.get("query_string", b"")).get("org"),
                parse_basic(headers.get("authorization")),
            )
        except HTTPException as refusal:
            await _answer(
                scope, receive, send, refusal.status_code, refusal.detail, refusal.headers
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        await self._capped(scope, receive, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the body as the app reads it; past the cap, answer 413 and tell the app the
        client left (FastAPI turns any error raised while reading into a 400 of its own)."""
        received = 0
        started = False
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    refused = True
                    if not started:
                        await self._too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; whatever the app says after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self.max_body_bytes} bytes"
        await _answer(scope, receive, send, 413, detail, None)


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    headers: dict[str, str] | None,
) -> None:
    """A JSON refusal that closes the connection: the unread body must not be parsed as a
    next request."""
    response = JSONResponse(
        {"detail": detail}, status_code=status, headers={**(headers or {}), "Connection": "close"}
    )
    await response(scope, receive, send)
