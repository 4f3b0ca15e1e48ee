"""A CRM that changes while we read it: walks under churn, conversions, deletions, filters.

Everything goes over real HTTP: the client against the Copper sandbox, and the changes through
the sandbox's control surface (``/_sandbox/copper/...``), as a demo or a test in another process
would make them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from hull_planhat_pipelines.clients.copper import CopperClient, value_cursor_searches
from hull_planhat_pipelines.sandbox.copper import CopperSandbox
from hull_planhat_pipelines_tests.copper_stub import FakeTime

Factory = Callable[..., CopperSandbox]
NOW = 1_767_225_600 + 13 * 3600  # 2026-01-01T13:00:00Z
DAY = 86_400


def control(sandbox: CopperSandbox, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(
        method, f"{sandbox.base_url}/_sandbox/copper/{path}", json=body, timeout=10
    )
    assert response.status_code < 300, response.text
    return response.json()


def raw_search(sandbox: CopperSandbox, obj: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{sandbox.base_url}/{obj}/search",
        json=body,
        headers={
            "X-PW-AccessToken": sandbox.api_key,
            "X-PW-Application": "developer_api",
            "X-PW-UserEmail": sandbox.user_email,
            "Content-Type": "application/json",
        },
        timeout=10,
    )


def client_of(sandbox: CopperSandbox, page_size: int = 200) -> CopperClient:
    time = FakeTime()
    return CopperClient(
        sandbox.base_url,
        sandbox.api_key,
        sandbox.user_email,
        requests_per_minute=None,
        sleeper=time.sleep,
        clock=time.clock,
        page_size=page_size,
    )


def walk(
    sandbox: CopperSandbox, obj: str, start: int | None = None, end: int | None = None
) -> list[dict[str, Any]]:
    with client_of(sandbox) as client:
        return [r for page in client.search(obj, start=start, end=end) for r in page.records]


def all_ids(sandbox: CopperSandbox, obj: str) -> set[int]:
    return {r["id"] for r in sandbox.records(obj)}


# -- walks under churn ----------------------------------------------------------------------------
def test_an_offset_walk_under_churn_loses_records(copper_sandbox_factory: Factory) -> None:
    """The failure the cursor fixes, so that the churn test below can fail: paging by number
    over a date_modified sort while records are saved skips the records that slide back."""
    sandbox = copper_sandbox_factory(scale=1.0, now=NOW)
    control(sandbox, "POST", "churn", {"object": "leads", "edits_per_page": 5})
    seen: set[int] = set()
    number = 1
    while True:
        body = {
            "sort_by": "date_modified",
            "page_size": 200,
            "page_number": number,
            "include_converted_leads": True,
        }
        page = raw_search(sandbox, "leads", body).json()
        seen.update(r["id"] for r in page)
        if len(page) < 200:
            break
        number += 1
    assert all_ids(sandbox, "leads") - seen  # records were skipped


def test_a_walk_with_records_edited_between_its_pages_loses_none(
    copper_sandbox_factory: Factory,
) -> None:
    sandbox = copper_sandbox_factory(scale=1.0, now=NOW)
    assert sandbox.edge_cases["mass_update"]["leads"] > 200  # a tie group larger than a page
    before = {r["id"]: r["date_modified"] for r in sandbox.records("leads")}
    assert control(sandbox, "POST", "churn", {"object": "leads", "edits_per_page": 5}) == {
        "leads": 5
    }
    records = walk(sandbox, "leads")
    control(sandbox, "POST", "churn", {"object": "leads", "edits_per_page": 0})
    after = {r["id"]: r["date_modified"] for r in sandbox.records("leads")}
    edited = {key for key in after if after[key] != before[key]}
    assert len(edited) > 20  # the churn really edited records during the walk
    assert {r["id"] for r in records} == set(after)  # none lost, in this very walk
    newest = {}
    for record in records:  # an edited record may come twice: its newer version last
        newest[record["id"]] = record["date_modified"]
    stale = {key for key in after if newest[key] != after[key]}
    assert stale <= edited and all(after[key] == NOW for key in stale)
    assert stale <= {r["id"] for r in walk(sandbox, "leads", NOW - NOW % DAY, None)}


def test_a_bounded_walk_under_churn_leaves_the_edited_records_to_the_next_poll(
    copper_sandbox_factory: Factory,
) -> None:
    """A partition's window ends in the past: a record saved during its walk moves out of the
    window (to now), and the walk of now's day, the next poll, fetches it."""
    sandbox = copper_sandbox_factory(scale=1.0, now=NOW)
    today = NOW - NOW % DAY
    before = {r["id"]: r["date_modified"] for r in sandbox.records("people")}
    control(sandbox, "POST", "churn", {"object": "people", "edits_per_page": 7})
    first = {r["id"] for r in walk(sandbox, "people", None, today - 1)}
    control(sandbox, "POST", "churn", {"object": "people", "edits_per_page": 0})
    after = sandbox.records("people")
    in_window = {r["id"] for r in after if r["date_modified"] < today}
    assert in_window <= first  # every record still in the window came
    moved = {r["id"] for r in after if r["date_modified"] != before[r["id"]]}
    assert len(moved) > 20  # saved during the walk, out of its window ...
    next_poll = {r["id"]: r for r in walk(sandbox, "people", today, None)}
    assert moved <= set(next_poll)  # ... and fetched, in their new version, by the next poll
    assert all(next_poll[key]["date_modified"] == NOW for key in moved)
    assert first | set(next_poll) == {r["id"] for r in after}


def _tied(n: int, modified: int, created: Callable[[int], int]) -> list[dict[str, Any]]:
    return [
        {"id": 5000 + i, "name": f"Tied {i}", "date_created": created(i), "date_modified": modified}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "created",
    [lambda i: 1_600_000_000 + i // 3, lambda i: 1_600_000_000],
    ids=["created-dates-differ", "both-dates-tied"],
)
def test_more_than_a_page_of_ties_under_churn(
    copper_sandbox_factory: Factory, created: Callable[[int], int]
) -> None:
    sandbox = copper_sandbox_factory(now=NOW)
    tied = _tied(650, NOW - 5 * DAY, created)
    others = [
        {"id": 9000 + i, "date_created": 1_600_000_000, "date_modified": NOW - 9 * DAY + i}
        for i in range(300)
    ]
    sandbox.set_records("companies", tied + others)
    control(sandbox, "POST", "churn", {"object": "companies", "edits_per_page": 3})
    with client_of(sandbox) as client:
        records = [r for p in client.search("companies", start=None, end=None) for r in p.records]
    assert {r["id"] for r in records} == all_ids(sandbox, "companies")
    sent = sandbox.server.recorded("POST", "/companies/search")
    assert max(r.body["page_number"] for r in sent) * 200 <= sandbox.search_cap


def test_request_count_of_a_quiet_walk_is_the_cursor_minimum(
    copper_sandbox_factory: Factory,
) -> None:
    sandbox = copper_sandbox_factory(scale=1.0, now=NOW)
    records = walk(sandbox, "leads")
    assert len({r["id"] for r in records}) == len(records) == sandbox.count("leads")
    keys = sorted((r["date_modified"], r["date_created"]) for r in sandbox.records("leads"))
    sent = sandbox.server.recorded("POST", "/leads/search")
    assert len(sent) == value_cursor_searches(keys)


# -- the control surface ----------------------------------------------------------------------------
def test_control_surface_creates_edits_and_deletes(copper_sandbox_factory: Factory) -> None:
    sandbox = copper_sandbox_factory(now=NOW)
    made = control(sandbox, "POST", "companies", {"name": "Acme", "email_domain": "acme.test"})
    assert made["date_modified"] == NOW and made["id"] in all_ids(sandbox, "companies")
    edited = control(
        sandbox, "PATCH", f"companies/{made['id']}", {"name": "Acme Inc", "date_modified": NOW + 5}
    )
    assert edited["name"] == "Acme Inc" and edited["date_modified"] == NOW + 5
    assert control(sandbox, "GET", f"companies/{made['id']}")["name"] == "Acme Inc"
    gone = control(sandbox, "DELETE", f"companies/{made['id']}")
    assert gone == {"id": made["id"], "is_deleted": True}
    missing = requests.get(f"{sandbox.base_url}/_sandbox/copper/companies/{made['id']}", timeout=5)
    assert missing.status_code == 404
    bad = requests.post(
        f"{sandbox.base_url}/_sandbox/copper/churn", json={"object": "activities"}, timeout=5
    )
    assert bad.status_code == 400


def test_a_converted_lead_leaves_the_default_search_and_is_merged_into_a_person(
    copper_sandbox_factory: Factory,
) -> None:
    sandbox = copper_sandbox_factory(now=NOW)
    lead = next(r for r in sandbox.records("leads") if r["converted_contact_id"] is None)
    person = sandbox.records("people")[0]
    converted = control(sandbox, "POST", f"leads/{lead['id']}/convert", {"person_id": person["id"]})
    assert converted["lead"]["converted_contact_id"] == person["id"]
    assert converted["lead"]["converted_at"] == NOW
    listed = [entry["lead_id"] for entry in converted["person"]["leads_converted_from"]]
    assert lead["id"] in listed and converted["person"]["date_modified"] == NOW

    def lead_ids(body: dict[str, Any]) -> set[int]:
        response = raw_search(sandbox, "leads", {"page_size": 200, "ids": [lead["id"]], **body})
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()}

    assert lead_ids({}) == set()  # out of the default search ...
    assert lead_ids({"include_converted_leads": True}) == {lead["id"]}  # ... not deleted
    assert raw_search(sandbox, "leads", {"include_converted_leads": "yes"}).status_code == 422
    other = next(r for r in sandbox.records("leads") if r["converted_contact_id"] is None)
    fresh = control(sandbox, "POST", f"leads/{other['id']}/convert", {})
    assert fresh["person"]["id"] == fresh["lead"]["converted_contact_id"]
    assert fresh["person"]["emails"] == ([other["email"]] if other["email"] else [])
    assert sandbox.record("people", fresh["person"]["id"]) is not None
    # the client asks for converted leads: both come, with their conversion
    fetched = {r["id"]: r for r in walk(sandbox, "leads")}
    assert fetched[lead["id"]]["converted_contact_id"] == person["id"]
    assert fetched[other["id"]]["converted_at"] == NOW


def test_seeded_converted_leads_are_hidden_by_default(copper_sandbox: CopperSandbox) -> None:
    converted = copper_sandbox.edge_cases["converted_lead"]
    record = copper_sandbox.record("leads", converted["lead_id"])
    assert record is not None and record["converted_contact_id"] == converted["person_id"]
    default = raw_search(copper_sandbox, "leads", {"page_size": 200, "ids": [record["id"]]})
    assert default.json() == []


def test_deleted_activities_come_back_as_stubs(copper_sandbox: CopperSandbox) -> None:
    activity = copper_sandbox.records("activities")[0]
    control(copper_sandbox, "DELETE", f"activities/{activity['id']}")
    day = activity["activity_date"]
    body = {"page_size": 200, "minimum_activity_date": day, "maximum_activity_date": day}
    found = [r for r in raw_search(copper_sandbox, "activities", body).json()]
    assert {"id": activity["id"], "is_deleted": True} in found
    assert activity["id"] not in all_ids(copper_sandbox, "activities")
    single = control(copper_sandbox, "GET", f"activities/{activity['id']}")
    assert single == {"id": activity["id"], "is_deleted": True}


def test_custom_field_filters_are_applied(copper_sandbox: CopperSandbox) -> None:
    meta = copper_sandbox.metadata
    definition = next(
        d
        for d in meta.custom_field_definitions
        if d["data_type"] == "Dropdown" and "company" in d["available_on"]
    )
    values = [
        f["value"]
        for r in copper_sandbox.records("companies")
        for f in r["custom_fields"]
        if f["custom_field_definition_id"] == definition["id"] and f["value"] is not None
    ]
    option = max(set(values), key=values.count)
    body = {
        "page_size": 200,
        "custom_fields": [{"custom_field_definition_id": definition["id"], "value": [option]}],
    }
    found = raw_search(copper_sandbox, "companies", body).json()
    expected = {
        r["id"]
        for r in copper_sandbox.records("companies")
        if any(
            f["custom_field_definition_id"] == definition["id"] and f["value"] == option
            for f in r["custom_fields"]
        )
    }
    assert expected and {r["id"] for r in found} == expected
    text = next(d for d in meta.custom_field_definitions if d["data_type"] == "Text")
    refused = raw_search(
        copper_sandbox,
        "companies",
        {"custom_fields": [{"custom_field_definition_id": text["id"], "value": "x"}]},
    )
    assert refused.status_code == 422
