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
)
from hull_planhat_pipelines.sandbox.hull import HullFirehoseSandbox
from hull_planhat_pipelines_tests.fake_time import FakeTime
from hull_planhat_pipelines_tests.fixtures.hull import *  # noqa: F403  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")
"""The sandbox's default secret is short, as some issued secrets are; PyJWT warns on each."""
FAST = RetryPolicy(attempts=3, backoff_factor=0.5, backoff_max=8.0)
NOW = 1_700_000_000
WRONG_SECRET = "wrong-secret-7f3a9c2e51d84b06"


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
        token, sandbox.connector_secret, algorithms=["HS256"], issuer=sandbox.organization
    )


# -- messages and tokens -------------------------------------------------------------------------
def test_user_traits_carry_a_signed_token_with_only_the_non_null_claims(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    claims = {"email": "ada@example.com", "external_id": None, "anonymous_id": "copper-lead:12"}
    attributes = {"copper_lead/title": "CTO", "copper_lead/score": 7}
    [outcome] = client.send([client.user_traits_message(claims, attributes)])
    assert outcome.status == "sent"

    [request] = hull_firehose.envelopes
    assert request.headers["hull-organization"] == "sandbox-org"
    envelope = request.body
    assert set(envelope) == {"batch", "timestamp", "sentAt"}
    assert envelope["sentAt"] == "2023-11-14T22:13:20.000Z"
    [message] = envelope["batch"]
    assert set(message) == {"type", "timestamp", "message_id", "headers", "body"}
    assert message["type"] == "traits" and message["body"] == attributes
    token = message["headers"]["Hull-Access-Token"]
    payload = decode(token, hull_firehose)
    assert payload["iss"] == "sandbox-org" and payload["sub"] == "sandbox-connector"
    assert payload["iat"] == NOW
    assert payload["io.hull.asUser"] == {
        "email": "ada@example.com",
        "anonymous_id": "copper-lead:12",
    }
    assert "io.hull.asAccount" not in payload
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, WRONG_SECRET, algorithms=["HS256"])

    assert hull_firehose.traits_for_user("ada@example.com") == attributes
    assert hull_firehose.traits_for_user({"anonymous_id": "copper-lead:12"}) == attributes


def test_account_traits_track_and_link_messages(
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
    tokens = [decode(m["headers"]["Hull-Access-Token"], hull_firehose) for m in wire]
    assert tokens[0]["io.hull.asAccount"] == account and "io.hull.asUser" not in tokens[0]
    assert tokens[1]["io.hull.asUser"] == user and "io.hull.asAccount" not in tokens[1]
    assert tokens[2]["io.hull.asUser"] == user and tokens[2]["io.hull.asAccount"] == account
    assert wire[1]["body"] == {
        "event": "Email sent",
        "properties": {"subject": "Hi"},
        "context": {"created_at": "2023-11-14T21:13:20.000Z", "source": "copper"},
        "event_id": "copper-activity:9",
    }
    assert wire[2]["body"] == {}

    assert hull_firehose.traits_for_account("acme.com") == {"copper/name": "Acme"}
    assert hull_firehose.traits_for_user("ada@example.com") == {}
    [event] = hull_firehose.events("ada@example.com")
    assert event.body["event_id"] == "copper-activity:9"
    assert hull_firehose.links() == [(user, account)]


def test_builders_refuse_what_cannot_be_sent(client: HullFirehoseClient) -> None:
    with pytest.raises(ValueError, match="at least one"):
        client.user_traits_message({"email": None, "external_id": " "}, {"a": 1})
    with pytest.raises(ValueError, match="unknown user claim"):
        client.user_traits_message({"domain": "acme.com"}, {"a": 1})
    with pytest.raises(ValueError, match="event_id and a name"):
        client.track_message({"email": "a@b.c"}, "", "Call", {}, NOW)
    with pytest.raises(ValueError, match="between 1 and 100"):
        HullFirehoseClient("http://127.0.0.1:9/", "o", "c", "s", batch_size=101)


# -- batching and resends ------------------------------------------------------------------------
def test_250_messages_go_out_in_3_requests(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    outcomes = client.send(users(client, 250))
    assert [len(body["batch"]) for body in sent_batches(hull_firehose)] == [100, 100, 50]
    assert hull_firehose.batches == 3 and len(hull_firehose.messages) == 250
    assert [o.key for o in outcomes] == [f"h{i}" for i in range(250)]
    assert {o.status for o in outcomes} == {"sent"}
    assert [o.batch for o in outcomes] == [1] * 100 + [2] * 100 + [3] * 50
    assert [o.request for o in outcomes] == [o.batch for o in outcomes]
    assert {o.attempts for o in outcomes} == {1}


def test_message_ids_are_deterministic_so_a_resend_is_deduplicated(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    first = users(client, 3)
    fake_time.now += 3600  # new tokens and timestamps, same content
    again = users(client, 3)
    assert [m.message_id for m in first] == [m.message_id for m in again]
    assert first[0].token != again[0].token
    client.send(first)
    outcomes = client.send(again)
    assert {o.status for o in outcomes} == {"sent"}
    assert len(hull_firehose.messages) == 3
    assert '"duplicates":3' in (outcomes[0].response or "")

    claims, attributes = {"email": "u0@example.com"}, {"copper_lead/n": 0}
    revised = client.user_traits_message(claims, attributes, revision="run-2")
    assert revised.message_id != first[0].message_id
    other = client.user_traits_message({"email": "u9@example.com"}, attributes)
    assert other.message_id != first[0].message_id


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


def test_5xx_is_retried_with_backoff_then_sent(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    hull_firehose.server.faults.add(status=503, times=1)
    hull_firehose.server.faults.add(status=502, times=1)
    outcomes = client.send(users(client, 1))
    assert [(o.status, o.attempts) for o in outcomes] == [("sent", 3)]
    assert fake_time.sleeps == [0.5, 1.0]  # exponential from the first retry
    assert len(hull_firehose.messages) == 1


def test_a_batch_that_keeps_failing_is_reported_and_the_next_goes_out(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime
) -> None:
    client = make_client(hull_firehose, fake_time, batch_size=2)
    hull_firehose.server.faults.add(status=500, times=FAST.attempts)
    outcomes = client.send(users(client, 3))
    failed, _, last = outcomes
    assert outcomes[0].error == outcomes[1].error
    assert (failed.status, failed.request, failed.attempts, failed.batch) == ("error", 1, 3, 1)
    assert "answered 500" in (failed.error or "") and "gave up after 3 attempts" in failed.error
    assert failed.response is not None and "injected fault" in failed.response
    assert (last.status, last.request, last.attempts, last.batch) == ("sent", 2, 1, 2)
    assert [m.body for m in hull_firehose.messages] == [{"copper_lead/n": 2}]


def test_a_wrong_secret_is_refused_and_stops_without_showing_secret_or_token(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(hull_firehose, fake_time, connector_secret=WRONG_SECRET, batch_size=2)
    messages = users(client, 5)
    with caplog.at_level(logging.DEBUG), pytest.raises(ApiAuthError) as raised:
        client.send(messages)
    exc = raised.value
    assert isinstance(exc, FirehoseStopped) and exc.status == 401
    assert "Invalid access token" in str(exc)
    shown = f"{exc} {exc!r} {client!r} {messages[0]!r} {caplog.text}"
    assert WRONG_SECRET not in shown and "eyJ" not in shown
    assert [(o.status, o.error, o.request) for o in exc.outcomes] == [
        ("error", NOT_SENT_AUTH, None)
    ] * 5
    assert [r.status for r in hull_firehose.server.recorded("POST")] == [401]  # stopped at once
    assert hull_firehose.messages == [] and hull_firehose.batches == 0


def test_a_wrong_organization_is_refused(
    hull_firehose: HullFirehoseSandbox, fake_time: FakeTime
) -> None:
    client = make_client(hull_firehose, fake_time, organization="other-org")
    with pytest.raises(FirehoseStopped, match="Unknown organization"):
        client.send(users(client, 1))


def test_a_message_with_a_bad_token_is_rejected_alone(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient, fake_time: FakeTime
) -> None:
    forged = make_client(hull_firehose, fake_time, connector_secret=WRONG_SECRET)
    good, bad = users(client, 1)[0], users(forged, 2)[1]
    outcomes = client.send([good, bad])
    assert [o.status for o in outcomes] == ["sent", "error"]
    assert outcomes[1].error == (
        "rejected by the firehose: InvalidSignatureError: Signature verification failed"
    )
    assert [m.message_id for m in hull_firehose.messages] == [good.message_id]
    assert [r["message_id"] for r in hull_firehose.rejected] == [bad.message_id]


def test_the_sandbox_checks_message_shape_and_token_claims(
    hull_firehose: HullFirehoseSandbox, client: HullFirehoseClient
) -> None:
    token = client.access_token({"email": "a@b.c"})
    account_token = client.access_token(account_claims={"domain": "b.c"})
    foreign = jwt.encode(
        {"iss": "sandbox-org", "sub": "another-connector", "iat": NOW},
        "sandbox-secret",
        algorithm="HS256",
    )

    def message(**kw: Any) -> dict[str, Any]:
        base = {"type": "traits", "message_id": "m", "body": {}, "timestamp": "t"}
        return {**base, "headers": {"Hull-Access-Token": token}, **kw}

    batch = [
        message(message_id="ok"),
        message(type="identify"),
        message(message_id=""),
        message(body=[1]),
        message(type="track", body={"properties": {}}),
        message(type="link", headers={"Hull-Access-Token": token}),
        message(type="track", body={"event": "x"}, headers={"Hull-Access-Token": account_token}),
        message(headers={"Hull-Access-Token": foreign}),
    ]
    url, headers = hull_firehose.base_url, {"Hull-Organization": "sandbox-org"}
    answer = requests.post(url, json={"batch": batch}, headers=headers, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["accepted"] == 1
    assert [r["index"] for r in answer.json()["rejected"]] == list(range(1, 8))
    assert "not this connector" in answer.json()["rejected"][-1]["error"]
    bad_body = requests.post(url, json={"messages": []}, headers=headers, timeout=10)
    assert bad_body.status_code == 400


# -- outcome rows --------------------------------------------------------------------------------
def test_outcome_rows_have_the_delivery_row_shape(client: HullFirehoseClient) -> None:
    user = {"email": "ada@example.com"}
    messages = [
        client.user_traits_message(user, {"a": 1}, key="hull-user-1"),
        client.account_traits_message({"domain": "acme.com"}, {"b": 2}),
        client.track_message(user, "ev-1", "Call", {}, "2024-01-01T00:00:00Z"),
        client.link_message(user, {"domain": "acme.com"}),
    ]
    outcomes = client.send(messages)
    assert OUTCOME_COLUMNS[:-1] == tuple(delivery.OUTCOME_COLUMNS[:-1])
    assert OUTCOME_COLUMNS[-1] == "message_id"
    rows = [o.as_row() for o in outcomes]
    assert all(tuple(row) == OUTCOME_COLUMNS for row in rows)
    assert [row["target"] for row in rows] == [
        "hull.user_traits",
        "hull.account_traits",
        "hull.track",
        "hull.link",
    ]
    assert [row["key"] for row in rows] == [
        "hull-user-1",
        messages[1].message_id,
        "ev-1",
        messages[3].message_id,
    ]
    assert all(o.delivered and o.error is None for o in outcomes)
    assert [row["message_id"] for row in rows] == [m.message_id for m in messages]
