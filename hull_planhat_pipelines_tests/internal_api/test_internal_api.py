"""The internal users API over real HTTP: our app under uvicorn, Planhat as the sandbox server.

Upstream calls are counted from the sandbox's request record; the cache's clock is injected,
so expiry is tested without waiting.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hull_planhat_pipelines.clients.http import RetryPolicy
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.internal_api import (
    InternalApiConfigError,
    InternalApiSettings,
    create_app,
    run_internal_api,
)
from hull_planhat_pipelines.internal_api.cache import UsersCache
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox

CONNECTOR_ID = "5f1c0ffee0ddba11c0ffee01"
CONNECTOR_SECRET = "s3cr3t-connector-pässword"
ORG = "acme.hullapp.io"
AUTH = (CONNECTOR_ID, CONNECTOR_SECRET)
USERS = "/api/internal/users"
UNKNOWN_ID = "0123456789abcdef01234567"
NEW_USER = {"email": "ada@example.com", "nickName": "ada", "firstName": "Ada", "lastName": "L"}


@dataclass
class FakeClock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RunningApp:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self.http = requests.Session()

    def __enter__(self) -> RunningApp:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:  # startup takes milliseconds
            assert self._thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def call(
        self,
        method: str,
        path: str = USERS,
        *,
        auth: tuple[str, str] | None = AUTH,
        org: str | None = ORG,
        params: dict[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        query = {**({"org": org} if org is not None else {}), **(params or {})}
        headers = dict(kw.pop("headers", {}))
        if auth is not None:
            headers["Authorization"] = basic(*auth)
        return self.http.request(
            method,
            self.url + path,
            params=query,
            headers=headers,
            allow_redirects=False,
            timeout=10,
            **kw,
        )


def planhat_client(url: str, sandbox: PlanhatSandbox, token: str | None = None) -> PlanhatClient:
    """A client that never waits: no throttle, no backoff, one retry."""
    return PlanhatClient(
        url,
        sandbox.analytics_url,
        token or sandbox.api_token,
        sandbox.tenant_token,
        requests_per_minute=None,
        policy=RetryPolicy(attempts=2, backoff_factor=0, connect_timeout=2, read_timeout=5),
        sleeper=lambda _: None,
    )


def serve(
    client: Any, clock: Callable[[], float] = time.monotonic, secrets: tuple[str, ...] = ()
) -> RunningApp:
    return RunningApp(
        create_app(
            client,
            connector_id=CONNECTOR_ID,
            connector_secret=CONNECTOR_SECRET,
            organization=ORG,
            clock=clock,
            secrets=secrets,
        )
    )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[PlanhatSandbox]:
    """One sandbox and one server for the module: starting and stopping them per test would
    cost most of the time budget. Tests that create users give them fresh emails."""
    with PlanhatSandbox(seed=3, scale=0.05) as planhat:
        yield planhat


@pytest.fixture(scope="module")
def served(sandbox: PlanhatSandbox) -> Iterator[tuple[RunningApp, FakeClock]]:
    clock = FakeClock()
    with serve(lambda: planhat_client(sandbox.rest_url, sandbox), clock) as running:
        yield running, clock


@pytest.fixture
def clock(served: tuple[RunningApp, FakeClock]) -> FakeClock:
    return served[1]


@pytest.fixture
def api(served: tuple[RunningApp, FakeClock], sandbox: PlanhatSandbox) -> RunningApp:
    """The shared server with an empty cache, and a sandbox with no faults and no record."""
    running, clock = served
    running.app.state.users.cache.clear()
    clock.now = 1_000.0
    sandbox.rest.faults.clear()
    sandbox.rest.clear_requests()
    return running


_emails = itertools.count(1)


def new_user(**extra: Any) -> dict[str, Any]:
    """A valid create body with an email no other test uses."""
    return {**NEW_USER, "email": f"ada.{next(_emails)}@example.com", **extra}


def list_calls(sandbox: PlanhatSandbox) -> int:
    return len(sandbox.rest.recorded("GET", r"^/users$"))


# -- the four operations ----------------------------------------------------------------------
def test_list_returns_every_planhat_user(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    response = api.call("GET")
    assert response.status_code == 200
    assert {u["_id"] for u in response.json()} == {u["_id"] for u in sandbox.users()}


def test_get_returns_one_user(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    user = sandbox.users()[1]
    response = api.call("GET", f"{USERS}/{user['_id']}")
    assert response.status_code == 200
    assert response.json()["email"] == user["email"]


def test_create_sends_only_the_given_fields(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    body = new_user(inactive=True)
    response = api.call("POST", json=body)
    assert response.status_code == 200
    created = response.json()
    assert created["_id"] in {u["_id"] for u in sandbox.users()}
    [sent] = sandbox.rest.recorded("POST", r"^/users$")
    assert sent.body == body


def test_update_is_partial(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    user = sandbox.users()[0]
    response = api.call("PUT", f"{USERS}/{user['_id']}", json={"inactive": True})
    assert response.status_code == 200
    assert response.json()["inactive"] is True
    assert response.json()["email"] == user["email"]
    [sent] = sandbox.rest.recorded("PUT", r"^/users/")
    assert sent.body == {"inactive": True}


# -- the cache --------------------------------------------------------------------------------
def test_list_is_cached_for_ten_minutes(
    api: RunningApp, sandbox: PlanhatSandbox, clock: FakeClock
) -> None:
    first = api.call("GET").json()
    clock.now += 599
    assert api.call("GET").json() == first
    assert list_calls(sandbox) == 1
    clock.now += 1
    assert api.call("GET").status_code == 200
    assert list_calls(sandbox) == 2


def test_cacheclear_fetches_again(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    api.call("GET")
    [added] = sandbox.add_users([new_user()])
    assert added["email"] not in {u["email"] for u in api.call("GET").json()}
    fresh = api.call("GET", params={"cacheclear": "1"}).json()
    assert added["email"] in {u["email"] for u in fresh}
    assert list_calls(sandbox) == 2


def test_create_and_update_empty_the_cache(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    api.call("GET")
    created = api.call("POST", json=new_user()).json()
    assert created["_id"] in {u["_id"] for u in api.call("GET").json()}
    api.call("PUT", f"{USERS}/{created['_id']}", json={"nickName": "countess"})
    listed = {u["_id"]: u for u in api.call("GET").json()}
    assert listed[created["_id"]]["nickName"] == "countess"
    assert list_calls(sandbox) == 3


def test_a_refused_write_keeps_the_cache(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    api.call("GET")
    assert api.call("PUT", f"{USERS}/{UNKNOWN_ID}", json={"inactive": True}).status_code == 404
    api.call("GET")
    assert list_calls(sandbox) == 1


def test_concurrent_misses_make_one_upstream_call(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    def fetch(_: int) -> int:
        with requests.Session() as http:
            url = f"{api.url}{USERS}?org={ORG}"
            return http.get(url, auth=AUTH, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(fetch, range(16))) == {200}
    assert list_calls(sandbox) == 1


def test_a_fetch_overtaken_by_a_write_is_not_stored() -> None:
    cache = UsersCache(600, FakeClock())
    stale = [{"_id": "old"}]

    def fetch_during_write() -> list[dict[str, Any]]:
        cache.clear()  # a create lands while the list is in flight
        return stale

    assert cache.get(fetch_during_write) == stale
    assert cache.get(lambda: [{"_id": "new"}]) == [{"_id": "new"}]


# -- refusals ---------------------------------------------------------------------------------
REQUESTS = [
    ("GET", USERS, None),
    ("GET", f"{USERS}/{UNKNOWN_ID}", None),
    ("POST", USERS, NEW_USER),
    ("PUT", f"{USERS}/{UNKNOWN_ID}", {"inactive": True}),
    ("POST", USERS, {"email": "not valid"}),  # access is checked before the body
]
REFUSALS = [
    pytest.param({"org": None}, 400, id="no-org"),
    pytest.param({"org": ""}, 400, id="empty-org"),
    pytest.param({"org": None, "auth": None}, 400, id="no-org-no-credentials"),
    pytest.param({"auth": None}, 401, id="no-credentials"),
    pytest.param({"auth": (CONNECTOR_ID, "wrong")}, 401, id="wrong-secret"),
    pytest.param({"auth": ("someone-else", CONNECTOR_SECRET)}, 401, id="wrong-id"),
    pytest.param({"auth": ("", "")}, 401, id="empty-credentials"),
    pytest.param({"auth": None, "headers": {"Authorization": "Basic !!"}}, 401, id="garbled"),
    pytest.param({"auth": None, "headers": {"Authorization": "Bearer x"}}, 401, id="bearer"),
    pytest.param({"auth": ("wrong", "wrong"), "org": "other.hullapp.io"}, 401, id="both-wrong"),
    pytest.param({"org": "other.hullapp.io"}, 403, id="other-org"),
    pytest.param({"org": ORG.upper()}, 403, id="org-case"),
]


@pytest.mark.parametrize("method,path,body", REQUESTS)
@pytest.mark.parametrize("change,status", REFUSALS)
def test_refused_requests_never_reach_planhat(
    api: RunningApp,
    sandbox: PlanhatSandbox,
    method: str,
    path: str,
    body: Any,
    change: dict[str, Any],
    status: int,
) -> None:
    response = api.call(method, path, json=body, **change)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="')
    assert sandbox.rest.recorded() == []


# -- validation -------------------------------------------------------------------------------
INVALID = [
    pytest.param("POST", USERS, {k: v for k, v in NEW_USER.items() if k != "lastName"}, ["body", "lastName"], id="missing"),
    pytest.param("POST", USERS, {**NEW_USER, "email": "nobody"}, ["body", "email"], id="email"),
    pytest.param("POST", USERS, {**NEW_USER, "permissions": {}}, ["body", "permissions"], id="extra"),
    pytest.param("POST", USERS, {**NEW_USER, "firstName": "  "}, ["body", "firstName"], id="blank"),
    pytest.param("POST", USERS, {**NEW_USER, "roles": ["admin"]}, ["body", "roles", 0], id="role-id"),
    pytest.param("POST", USERS, [NEW_USER], ["body"], id="array"),
    pytest.param("PUT", f"{USERS}/{UNKNOWN_ID}", {}, ["body"], id="empty-update"),
    pytest.param("PUT", f"{USERS}/{UNKNOWN_ID}", {"inactive": "yes"}, ["body", "inactive"], id="type"),
    pytest.param("PUT", f"{USERS}/{UNKNOWN_ID}", {"externalId": None}, ["body", "externalId"], id="null"),
    pytest.param("PUT", f"{USERS}/{UNKNOWN_ID}", {"_id": UNKNOWN_ID}, ["body", "_id"], id="own-id"),
    pytest.param("GET", f"{USERS}/%2E%2E", None, ["path", "userId"], id="dot-segment"),
    pytest.param("GET", f"{USERS}/{quote('a?b=1', safe='')}", None, ["path", "userId"], id="query-in-id"),
]  # fmt: skip


@pytest.mark.parametrize("method,path,body,loc", INVALID)
def test_invalid_input_is_422_with_the_field_path(
    api: RunningApp, sandbox: PlanhatSandbox, method: str, path: str, body: Any, loc: list[Any]
) -> None:
    response = api.call(method, path, json=body)
    assert response.status_code == 422, response.text
    assert loc in [problem["loc"] for problem in response.json()["detail"]]
    assert sandbox.rest.recorded() == []


def test_malformed_json_and_bad_query_are_422(api: RunningApp, sandbox: PlanhatSandbox) -> None:
    broken = api.call("POST", data=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 422
    assert broken.json()["detail"][0]["loc"][0] == "body"
    flag = api.call("GET", params={"cacheclear": "maybe"})
    assert flag.status_code == 422
    assert flag.json()["detail"][0]["loc"] == ["query", "cacheclear"]
    assert sandbox.rest.recorded() == []


# -- Planhat's answers ------------------------------------------------------------------------
def test_planhat_404_passes_through(api: RunningApp) -> None:
    for method, body in (("GET", None), ("PUT", {"inactive": True})):
        response = api.call(method, f"{USERS}/{UNKNOWN_ID}", json=body)
        assert response.status_code == 404
        assert response.json()["detail"].startswith("Planhat answered 404")


def test_planhat_4xx_passes_through_with_its_message(
    api: RunningApp, sandbox: PlanhatSandbox
) -> None:
    taken = sandbox.users()[0]["email"]
    response = api.call("POST", json={**NEW_USER, "email": taken})
    assert response.status_code == 400
    assert taken in response.json()["detail"]


def test_planhat_5xx_is_502(
    api: RunningApp, sandbox: PlanhatSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.rest.faults.add(status=503, path=r"^/users", times=2)
    response = api.call("GET")
    assert response.status_code == 502
    assert response.json() == {"detail": "Planhat answered 503"}
    assert api.call("GET").status_code == 200  # a failure is not cached


def test_planhat_refusing_our_token_is_502_and_never_shows_it(
    sandbox: PlanhatSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    token = "wrong-planhat-token-0123456789"
    caplog.set_level(logging.DEBUG)
    with serve(planhat_client(sandbox.rest_url, sandbox, token)) as running:
        response = running.call("GET")
    assert response.status_code == 502
    assert "token" in response.json()["detail"]
    assert token not in response.text
    assert token not in caplog.text
    assert "refused (401)" in caplog.text


def test_planhat_unreachable_is_502(sandbox: PlanhatSandbox) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with serve(planhat_client(dead_url, sandbox)) as running:
        response = running.call("GET")
    assert response.status_code == 502
    assert response.json() == {"detail": "Planhat could not be reached"}


def test_unexpected_errors_are_a_bare_500(caplog: pytest.LogCaptureFixture) -> None:
    token = "planhat-token-in-an-error-message"

    class Broken:
        def list_users(self) -> list[dict[str, Any]]:
            raise KeyError(token)

        get_user = create_user = update_user = list_users

    with serve(Broken(), secrets=(token,)) as running:
        response = running.call("GET")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert "Traceback" in caplog.text  # the operator gets the trace, redacted
    assert token not in caplog.text + response.text


# -- the schema -------------------------------------------------------------------------------
def test_openapi_declares_operations_and_basic_auth(api: RunningApp) -> None:
    schema = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    operations = {
        op["operationId"]: op for path in schema["paths"].values() for op in path.values()
    }
    assert set(operations) == {"users.list", "users.get", "users.create", "users.update"}
    assert schema["components"]["securitySchemes"] == {
        "ConnectorBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "User name: the Hull connector id. Password: the connector secret.",
        }
    }
    for op in operations.values():
        assert op["security"] == [{"ConnectorBasic": []}]
        org = next(p for p in op["parameters"] if p["name"] == "org")
        assert org["required"] is True
    create = schema["components"]["schemas"]["UserCreate"]
    assert set(create["required"]) == {"email", "nickName", "firstName", "lastName"}
    assert create["additionalProperties"] is False


# -- property: nothing a caller sends yields a 500 --------------------------------------------
# Valid choices are drawn often (several branches) so most requests get past the access rules
# and validation and reach Planhat; the rest explore every refusal.
KNOWN = "{known}"
"""Stands for the id of a user that exists in the sandbox."""


def _header_text() -> st.SearchStrategy[str]:
    """What an HTTP client can put in a header value (no control characters, no leading space)."""
    printable = st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f")
    return st.text(printable).map(str.lstrip)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_names = st.text(max_size=12) | st.sampled_from(["Ada", " Ada ", ""])
_fields = {
    "email": st.emails() | st.text(max_size=12),
    "nickName": _names,
    "firstName": _names,
    "lastName": _names,
    "roles": st.lists(st.sampled_from(["000000000000000000000000", "admin"]), max_size=2),
    "externalId": st.text(max_size=12),
    "inactive": st.booleans() | _json,
    "isHidden": st.booleans(),
    "tzOffset": st.integers(-20, 20) | st.floats(allow_nan=False, allow_infinity=False),
    "custom": st.dictionaries(st.text(max_size=5), _json, max_size=2),
    "permissions": _json,
}
_user_bodies = st.fixed_dictionaries({}, optional=_fields)
_bodies = st.one_of(
    st.none(),
    st.binary(max_size=40),
    _json.map(lambda body: json.dumps(body).encode()),
    _user_bodies.map(lambda body: json.dumps(body).encode()),
    _user_bodies.map(lambda body: json.dumps({**new_user(), **body}).encode()),
    st.just(b"").map(lambda _: json.dumps(new_user()).encode()),
)
_user_ids = st.one_of(
    st.sampled_from([KNOWN, UNKNOWN_ID, "%2E%2E", "a%2Fb", "extid-TM-001"]),
    st.text(min_size=1, max_size=30).map(lambda s: quote(s, safe="")),
)
_endpoints = st.one_of(
    st.tuples(st.sampled_from(["GET", "POST"]), st.just(USERS)),
    st.tuples(st.sampled_from(["GET", "PUT"]), _user_ids.map(lambda i: f"{USERS}/{i}")),
    st.tuples(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
        st.sampled_from([USERS, f"{USERS}/", f"{USERS}/{UNKNOWN_ID}", "/api/internal", "/"]),
    ),
)


def mostly(value: Any, otherwise: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``value`` three times in four, else a draw from ``otherwise``."""
    return st.integers(0, 3).flatmap(lambda n: st.just(value) if n else otherwise)


_orgs = mostly(ORG, st.none() | st.text(max_size=20))
_auth = mostly(
    basic(*AUTH),
    st.none() | st.builds(basic, st.text(max_size=10), st.text(max_size=10)) | _header_text(),
)
_cacheclear = mostly(None, st.sampled_from(["1", "0", "true"]) | st.text(max_size=5))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=_endpoints,
    org=_orgs,
    cacheclear=_cacheclear,
    authorization=_auth,
    body=_bodies,
)
def test_no_request_makes_the_api_fail(
    api: RunningApp,
    sandbox: PlanhatSandbox,
    endpoint: tuple[str, str],
    org: str | None,
    cacheclear: str | None,
    authorization: str | None,
    body: bytes | None,
) -> None:
    method, path = endpoint
    path = path.replace(KNOWN, sandbox.users()[0]["_id"])
    params = {k: v for k, v in (("org", org), ("cacheclear", cacheclear)) if v is not None}
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    upstream_before = len(sandbox.rest.recorded())
    response = api.http.request(
        method,
        api.url + path,
        params=params,
        headers=headers,
        data=body,
        allow_redirects=False,
        timeout=10,
    )
    event(f"status {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text)
    assert "Traceback" not in response.text
    assert sandbox.api_token not in response.text
    ours = response.status_code in (401, 403, 422) or (
        response.status_code == 400
        and response.json() == {"detail": "the org query parameter is required"}
    )
    if ours:
        assert len(sandbox.rest.recorded()) == upstream_before, "a refused request reached Planhat"


# -- configuration ----------------------------------------------------------------------------
def test_settings_name_every_missing_variable() -> None:
    with pytest.raises(InternalApiConfigError) as refused:
        InternalApiSettings.from_env({"HULL_CONNECTOR_ID": "x", "PLANHAT_API_TOKEN": " "})
    message = str(refused.value)
    for name in ("HULL_CONNECTOR_SECRET", "HULL_ORGANIZATION", "PLANHAT_API_TOKEN"):
        assert name in message
    assert "HULL_CONNECTOR_ID" not in message


def test_settings_defaults_and_repr_hide_secrets() -> None:
    env = {
        "HULL_CONNECTOR_ID": CONNECTOR_ID,
        "HULL_CONNECTOR_SECRET": CONNECTOR_SECRET,
        "HULL_ORGANIZATION": ORG,
        "PLANHAT_API_TOKEN": "planhat-token-value",
    }
    loaded = InternalApiSettings.from_env(env)
    assert loaded.api_url == "https://api.planhat.com"
    assert loaded.analytics_url == "https://analytics.planhat.com"
    assert "planhat-token-value" not in repr(loaded)
    assert CONNECTOR_SECRET not in repr(loaded)


def test_the_command_refuses_to_start_without_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("HULL_CONNECTOR_ID", "HULL_CONNECTOR_SECRET", "PLANHAT_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HULL_ORGANIZATION", ORG)
    assert run_internal_api("127.0.0.1", 0) == 2
    assert "HULL_CONNECTOR_SECRET" in capsys.readouterr().err


# -- bodies: refused before they are read, capped when they are ---------------------------------
BIG = 300 * 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _post_raw(
    api: RunningApp, headers: dict[str, str], total: int, *, chunked: bool
) -> tuple[int, int]:
    """POST ``total`` body bytes over a raw socket until the server answers or stops reading.

    Returns the answer's status and how many body bytes the server took before answering.
    """
    host, port = api.url.removeprefix("http://").split(":")
    head = f"POST {USERS}?org={quote(ORG)} HTTP/1.1\r\nHost: {host}\r\n"
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}
    head += "".join(f"{k}: {v}\r\n" for k, v in {**headers, **framing}.items()) + "\r\n"
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode())
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            piece = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            try:
                sock.settimeout(1)
                sock.sendall(piece)
            except (TimeoutError, OSError):
                break
            sent += len(chunk)
        sock.settimeout(10)
        answer = sock.recv(4096).decode("latin-1")
    return int(answer.split(" ", 2)[1]), sent


@pytest.mark.parametrize(
    "auth,chunked,status",
    [
        pytest.param(None, False, 401, id="no-credentials"),
        pytest.param(("wrong", "wrong"), True, 401, id="wrong-credentials-streamed"),
        pytest.param(AUTH, False, 413, id="declared-too-large"),
        pytest.param(AUTH, True, 413, id="streamed-too-large"),
    ],
)
def test_big_bodies_are_refused_without_being_held(
    api: RunningApp,
    sandbox: PlanhatSandbox,
    auth: tuple[str, str] | None,
    chunked: bool,
    status: int,
) -> None:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = basic(*auth)
    before = _rss_bytes()
    results = [_post_raw(api, headers, BIG, chunked=chunked) for _ in range(4)]
    grown = _rss_bytes() - before
    assert [code for code, _ in results] == [status] * 4
    assert all(sent < BIG for _, sent in results)  # the server answered long before the end
    assert grown < 64 * 1024 * 1024, f"memory grew by {grown / 1e6:.0f} MB"
    assert sandbox.rest.recorded() == []


def test_a_body_just_under_the_cap_is_read(api: RunningApp) -> None:
    padded = new_user(nickName="a" * (900 * 1024))
    response = api.call("POST", json=padded)
    assert response.status_code == 422  # read and validated (nickName too long), not refused
    assert response.json()["detail"][0]["loc"][:1] == ["body"]
