"""The Planhat emulator keeps the real API's rules, checked over real HTTP with plain requests."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.sandbox.server import Fault
from hull_planhat_pipelines_tests.fake_time import ManualClock

BULK_KEYS = [
    "created",
    "createdErrors",
    "insertsKeys",
    "updated",
    "updatedErrors",
    "updatesKeys",
    "nonupdates",
    "modified",
    "upsertedIds",
    "permissionErrors",
]
Factory = Callable[..., PlanhatSandbox]


class Api:
    """A tiny authenticated caller of one sandbox's REST API."""

    def __init__(self, sandbox: PlanhatSandbox) -> None:
        self.sandbox = sandbox
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {sandbox.api_token}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.sandbox.rest_url + path, params=params, timeout=10)

    def put(self, path: str, body: Any) -> requests.Response:
        return self.session.put(self.sandbox.rest_url + path, json=body, timeout=30)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.session.post(self.sandbox.rest_url + path, json=body, timeout=10)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.sandbox.rest_url + path, timeout=10)


@pytest.fixture
def api(planhat_sandbox: PlanhatSandbox) -> Api:
    return Api(planhat_sandbox)


def _company(sandbox: PlanhatSandbox, **has: Any) -> dict[str, Any]:
    """A seeded company with the given fields set (``True``: any non-empty value)."""
    for company in sandbox.companies():
        if all(
            (company.get(k) not in (None, "")) if v is True else company.get(k) == v
            for k, v in has.items()
        ):
            return company
    raise AssertionError(f"no seeded company with {has}")


# -- auth ------------------------------------------------------------------------------------
def test_bearer_and_basic_token_auth(planhat_sandbox: PlanhatSandbox) -> None:
    url, token = planhat_sandbox.rest_url + "/users", planhat_sandbox.api_token
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert requests.get(url, auth=(token, "")).status_code == 200
    for refused in (
        requests.get(url),
        requests.get(url, headers={"Authorization": "Bearer wrong"}),
        requests.get(url, auth=(token, "password")),
        requests.get(url, headers={"Authorization": token}),
    ):
        assert refused.status_code == 401
        assert "error" in refused.json()
        assert token not in refused.text


def test_the_cpu_its_handlers_spend_is_counted(api: Api) -> None:
    """Benchmarks that run the sandbox in their own process report it beside their time."""
    server = api.sandbox.rest
    before = server.cpu_seconds
    for _ in range(20):
        assert api.get("/endusers", limit=2000).status_code == 200
    assert server.cpu_seconds > before


# -- listing ---------------------------------------------------------------------------------
def test_listing_pages_until_a_short_page_without_repeats(api: Api) -> None:
    expected = {e["_id"] for e in api.sandbox.endusers()}
    seen: list[str] = []
    offset = 0
    while True:
        page = api.get("/endusers", limit=30, offset=offset).json()
        seen += [e["_id"] for e in page]
        if len(page) < 30:
            break
        offset += 30
    assert len(seen) == len(set(seen)) and set(seen) == expected
    assert api.get("/endusers", limit=30, offset=10_000).json() == []


def test_limit_is_silently_capped_and_defaults_to_100(planhat_sandbox_factory: Factory) -> None:
    sandbox = planhat_sandbox_factory(scale=0.01)
    api = Api(sandbox)
    sandbox.add_companies([{"name": f"Co {i}"} for i in range(5_200)])
    company_id = sandbox.companies()[0]["_id"]
    sandbox.add_endusers(
        [{"email": f"u{i}@x.example", "companyId": company_id} for i in range(2_100)]
    )
    total_companies = len(sandbox.companies())
    assert len(api.get("/companies", limit=10_000).json()) == 5_000
    assert len(api.get("/companies", limit=10_000, offset=5_000).json()) == total_companies - 5_000
    assert len(api.get("/endusers", limit=5_000).json()) == 2_000
    assert len(api.get("/companies").json()) == 100
    assert len(api.get("/companies", limit=0).json()) == 5_000
    assert api.get("/companies", limit="ten").status_code == 400
    sandbox.set_list_limit("users", 2)
    assert len(api.get("/users", limit=10).json()) == 2


def test_sort_descending_with_id_tie_break(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    added = planhat_sandbox.add_companies([{"name": "Zzz Same"}, {"name": "Zzz Same"}])
    top = api.get("/companies", sort="-name", limit=2, select="name").json()
    assert top == [{"_id": i, "name": "Zzz Same"} for i in sorted(c["_id"] for c in added)]
    ascending = [r["name"] for r in api.get("/companies", sort="name", limit=1000).json()]
    assert ascending == sorted(ascending)


def test_a_page_ending_exactly_at_the_total_is_followed_by_an_empty_one(
    planhat_sandbox_factory: Factory,
) -> None:
    sandbox = planhat_sandbox_factory(scale=0.01)
    sandbox.add_companies([{"name": f"Co {i}"} for i in range(20 - len(sandbox.companies()))])
    api = Api(sandbox)
    sizes = [len(api.get("/companies", limit=10, offset=o).json()) for o in (0, 10, 20)]
    assert sizes == [10, 10, 0]


def test_company_list_leaves_fields_out_unless_selected(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    company = _company(planhat_sandbox, externalId=True, owner=True)
    listed = {c["_id"]: c for c in api.get("/companies", limit=5000).json()}[company["_id"]]
    assert not {"custom", "externalId", "phase"} & listed.keys()
    assert listed["owner"] == {
        "_id": company["owner"],
        "nickName": next(
            u["nickName"] for u in planhat_sandbox.users() if u["_id"] == company["owner"]
        ),
    }
    selected = {
        c["_id"]: c for c in api.get("/companies", limit=5000, select="externalId, custom").json()
    }
    assert selected[company["_id"]] == {
        "_id": company["_id"],
        "externalId": company["externalId"],
        "custom": company["custom"],
    }
    one = api.get(f"/companies/{company['_id']}").json()
    assert one["owner"] == company["owner"] and one["custom"] == company["custom"]


def test_archived_endusers_are_hidden_from_listings_only(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    archived = [e for e in planhat_sandbox.endusers(include_archived=True) if e["archived"]]
    assert archived, "the seed archives a few endusers"
    listed = {e["_id"] for e in api.get("/endusers", limit=2000).json()}
    assert not listed & {e["_id"] for e in archived}
    assert api.get(f"/endusers/{archived[0]['_id']}").json()["archived"] is True


def test_enduser_filters_and_lean_companies(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(planhat_sandbox, externalId=True)
    mine = {e["_id"] for e in planhat_sandbox.endusers() if e["companyId"] == company["_id"]}
    by_company = api.get("/endusers", companyId=company["_id"], limit=2000).json()
    assert {e["_id"] for e in by_company} == mine
    lean = api.get("/leancompanies").json()
    assert len(lean) == len(planhat_sandbox.companies())
    assert set().union(*(row.keys() for row in lean)) <= {
        "_id",
        "name",
        "externalId",
        "sourceId",
        "slug",
    }
    assert [
        r["_id"] for r in api.get("/leancompanies", externalId=company["externalId"]).json()
    ] == [company["_id"]]
    assert api.get("/leancompanies", externalId="nope").json() == []


# -- one record ------------------------------------------------------------------------------
def test_extid_and_srcid_addressing(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(planhat_sandbox, externalId=True, sourceId=True)
    for ref in (company["_id"], f"extid-{company['externalId']}", f"srcid-{company['sourceId']}"):
        assert api.get(f"/companies/{ref}").json()["_id"] == company["_id"]
    enduser = next(e for e in planhat_sandbox.endusers() if e.get("externalId"))
    assert api.get(f"/endusers/extid-{enduser['externalId']}").json()["_id"] == enduser["_id"]
    for missing in (
        "/companies/extid-nope",
        "/companies/000000000000000000000000",
        "/endusers/srcid-x",
    ):
        response = api.get(missing)
        assert response.status_code == 404 and "error" in response.json()


def test_partial_put_merges_custom_and_bumps_updated_at(planhat_sandbox_factory: Factory) -> None:
    clock = ManualClock()
    sandbox = planhat_sandbox_factory(clock=clock)
    api = Api(sandbox)
    company = _company(sandbox, externalId=True)
    clock.advance(60)
    updated = api.put(
        f"/companies/extid-{company['externalId']}", {"custom": {"Tier": "Gold"}}
    ).json()
    assert updated["custom"] == {**company["custom"], "Tier": "Gold"}
    assert updated["name"] == company["name"] and updated["owner"] == company["owner"]
    assert updated["updatedAt"] == "2026-03-01T12:01:00.000Z"
    clock.advance(60)
    again = api.put(f"/companies/{company['_id']}", {"custom": {"Tier": "Gold"}}).json()
    assert again["updatedAt"] == "2026-03-01T12:02:00.000Z", "a write changing nothing still bumps"
    assert api.put("/companies/extid-nope", {"name": "x"}).status_code == 404
    assert api.put(f"/companies/{company['_id']}", {"owner": "not-a-user"}).status_code == 400


def test_single_creates_and_deletes(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    assert api.post("/companies", {"externalId": "no-name"}).status_code == 400
    created = api.post("/companies", {"name": "Fresh Co", "externalId": "FRESH"}).json()
    assert len(created["_id"]) == 24 and created["createdAt"].endswith("Z")
    enduser = api.post("/endusers", {"email": "a@fresh.example", "companyId": "extid-FRESH"}).json()
    assert enduser["companyId"] == created["_id"] and enduser["companyName"] == "Fresh Co"
    assert api.post("/endusers", {"email": "b@fresh.example"}).status_code == 400
    assert api.delete(f"/companies/{created['_id']}").json() == {"n": 1, "ok": 1, "deletedCount": 1}
    assert api.get(f"/endusers/{enduser['_id']}").status_code == 404
    assert api.delete(f"/companies/{created['_id']}").status_code == 404


def test_users_require_four_fields(api: Api) -> None:
    response = api.post("/users", {"email": "new@team.example", "firstName": "N"})
    assert response.status_code == 400
    assert "nickName" in response.json()["error"] and "lastName" in response.json()["error"]
    user = api.post(
        "/users", {"email": "new@team.example", "nickName": "N", "firstName": "N", "lastName": "L"}
    ).json()
    assert api.put(f"/users/{user['_id']}", {"inactive": True}).json()["inactive"] is True
    assert api.get(f"/users/{user['_id']}").json()["email"] == "new@team.example"


# -- bulk upsert -----------------------------------------------------------------------------
def test_bulk_of_nothing_and_of_one(api: Api) -> None:
    empty = api.put("/companies", [])
    assert empty.status_code == 200 and list(empty.json()) == BULK_KEYS
    assert empty.json()["created"] == 0
    one = api.put("/companies", [{"name": "Solo", "externalId": "SOLO"}]).json()
    # Planhat's documented key entries hold only the _id.
    assert one["created"] == 1 and one["insertsKeys"] == [{"_id": one["upsertedIds"][0]}]
    assert api.put("/companies", {"name": "not an array"}).status_code == 400


def test_bulk_key_entries_name_external_ids_only_when_asked(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    planhat_sandbox.bulk_keys = "full"
    one = api.put("/companies", [{"name": "Solo", "externalId": "SOLO"}]).json()
    assert one["insertsKeys"] == [{"_id": one["upsertedIds"][0], "externalId": "SOLO"}]


def test_bulk_of_5000_applies_and_5001_is_refused(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    """Behaviour only: its speed is measured by benchmarks/planhat_bulk_upsert.py."""
    before = len(planhat_sandbox.companies())
    response = api.put(
        "/companies", [{"name": f"Bulk {i}", "externalId": f"B{i}"} for i in range(5_000)]
    )
    assert response.status_code == 200 and response.json()["created"] == 5_000
    refused = api.put("/companies", [{"name": f"Over {i}"} for i in range(5_001)])
    assert refused.status_code == 400 and "error" in refused.json()
    assert len(planhat_sandbox.companies()) == before + 5_000


def test_mixed_bulk_answers_206_with_every_outcome(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    planhat_sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    company = _company(planhat_sandbox, externalId=True)
    owner = planhat_sandbox.users()[0]["_id"]
    items: list[Any] = [
        {"name": "Brand New", "externalId": "NEW-1", "owner": owner},
        {"externalId": company["externalId"], "phase": "Changed phase"},
        {"externalId": "NEW-2", "name": "Bad Owner", "owner": "123"},
        {"externalId": company["externalId"], "coOwner": "nope"},
        "not an object",
        {"externalId": "NEW-3"},
    ]
    response = api.put("/companies", items)
    body = response.json()
    assert response.status_code == 206 and list(body) == BULK_KEYS
    assert (body["created"], body["updated"], body["nonupdates"]) == (1, 1, 0)
    assert [e["item"] for e in body["createdErrors"]] == [items[2], items[4], items[5]]
    assert "Invalid owner id" in body["createdErrors"][0]["error"]
    assert [e["item"] for e in body["updatedErrors"]] == [items[3]]
    assert "Invalid coOwner id" in body["updatedErrors"][0]["error"]
    assert body["modified"] == [company["_id"]]
    assert [k["_id"] for k in body["updatesKeys"]] == [company["_id"]]
    assert body["updatesKeys"][0]["externalId"] == company["externalId"]
    assert body["permissionErrors"] == []
    all_failed = api.put("/companies", [items[2], items[4]])
    assert all_failed.status_code == 400 and len(all_failed.json()["createdErrors"]) == 2


def test_no_op_bulk_write_counts_as_nonupdate_and_still_bumps(
    planhat_sandbox_factory: Factory,
) -> None:
    clock = ManualClock()
    sandbox = planhat_sandbox_factory(clock=clock)
    api = Api(sandbox)
    company = _company(sandbox, externalId=True)
    clock.advance(5)
    body = api.put(
        "/companies", [{"externalId": company["externalId"], "name": company["name"]}]
    ).json()
    assert (body["updated"], body["nonupdates"], body["modified"]) == (0, 1, [])
    assert body["updatesKeys"][0]["_id"] == company["_id"]
    stored = next(c for c in sandbox.companies() if c["_id"] == company["_id"])
    assert stored["updatedAt"] == stored["lastUpdated"] == "2026-03-01T12:00:05.000Z"
    assert {k: v for k, v in stored.items() if k not in ("updatedAt", "lastUpdated")} == {
        k: v for k, v in company.items() if k not in ("updatedAt", "lastUpdated")
    }


def test_keyable_precedence(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    a = _company(planhat_sandbox, sourceId=True)
    b = next(c for c in planhat_sandbox.companies() if c.get("externalId") and c["_id"] != a["_id"])
    body = api.put(
        "/companies",
        [
            {"sourceId": a["sourceId"], "externalId": "A-NEW-EXT", "phase": "by sourceId"},
            {"sourceId": "unknown-src", "externalId": b["externalId"], "phase": "by externalId"},
            {"_id": "0123456789abcdef01234567", "name": "unknown _id"},
        ],
    ).json()
    assert body["modified"] == [a["_id"], b["_id"]]
    assert "_id" in body["createdErrors"][0]["error"]
    stored = {c["_id"]: c for c in planhat_sandbox.companies()}
    assert stored[a["_id"]]["externalId"] == "A-NEW-EXT"
    assert stored[b["_id"]]["sourceId"] == "unknown-src"
    conflict = api.put("/companies", [{"_id": a["_id"], "externalId": b["externalId"]}]).json()
    assert conflict["updatedErrors"] and conflict["updated"] == 0


def test_enduser_email_is_a_keyable_only_when_unique(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    company = _company(planhat_sandbox, externalId=True)
    cid = company["_id"]
    api.put("/endusers", [{"email": "solo@x.example", "companyId": cid}])
    body = api.put("/endusers", [{"email": "solo@x.example", "position": "CTO"}]).json()
    assert body["updated"] == 1
    other = next(c for c in planhat_sandbox.companies() if c["_id"] != cid)
    both = [{"email": "twice@x.example", "companyId": c} for c in (cid, other["_id"])]
    assert api.put("/endusers", both).json()["created"] == 2, "emails may repeat across companies"
    ambiguous = api.put("/endusers", [{"email": "twice@x.example", "position": "CEO"}])
    assert not any(ambiguous.json().values()), "no keyable, no company: silently ignored"
    scoped = api.put(
        "/endusers", [{"email": "twice@x.example", "companyId": cid, "position": "CEO"}]
    )
    assert scoped.json()["updated"] == 1, "the item's company narrows the email match"
    duplicated = api.put("/endusers", [{"email": "dup@x.example", "companyId": cid}] * 2).json()
    assert duplicated["created"] == 1 and "duplicated" in duplicated["createdErrors"][0]["error"]


def test_enduser_without_a_company_is_silently_ignored(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    before = len(planhat_sandbox.endusers(include_archived=True))
    response = api.put(
        "/endusers",
        [
            {"email": "ghost@nowhere.example", "externalId": "GHOST"},
            {"email": "ghost2@x.example", "companyId": "extid-no-such-company"},
            {"email": "ghost3@x.example", "companyExternalId": "no-such-company"},
        ],
    )
    assert response.status_code == 200
    assert {k: v for k, v in response.json().items() if v} == {}
    assert len(planhat_sandbox.endusers(include_archived=True)) == before


def test_enduser_company_by_extid_external_id_or_email_domain(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    company = _company(planhat_sandbox, externalId=True)
    domain = company["domains"][0]
    body = api.put(
        "/endusers",
        [
            {
                "email": f"one@{domain}",
                "companyId": f"extid-{company['externalId']}",
                "firstName": "ada",
                "lastName": "lovelace",
            },
            {"email": f"two@{domain}", "companyExternalId": company["externalId"]},
            {"email": f"three@{domain}"},
        ],
    ).json()
    assert body["created"] == 3
    stored = {e["email"]: e for e in planhat_sandbox.endusers()}
    assert {stored[f"{n}@{domain}"]["companyId"] for n in ("one", "two", "three")} == {
        company["_id"]
    }
    assert stored[f"one@{domain}"]["name"] == "Ada Lovelace", "Planhat recases names"


def test_enduser_external_id_is_unique_per_company(
    planhat_sandbox: PlanhatSandbox, api: Api
) -> None:
    first, second = planhat_sandbox.companies()[:2]
    body = api.put(
        "/endusers",
        [
            {"externalId": "SAME", "email": "a@x.example", "companyId": first["_id"]},
            {"externalId": "SAME", "email": "b@x.example", "companyId": second["_id"]},
            {"externalId": "SAME", "email": "c@x.example", "companyId": first["_id"]},
        ],
    )
    assert body.status_code == 206
    assert body.json()["created"] == 2
    assert "duplicated" in body.json()["createdErrors"][0]["error"]


def test_fail_items_injects_per_item_errors(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    planhat_sandbox.fail_items(
        "companies", lambda item: item.get("name") == "Doomed", "boom", times=1
    )
    body = api.put("/companies", [{"name": "Doomed"}, {"name": "Fine"}]).json()
    assert body["created"] == 1 and body["createdErrors"] == [
        {"item": {"name": "Doomed"}, "error": "boom"}
    ]
    assert api.put("/companies", [{"name": "Doomed"}]).json()["created"] == 1


# -- analytics -------------------------------------------------------------------------------
def test_activities_need_only_the_tenant_and_drop_strangers(
    planhat_sandbox: PlanhatSandbox,
) -> None:
    base, tenant = planhat_sandbox.analytics_url, planhat_sandbox.tenant_token
    enduser = planhat_sandbox.endusers()[0]
    company = _company(planhat_sandbox, externalId=True)
    single = requests.post(
        f"{base}/analytics/{tenant}", json={"email": enduser["email"], "action": "Login"}
    )
    assert single.status_code == 200 and single.content == b""
    bulk = requests.post(
        f"{base}/analytics/bulk/{tenant}",
        json=[
            {"email": "stranger@nowhere.example", "action": "Dropped"},
            {
                "externalId": "NEW-PERSON",
                "companyExternalId": company["externalId"],
                "action": "Meeting",
            },
            {"action": "no identity"},
            "garbage",
        ],
    )
    assert bulk.status_code == 200 and bulk.content == b""
    assert [a["action"] for a in planhat_sandbox.activities] == ["Login", "Meeting"]
    assert planhat_sandbox.activities[0]["endUserId"] == enduser["_id"]
    assert any(e.get("externalId") == "NEW-PERSON" for e in planhat_sandbox.endusers())
    assert requests.post(f"{base}/analytics/wrong-tenant", json={}).status_code == 401


def test_dimension_data_counts_accepted_items_and_needs_the_token(
    planhat_sandbox: PlanhatSandbox,
) -> None:
    url = f"{planhat_sandbox.analytics_url}/dimensiondata/{planhat_sandbox.tenant_token}"
    items = [
        {"dimensionId": "open_pipeline", "value": 12.5, "externalId": "ACC-00001"},
        {"value": 1, "externalId": "ACC-00001"},
        {"dimensionId": "has space", "value": 1, "externalId": "x"},
        {"dimensionId": "ok", "value": "1", "externalId": "x"},
        {"dimensionId": "ok", "value": 1},
    ]
    assert requests.post(url, json=items).status_code == 401
    auth = {"Authorization": f"Bearer {planhat_sandbox.api_token}"}
    body = requests.post(url, json=items, headers=auth).json()
    assert body["processed"] == 1 and [e["item"] for e in body["errors"]] == items[1:]
    assert body["errors"][0]["error"] == "dimensionId must be specified"
    single = requests.post(url, json=items[0], headers=auth).json()
    assert single == {"processed": 1, "errors": []}
    assert len(planhat_sandbox.dimension_data) == 2


def test_analytics_bodies_above_32_mb_are_refused(planhat_sandbox: PlanhatSandbox) -> None:
    url = f"{planhat_sandbox.analytics_url}/analytics/bulk/{planhat_sandbox.tenant_token}"
    huge = b'"' + b"x" * (32 * 1024 * 1024) + b'"'
    response = requests.post(url, data=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


# -- rate limit, faults, counters, determinism -----------------------------------------------
@pytest.mark.parametrize("retry_after", [False, True])
def test_rate_limit_answers_429(planhat_sandbox_factory: Factory, retry_after: bool) -> None:
    clock = ManualClock()
    sandbox = planhat_sandbox_factory(
        rate_limit_per_minute=2, rate_limit_retry_after=retry_after, clock=clock
    )
    api = Api(sandbox)
    assert [api.get("/users").status_code for _ in range(3)] == [200, 200, 429]
    assert ("Retry-After" in api.get("/users").headers) is retry_after
    clock.advance(61)
    assert api.get("/users").status_code == 200


def test_faults_and_write_count(planhat_sandbox: PlanhatSandbox, api: Api) -> None:
    planhat_sandbox.rest.faults.add(Fault(status=503, path="^/companies$", method="PUT"))
    assert api.put("/companies", []).status_code == 503
    assert api.put("/companies", []).status_code == 200
    requests.post(
        f"{planhat_sandbox.analytics_url}/analytics/{planhat_sandbox.tenant_token}", json={}
    )
    api.get("/companies")
    assert planhat_sandbox.write_count() == 3


def test_seed_is_deterministic(planhat_sandbox_factory: Factory) -> None:
    one, two = PlanhatSandbox(seed=7, scale=0.1), PlanhatSandbox(seed=7, scale=0.1)
    assert one.companies() == two.companies() and one.endusers(True) == two.endusers(True)
    assert PlanhatSandbox(seed=8, scale=0.1).companies() != one.companies()
    ids = ["aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb"]
    seeded = PlanhatSandbox(seed=7, scale=0.1, seed_user_ids=ids)
    assert [u["_id"] for u in seeded.users()[:2]] == ids
    owners = {c["owner"] for c in seeded.companies() if c["owner"]}
    assert owners <= {u["_id"] for u in seeded.users()}
    companies = one.companies()
    assert any(c.get("externalId") for c in companies) and not all(
        c.get("externalId") for c in companies
    )
    assert all(re.fullmatch(r"[0-9a-f]{24}", c["_id"]) for c in companies)  # ObjectId-like
