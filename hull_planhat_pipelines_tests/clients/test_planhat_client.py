"""The Planhat client over real HTTP against the sandbox, plus the pure bulk reconciliation."""

from __future__ import annotations

import logging

import pytest

from hull_planhat_pipelines.clients.http import ApiAuthError, ApiError
from hull_planhat_pipelines.clients.planhat import (
    PlanhatClient,
    external_key,
    render_path,
)
from hull_planhat_pipelines.clients.planhat_outcomes import DELIVERED, NOT_APPLIED, reconcile_bulk
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines_tests.planhat_support import *  # noqa: F403  (fixtures)
from hull_planhat_pipelines_tests.planhat_support import (
    API_TOKEN,
    TENANT_TOKEN,
    FakeTime,
    SandboxFactory,
    companies,
    make_client,
)


def _list_requests(sandbox: PlanhatSandbox, collection: str) -> list[dict[str, str]]:
    return [r.query for r in sandbox.rest.recorded("GET", f"^/{collection}$")]


# -- listing -------------------------------------------------------------------------------------
def test_companies_are_paged_at_the_cap_and_stop_on_a_short_page(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    # (records in the tenant, requests expected): 1, the cap, the cap + 1
    for extra, total, expected_requests in ((0, 1, 1), (4999, 5000, 2), (1, 5001, 2)):
        sandbox.add_companies(companies(extra, prefix=f"R{total}"))
        seen = len(_list_requests(sandbox, "companies"))
        pages = list(client.iter_companies())
        ids = [c["_id"] for page in pages for c in page]
        assert len(ids) == len(set(ids)) == total
        queries = _list_requests(sandbox, "companies")[seen:]
        assert len(queries) == expected_requests
        assert [q["limit"] for q in queries] == ["5000"] * expected_requests
        assert [q["offset"] for q in queries] == [str(5000 * n) for n in range(expected_requests)]


def test_endusers_are_paged_at_2000_from_zero_records(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    company = sandbox.companies()[0]["_id"]
    for extra, total, expected_requests in ((0, 0, 1), (1, 1, 1), (1999, 2000, 2), (1, 2001, 2)):
        start = len(sandbox.endusers())
        sandbox.add_endusers(
            [
                {"email": f"u{i}@example.com", "companyId": company}
                for i in range(start, start + extra)
            ]
        )
        seen = len(_list_requests(sandbox, "endusers"))
        rows = [u for page in client.iter_endusers() for u in page]
        assert len({u["_id"] for u in rows}) == total
        queries = _list_requests(sandbox, "endusers")[seen:]
        assert [(q["limit"], q["offset"]) for q in queries][:1] == [("2000", "0")]
        assert len(queries) == expected_requests


def test_listing_passes_select_and_refuses_a_page_above_the_cap(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    rows = [c for page in client.iter_companies(select=["name", "externalId"]) for c in page]
    assert set(rows[0]) <= {"_id", "name", "externalId"}
    assert _list_requests(sandbox, "companies")[0]["select"] == "name,externalId"
    with pytest.raises(ValueError, match=r"1\.\.2000"):
        next(client.iter_endusers(page_size=2001))


def test_users_are_listed_and_fetched(client: PlanhatClient, sandbox: PlanhatSandbox) -> None:
    users = client.list_users()
    assert {u["_id"] for u in users} == {u["_id"] for u in sandbox.users()}
    assert client.get_user(users[0]["_id"])["email"] == users[0]["email"]
    assert client.get_user("0" * 24) is None


def test_records_are_addressed_by_external_id(
    client: PlanhatClient, sandbox: PlanhatSandbox
) -> None:
    sandbox.add_companies([{"name": "Odd", "externalId": "A/1 b?c"}])
    company = client.get_company(external_key("A/1 b?c"))
    assert company is not None and company["name"] == "Odd"
    assert client.get_company(external_key("missing")) is None
    assert render_path("/companies/{external_id}", "A/1") == "/companies/extid-A%2F1"
    with pytest.raises(ValueError):
        external_key(" ")


def test_user_writes_surface_planhat_status_and_message(client: PlanhatClient) -> None:
    body = {"email": "new@team.example.com", "nickName": "N", "firstName": "N", "lastName": "M"}
    created = client.create_user(body)
    assert client.update_user(created["_id"], {"nickName": "Nico"})["nickName"] == "Nico"
    with pytest.raises(ApiError) as refused:
        client.create_user({"email": "x@team.example.com"})
    assert refused.value.status == 400 and "missing required fields" in str(refused.value.body)
    with pytest.raises(ApiError) as unknown:
        client.update_user("0" * 24, {"nickName": "x"})
    assert unknown.value.status == 404


# -- auth ----------------------------------------------------------------------------------------
def test_a_wrong_token_says_check_the_region_and_never_shows_a_token(
    sandbox: PlanhatSandbox, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-token-5b3c9d1e7f"
    caplog.set_level(logging.DEBUG)
    with make_client(sandbox, fake_time, api_token=wrong, tenant_token="bad-tenant-77") as bad:
        with pytest.raises(ApiAuthError) as rest:
            list(bad.iter_companies())
        with pytest.raises(ApiAuthError) as analytics:
            bad.dimension_data([{"dimensionId": "x", "value": 1, "externalId": "A"}])
    assert rest.value.status == 401 and "region" in str(rest.value)
    assert "tenant token" in str(analytics.value)
    assert len(sandbox.rest.recorded()) == 1  # an auth failure is never retried
    text = " ".join([str(rest.value), str(analytics.value), caplog.text])
    for secret in (wrong, "bad-tenant-77", API_TOKEN, TENANT_TOKEN):
        assert secret not in text
    assert "***" in caplog.text  # urllib3's request line had the tenant token: redacted


# -- retries -------------------------------------------------------------------------------------
def test_429_with_retry_after_is_honoured(
    sandbox: PlanhatSandbox, client: PlanhatClient, fake_time: FakeTime
) -> None:
    sandbox.rest.faults.add(status=429, retry_after=7, path="^/companies$")
    assert sum(len(p) for p in client.iter_companies()) == len(sandbox.companies())
    assert fake_time.sleeps == [7]
    assert [r.status for r in sandbox.rest.recorded()] == [429, 200]


def test_429_without_retry_after_and_5xx_back_off_exponentially(
    sandbox: PlanhatSandbox, client: PlanhatClient, fake_time: FakeTime
) -> None:
    sandbox.rest.faults.add(status=429, path="^/users$", times=2)
    sandbox.rest.faults.add(status=503, path="^/users$", times=1)
    assert len(client.list_users()) == len(sandbox.users())
    assert fake_time.sleeps == [0.5, 1.0, 2.0]  # exponential from the first retry
    assert client.rest.stats.retries == 3


def test_5xx_gives_up_after_the_policy_attempts(
    sandbox: PlanhatSandbox, client: PlanhatClient, fake_time: FakeTime
) -> None:
    sandbox.rest.faults.add(status=500, path="^/users$", times=10)
    with pytest.raises(ApiError, match="gave up after 4 attempts") as failed:
        client.list_users()
    assert failed.value.status == 500
    assert max(fake_time.sleeps) <= 8.0


def test_the_sandbox_rate_limit_is_waited_out(tenant: SandboxFactory, fake_time: FakeTime) -> None:
    """The sandbox answers 429 + Retry-After past 3 calls a minute; the retry waits it out."""
    limited = tenant(rate_limit_per_minute=3, rate_limit_retry_after=True)
    with make_client(limited, fake_time) as planhat:
        for _ in range(4):
            assert planhat.get_user(limited.users()[0]["_id"]) is not None
        statuses = [r.status for r in limited.rest.recorded()]
        assert statuses == [200, 200, 200, 429, 200]
        assert len(fake_time.sleeps) == 1 and 55 <= fake_time.sleeps[0] <= 62


def test_the_client_throttle_keeps_under_the_rate_limit(
    tenant: SandboxFactory, fake_time: FakeTime
) -> None:
    limited = tenant(rate_limit_per_minute=3)
    with make_client(limited, fake_time, requests_per_minute=3) as planhat:
        for _ in range(7):
            planhat.list_users()
        assert {r.status for r in limited.rest.recorded()} == {200}
        assert len(fake_time.sleeps) == 2


# -- bulk upserts --------------------------------------------------------------------------------
def test_a_mixed_bulk_answer_becomes_one_outcome_per_item(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    sandbox.add_companies(
        [{"name": "Kept", "externalId": "K-1"}, {"name": "Old name", "externalId": "K-2"}]
    )
    sandbox.fail_items("companies", lambda item: item.get("externalId") == "K-4", "boom")
    items = [
        {"externalId": "K-1", "name": "Kept"},  # unchanged
        {"externalId": "K-2", "name": "New name"},  # updated
        {"externalId": "K-3", "name": "Fresh"},  # created
        {"externalId": "K-4", "name": "Fails"},  # injected error
        {"externalId": "K-5", "name": "Bad", "status": "nonsense"},  # refused by validation
    ]
    result = client.bulk_upsert("companies", items)
    assert result.http_status == 206 and result.reconciled
    statuses = [(o.index, o.status) for o in result.outcomes]
    assert statuses == [
        (0, "unchanged"),
        (1, "updated"),
        (2, "created"),
        (3, "error"),
        (4, "error"),
    ]
    assert result.outcomes[3].error == "boom"
    assert "status must be" in (result.outcomes[4].error or "")
    assert result.outcomes[2].key == next(
        c["_id"] for c in sandbox.companies() if c.get("externalId") == "K-3"
    )


def test_an_enduser_tied_to_no_company_is_ignored_not_delivered(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    company = sandbox.add_companies([{"name": "Home", "externalId": "HOME"}])[0]
    items = [
        {"email": "a@home.example", "externalId": "U-1", "companyExternalId": "HOME"},
        {"email": "b@nowhere.example", "externalId": "U-2", "companyExternalId": "NOPE"},
        {"email": "c@nowhere.example", "externalId": "U-3"},
    ]
    result = client.bulk_upsert("endusers", items)
    assert result.http_status == 200 and not result.reconciled
    assert [o.status for o in result.outcomes] == ["created", "ignored", "ignored"]
    assert result.outcomes[1].error == NOT_APPLIED and not result.outcomes[1].delivered
    stored = [
        e for e in sandbox.endusers() if e["email"].endswith(("home.example", "nowhere.example"))
    ]
    assert [e["companyId"] for e in stored] == [company["_id"]]


def test_bulk_refuses_more_than_5000_items_before_sending(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    with pytest.raises(ValueError, match="at most 5000"):
        client.bulk_upsert("companies", companies(5001))
    assert client.bulk_upsert("companies", []).outcomes == ()
    assert sandbox.write_count() == 0


def test_dimension_data_and_activities(sandbox: PlanhatSandbox, client: PlanhatClient) -> None:
    sandbox.add_companies([{"name": "M", "externalId": "M-1"}])
    metrics = client.dimension_data(
        [
            {"dimensionId": "open_pipeline_value", "value": 10, "externalId": "M-1"},
            {"value": 3, "externalId": "M-1"},
        ]
    )
    assert (metrics.processed, metrics.errors) == (1, 1)
    assert [o.status for o in metrics.outcomes] == ["sent", "error"]
    assert metrics.outcomes[1].error == "dimensionId must be specified"
    assert sandbox.analytics.recorded()[0].headers["authorization"] == f"Bearer {API_TOKEN}"
    activities = client.bulk_activities(
        [{"email": "x@m.example", "companyExternalId": "M-1", "action": "Meeting"}]
    )
    assert [o.status for o in activities.outcomes] == ["sent"]
    assert "authorization" not in sandbox.analytics.recorded()[1].headers
    assert sandbox.activities[-1]["action"] == "Meeting"


def test_send_refuses_other_hosts_and_reserved_headers(client: PlanhatClient) -> None:
    with pytest.raises(ValueError):
        client.send("PUT", "https://elsewhere.example/x", {})
    with pytest.raises(ValueError):
        client.send("POST", "/conversations", {}, {"Authorization": "x"})
    with pytest.raises(ValueError):
        client.send("DELETE", "/companies/1", {})


# -- reconciliation (pure) -----------------------------------------------------------------------
def test_errors_tie_to_items_by_keys_then_company() -> None:
    items = [
        {"externalId": "E", "companyId": "c1", "email": "a@x"},
        {"externalId": "E", "companyId": "c2", "email": "a@x"},
    ]
    body = {
        "created": 1,
        "insertsKeys": [{"_id": "n1"}],
        "createdErrors": [{"item": {"externalId": "E", "companyId": "c2"}, "error": "dup"}],
    }
    outcomes, counts = reconcile_bulk(items, body, 206)
    assert [(o.status, o.error) for o in outcomes] == [("created", None), ("error", "dup")]
    assert counts == {"created": 1, "updated": 0, "nonupdates": 0, "errors": 1}


def test_counts_that_cover_unnamed_items_only_as_a_whole_say_sent() -> None:
    items = [{"externalId": "A"}, {"externalId": "B"}]
    body = {
        "created": 1,
        "insertsKeys": [{"_id": "n1"}],
        "updated": 1,
        "updatesKeys": [{"_id": "o"}],
    }
    outcomes, _ = reconcile_bulk(items, body, 200)
    assert [o.status for o in outcomes] == ["sent", "sent"]


def test_an_error_tied_to_no_item_puts_the_unnamed_items_in_doubt() -> None:
    items = [{"externalId": "A"}, {"externalId": "B"}]
    body = {"created": 1, "insertsKeys": [{"_id": "n1"}], "createdErrors": ["something failed"]}
    outcomes, _ = reconcile_bulk(items, body, 206)
    assert {o.status for o in outcomes} == {"error"}
    assert "something failed" in (outcomes[0].error or "")


def test_fewer_applied_than_unnamed_items_delivers_none_of_them() -> None:
    items = [{"email": "a@x"}, {"email": "b@x"}, {"email": "c@x"}]
    body = {"created": 2, "insertsKeys": [{"_id": "1"}, {"_id": "2"}]}
    outcomes, _ = reconcile_bulk(items, body, 200)
    # Which two landed is unknown: none is delivered; the next snapshot settles each.
    assert {o.status for o in outcomes} == {"unconfirmed"}
    assert not any(o.status in DELIVERED for o in outcomes)


def test_a_400_without_error_lists_fails_every_item() -> None:
    outcomes, _ = reconcile_bulk([{"externalId": "A"}, {}], {"error": "bad payload"}, 400)
    assert [o.status for o in outcomes] == ["error", "error"]
    assert outcomes[0].error == "Planhat refused the batch (400): bad payload"


def test_update_keys_that_include_unchanged_items_are_split_by_modified() -> None:
    items = [{"_id": "a"}, {"_id": "b"}, {"_id": "c"}]
    body = {
        "updated": 1,
        "nonupdates": 2,
        "updatesKeys": [{"_id": "a"}, {"_id": "b"}, {"_id": "c"}],
        "modified": ["b"],
    }
    outcomes, _ = reconcile_bulk(items, body, 200)
    assert [o.status for o in outcomes] == ["unchanged", "updated", "unchanged"]


def test_an_explicit_index_and_an_echoed_item_win_over_keys() -> None:
    items = [{"externalId": "A", "name": "x"}, {"externalId": "A", "name": "y"}]
    body = {
        "createdErrors": [
            {"index": 1, "error": "first"},
            {"item": {"externalId": "A", "name": "x"}, "error": "second"},
        ]
    }
    outcomes, _ = reconcile_bulk(items, body, 400)
    assert [o.error for o in outcomes] == ["second", "first"]


def test_an_error_that_fits_two_items_fails_both() -> None:
    items = [{"externalId": "A", "name": "x"}, {"externalId": "A", "name": "y"}]
    body = {
        "created": 1,
        "insertsKeys": [{"_id": "n1"}],
        "createdErrors": [{"item": {"externalId": "A"}, "error": "dup"}],
    }
    outcomes, _ = reconcile_bulk(items, body, 206)
    assert [o.status for o in outcomes] == ["error", "error"]
    assert "fits 2 items" in (outcomes[0].error or "")


def test_a_post_that_may_have_created_something_is_not_resent_after_a_5xx(
    sandbox: PlanhatSandbox, client: PlanhatClient
) -> None:
    sandbox.rest.faults.add(status=500, method="POST", path="^/users$", times=1)
    body = {"email": "new@example.com", "nickName": "n", "firstName": "N", "lastName": "U"}
    with pytest.raises(ApiError):
        client.create_user(body)
    assert len(sandbox.rest.recorded("POST", "^/users$")) == 1
    sandbox.rest.faults.add(status=429, method="POST", path="^/users$", times=1)
    assert client.create_user(body)["email"] == "new@example.com"
    assert [r.status for r in sandbox.rest.recorded("POST", "^/users$")] == [500, 429, 200]
