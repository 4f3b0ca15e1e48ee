"""The Planhat emulator's generic models (conversations, licenses, ...) behave like companies
over real HTTP: single creates, bulk upserts, partial updates, deletes and injected failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines_tests.fake_time import ManualClock

Factory = Callable[..., PlanhatSandbox]


class Api:
    """A tiny authenticated caller of one sandbox's REST API."""

    def __init__(self, sandbox: PlanhatSandbox) -> None:
        self.base = sandbox.rest_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {sandbox.api_token}"

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
        return self.session.request(
            method, self.base + path, json=body, params=params or None, timeout=10
        )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sandbox(planhat_sandbox_factory: Factory, clock: ManualClock) -> PlanhatSandbox:
    return planhat_sandbox_factory(clock=clock)


@pytest.fixture
def api(sandbox: PlanhatSandbox) -> Api:
    return Api(sandbox)


def _company(sandbox: PlanhatSandbox) -> dict[str, Any]:
    return next(c for c in sandbox.companies() if c.get("externalId"))


def _licenses(company_ext: str) -> list[dict[str, Any]]:
    return [
        {"externalId": f"L-{i}", "companyId": f"extid-{company_ext}", "product": "Pro", "value": i}
        for i in range(3)
    ]


def test_post_one_conversation_resolves_its_company(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    body = {
        "companyExternalId": company["externalId"],
        "type": "note",
        "subject": "Renewal call",
        "custom": {"Source": "hull"},
    }
    resp = api.call("POST", "/conversations", body)
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert len(created["_id"]) == 24
    assert created["companyId"] == company["_id"]
    assert "companyExternalId" not in created
    assert created["createdAt"] == created["updatedAt"] == "2026-03-01T12:00:00.000Z"
    assert sandbox.records("conversations") == [created]
    assert api.call("GET", f"/conversations/{created['_id']}").json() == created
    assert api.call("GET", "/conversations").json() == [created]


def test_post_refusals(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    one = {"companyId": company["_id"], "type": "note"}
    assert api.call("POST", "/conversations", [one]).status_code == 400
    assert api.call("POST", "/conversations", {"type": "note"}).status_code == 400
    unknown = api.call("POST", "/conversations", {"companyExternalId": "nope", "type": "note"})
    assert unknown.status_code == 400
    assert "company" in unknown.json()["error"]
    assert sandbox.records("conversations") == []
    # a model with no company requirement still refuses a company that does not exist
    assert api.call("POST", "/tasks", {"title": "x", "companyId": "extid-nope"}).status_code == 400
    assert api.call("POST", "/tasks", {"title": "x"}).status_code == 200


def test_bulk_licenses_create_then_update_or_not(sandbox: PlanhatSandbox, api: Api) -> None:
    sandbox.bulk_keys = "full"  # the kinder key shape, asked for explicitly
    company = _company(sandbox)
    first = api.call("PUT", "/licenses", _licenses(company["externalId"]))
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["created"], body["updated"], body["nonupdates"]) == (3, 0, 0)
    assert [k["externalId"] for k in body["insertsKeys"]] == ["L-0", "L-1", "L-2"]
    assert len(body["upsertedIds"]) == 3
    assert {r["companyId"] for r in sandbox.records("licenses")} == {company["_id"]}

    changed = _licenses(company["externalId"])
    changed[1]["value"] = 99
    second = api.call("PUT", "/licenses", changed).json()
    assert (second["created"], second["updated"], second["nonupdates"]) == (0, 1, 2)
    assert second["modified"] == [r["_id"] for r in sandbox.records("licenses")][1:2]
    assert len(sandbox.records("licenses")) == 3


def test_bulk_refusals_and_statuses(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    items = [{"externalId": "A-1", "companyId": company["_id"]}, {"externalId": "A-2"}]
    partial = api.call("PUT", "/licenses", items)
    assert partial.status_code == 206
    assert partial.json()["createdErrors"][0]["item"] == {"externalId": "A-2"}
    assert api.call("PUT", "/licenses", [{"externalId": "A-3"}]).status_code == 400
    assert api.call("PUT", "/licenses", {"externalId": "A-3"}).status_code == 400
    too_many = [{"externalId": f"X{i}"} for i in range(5001)]
    assert api.call("PUT", "/assets", too_many).status_code == 400
    assert sandbox.records("assets") == []


def test_partial_update_by_extid_put_and_patch(
    sandbox: PlanhatSandbox, api: Api, clock: ManualClock
) -> None:
    company = _company(sandbox)
    api.call("PUT", "/licenses", _licenses(company["externalId"]))
    clock.advance(60)
    put = api.call("PUT", "/licenses/extid-L-1", {"value": 10, "custom": {"a": 1}})
    assert put.status_code == 200, put.text
    assert put.json()["value"] == 10 and put.json()["product"] == "Pro"
    assert put.json()["updatedAt"] == "2026-03-01T12:01:00.000Z"
    clock.advance(60)
    patch = api.call("PATCH", f"/licenses/{put.json()['_id']}", {"custom": {"b": 2}})
    assert patch.status_code == 200
    assert patch.json()["custom"] == {"a": 1, "b": 2}
    assert patch.json()["value"] == 10
    assert patch.json()["createdAt"] == "2026-03-01T12:00:00.000Z"


def test_unknown_ids_are_404(api: Api) -> None:
    assert api.call("GET", "/licenses/extid-missing").status_code == 404
    assert api.call("PUT", "/licenses/extid-missing", {"value": 1}).status_code == 404
    assert api.call("PATCH", "/issues/srcid-missing", {"value": 1}).status_code == 404
    assert api.call("DELETE", "/tasks/000000000000000000000000").status_code == 404
    assert api.call("GET", "/notes").status_code == 404


def test_no_op_write_bumps_updated_at(
    sandbox: PlanhatSandbox, api: Api, clock: ManualClock
) -> None:
    created = api.call("POST", "/projects", {"name": "Rollout", "externalId": "P-1"}).json()
    clock.advance(5)
    again = api.call("PUT", "/projects", [{"externalId": "P-1", "name": "Rollout"}]).json()
    assert again["nonupdates"] == 1
    stored = sandbox.records("projects")[0]
    assert stored["updatedAt"] == "2026-03-01T12:00:05.000Z"
    assert stored["createdAt"] == created["createdAt"]
    clock.advance(5)
    same = api.call("PATCH", "/projects/extid-P-1", {"name": "Rollout"}).json()
    assert same["updatedAt"] == "2026-03-01T12:00:10.000Z"


def test_delete_and_listing(sandbox: PlanhatSandbox, api: Api) -> None:
    sandbox.set_list_limit("opportunities", 2)
    api.call("PUT", "/opportunities", [{"externalId": f"O-{i}"} for i in range(3)])
    assert len(api.call("GET", "/opportunities", limit=10).json()) == 2
    assert len(api.call("GET", "/opportunities", limit=10, offset=2).json()) == 1
    rid = sandbox.records("opportunities")[0]["_id"]
    assert api.call("DELETE", f"/opportunities/{rid}").json()["deletedCount"] == 1
    assert [r["externalId"] for r in sandbox.records("opportunity")] == ["O-1", "O-2"]


def test_fail_items_on_generic_models(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    sandbox.fail_items("licenses", lambda item: item.get("externalId") == "L-1", "boom", times=1)
    body = api.call("PUT", "/licenses", _licenses(company["externalId"]))
    assert body.status_code == 206
    assert body.json()["created"] == 2
    assert body.json()["createdErrors"] == [
        {"item": _licenses(company["externalId"])[1], "error": "boom"}
    ]
    assert api.call("PUT", "/licenses", _licenses(company["externalId"])).status_code == 200

    sandbox.fail_items("conversations", lambda item: True, "refused")
    refused = api.call("POST", "/conversations", {"companyId": company["_id"], "type": "note"})
    assert refused.status_code == 400 and refused.json()["error"] == "refused"


def test_write_count_counts_generic_writes(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    sandbox.reset_write_count()
    api.call("POST", "/conversations", {"companyId": company["_id"], "type": "note"})
    api.call("POST", "/conversations", [])  # refused, still counted
    api.call("PUT", "/licenses", _licenses(company["externalId"]))
    api.call("PATCH", "/licenses/extid-L-0", {"value": 5})
    api.call("GET", "/licenses")
    assert sandbox.write_count() == 4


def test_add_records_seeds_a_generic_model(sandbox: PlanhatSandbox, api: Api) -> None:
    company = _company(sandbox)
    [seeded] = sandbox.add_records(
        "invoices", [{"externalId": "INV-1", "companyExternalId": company["externalId"]}]
    )
    assert seeded["cId"] == company["_id"]
    assert api.call("GET", "/invoices/extid-INV-1").json()["_id"] == seeded["_id"]
