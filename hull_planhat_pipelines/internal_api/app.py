"""The FastAPI application: four operations on Planhat users behind the connector's credentials.

Every answer is JSON. Refusals and upstream failures are ``{"detail": "<message>"}``; a body or
query that fails validation is 422 ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``.
An unexpected error is logged (redacted) and answered 500 ``{"detail": "internal error"}``:
no stack trace ever reaches a caller.
"""

import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasicCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hull_planhat_pipelines.clients.http import redact
from hull_planhat_pipelines.internal_api.access import REALM, Access, ConnectorBasic
from hull_planhat_pipelines.internal_api.body_guard import MAX_BODY_BYTES, BodyGuard
from hull_planhat_pipelines.internal_api.cache import UsersCache
from hull_planhat_pipelines.internal_api.models import (
    ErrorBody,
    User,
    UserCreate,
    UserId,
    UserUpdate,
)
from hull_planhat_pipelines.internal_api.upstream import ClientSlot, ClientSource, UsersService

logger = logging.getLogger(__name__)

PREFIX = "/api/internal/users"
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The `org` query parameter is missing."},
    401: {"model": ErrorBody, "description": "Missing or wrong connector credentials."},
    403: {"model": ErrorBody, "description": "`org` is not this connector's organization."},
    413: {"model": ErrorBody, "description": "The body is larger than 1 MiB."},
    502: {
        "model": ErrorBody,
        "description": "Planhat unreachable, failing, or refusing the token.",
    },
}


def create_app(
    client: ClientSource,
    *,
    connector_id: str,
    connector_secret: str,
    organization: str,
    clock: Callable[[], float] = time.monotonic,
    cache_ttl: float = 600.0,
    secrets: Iterable[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The internal users API over ``client`` (a Planhat client, or a function building one).

    ``secrets`` (the Planhat tokens) are redacted from every message and log line, on top of
    the client's own redaction. A body is read only from an authorized caller, and only up to
    ``max_body_bytes`` (413 beyond).
    """
    access = Access(connector_id, connector_secret, organization)
    hidden = tuple(s for s in (*secrets, connector_secret) if s)
    slot = ClientSlot(client)
    service = UsersService(slot, UsersCache(cache_ttl, clock), hidden)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        slot.get()  # a factory that cannot build the client stops the server at start
        yield
        slot.close()

    app = FastAPI(
        title="hull-planhat internal users API",
        version="1.0.0",
        description=(
            "Manage Planhat team members with the connector's Planhat credentials. "
            f"Every operation needs HTTP Basic auth (connector id, secret; realm `{REALM}`) "
            "and the `org` query parameter set to the connector's Hull organization."
        ),
        lifespan=lifespan,
        redoc_url=None,
    )
    app.include_router(_users_router(access, service))
    _install_error_handling(app, access, hidden)
    # Added last, so outermost: it answers before FastAPI reads any body.
    app.add_middleware(BodyGuard, access=access, prefix=PREFIX, max_body_bytes=max_body_bytes)
    app.state.users = service
    return app


def _users_router(access: Access, service: UsersService) -> APIRouter:
    basic = ConnectorBasic(
        scheme_name="ConnectorBasic",
        realm=REALM,
        description="User name: the Hull connector id. Password: the connector secret.",
        auto_error=False,
    )

    def authorized(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
        org: Annotated[str, Query(description="The connector's Hull organization.")],
    ) -> None:
        access.check(org, credentials)

    router = APIRouter(
        prefix=PREFIX, tags=["users"], dependencies=[Depends(authorized)], responses=_ERRORS
    )
    user_id_param = Path(alias="userId", description="The Planhat user `_id`.")

    @router.get(
        "",
        operation_id="users.list",
        summary="All Planhat users (cached 10 minutes)",
        responses={200: {"model": list[User]}},
    )
    def list_users(
        cacheclear: Annotated[
            bool, Query(description="`1` empties the cache before listing.")
        ] = False,
    ) -> JSONResponse:
        return JSONResponse(service.list(refresh=cacheclear))

    @router.get(
        "/{userId}",
        operation_id="users.get",
        summary="One Planhat user",
        responses={200: {"model": User}, 404: {"model": ErrorBody}},
    )
    def get_user(user_id: Annotated[UserId, user_id_param]) -> JSONResponse:
        return JSONResponse(service.get(user_id))

    @router.post(
        "",
        operation_id="users.create",
        summary="Create a Planhat user (empties the cache)",
        responses={200: {"model": User}},
    )
    def create_user(body: UserCreate) -> JSONResponse:
        return JSONResponse(service.create(body.to_planhat()))

    @router.put(
        "/{userId}",
        operation_id="users.update",
        summary="Update a Planhat user: only the fields given (empties the cache)",
        responses={200: {"model": User}, 404: {"model": ErrorBody}},
    )
    def update_user(user_id: Annotated[UserId, user_id_param], body: UserUpdate) -> JSONResponse:
        return JSONResponse(service.update(user_id, body.to_planhat()))

    return router


def _install_error_handling(app: FastAPI, access: Access, secrets: tuple[str, ...]) -> None:
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """Access rules first: an unauthorized caller learns nothing about validation."""
        try:
            access.check_request(request)
        except HTTPException as refusal:
            return await http_exception_handler(request, refusal)  # type: ignore[return-value]
        problems = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    app.add_exception_handler(RequestValidationError, on_invalid)  # type: ignore[arg-type]
    app.add_middleware(NoStackTraces, secrets=secrets)


class NoStackTraces:
    """The global exception handler: any unexpected error becomes a JSON 500, logged redacted.

    A pure ASGI middleware rather than an ``Exception`` handler: Starlette re-raises after
    such a handler, and the server would log the raw, unredacted traceback.
    """

    def __init__(self, app: ASGIApp, secrets: tuple[str, ...] = ()) -> None:
        self.app = app
        self.secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            trace = redact("".join(traceback.format_exception(exc)), self.secrets)
            logger.error("internal error on %s %s:\n%s", scope["method"], scope["path"], trace)
            if not started:
                response = JSONResponse({"detail": "internal error"}, status_code=500)
                await response(scope, receive, send)
