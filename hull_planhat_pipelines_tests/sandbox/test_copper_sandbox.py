"""The Copper emulator keeps Copper's rules, over real HTTP (plain ``requests``)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests

from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines.sandbox.copper_seed import (
    PLANHAT_TEAM_SIZE,
    SEED_OBJECTS,
    CopperSeed,
    planhat_user_ids,
)
from hull_planhat_pipelines.sync.copper.schema import COPPER_OBJECTS

Factory = Callable[..., CopperSandbox]
NOW = 1_767_225_600 + 13 * 3600  # 2026-01-01T13:00:00Z
START_2024 = 1_704_067_200
SORTED_OBJECTS = [name for name, obj in COPPER_OBJECTS.items() if obj.sort_by is not None]


def headers(sandbox: CopperSandbox, **override: str | None) -> dict[str, str]:
    values: dict[str, str | None] = {
        "X-PW-AccessToken": sandbox.api_key,
        "X-PW-Application": "developer_api",
        "X-PW-UserEmail": sandbox.user_email,
        "Content-Type": "application/json",
    }
    values.update(override)
    return {k: v for k, v in values.items() if v is not None}


def search(
    sandbox: CopperSandbox, obj: str, body: dict[str, Any] | None = None, **params: Any
) -> requests.Response:
    return requests.post(
        f"{sandbox.base_url}/{obj}/search",
        json=body or {},
        params=params or None,
        headers=headers(sandbox),
        timeout=10,
    )


def fetch_all(sandbox: CopperSandbox, obj: str, body: dict[str, Any]) -> tuple[list[dict], int]:
    """Page until a short page, as clients must; returns the records and the request count."""
    records: list[dict] = []
    page, calls = 1, 0
    while True:
        response = search(sandbox, obj, {**body, "page_size": 200, "page_number": page})
        calls += 1
        assert response.status_code == 200, response.text
        records.extend(response.json())
        if len(response.json()) < 200:
            return records, calls
        page += 1


def lead(i: int, modified: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": 1000 + i,
        "name": f"Lead {i:04d}",
        "email": None,
        "date_created": modified - 10,
        "date_modified": modified,
        **extra,
    }


# -- paging and caps -----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 199, 200, 201, 401])
def test_paging_returns_every_record_once(copper_sandbox: CopperSandbox, n: int) -> None:
    copper_sandbox.set_records("leads", [lead(i, 1_700_000_000 + i // 3) for i in range(n)])
    records, calls = fetch_all(copper_sandbox, "leads", {"sort_by": "date_modified"})
    assert sorted(r["id"] for r in records) == [1000 + i for i in range(n)]
    assert calls == n // 200 + 1
    response = search(copper_sandbox, "leads", {"page_size": 1})
    total = int(response.headers["X-PW-TOTAL"])  # an estimate: an upper bound, within 10%
    assert n <= total <= max(n + 9, n * 1.1)
    assert isinstance(response.json(), list)


def test_total_is_an_estimate_not_a_count(copper_sandbox: CopperSandbox) -> None:
    copper_sandbox.set_records("leads", [lead(i, 1_700_000_000 + i) for i in range(137)])
    response = search(copper_sandbox, "leads", {"page_size": 1})
    assert response.headers["X-PW-TOTAL"] == "140"


def test_page_size_defaults_to_20_and_query_string_paging_works(
    copper_sandbox: CopperSandbox,
) -> None:
    copper_sandbox.set_records("leads", [lead(i, 1_700_000_000 + i) for i in range(50)])
    assert len(search(copper_sandbox, "leads").json()) == 20
    by_query = search(
        copper_sandbox, "leads", {"sort_by": "date_modified"}, page_size=7, page_number=2
    )
    assert [r["id"] for r in by_query.json()] == list(range(1007, 1014))
    body_wins = search(
        copper_sandbox, "leads", {"sort_by": "date_modified", "page_size": 3}, page_size=7
    )
    assert len(body_wins.json()) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"page_size": 201}, "Page size"),
        ({"page_size": 0}, "Page size"),
        ({"page_size": "lots"}, "Page size"),
        ({"page_number": 0}, "Page number"),
        ({"minimum_modified_date": "yesterday"}, "Minimum modified date"),
        ({"sort_direction": "up"}, "Sort direction"),
        ({"sort_by": "favourite_colour"}, "Sort by"),
    ],
)
def test_bad_values_are_422(copper_sandbox: CopperSandbox, body: dict, message: str) -> None:
    response = search(copper_sandbox, "leads", body)
    assert response.status_code == 422
    assert response.json()["success"] is False
    assert message in response.json()["message"]


def test_search_returns_at_most_the_cap(copper_sandbox: CopperSandbox) -> None:
    copper_sandbox.search_cap = 50
    copper_sandbox.set_records("leads", [lead(i, 1_700_000_000 + i) for i in range(120)])
    sizes = [
        len(search(copper_sandbox, "leads", {"page_size": 20, "page_number": p}).json())
        for p in range(1, 6)
    ]
    assert sizes == [20, 20, 10, 0, 0]
    assert search(copper_sandbox, "leads", {"page_number": 9}).headers["X-PW-TOTAL"] == "120"
    window = {"minimum_modified_date": 1_700_000_100, "sort_by": "date_modified"}
    records, _ = fetch_all(copper_sandbox, "leads", window)  # a date window stays under it
    assert len(records) == 20


def test_the_real_cap_is_100000() -> None:
    assert CopperSandbox.search_cap == 100_000
    assert CopperSandbox.max_page_size == 200


# -- body keys, auth, content type ---------------------------------------------------------------
def test_unknown_body_key_is_422_with_copper_message(copper_sandbox: CopperSandbox) -> None:
    response = search(copper_sandbox, "leads", {"pageSize": 10})
    assert response.status_code == 422
    assert response.json() == {
        "success": False,
        "status": 422,
        "message": "Invalid input: Validation errors: "
        "Base: Unrecognized attributes specified: pageSize",
    }
    assert search(copper_sandbox, "people", {"minimum_date_modified": 1}).status_code == 422


def test_activities_have_their_own_smaller_parameter_set(copper_sandbox: CopperSandbox) -> None:
    for key in ("minimum_modified_date", "maximum_created_date", "ids", "name"):
        response = search(copper_sandbox, "activities", {key: 1})
        assert response.status_code == 422, key
        assert f"Unrecognized attributes specified: {key}" in response.json()["message"]
    accepted = {"sort_by": "date_created", "sort_direction": "desc", "full_result": False}
    assert search(copper_sandbox, "activities", accepted).status_code == 200


@pytest.mark.parametrize(
    "override",
    [
        {"X-PW-AccessToken": "wrong"},
        {"X-PW-AccessToken": None},
        {"X-PW-Application": "web"},
        {"X-PW-Application": None},
        {"X-PW-UserEmail": "someone@else.example"},
        {"X-PW-UserEmail": None},
    ],
)
def test_each_auth_header_is_checked(copper_sandbox: CopperSandbox, override: dict) -> None:
    for method, path in (("POST", "/leads/search"), ("GET", "/custom_field_definitions")):
        response = requests.request(
            method,
            copper_sandbox.base_url + path,
            json={},
            headers=headers(copper_sandbox, **override),
            timeout=10,
        )
        assert response.status_code == 401
        assert response.json() == {"success": False, "status": 401, "message": "Unauthorized"}


def test_post_bodies_need_json_content_type(copper_sandbox: CopperSandbox) -> None:
    url = f"{copper_sandbox.base_url}/leads/search"
    plain = headers(copper_sandbox, **{"Content-Type": "text/plain"})
    assert requests.post(url, data="{}", headers=plain, timeout=10).status_code == 415
    charset = headers(copper_sandbox, **{"Content-Type": "application/json; charset=utf-8"})
    assert requests.post(url, data="{}", headers=charset, timeout=10).status_code == 200


# -- dates, sorting, ties ------------------------------------------------------------------------
def test_date_filters_are_inclusive_unix_seconds(copper_sandbox: CopperSandbox) -> None:
    copper_sandbox.set_records(
        "leads",
        [lead(i, 1_700_000_000 + 100 * (i // 2), date_created=1_600_000_000 + i) for i in range(8)],
    )

    def ids(body: dict) -> list[int]:
        return sorted(r["id"] for r in search(copper_sandbox, "leads", body).json())

    base = 1_700_000_000
    window = {"minimum_modified_date": base + 100, "maximum_modified_date": base + 200}
    assert ids(window) == [1002, 1003, 1004, 1005]
    one_second = {"minimum_modified_date": base + 300, "maximum_modified_date": base + 300}
    assert ids(one_second) == [1006, 1007]
    assert ids({"maximum_modified_date": 1_699_999_999}) == []
    assert ids({"minimum_created_date": 1_600_000_006}) == [1006, 1007]
    assert ids({"maximum_created_date": 1_600_000_001, "minimum_modified_date": 0}) == [1000, 1001]


@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_ties_come_in_a_stable_order_unrelated_to_the_id_and_pages_never_overlap(
    copper_sandbox: CopperSandbox, direction: str
) -> None:
    # 450 records over three seconds, inserted in a scrambled id order.
    records = [lead((i * 7919) % 450, 1_700_000_000 + i % 3) for i in range(450)]
    copper_sandbox.set_records("leads", records)
    body = {"sort_by": "date_modified", "sort_direction": direction}
    got, _ = fetch_all(copper_sandbox, "leads", body)
    dates = [r["date_modified"] for r in got]
    assert dates == sorted(dates, reverse=direction == "desc")
    assert len({r["id"] for r in got}) == 450
    keys = [(r["date_modified"], r["id"]) for r in got]
    assert keys != sorted(keys, reverse=direction == "desc")  # Copper breaks no ties by id
    again, _ = fetch_all(copper_sandbox, "leads", body)
    assert [r["id"] for r in again] == [r["id"] for r in got]  # but the order is stable


def test_default_sorts_follow_copper(copper_sandbox: CopperSandbox) -> None:
    names = [r["name"] for r in search(copper_sandbox, "leads", {"page_size": 200}).json()]
    assert names == sorted(names, key=str.casefold)
    firsts = [r["first_name"] for r in search(copper_sandbox, "people", {"page_size": 200}).json()]
    assert firsts == sorted(firsts, key=str.casefold)
    companies = search(copper_sandbox, "companies", {"page_size": 200}).json()
    assert [c["date_modified"] for c in companies] == sorted(c["date_modified"] for c in companies)


def test_hull_style_date_cursor_walks_a_tie_group_larger_than_a_page(
    copper_sandbox_factory: Factory,
) -> None:
    sandbox = copper_sandbox_factory(scale=1.0, now=NOW)
    tie = sandbox.edge_cases["mass_update"]
    assert tie["leads"] > 200
    seen: set[int] = set()
    cursor, page = 0, 1
    while True:
        body = {
            "sort_by": "date_modified",
            "minimum_modified_date": cursor,
            "page_size": 200,
            "page_number": page,
            "include_converted_leads": True,
        }
        batch = search(sandbox, "leads", body).json()
        seen.update(r["id"] for r in batch)
        if len(batch) < 200:
            break
        if batch[0]["date_modified"] == batch[-1]["date_modified"]:
            page += 1
        else:
            cursor, page = batch[-1]["date_modified"], 1
    assert seen == {r["id"] for r in sandbox.records("leads")}


# -- activities ----------------------------------------------------------------------------------
def test_activities_filters_and_order(copper_sandbox: CopperSandbox) -> None:
    meta = copper_sandbox.metadata
    note, call = meta.activity_type("Note"), meta.activity_type("Phone Call")
    everything, _ = fetch_all(copper_sandbox, "activities", {})
    dates = [a["activity_date"] for a in everything]
    assert dates == sorted(dates)
    wanted = [{"id": note["id"], "category": "user"}, {"id": call["id"], "category": "user"}]
    typed, _ = fetch_all(copper_sandbox, "activities", {"activity_types": wanted})
    assert typed and {a["type"]["id"] for a in typed} <= {note["id"], call["id"]}
    assert len(typed) == sum(a["type"] in wanted for a in everything)
    lo, hi = everything[10]["activity_date"], everything[30]["activity_date"]
    windowed, _ = fetch_all(
        copper_sandbox, "activities", {"minimum_activity_date": lo, "maximum_activity_date": hi}
    )
    assert windowed == [a for a in everything if lo <= a["activity_date"] <= hi]
    parent = everything[0]["parent"]
    by_parent, _ = fetch_all(copper_sandbox, "activities", {"parent": parent})
    assert by_parent == [a for a in everything if a["parent"] == parent]
    bad = search(copper_sandbox, "activities", {"parent": {"id": 1, "type": "people"}})
    assert bad.status_code == 422


def test_full_result_may_repeat_rows(copper_sandbox: CopperSandbox) -> None:
    plain, _ = fetch_all(copper_sandbox, "activities", {})
    full, _ = fetch_all(copper_sandbox, "activities", {"full_result": True})
    emails = [a for a in plain if a["type"] == {"id": 6, "category": "system"}]
    assert emails and len(full) == len(plain) + len(emails)
    assert {a["id"] for a in full} == {a["id"] for a in plain}


def test_user_activities_keep_date_modified_at_activity_date(copper_sandbox: CopperSandbox) -> None:
    activities = copper_sandbox.records("activities")
    users = [a for a in activities if a["type"]["category"] == "user"]
    assert all(a["date_modified"] == a["activity_date"] for a in users)
    backdated = [a for a in users if a["date_created"] - a["activity_date"] > 86_400]
    assert copper_sandbox.edge_cases["activities"]["backdated"] in {a["id"] for a in backdated}
    assert all(5e9 < a["id"] < 7e9 for a in activities)


# -- single records, changes, users, filters -----------------------------------------------------
def test_get_by_id_and_not_found(copper_sandbox: CopperSandbox) -> None:
    lead_id = copper_sandbox.edge_cases["unicode_lead_ids"][0]
    ok = requests.get(
        f"{copper_sandbox.base_url}/leads/{lead_id}", headers=headers(copper_sandbox), timeout=10
    )
    assert ok.status_code == 200 and ok.json()["name"] == "Zoë Ångström"
    missing = requests.get(
        f"{copper_sandbox.base_url}/people/1", headers=headers(copper_sandbox), timeout=10
    )
    assert missing.status_code == 404 and missing.json() == {"error": "not_found"}


def test_touch_upsert_and_delete_show_in_searches(copper_sandbox_factory: Factory) -> None:
    sandbox = copper_sandbox_factory(now=NOW)
    old = sandbox.records("people")[0]
    sandbox.touch("people", [old["id"]])
    recent = search(sandbox, "people", {"minimum_modified_date": NOW}).json()
    assert old["id"] in {p["id"] for p in recent}
    assert sandbox.record("people", old["id"])["date_modified"] == NOW
    sandbox.upsert_records(
        "people", [{**old, "title": "Chief Tester"}, {"id": 5, "name": "New One"}]
    )
    assert sandbox.record("people", old["id"])["title"] == "Chief Tester"
    assert sandbox.record("people", 5)["date_modified"] == NOW  # dates default to "now"
    count = sandbox.count("people")
    sandbox.delete_records("people", [old["id"]])
    assert sandbox.count("people") == count - 1
    url = f"{sandbox.base_url}/people/{old['id']}"
    assert requests.get(url, headers=headers(sandbox), timeout=10).status_code == 404
    everyone, _ = fetch_all(sandbox, "people", {"sort_by": "date_created"})
    assert old["id"] not in {p["id"] for p in everyone} and len(everyone) == count - 1
    with pytest.raises(KeyError):
        sandbox.touch("people", [old["id"]])


def test_users_search_is_paged(copper_sandbox: CopperSandbox) -> None:
    users = [{"id": i, "name": f"User {i}", "email": f"u{i}@example.com"} for i in range(250)]
    copper_sandbox.set_records("users", users)
    first = search(copper_sandbox, "users", {"page_size": 200})
    second = search(copper_sandbox, "users", {"page_size": 200, "page_number": 2})
    assert len(first.json()) == 200 and len(second.json()) == 50
    assert first.headers["X-PW-TOTAL"] == "250"
    assert search(copper_sandbox, "users", {"emails": ["x"]}).status_code == 422


def test_ids_emails_and_name_filters(copper_sandbox: CopperSandbox) -> None:
    shared = copper_sandbox.edge_cases["shared_email"]
    by_email = search(copper_sandbox, "people", {"emails": [shared["email"].upper()]}).json()
    assert [p["id"] for p in by_email] == [shared["person_id"]]
    lead_hit = search(copper_sandbox, "leads", {"emails": shared["email"]}).json()
    assert [r["id"] for r in lead_hit] == [shared["lead_id"]]
    ids = [r["id"] for r in copper_sandbox.records("companies")[:2]]
    assert sorted(c["id"] for c in search(copper_sandbox, "companies", {"ids": ids}).json()) == ids
    named = search(copper_sandbox, "leads", {"name": "ångström"}).json()
    assert copper_sandbox.edge_cases["unicode_lead_ids"][0] in {r["id"] for r in named}


# -- faults and rate limits ----------------------------------------------------------------------
def test_faults_and_rate_limit_come_from_the_shared_server(copper_sandbox_factory: Factory) -> None:
    sandbox = copper_sandbox_factory(rate_limit_per_minute=1)  # faults do not count
    sandbox.server.faults.add(status=429, retry_after=1, path="/leads/search")
    throttled = search(sandbox, "leads")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    sandbox.server.faults.add(status=200, raw_body="[{not json", path="/people/search")
    assert search(sandbox, "people").text == "[{not json"
    assert search(sandbox, "leads").status_code == 200
    limited = search(sandbox, "leads")
    assert limited.status_code == 429 and "Retry-After" not in limited.headers  # Copper sends none
    assert [r.status for r in sandbox.server.recorded(path="/leads/search")][-1] == 429


# -- metadata ------------------------------------------------------------------------------------
def get(sandbox: CopperSandbox, path: str) -> Any:
    response = requests.get(sandbox.base_url + path, headers=headers(sandbox), timeout=10)
    assert response.status_code == 200, path
    return response.json()


def test_metadata_shapes(copper_sandbox: CopperSandbox) -> None:
    definitions = get(copper_sandbox, "/custom_field_definitions")
    assert {d["data_type"] for d in definitions} == {
        "String", "Text", "Dropdown", "MultiSelect", "Date", "Checkbox", "Float", "Percentage",
        "Currency", "URL", "Connect",
    }  # fmt: skip
    by_name = {(d["name"], tuple(d["available_on"])): d for d in definitions}
    for name, on, kind in [
        ("User ID", "person", "String"),
        ("Account ID", "company", "String"),
        ("Lead Score", "lead", "Float"),
        ("Plan", "person", "Dropdown"),
        ("ARR", "company", "Currency"),
        ("Opportunity Type", "opportunity", "Dropdown"),
        ("assignee_planhat_id", "company", "String"),
    ]:
        assert by_name[(name, (on,))]["data_type"] == kind
    assert by_name[("ARR", ("company",))]["currency"] == "USD"
    types = {o["name"] for o in by_name[("Opportunity Type", ("opportunity",))]["options"]}
    assert {"New Business", "Upsell", "Renewal"} <= types
    connects = {d["id"]: d for d in definitions if d["data_type"] == "Connect"}
    assert all(connects[d["connected_id"]]["connected_id"] == i for i, d in connects.items())
    activity_types = get(copper_sandbox, "/activity_types")
    assert set(activity_types) == {"user", "system"}
    users = {t["name"]: t for t in activity_types["user"]}
    assert users["Note"]["id"] == 0 and {"Phone Call", "Meeting"} <= set(users)
    assert any(t["is_disabled"] for t in activity_types["user"])
    assert {1, 3, 6, 8} <= {t["id"] for t in activity_types["system"]}
    pipelines = get(copper_sandbox, "/pipelines")
    stages = get(copper_sandbox, "/pipeline_stages")
    assert {s["id"] for p in pipelines for s in p["stages"]} == {s["id"] for s in stages}
    for path in ("/lead_statuses", "/customer_sources", "/contact_types", "/loss_reasons"):
        items = get(copper_sandbox, path)
        assert items and all({"id", "name"} <= set(i) for i in items)
    assert {"id", "name"} <= set(get(copper_sandbox, "/account"))


def test_planhat_owner_ids_are_deterministic_and_prefix_stable() -> None:
    ids = planhat_user_ids(3, 20)
    assert ids[:PLANHAT_TEAM_SIZE] == planhat_user_ids(3, PLANHAT_TEAM_SIZE)
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids) and len(set(ids)) == 20
    assert planhat_user_ids(4, 1) != planhat_user_ids(3, 1)


# -- the seed ------------------------------------------------------------------------------------
def test_the_sandbox_seeds_every_object_the_pipeline_declares() -> None:
    """One seed entry per pipeline declaration, under the same name and record type."""
    assert list(SEED_OBJECTS) == list(COPPER_OBJECTS)
    for name, obj in COPPER_OBJECTS.items():
        assert SEED_OBJECTS[name].record_type == obj.record_type
        assert obj.min_key in SEED_OBJECTS[name].search_keys
        assert obj.max_key in SEED_OBJECTS[name].search_keys
        assert {key for key, _ in obj.search_flags} <= SEED_OBJECTS[name].search_keys


def test_same_seed_same_data(copper_sandbox_factory: Factory) -> None:
    first = copper_sandbox_factory(seed=7, now=NOW)
    second = copper_sandbox_factory(seed=7, now=NOW)
    other = copper_sandbox_factory(seed=8, now=NOW)
    for obj in COPPER_OBJECTS:
        assert first.records(obj) == second.records(obj)
        assert first.records(obj) != other.records(obj)
    assert first.metadata == second.metadata


def custom(record: dict, definition: dict) -> Any:
    for item in record["custom_fields"]:
        if item["custom_field_definition_id"] == definition["id"]:
            return item["value"]
    return KeyError


@pytest.fixture(scope="module")
def full_seed() -> CopperSandbox:
    """Scale 1.0 data, read in process (no server needed to inspect records)."""
    return CopperSandbox(seed=0, scale=1.0, now=NOW)


def test_scale_one_has_the_documented_sizes(full_seed: CopperSandbox) -> None:
    counts = {obj: full_seed.count(obj) for obj in COPPER_OBJECTS}
    assert counts == {
        "leads": 1000,
        "people": 1000,
        "companies": 100,
        "opportunities": 300,
        "activities": 2000,
    }


def test_edge_cases_at_scale_one(full_seed: CopperSandbox) -> None:
    edge, meta = full_seed.edge_cases, full_seed.metadata
    leads = {r["id"]: r for r in full_seed.records("leads")}
    people = {r["id"]: r for r in full_seed.records("people")}
    companies = {r["id"]: r for r in full_seed.records("companies")}
    opportunities = {r["id"]: r for r in full_seed.records("opportunities")}
    activities = full_seed.records("activities")

    shared = edge["shared_email"]
    assert (
        leads[shared["lead_id"]]["email"]["email"]
        == people[shared["person_id"]]["emails"][0]["email"]
    )
    converted = edge["converted_lead"]
    assert converted["lead_id"] in leads
    assert {"lead_id": converted["lead_id"]}.items() <= people[converted["person_id"]][
        "leads_converted_from"
    ][0].items()
    assert edge["converted_lead_not_listed"]["lead_id"] not in leads
    assert (
        edge["lead_and_person_with_same_id"] in leads
        and edge["lead_and_person_with_same_id"] in people
    )
    assert leads[edge["lead_without_email_id"]]["email"] is None
    assert people[edge["person_without_email_id"]]["emails"] == []
    assert people[edge["person_null_company_id"]]["company_id"] is None
    unknown = edge["person_unknown_company"]
    assert people[unknown["person_id"]]["company_id"] == unknown["company_id"] not in companies
    assert sum(p["company_id"] is None for p in people.values()) > 10
    assert (
        sum(bool(p["company_id"]) and p["company_id"] not in companies for p in people.values())
        > 10
    )
    assert {leads[i]["name"] for i in edge["unicode_lead_ids"]} == {"Zoë Ångström", "李雷"}
    assert all(isinstance(r["email"], dict | None) for r in leads.values())
    assert companies[edge["company_null_domain_id"]]["email_domain"] is None

    owner = meta.custom_field("assignee_planhat_id", "company")
    owners = [custom(c, owner) for c in companies.values()]
    assert set(owners) & set(meta.planhat_owner_ids)
    assert (
        custom(companies[edge["company_invalid_owner"]["company_id"]], owner)
        in meta.invalid_planhat_owner_ids
    )
    assert custom(companies[edge["company_without_owner_field_id"]], owner) is KeyError
    assert not set(meta.invalid_planhat_owner_ids) & set(planhat_user_ids(0, 100))

    opp_type = meta.custom_field("Opportunity Type", "opportunity")
    assert custom(opportunities[edge["opportunity_blank_type_id"]], opp_type) is None
    assert custom(opportunities[edge["opportunity_without_type_field_id"]], opp_type) is KeyError
    same = [opportunities[i] for i in edge["same_type_opportunity_ids"]]
    assert same[0]["company_id"] == same[1]["company_id"]
    assert custom(same[0], opp_type) == custom(same[1], opp_type) is not None
    closes = [o["close_date"] for o in opportunities.values() if o["close_date"]]
    assert all(re.fullmatch(r"(1[0-2]|[1-9])/(3[01]|[12]\d|[1-9])/20\d\d", c) for c in closes)
    assert opportunities[edge["opportunity_close_date"]["id"]]["close_date"] == "1/14/2024"
    assert {o["status"] for o in opportunities.values()} == {"Open", "Won", "Lost", "Abandoned"}

    parents = {a["parent"]["type"] for a in activities}
    assert parents == {"person", "lead", "company", "opportunity"}
    assert {a["type"]["category"] for a in activities} == {"user", "system"}
    assert any(
        "&amp;" in (a["details"] or "") or "&#x27;" in (a["details"] or "") for a in activities
    )
    disabled = next(t for t in meta.activity_types["user"] if t["is_disabled"])
    assert any(a["type"]["id"] == disabled["id"] for a in activities)

    seen_types = {
        d["data_type"]
        for record in [
            *leads.values(),
            *people.values(),
            *companies.values(),
            *opportunities.values(),
        ]
        for item in record["custom_fields"]
        if item["value"] not in (None, [])
        for d in meta.custom_field_definitions
        if d["id"] == item["custom_field_definition_id"]
    }
    assert seen_types == {d["data_type"] for d in meta.custom_field_definitions}
    multiselect = meta.custom_field("Interests", "person")
    assert custom(people[edge["person_empty_multiselect_id"]], multiselect) == []


def test_dates_spread_from_before_2024_to_today(full_seed: CopperSandbox) -> None:
    today = NOW - NOW % 86_400
    for obj in SORTED_OBJECTS:
        modified = [r["date_modified"] for r in full_seed.records(obj)]
        assert min(modified) < START_2024 and max(modified) <= NOW
        assert any(today <= m for m in modified), obj
        assert len(modified) - len(set(modified)) > 5, obj  # ties
        assert all(r["date_created"] <= r["date_modified"] for r in full_seed.records(obj))
    activity_dates = [a["activity_date"] for a in full_seed.records("activities")]
    assert any(today <= d for d in activity_dates)


def test_tiny_scale_still_has_the_pinned_edge_cases() -> None:
    seed = CopperSeed(0, 0.01, NOW)
    assert seed.counts["companies"] >= 5 and seed.counts["leads"] >= 10
    assert seed.lead(2)["email"] is None and seed.company(1)["email_domain"] is None


def test_a_large_sandbox_pages_a_date_window(copper_sandbox_factory: Factory) -> None:
    sandbox = copper_sandbox_factory(scale=100.0, now=NOW)  # 100,000 leads, 200,000 activities
    since = NOW - 30 * 86_400
    body = {"sort_by": "date_modified", "minimum_modified_date": since, "page_size": 200}
    search(sandbox, "leads", body)
    response = search(sandbox, "leads", {**body, "page_number": 2})
    assert len(response.json()) == 200
    assert all(r["date_modified"] >= since for r in response.json())


def test_close_dates_follow_the_account_locale(copper_sandbox_factory: Factory) -> None:
    sandbox = copper_sandbox_factory(close_date_format="D/M/YYYY")
    edge = sandbox.edge_cases["opportunity_close_date"]
    assert sandbox.record("opportunities", edge["id"])["close_date"] == "14/1/2024"
    jan_14 = int(dt.datetime(2024, 1, 14, tzinfo=dt.UTC).timestamp())
    body = {"minimum_close_date": jan_14, "maximum_close_date": jan_14}
    assert edge["id"] in {o["id"] for o in search(sandbox, "opportunities", body).json()}
