"""The Hull firehose client over real HTTP against the firehose sandbox."""

from __future__ import annotations

import logging
from typing import Any

import jwt
import pytest
import requests

from hull_planhat_pipelines.clients import delivery
from hull_planhat_pipelines.clients.http import ApiAuthError, RetryPolicy
from hull_planhat_pipelines.clients.hull import (
    NOT_SENT_AUTH,
    OUTCOME_COLUMNS,
    FirehoseMessage,
    FirehoseStopped,
    HullFirehoseClient,
    check_connector_id,
    firehose_url,
)
from hull_planhat_pipelines.sandbox.hull import HullFirehoseSandbox
from hull_planhat_pipelines_tests.fake_time import FakeTime

FAST = RetryPolicy(attempts=3, backoff_factor=0.5, backoff_max=8.0)
NOW = 1_700_000_000
WRONG_SECRET = "wrong-secret-7f3a9c2e51d84b06aa0c99e3"
HULL_ID = "5f0c0ffee0dd0ba11ab1e001"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime(now=NOW)


def make_client(sandbox: HullFirehoseSandbox, fake_time: FakeTime, **kw: Any) -> HullFirehoseClient:
    options: dict[str, Any] = {
        "organization": sandbox.organization,
        "connector_id": sandbox.connector_id,
        "connector_secret": sandbox.connector_secret,
    }
    options.update(kw)
    return HullFirehoseClient(
        sandbox.base_url,
        options.pop("organization"),
        options.pop("connector_id"),
        options.pop("connector_secret"),
        policy=FAST,
        sleeper=fake_time.sleep,
        clock=fake_time.time,
        **options,
    )


@pytest.fixture
def client(hull_firehose: HullFirehoseSandbox, fake_time: FakeTime) -> HullFirehoseClient:
    return make_client(hull_firehose, fake_time)


def users(client: HullFirehoseClient, count: int, **attributes: Any) -> list[FirehoseMessage]:
    return [
        client.user_traits_message(
            {"email": f"u{i}@example.com"}, {"copper_lead/n": i, **attributes}, key=f"h{i}"
        )
        for i in range(count)
    ]


def sent_batches(sandbox: HullFirehoseSandbox) -> list[dict[str, Any]]:
    return [envelope.body for envelope in sandbox.envelopes]


def decode(token: str, sandbox: HullFirehoseSandbox) -> dict[str, Any]:
    return jwt.decode(
        token, sandbox.connector_secret, algorithms=["HS256"], issuer=sandbox.connector_id
    )


# -- messages and tokens -------------------------------------------------------------------------
def test_user_traits_carry_the_official_headers_and_token(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    claims = {"email": "ada@example.com", "external_id": None, "anonymous_id": "copper-lead:12"}
    attributes = {"copper_lead/title": "CTO", "copper_lead/score": 7}
    [outcome] = client.send([client.user_traits_message(claims, attributes)])
    assert outcome.status == "sent"

    [request] = hull_firehose.envelopes
    assert request.headers["hull-organization"] == hull_firehose.organization
    assert request.headers["hull-app-id"] == hull_firehose.connector_id
    assert request.headers["hull-access-token"] == hull_firehose.connector_secret
    assert request.headers["content-type"] == "application/json"
    envelope = request.body
    assert set(envelope) == {"batch", "timestamp", "sentAt"}
    assert envelope["sentAt"] == "2023-11-14T22:13:20.000Z"
    [message] = envelope["batch"]
    assert set(message) == {"type", "body", "headers", "timestamp"}  # no message id
    assert message["type"] == "traits" and message["body"] == attributes
    token = message["headers"]["Hull-Access-Token"]
    payload = decode(token, hull_firehose)
    assert payload == {
        "iss": hull_firehose.connector_id,  # the connector, not the organization
        "iat": NOW,
        "io.hull.asUser": {"email": "ada@example.com", "anonymous_id": "copper-lead:12"},
        "io.hull.subjectType": "user",
    }
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, WRONG_SECRET, algorithms=["HS256"])

    assert hull_firehose.traits_for_user("ada@example.com") == attributes
    assert hull_firehose.traits_for_user({"anonymous_id": "copper-lead:12"}) == attributes


def test_account_traits_link_and_track_take_the_official_shapes(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    user = {"email": "ada@example.com"}
    account = {"domain": "acme.com", "anonymous_id": "copper:34"}
    messages = [
        client.account_traits_message(account, {"copper/name": "Acme"}),
        client.track_message(
            user, "copper-activity:9", "Email sent", {"subject": "Hi"}, NOW - 3600, source="copper"
        ),
        client.link_message(user, account),
    ]
    assert all(o.status == "sent" for o in client.send(messages))

    wire = sent_batches(hull_firehose)[0]["batch"]
    assert [m["type"] for m in wire] == ["traits", "track", "traits"]  # no "link" type
    tokens = [decode(m["headers"]["Hull-Access-Token"], hull_firehose) for m in wire]
    assert tokens[0]["io.hull.asAccount"] == account and "io.hull.asUser" not in tokens[0]
    assert tokens[0]["io.hull.subjectType"] == "account"
    assert tokens[1]["io.hull.asUser"] == user and "io.hull.asAccount" not in tokens[1]
    assert tokens[1]["io.hull.subjectType"] == "user"
    assert tokens[2]["io.hull.asUser"] == user and tokens[2]["io.hull.asAccount"] == account
    assert tokens[2]["io.hull.subjectType"] == "account"
    assert all("sub" not in t for t in tokens)
    assert wire[1]["body"] == {
        "ip": None,
        "url": None,
        "referer": None,
        "event_id": "copper-activity:9",
        "created_at": "2023-11-14T21:13:20.000Z",  # when it happened, not when it was sent
        "source": "copper",
        "properties": {"subject": "Hi"},
        "event": "Email sent",
    }
    assert wire[2]["body"] == {}

    assert hull_firehose.traits_for_account("acme.com") == {"copper/name": "Acme"}
    assert hull_firehose.traits_for_user("ada@example.com") == {}
    [event] = hull_firehose.events("ada@example.com")
    assert event.body["event_id"] == "copper-activity:9"
    assert hull_firehose.links() == [(user, account)]


def test_a_hull_id_claim_becomes_the_subject(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    message = client.user_traits_message({"id": HULL_ID, "email": "a@b.c"}, {"a": 1})
    assert decode(message.token, hull_firehose)["sub"] == HULL_ID
    link = client.link_message({"id": HULL_ID}, {"domain": "b.c"})
    assert "sub" not in decode(link.token, hull_firehose)  # the subject is the account
    assert all(o.delivered for o in client.send([message, link]))
    assert hull_firehose.messages[0].sub == HULL_ID


def test_traits_go_flat_an_object_value_as_its_json_text(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    attributes = {
        "copper/arr": {"amount": 1200, "currency": "USD"},
        "copper/tags": ["a", "b"],
        "copper/contacts": [{"email": "a@b.c"}],
        "copper/visits": {"operation": "inc", "value": 1},
        "copper/name": None,
    }
    message = client.account_traits_message({"domain": "acme.com"}, attributes)
    assert message.body == {
        "copper/arr": '{"amount": 1200, "currency": "USD"}',
        "copper/tags": ["a", "b"],
        "copper/contacts": '[{"email": "a@b.c"}]',
        "copper/visits": {"operation": "inc", "value": 1},
        "copper/name": None,
    }
    assert all(o.delivered for o in client.send([message]))


def test_builders_refuse_what_cannot_be_sent(client: HullFirehoseClient) -> None:
    with pytest.raises(ValueError, match="at least one"):
        client.user_traits_message({"email": None, "external_id": " "}, {"a": 1})
    with pytest.raises(ValueError, match="unknown user claim"):
        client.user_traits_message({"domain": "acme.com"}, {"a": 1})
    with pytest.raises(ValueError, match="event_id and a name"):
        client.track_message({"email": "a@b.c"}, "", "Call", {}, NOW)
    with pytest.raises(ValueError, match="between 1 and 50"):
        HullFirehoseClient("http://127.0.0.1:9/", "o.hullapp.io", HULL_ID, "s", batch_size=51)


@pytest.mark.parametrize(
    "connector_id", ["sandbox-connector", "", None, HULL_ID + "0", "zz0c0ffee0dd0ba11ab1e001"]
)
def test_the_connector_id_must_be_a_24_hex_id(connector_id: str | None) -> None:
    with pytest.raises(ValueError, match="24-character hexadecimal id") as raised:
        HullFirehoseClient("http://127.0.0.1:9/", "o.hullapp.io", connector_id, "s3cret")  # type: ignore[arg-type]
    if connector_id:
        assert connector_id not in str(raised.value)
    assert check_connector_id(f" {HULL_ID} ") == HULL_ID


def test_the_firehose_url_derives_from_the_organization() -> None:
    assert firehose_url("acme.hullapp.io") == "https://firehose.hullapp.io"
    with pytest.raises(ValueError):
        firehose_url("acme")


# -- batching and resends ------------------------------------------------------------------------
def test_120_messages_go_out_in_batches_of_at_most_50(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    outcomes = client.send(users(client, 120))
    assert [len(body["batch"]) for body in sent_batches(hull_firehose)] == [50, 50, 20]
    assert hull_firehose.batches == 3 and len(hull_firehose.messages) == 120
    assert [o.key for o in outcomes] == [f"h{i}" for i in range(120)]
    assert {o.status for o in outcomes} == {"sent"}
    assert [o.batch for o in outcomes] == [1] * 50 + [2] * 50 + [3] * 20
    assert [o.request for o in outcomes] == [o.batch for o in outcomes]
    assert {o.attempts for o in outcomes} == {1}


def test_a_resend_is_harmless(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    user = {"email": "ada@example.com"}
    first = [
        client.user_traits_message(user, {"copper_lead/n": 1}),
        client.track_message(user, "ev-1", "Call", {"n": 1}, "2024-01-01T00:00:00Z"),
    ]
    fake_time.now += 3600  # new tokens and timestamps, same content
    again = [
        client.user_traits_message(user, {"copper_lead/n": 1}),
        client.track_message(user, "ev-1", "Call", {"n": 1}, "2024-01-01T00:00:00Z"),
    ]
    client.send(first)
    assert {o.status for o in client.send(again)} == {"sent"}
    assert hull_firehose.traits_for_user(user) == {"copper_lead/n": 1}
    [event] = hull_firehose.events()  # one event per event_id
    assert event.body["properties"] == {"n": 1} and event.batch == 2


# -- failures ------------------------------------------------------------------------------------
def test_429_with_retry_after_is_waited_out_then_sent(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    hull_firehose.server.faults.add(status=429, retry_after=7, times=2)
    outcomes = client.send(users(client, 2))
    assert fake_time.sleeps == [7, 7]
    assert [(o.status, o.attempts, o.request) for o in outcomes] == [("sent", 3, 1)] * 2
    assert [r.status for r in hull_firehose.server.recorded("POST")] == [429, 429, 200]
    assert len(hull_firehose.envelopes) == 1  # the 429s were answered before the endpoint
    assert len(hull_firehose.messages) == 2 and hull_firehose.batches == 1


def test_5xx_is_retried_twice_with_backoff_then_sent(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    hull_firehose.server.faults.add(status=503, times=1)
    hull_firehose.server.faults.add(status=502, times=1)
    outcomes = client.send(users(client, 1))
    assert [(o.status, o.attempts) for o in outcomes] == [("sent", 3)]
    assert fake_time.sleeps == [0.5, 1.0]  # exponential from the first retry
    assert len(hull_firehose.messages) == 1


def test_a_refused_batch_is_reported_whole_and_the_next_goes_out(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime
) -> None:
    client = make_client(hull_firehose, fake_time, batch_size=2)
    hull_firehose.refuse_batches(1)
    results = list(client.batches(users(client, 3)))
    assert [(r.delivered, r.reachable) for r in results] == [(False, True), (True, True)]
    failed, second, last = [o for r in results for o in r.outcomes]
    assert failed.error == second.error
    assert (failed.status, failed.request, failed.attempts, failed.batch) == ("error", 1, 1, 1)
    assert "answered 400" in (failed.error or "") and "batch refused" in (failed.response or "")
    assert (last.status, last.request, last.attempts, last.batch) == ("sent", 2, 1, 2)
    assert [m.body for m in hull_firehose.messages] == [{"copper_lead/n": 2}]
    assert hull_firehose.refusals == [{"status": 400, "error": "batch refused (sandbox fault)"}]


def test_a_firehose_that_keeps_failing_is_reported_unreachable(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    hull_firehose.server.faults.add(status=500, times=FAST.attempts)
    [result] = list(client.batches(users(client, 1)))
    assert not result.delivered and not result.reachable
    [outcome] = result.outcomes
    assert "gave up after 3 attempts" in (outcome.error or "") and outcome.attempts == 3
    assert "injected fault" in (outcome.response or "")


def test_a_wrong_secret_is_refused_and_stops_without_showing_secret_or_token(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(hull_firehose, fake_time, connector_secret=WRONG_SECRET, batch_size=2)
    messages = users(client, 5)
    with caplog.at_level(logging.DEBUG), pytest.raises(ApiAuthError) as raised:
        client.send(messages)
    exc = raised.value
    assert isinstance(exc, FirehoseStopped) and exc.status == 401
    assert "Invalid Hull-Access-Token" in str(exc)
    shown = f"{exc} {exc!r} {client!r} {messages[0]!r} {caplog.text}"
    assert WRONG_SECRET not in shown and "eyJ" not in shown
    assert [(o.status, o.error, o.request) for o in exc.outcomes] == [
        ("error", NOT_SENT_AUTH, None)
    ] * 5
    assert [r.status for r in hull_firehose.server.recorded("POST")] == [401]  # stopped at once
    assert hull_firehose.messages == [] and hull_firehose.batches == 0


@pytest.mark.parametrize(
    ("option", "value", "reason"),
    [
        ("organization", "other.hullapp.io", "Unknown organization"),
        ("connector_id", "0123456789abcdef01234567", "Invalid Hull-App-Id"),
    ],
)
def test_a_wrong_organization_or_connector_is_refused(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime, option: str, value: str, reason: str
) -> None:
    client = make_client(hull_firehose, fake_time, **{option: value})
    with pytest.raises(FirehoseStopped, match=reason):
        client.send(users(client, 1))


# -- the sandbox refuses what the official client never sends ------------------------------------
def _post(sandbox: HullFirehoseSandbox, body: Any, **headers: str) -> requests.Response:
    sent = {
        "Hull-Organization": sandbox.organization,
        "Hull-App-Id": sandbox.connector_id,
        "Hull-Access-Token": sandbox.connector_secret,
        **headers,
    }
    return requests.post(sandbox.base_url, json=body, headers=sent, timeout=10)


def _token(sandbox: HullFirehoseSandbox, secret: str | None = None, **claims: Any) -> str:
    payload = {"iss": sandbox.connector_id, "iat": NOW, "io.hull.subjectType": "user"}
    payload["io.hull.asUser"] = {"email": "a@b.c"}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret or sandbox.connector_secret, algorithm="HS256")


def _message(sandbox: HullFirehoseSandbox, token: str | None = None, **kw: Any) -> dict[str, Any]:
    base = {"type": "traits", "body": {"a": 1}, "timestamp": "2024-01-01T00:00:00.000Z"}
    return {**base, "headers": {"Hull-Access-Token": token or _token(sandbox)}, **kw}


def _batch(*messages: dict[str, Any]) -> dict[str, Any]:
    now = "2024-01-01T00:00:00.000Z"
    return {"batch": list(messages), "timestamp": now, "sentAt": now}


TRACK = {"event": "x", "properties": {}, "event_id": "e1", "ip": None, "url": None, "referer": None}


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("message_id", 400, "unknown keys ['message_id']"),
        ("link type", 400, "type must be one of"),
        ("nested context", 400, "no 'context' object"),
        ("no event_id", 400, "a track body needs ['event_id']"),
        ("nested trait", 400, "traits are flat"),
        ("track on an account", 400, "must be about a user"),
        ("issuer is the organization", 401, "InvalidIssuerError"),
        ("sub is the connector id", 401, "sub must be a Hull id"),
        ("mis-signed", 401, "InvalidSignatureError"),
        ("unsigned", 401, "invalid access token"),
        ("no subject type", 401, "io.hull.subjectType must be"),
        ("no subject", 401, "must name its subject"),
        ("unknown claim", 401, "unknown claims ['phone']"),
        ("only empty claims", 401, "names no one"),
        ("51 messages", 400, "1 to 50 messages"),
        ("empty batch", 400, "1 to 50 messages"),
        ("no sentAt", 400, "exactly"),
    ],
)
def test_the_sandbox_refuses_the_whole_batch_for_what_the_official_client_never_sends(
    hull_firehose: HullFirehoseSandbox, case: str, status: int, reason: str
) -> None:
    s = hull_firehose
    good = _message(s)
    bad = {
        "message_id": _message(s, message_id="m-1"),
        "link type": _message(s, type="link", body={}),
        "nested context": _message(s, type="track", body={**TRACK, "context": {"source": "x"}}),
        "no event_id": _message(
            s, type="track", body={k: v for k, v in TRACK.items() if k != "event_id"}
        ),
        "nested trait": _message(s, body={"a": {"b": 1}}),
        "track on an account": _message(
            s,
            _token(s, **{"io.hull.subjectType": "account", "io.hull.asAccount": {"domain": "b"}}),
            type="track",
            body=TRACK,
        ),
        "issuer is the organization": _message(s, _token(s, iss=s.organization)),
        "sub is the connector id": _message(s, _token(s, sub="sandbox-connector")),
        "mis-signed": _message(s, _token(s, secret=WRONG_SECRET)),
        "unsigned": _message(
            s, jwt.encode({"iss": s.connector_id, "iat": NOW}, None, algorithm="none")
        ),
        "no subject type": _message(s, _token(s, **{"io.hull.subjectType": None})),
        "no subject": _message(s, _token(s, **{"io.hull.asUser": None})),
        "unknown claim": _message(s, _token(s, **{"io.hull.asUser": {"phone": "1"}})),
        "only empty claims": _message(
            s, _token(s, **{"io.hull.asUser": {"email": None, "external_id": ""}})
        ),
    }
    if case == "51 messages":
        body = _batch(*[good] * 51)
    elif case == "empty batch":
        body = _batch()
    elif case == "no sentAt":
        body = {"batch": [good], "timestamp": "2024-01-01T00:00:00.000Z"}
    else:
        body = _batch(good, bad[case])
    answer = _post(s, body)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]
    assert s.messages == [] and s.batches == 0  # nothing of a refused batch is kept
    assert _post(s, _batch(good)).status_code == 200  # the same request without the fault passes


@pytest.mark.parametrize(
    "headers",
    [
        {"Hull-App-Id": ""},
        {"Hull-Access-Token": ""},
        {"Hull-Access-Token": "not-the-secret"},
        {"Hull-Organization": ""},
        {"Content-Type": "text/plain"},
    ],
)
def test_the_sandbox_refuses_missing_or_wrong_headers(
    hull_firehose: HullFirehoseSandbox, headers: dict[str, str]
) -> None:
    answer = _post(hull_firehose, _batch(_message(hull_firehose)), **headers)
    assert answer.status_code in (400, 401)
    assert hull_firehose.messages == []


def test_null_claims_beside_a_real_one_are_accepted(hull_firehose: HullFirehoseSandbox) -> None:
    """The official client keeps a claim given as null (``_.pick``); it names nothing."""
    claims = {"email": "a@b.c", "external_id": None}
    token = _token(hull_firehose, **{"io.hull.asUser": claims})
    answer = _post(hull_firehose, _batch(_message(hull_firehose, token)))
    assert answer.status_code == 200 and hull_firehose.traits_for_user("a@b.c") == {"a": 1}


def test_a_request_token_signed_by_the_connector_is_accepted(
    hull_firehose: HullFirehoseSandbox,
) -> None:
    """The official client sends the scoped token instead of the secret when its batcher was
    first made by a scoped client."""
    token = _token(hull_firehose)
    answer = _post(hull_firehose, _batch(_message(hull_firehose)), **{"Hull-Access-Token": token})
    assert answer.status_code == 200 and len(hull_firehose.messages) == 1


# -- outcome rows --------------------------------------------------------------------------------
def test_outcome_rows_have_the_delivery_row_shape(client: HullFirehoseClient) -> None:
    user = {"email": "ada@example.com"}
    messages = [
        client.user_traits_message(user, {"a": 1}, key="hull-user-1"),
        client.account_traits_message({"domain": "acme.com"}, {"b": 2}),
        client.track_message(user, "ev-1", "Call", {}, "2024-01-01T00:00:00Z"),
        client.link_message(user, {"domain": "acme.com"}, key="link-1"),
    ]
    outcomes = client.send(messages)
    assert tuple(delivery.OUTCOME_COLUMNS[:-1]) == OUTCOME_COLUMNS
    rows = [o.as_row() for o in outcomes]
    assert all(tuple(row) == OUTCOME_COLUMNS for row in rows)
    assert [row["target"] for row in rows] == [
        "hull.user_traits",
        "hull.account_traits",
        "hull.track",
        "hull.link",
    ]
    assert [row["key"] for row in rows] == ["hull-user-1", None, "ev-1", "link-1"]
    assert all(o.delivered and o.error is None for o in outcomes)
