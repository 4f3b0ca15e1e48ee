"""The delivery engine over real HTTP against the sandbox, and the pure batching rules."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hull_planhat_pipelines.clients.delivery import (
    NOT_SENT_ORDER,
    OUTCOME_COLUMNS,
    DeliveryStopped,
    DeliveryTarget,
    RequestRows,
    configured_target,
    deliver,
)
from hull_planhat_pipelines.clients.http import ApiAuthError, RetryPolicy
from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.clients.planhat_outcomes import NOT_APPLIED
from hull_planhat_pipelines.clients.planhat_targets import (
    ACTIVITIES,
    COMPANIES,
    ENDUSERS,
    METRICS,
)
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.settings import DestinationSettings
from hull_planhat_pipelines.sync.batching import (
    batch_count,
    batches,
    check_batch_size,
    record_payloads,
)
from hull_planhat_pipelines_tests.planhat_support import *  # noqa: F403  (fixtures)
from hull_planhat_pipelines_tests.planhat_support import (
    API_TOKEN,
    TENANT_TOKEN,
    FakeTime,
    make_client,
)


def destination_target(destination: DestinationSettings) -> DeliveryTarget:
    """A configured destination whose rows are the payloads (minus ``exclude``)."""
    return configured_target(
        destination.name,
        destination.method,
        destination.path,
        headers=destination.headers,
        payload_column=None,
        exclude=destination.exclude,
    )


def company_records(count: int, prefix: str) -> pd.DataFrame:
    keys = [f"{prefix}-{i}" for i in range(count)]
    payloads = [{"externalId": key, "name": f"Company {key}"} for key in keys]
    return pd.DataFrame({"external_id": keys, "payload": payloads})


def put_requests(sandbox: PlanhatSandbox, client: PlanhatClient) -> list[int]:
    """Sizes of the bulk PUTs the sandbox received."""
    return [len(r.body) for r in sandbox.rest.recorded(method="PUT")]


# -- batching (pure) -----------------------------------------------------------------------------
@given(st.integers(0, 60), st.integers(1, 25))
def test_batches_keep_order_and_never_exceed_the_size(total: int, size: int) -> None:
    chunks = list(batches(list(range(total)), size, max_size=25))
    assert [x for chunk in chunks for x in chunk] == list(range(total))
    assert all(1 <= len(chunk) <= size for chunk in chunks)
    assert len(chunks) == batch_count(total, size)


@pytest.mark.parametrize("size", [0, 5001, -1, 2.5, True])
def test_batch_size_outside_1_to_5000_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        check_batch_size(size)  # type: ignore[arg-type]


def test_row_payloads_drop_the_key_the_excluded_and_the_missing() -> None:
    frame = pd.DataFrame(
        {
            "external_id": ["a", "b"],
            "user_id": [1, 2],
            "n": [1.5, None],
            "at": pd.to_datetime(["2024-05-01T10:00:00Z", None]),
        }
    )
    payloads = record_payloads(
        frame, payload_column=None, key_column="external_id", exclude=["user_id"]
    )
    assert payloads == [{"n": 1.5, "at": "2024-05-01T10:00:00.000Z"}, {}]


# -- bulk upserts --------------------------------------------------------------------------------
def test_no_records_no_request(sandbox: PlanhatSandbox, client: PlanhatClient) -> None:
    result = deliver(
        company_records(0, "Z"), COMPANIES, client, batch_size=5000, key_column="external_id"
    )
    assert result.outcomes.empty and list(result.outcomes.columns) == OUTCOME_COLUMNS
    assert sandbox.write_count() == 0 and result.requests == 0


def test_no_request_mixes_two_send_orders(sandbox: PlanhatSandbox, client: PlanhatClient) -> None:
    """Records of a higher order go in later requests only, each order batched on its own."""
    records = company_records(7, "O").assign(order=[0, 0, 0, 1, 1, 1, 2])
    result = deliver(
        records, COMPANIES, client, batch_size=2, key_column="external_id", order_column="order"
    )
    assert put_requests(sandbox, client) == [2, 1, 2, 1, 1]
    assert result.outcomes["request"].tolist() == [1, 1, 2, 3, 3, 4, 5]
    assert result.counts() == {"created": 7}
    with pytest.raises(ValueError, match="ascending"):
        deliver(
            records.iloc[::-1],
            COMPANIES,
            client,
            batch_size=2,
            key_column="external_id",
            order_column="order",
        )


def test_records_of_a_later_order_are_not_sent_when_an_earlier_one_failed(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """A record sent after others (a colleague taking an address a rename frees) must not go
    when they failed: it would find the address still taken. It is an error, sent again next
    run; records of the same order as the failure still go."""
    sandbox.rest.faults.add(status=400, path="^/companies$", method="PUT", times=1)
    records = company_records(5, "OF").assign(order=[0, 0, 0, 1, 1])
    result = deliver(
        records, COMPANIES, client, batch_size=2, key_column="external_id", order_column="order"
    )
    assert result.outcomes["status"].tolist() == ["error", "error", "created", "error", "error"]
    assert result.outcomes["error"].tolist()[3:] == [NOT_SENT_ORDER] * 2
    assert len(sandbox.rest.recorded("PUT", "^/companies$")) == 2


WAITING: dict[str, Any] = {
    "key_column": "external_id",
    "order_column": "order",
    "waits_column": "waits",
}


def test_a_record_is_held_back_only_by_the_records_it_follows(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """With a waits column, a record of a later order is held back only when a record it
    follows was not delivered; a held record holds its own followers. An unrelated failure,
    however often it recurs, holds nothing."""
    records = company_records(6, "W").assign(
        order=[0, 0, 0, 1, 1, 2], waits=[[], [], [], ["W-1"], ["W-0"], ["W-3"]]
    )
    sandbox.rest.faults.add(status=400, path="^/companies$", method="PUT", times=1, after=1)
    result = deliver(records, COMPANIES, client, batch_size=1, **WAITING)
    assert result.outcomes["status"].tolist() == [
        "created",
        "error",  # refused
        "created",
        "error",  # follows W-1
        "created",  # follows W-0, delivered
        "error",  # follows W-3, held
    ]
    assert result.outcomes["error"].tolist()[3::2] == [NOT_SENT_ORDER] * 2
    assert put_requests(sandbox, client) == [1, 1, 1, 1]


def test_an_auth_failure_beside_a_held_record_hands_each_row_over_once(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """The journal appends what it is handed: a held record's row, handed over before the
    others of its request were sent, is not handed over again when a send then stops the
    delivery on an authentication failure."""
    records = company_records(3, "AU").assign(order=[1, 1, 1], waits=[[], ["earlier"], []])
    sandbox.rest.faults.add(status=401, path="^/companies$", method="PUT", times=1)
    seen: list[int] = []

    def checkpoint(rows: RequestRows) -> None:
        seen.extend(rows.frame().index.tolist())

    with pytest.raises(DeliveryStopped):
        deliver(
            records,
            COMPANIES,
            client,
            batch_size=3,
            **WAITING,
            undelivered_keys=["earlier"],
            checkpoint=checkpoint,
        )
    assert sorted(seen) == [0, 1, 2]


def test_the_records_around_a_held_one_still_go(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """A held record in the middle of a request's records splits it: the others go, in one
    request before it and one after. A record held back before the delivery
    (``undelivered_keys``) holds its followers too."""
    records = company_records(4, "S").assign(
        order=[0, 1, 1, 1], waits=[[], [], ["S-0"], ["earlier"]]
    )
    sandbox.rest.faults.add(status=400, path="^/companies$", method="PUT", times=1)
    result = deliver(
        records, COMPANIES, client, batch_size=3, **WAITING, undelivered_keys=["earlier"]
    )
    assert result.outcomes["status"].tolist() == ["error", "created", "error", "error"]
    assert result.outcomes["error"].tolist()[2:] == [NOT_SENT_ORDER] * 2
    records = records.assign(waits=[[], [], ["S-0"], []])
    sandbox.rest.clear_requests()
    sandbox.rest.faults.add(status=400, path="^/companies$", method="PUT", times=1)
    result = deliver(records, COMPANIES, client, batch_size=3, **WAITING)
    assert result.outcomes["status"].tolist() == ["error", "unchanged", "error", "created"]
    assert put_requests(sandbox, client) == [1, 1, 1]
    with pytest.raises(ValueError, match="order column"):
        deliver(records, COMPANIES, client, batch_size=2, waits_column="waits")


@pytest.mark.parametrize(("count", "sizes"), [(1, [1]), (5000, [5000]), (5001, [5000, 1])])
def test_bulk_sizes_take_the_minimum_requests(
    sandbox: PlanhatSandbox, client: PlanhatClient, count: int, sizes: list[int]
) -> None:
    records = company_records(count, f"S{count}")
    result = deliver(records, COMPANIES, client, batch_size=5000, key_column="external_id")
    assert put_requests(sandbox, client) == sizes
    assert {r.status for r in sandbox.rest.recorded()} == {200}  # never a refused request
    assert result.counts() == {"created": count}
    assert result.outcomes["key"].tolist() == records["external_id"].tolist()
    assert result.outcomes["request"].tolist() == [1 + i // 5000 for i in range(count)]
    again = deliver(records, COMPANIES, client, batch_size=5000, key_column="external_id")
    assert again.counts() == {"unchanged": count}


def test_mixed_outcomes_per_record_and_failures_never_delivered(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    sandbox.add_companies(
        [{"name": "Same", "externalId": "MX-1"}, {"name": "Before", "externalId": "MX-2"}]
    )
    sandbox.fail_items(
        "companies", lambda item: item.get("externalId") == "MX-4", "Invalid thing", times=1
    )
    records = pd.DataFrame(
        {
            "external_id": ["MX-1", "MX-2", "MX-3", "MX-4"],
            "payload": [
                {"externalId": "MX-1", "name": "Same"},
                {"externalId": "MX-2", "name": "After"},
                {"externalId": "MX-3", "name": "New"},
                {"externalId": "MX-4", "name": "Refused"},
            ],
        },
        index=[10, 11, 12, 13],
    )
    result = deliver(records, COMPANIES, client, batch_size=5000, key_column="external_id")
    rows = result.outcomes
    assert rows.index.tolist() == [10, 11, 12, 13]
    assert rows["status"].tolist() == ["unchanged", "updated", "created", "error"]
    assert rows.loc[13, "error"] == "Invalid thing" and "MX-4" in rows.loc[13, "response"]
    assert result.delivered["key"].tolist() == ["MX-1", "MX-2", "MX-3"]
    assert result.failed["key"].tolist() == ["MX-4"]


def test_an_ignored_enduser_is_not_delivered(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    sandbox.add_companies([{"name": "Acme", "externalId": "IG-CO"}])
    payloads = [
        {"email": "ok@acme.example", "externalId": "IG-1", "companyExternalId": "IG-CO"},
        {"email": "lost@void.example", "externalId": "IG-2", "companyExternalId": "IG-NONE"},
    ]
    records = pd.DataFrame({"external_id": ["IG-1", "IG-2"], "payload": payloads})
    result = deliver(records, ENDUSERS, client, batch_size=2, key_column="external_id")
    assert result.outcomes["status"].tolist() == ["created", "ignored"]
    assert result.outcomes["error"].tolist()[1] == NOT_APPLIED
    assert result.delivered["key"].tolist() == ["IG-1"]


def test_429_and_5xx_are_retried_and_counted_as_attempts(
    sandbox: PlanhatSandbox, client: PlanhatClient, fake_time: FakeTime
) -> None:
    sandbox.rest.faults.add(status=429, retry_after=3, path="^/companies$", method="PUT")
    sandbox.rest.faults.add(status=502, path="^/companies$", method="PUT")
    records = company_records(3, "RT")
    result = deliver(records, COMPANIES, client, batch_size=2, key_column="external_id")
    assert result.outcomes["attempts"].tolist() == [3, 3, 1]
    assert result.outcomes["status"].tolist() == ["created"] * 3
    assert (result.requests, result.attempts) == (2, 4)
    assert fake_time.sleeps == [3, 1.0]  # Retry-After, then exponential backoff


def test_a_failed_batch_is_reported_and_the_next_one_still_goes(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.rest.faults.add(status=500, path="^/companies$", method="PUT", times=4)
    result = deliver(
        company_records(3, "FB"), COMPANIES, client, batch_size=2, key_column="external_id"
    )
    assert result.outcomes["status"].tolist() == ["error", "error", "created"]
    assert "gave up after 4 attempts" in result.outcomes["error"].iloc[0]
    assert result.outcomes["attempts"].tolist() == [4, 4, 1]


def test_401_stops_the_delivery_with_a_clear_message_and_no_token(
    sandbox: PlanhatSandbox, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-token-91ac"
    with (
        make_client(sandbox, fake_time, api_token=wrong) as bad,
        pytest.raises(ApiAuthError) as stopped,
    ):
        deliver(company_records(3, "AU"), COMPANIES, bad, batch_size=2, key_column="external_id")
    assert isinstance(stopped.value, DeliveryStopped)
    message = str(stopped.value)
    assert "401" in message and "region" in message
    partial = stopped.value.result.outcomes
    assert partial["status"].tolist() == ["error"] * 3 and partial["attempts"].isna().tolist()[2]
    assert len(sandbox.rest.recorded()) == 1
    for text in (message, caplog.text, partial.to_json()):
        assert wrong not in text and API_TOKEN not in text


def test_dry_run_sends_nothing_and_shows_the_batches(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    result = deliver(
        company_records(5, "DR"),
        COMPANIES,
        client,
        batch_size=2,
        key_column="external_id",
        dry_run=True,
    )
    assert sandbox.write_count() == 0 and not sandbox.rest.recorded()
    assert [p.records for p in result.planned] == [2, 2, 1]
    assert result.planned[0].body[0] == {"externalId": "DR-0", "name": "Company DR-0"}
    assert set(result.outcomes["status"]) == {"dry_run"} and result.delivered.empty


# -- configured destinations and analytics -------------------------------------------------------
def test_single_record_destination_addresses_records_by_external_id(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.add_companies([{"name": "Before", "externalId": "SR/1"}])
    destination = DestinationSettings(
        name="company_phase",
        method="PUT",
        path="/companies/{external_id}",
        source_sql="select 1",
        exclude=["note"],
        headers={"X-Source": "hull-planhat"},
    )
    target = destination_target(destination)
    assert target.one_record and target.max_batch == 1
    records = pd.DataFrame(
        {
            "external_id": ["SR/1", None, "SR-missing"],
            "phase": ["Renewal", "x", "y"],
            "note": ["a", "b", "c"],
        }
    )
    result = deliver(records, target, client, batch_size=1, key_column="external_id")
    assert result.outcomes["status"].tolist() == ["sent", "error", "error"]
    assert result.outcomes["error"].iloc[1] == "no external id to address the record"
    assert "404" in result.outcomes["error"].iloc[2]
    sent = sandbox.rest.recorded(method="PUT")
    assert [r.path for r in sent] == ["/companies/extid-SR%2F1", "/companies/extid-SR-missing"]
    assert sent[0].body == {"phase": "Renewal"} and sent[0].headers["x-source"] == "hull-planhat"
    stored = next(c for c in sandbox.companies() if c.get("externalId") == "SR/1")
    assert stored["phase"] == "Renewal" and result.outcomes["planhat_id"].iloc[0] == stored["_id"]
    with pytest.raises(ValueError, match="between 1 and 1"):
        deliver(records, target, client, batch_size=2, key_column="external_id")


def test_bulk_put_destination_reads_the_bulk_answer(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.add_companies([{"name": "Home", "externalId": "BP-CO"}])
    destination = DestinationSettings(
        name="people", method="PUT", path="/endusers", source_sql="select 1", batch_size=100
    )
    records = pd.DataFrame(
        {
            "key": ["BP-1", "BP-2"],
            "externalId": ["BP-1", "BP-2"],
            "email": ["a@x.example", "b@x.example"],
            "companyExternalId": ["BP-CO", "BP-CO"],
        }
    )
    result = deliver(
        records,
        destination_target(destination),
        client,
        batch_size=100,
        key_column="key",
    )
    assert result.outcomes["status"].tolist() == ["created", "created"]


def test_activities_are_only_sent_and_metrics_carry_errors(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.add_companies([{"name": "Metrics", "externalId": "AN-CO"}])
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "payload": [
                {"email": f"p{i}@an.example", "companyExternalId": "AN-CO", "action": "Meeting"}
                for i in range(3)
            ],
        }
    )
    sent = deliver(events, ACTIVITIES, client, batch_size=10_000, key_column="event_id")
    assert sent.outcomes["status"].tolist() == ["sent"] * 3
    assert "no per-item outcome" in sent.outcomes["response"].iloc[0]
    metrics = pd.DataFrame(
        {
            "external_id": ["AN-CO", "AN-CO"],
            "payload": [
                {"dimensionId": "open_pipeline_value", "value": 5, "externalId": "AN-CO"},
                {"dimensionId": "open pipeline", "value": 5, "externalId": "AN-CO"},
            ],
        }
    )
    result = deliver(metrics, METRICS, client, batch_size=2, key_column="external_id")
    assert result.outcomes["status"].tolist() == ["sent", "error"]
    assert "dimensionId" in result.outcomes["error"].iloc[1]
    assert TENANT_TOKEN not in result.outcomes.to_json()


def test_an_auth_failure_mid_run_keeps_what_was_delivered(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.add_companies([{"name": n, "externalId": n} for n in ("MR-A", "MR-B", "MR-C")])
    sandbox.rest.faults.add(status=403, path="extid-MR-B$")
    target = configured_target("phase", "PUT", "/companies/{external_id}", payload_column=None)
    records = pd.DataFrame({"external_id": ["MR-A", "MR-B", "MR-C"], "phase": ["P1", "P2", "P3"]})
    with pytest.raises(DeliveryStopped) as stopped:
        deliver(records, target, client, batch_size=1, key_column="external_id")
    rows = stopped.value.result.outcomes
    assert rows["status"].tolist() == ["sent", "error", "error"]
    assert rows["batch"].tolist() == [1, 2, 3] and rows["request"].tolist()[:1] == [1]
    assert stopped.value.result.delivered["key"].tolist() == ["MR-A"]
    assert "403" in str(stopped.value) and "permission" in str(stopped.value)


def test_metrics_processed_short_fail_only_the_tail_and_nothing_lands_twice(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """Case 8: Planhat processed 2 of 5 without naming the rest: the first 2 landed (never
    posted again), the 3 after them are errors, and the retry completes the set once."""
    sandbox.metrics_accept_limit = 2
    metrics = pd.DataFrame(
        {
            "key": [f"M-{i}" for i in range(5)],
            "payload": [
                {"dimensionId": "seats", "value": i, "externalId": f"M-{i}"} for i in range(5)
            ],
        }
    )
    first = deliver(metrics, METRICS, client, batch_size=10, key_column="key")
    assert first.outcomes["status"].tolist() == ["sent"] * 2 + ["error"] * 3
    assert "2 of 5 metrics processed" in first.outcomes["error"].iloc[4]
    sandbox.metrics_accept_limit = None
    retry = metrics[first.outcomes["status"] == "error"]
    again = deliver(retry, METRICS, client, batch_size=10, key_column="key")
    assert again.outcomes["status"].tolist() == ["sent"] * 3
    landed = sorted(d["externalId"] for d in sandbox.dimension_data)
    assert landed == [f"M-{i}" for i in range(5)]


def test_analytics_batches_are_cut_by_size_as_well_as_count(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """Case 9: a count that fits can still be too many bytes: batches stay under the limit."""
    sandbox.add_companies([{"name": "Big", "externalId": "BIG-CO"}])
    events = pd.DataFrame(
        {
            "event_id": [f"big-{i}" for i in range(12)],
            "payload": [
                {
                    "email": "big@big.example",
                    "companyExternalId": "BIG-CO",
                    "action": "Meeting",
                    "info": {"notes": "x" * 1000, "n": i},
                }
                for i in range(12)
            ],
        }
    )
    result = deliver(
        events,
        ACTIVITIES,
        client,
        batch_size=10_000,
        key_column="event_id",
        max_bytes=4_000,
    )
    posts = sandbox.analytics.recorded("POST", r"^/analytics/bulk/")
    assert len(posts) == 4 and [len(p.body) for p in posts] == [3, 3, 3, 3]
    assert all(len(json.dumps(p.body, separators=(",", ":"))) <= 4_000 for p in posts)
    assert result.outcomes["status"].tolist() == ["sent"] * 12
    assert result.outcomes["batch"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert len(sandbox.activities) == 12


def test_an_activity_post_left_unanswered_is_unknown_and_one_attempt(
    sandbox: PlanhatSandbox, fake_time: FakeTime
) -> None:
    """Case 4 (analytics): a read timeout after the post left; the items are ``unknown``
    (never re-posted blindly), and the message counts the one attempt made."""
    sandbox.add_companies([{"name": "Slow", "externalId": "SLOW-CO"}])
    sandbox.analytics.faults.add(status=0, delay=1.0, path="^/analytics/bulk/")
    policy = RetryPolicy(attempts=6, read_timeout=0.2)
    events = pd.DataFrame(
        {
            "event_id": ["slow-1"],
            "payload": [{"email": "s@slow.example", "companyExternalId": "SLOW-CO", "action": "A"}],
        }
    )
    with PlanhatClient(
        sandbox.rest_url,
        sandbox.analytics_url,
        API_TOKEN,
        TENANT_TOKEN,
        requests_per_minute=None,
        policy=policy,
        sleeper=fake_time.sleep,
        clock=fake_time.monotonic,
    ) as slow:
        result = deliver(events, ACTIVITIES, slow, batch_size=10, key_column="event_id")
    row = result.outcomes.iloc[0]
    assert row["status"] == "unknown" and row["attempts"] == 1
    assert "failed after 1 attempt: ReadTimeout" in row["error"]
    assert "it may have been applied" in row["error"]
    assert len(sandbox.analytics.recorded("POST", r"^/analytics/bulk/")) <= 1


def test_a_permission_error_item_is_refused_alone(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.deny_items("companies", lambda item: item.get("externalId") == "PE-2", "No access")
    result = deliver(
        company_records(3, "PE"), COMPANIES, client, batch_size=10, key_column="external_id"
    )
    statuses = dict(zip(result.outcomes["key"], result.outcomes["status"], strict=True))
    assert statuses["PE-2"] == "error" and statuses["PE-0"] == statuses["PE-1"] == "created"
    assert "No access" in result.outcomes.set_index("key").loc["PE-2", "error"]
    assert put_requests(sandbox, client) == [3]


def test_rate_limit_headers_are_sent_when_the_quota_is_on(tenant, fake_time: FakeTime) -> None:
    limited = tenant(rate_limit_per_minute=5)
    with make_client(limited, fake_time) as client:
        client.list_users()
    answer = limited.rest.recorded()[0]
    assert answer.status == 200
    import requests

    headers = requests.get(
        f"{limited.rest_url}/users", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5
    ).headers
    assert headers["X-Rate-Limit-Limit"] == "5"
    assert headers["X-Rate-Limit-Remaining"] == "3"


def test_activities_from_sql_carry_count_and_the_enduser_external_id(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    """Case 9: user activities from configured SQL, with ``count`` and ``euExtId``."""
    import duckdb

    from hull_planhat_pipelines.settings import ActivityQuerySettings
    from hull_planhat_pipelines.sync.planhat.activities import sql_activity_payloads
    from hull_planhat_pipelines.warehouse.planhat_queries import activity_answers

    sandbox.add_companies([{"name": "Usage", "externalId": "USE-CO"}])
    sandbox.add_endusers(
        [{"externalId": "EU-1", "email": "eu1@use.example", "companyExternalId": "USE-CO"}]
    )
    conn = duckdb.connect()
    conn.execute(
        "create table usage as select * from (values "
        "('u1', 'Logged in', 'EU-1', null, 'USE-CO', 3), "
        "('u2', 'Exported', null, 'eu1@use.example', 'USE-CO', 1), "
        "('u3', 'Orphan', null, null, 'USE-CO', 2)) "
        "t(activity_id, action, eu_ext_id, email, company_external_id, count)"
    )
    query = ActivityQuerySettings(name="usage", sql="select * from usage")
    payloads, events = sql_activity_payloads(activity_answers(conn, [query]), None)
    assert payloads["key"].tolist() == ["sql:usage:u1", "sql:usage:u2"]
    assert payloads["payload"].iloc[0] == {
        "action": "Logged in",
        "euExtId": "EU-1",
        "companyExternalId": "USE-CO",
        "count": 3,
    }
    assert "euExtId" not in payloads["payload"].iloc[1]
    assert [e.reason for e in events] == ["No email or eu_ext_id"]
    again, _ = sql_activity_payloads(
        activity_answers(conn, [query]), {"sql:usage:u1", "sql:usage:u2"}
    )
    assert again.empty
    result = deliver(payloads, ACTIVITIES, client, batch_size=100, key_column="key")
    assert result.outcomes["status"].tolist() == ["sent", "sent"]
    landed = {a["action"]: a for a in sandbox.activities}
    assert landed["Logged in"]["count"] == 3
    assert landed["Logged in"]["endUserId"] == landed["Exported"]["endUserId"]
