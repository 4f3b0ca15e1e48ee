"""The Planhat side of the internal API: the client, the cached list and error translation.

Planhat's refusals of the caller's request (404 unknown user, 400 duplicate email, ...) come
back with Planhat's status and message. Failures the caller cannot fix become 502: Planhat
unreachable or answering 5xx, or refusing the connector's own token (a 401 passed through
would wrongly tell the caller its Basic credentials were wrong). Messages are redacted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable

from fastapi import HTTPException

from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError, ApiResponseError, redact
from hull_planhat_pipelines.internal_api.cache import Users, UsersCache

logger = logging.getLogger(__name__)
T = TypeVar("T")


@runtime_checkable
class PlanhatUsers(Protocol):
    """What the internal API needs of a Planhat client."""

    def list_users(self) -> list[dict[str, Any]]: ...
    def get_user(self, user_id: str) -> dict[str, Any] | None: ...
    def create_user(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def update_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]: ...


ClientSource = PlanhatUsers | Callable[[], PlanhatUsers]


class ClientSlot:
    """A client given ready-made (the caller owns it) or built once by a factory (we own it)."""

    def __init__(self, source: ClientSource) -> None:
        self._client: PlanhatUsers | None = None
        self._factory: Callable[[], PlanhatUsers] | None = None
        if not isinstance(source, type) and isinstance(source, PlanhatUsers):
            self._client = source
        elif callable(source):
            self._factory = source
        else:
            raise TypeError("expected a Planhat client or a function returning one")
        self._lock = threading.Lock()

    def get(self) -> PlanhatUsers:
        with self._lock:
            if self._client is None:
                assert self._factory is not None
                self._client = self._factory()
            return self._client

    def close(self) -> None:
        """Close a client we built; one handed to us is its owner's to close."""
        if self._factory is None:
            return
        with self._lock:
            client, self._client = self._client, None
        close = getattr(client, "close", None)
        if callable(close):
            close()


def refusal_for(exc: ApiError, secrets: Iterable[str] = ()) -> HTTPException:
    """The answer to our caller for a failed Planhat call."""
    status = exc.status
    if isinstance(exc, ApiAuthError):
        return HTTPException(502, f"Planhat refused the connector's API token ({status})")
    if isinstance(exc, ApiResponseError):
        return HTTPException(502, "Planhat answered a malformed response")
    if status is None:
        return HTTPException(502, "Planhat could not be reached")
    if status >= 500 or status < 400:
        return HTTPException(502, f"Planhat answered {status}")
    message = exc.body if isinstance(exc.body, str) and exc.body else str(exc)
    return HTTPException(status, redact(f"Planhat answered {status}: {message}", secrets)[:400])


class UsersService:
    """The four operations, with the cache and the error translation; no HTTP of our own."""

    def __init__(self, slot: ClientSlot, cache: UsersCache, secrets: Iterable[str] = ()) -> None:
        self.slot = slot
        self.cache = cache
        self.secrets = tuple(s for s in secrets if s)

    def list(self, refresh: bool = False) -> Users:
        if refresh:
            self.cache.clear()
        return self.cache.get(lambda: self._call("list users", lambda c: c.list_users()))

    def get(self, user_id: str) -> dict[str, Any]:
        user = self._call("get user", lambda c: c.get_user(user_id))
        if user is None:
            raise HTTPException(404, "Planhat answered 404: user not found")
        return user

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("create user", lambda c: c.create_user(body))

    def update(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._write("update user", lambda c: c.update_user(user_id, body))

    def _write(self, action: str, call: Callable[[PlanhatUsers], T]) -> T:
        """A write empties the cache when it succeeded, or when its outcome is unknown (502)."""
        try:
            result = self._call(action, call)
        except HTTPException as exc:
            if exc.status_code == 502:
                self.cache.clear()
            raise
        self.cache.clear()
        return result

    def _call(self, action: str, call: Callable[[PlanhatUsers], T]) -> T:
        try:
            return call(self.slot.get())
        except ApiError as exc:
            refusal = refusal_for(exc, self.secrets)
            level = logging.WARNING if refusal.status_code >= 500 else logging.INFO
            logger.log(
                level,
                "Planhat %s failed (answering %s): %s",
                action,
                refusal.status_code,
                redact(str(exc), self.secrets),
            )
            raise refusal from None
