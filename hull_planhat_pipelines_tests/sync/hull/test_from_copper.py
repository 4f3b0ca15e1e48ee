"""Copper rows -> Hull profiles: groups, merges, shells, opportunities, events, skips."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pandas as pd
import pytest

from hull_planhat_pipelines.sync.copper.records import MISSING, field_value
from hull_planhat_pipelines.sync.hull.batch import batch
from hull_planhat_pipelines.sync.hull.changes import ProfileStore, compute_changes
from hull_planhat_pipelines.sync.hull.from_copper import CopperRows
from hull_planhat_pipelines.sync.hull.model import stable_id
from hull_planhat_pipelines.sync.hull.sql import JsonFields
from hull_planhat_pipelines_tests.hull_support import (
    NOW,
    T0,
    copper_frame,
    example_settings,
    profile,
    settings_with,
    sync_once,
    upserted,
)

SETTINGS = example_settings()


def lead(id: int, email: str | None, **fields: Any) -> dict[str, Any]:
    return {"id": id, "name": f"Lead {id}", "primary_email": email, "status": "New", **fields}


def person(id: int, email: str | None, company_id: int | None = None, **fields: Any) -> dict:
    return {
        "id": id,
        "name": f"Person {id}",
        "primary_email": email,
        "title": "CTO",
        "contact_type": "Customer",
        "company_id": company_id,
        **fields,
    }


def company(id: int, domain: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"id": id, "name": f"Company {id}", "email_domain": domain, **fields}


def opportunity(id: int, type_: str | None, company_id: int | None, contact: int | None, **f: Any):
    return {
        "id": id,
        "name": f"Deal {id}",
        "company_id": company_id,
        "primary_contact_id": contact,
        "opportunity_type": type_,
        "status": "Open",
        "monetary_value": 1000,
        **f,
    }


def activity(id: int, parent: tuple[str, int], name: str = "Note", category: str = "user"):
    return {
        "id": id,
        "parent_type": parent[0],
        "parent_id": parent[1],
        "type_id": 0,
        "type_category": category,
        "type_name": name,
        "activity_date": T0,
        "details": f"details {id}",
        "user_id": 42,
    }


def rows(**objects: list[dict[str, Any]]) -> CopperRows:
    frames = {name: copper_frame(name, records) for name, records in objects.items()}
    return CopperRows(**frames)


def test_lead_and_person_with_one_email_are_one_user_with_two_groups() -> None:
    changes, store = sync_once(
        SETTINGS,
        ProfileStore(),
        rows(leads=[lead(1, "ann@x.com")], people=[person(2, "ann@x.com")]),
    )
    assert len(store.users) == 1
    user = profile(store.users, "copper-lead:1")
    assert sorted(user["anonymous_ids"]) == ["copper-lead:1", "copper-person:2"]
    assert user["email"] == "ann@x.com"
    assert user["attributes"]["copper_lead/name"] == "Lead 1"
    assert user["attributes"]["copper_person/title"] == "CTO"
    assert user["hull_id"] == stable_id("user", "copper-lead:1")
    assert set(changes.user_upserts["source_object"]) == {"lead", "person"}


def test_converted_lead_joins_its_person_even_with_another_email() -> None:
    converted = person(2, "ann@corp.com", leads_converted_from=[{"lead_id": 1}])
    _, store = sync_once(
        SETTINGS, ProfileStore(), rows(leads=[lead(1, "ann@home.com")], people=[converted])
    )
    assert len(store.users) == 1
    user = profile(store.users, "copper-person:2")
    assert "copper-lead:1" in user["anonymous_ids"]
    assert {"copper_lead/name", "copper_person/title"} <= set(user["attributes"])


def test_converted_lead_pulled_later_resolves_to_the_person() -> None:
    converted = person(2, "ann@corp.com", leads_converted_from=[{"lead_id": 1}])
    _, store = sync_once(SETTINGS, ProfileStore(), rows(people=[converted]))
    _, store = sync_once(SETTINGS, store, rows(leads=[lead(1, None)], people=[converted]))
    assert len(store.users) == 1
    assert "copper_lead/name" in profile(store.users, "copper-lead:1")["attributes"]


def test_person_company_makes_a_shell_account_that_the_company_fills() -> None:
    changes, store = sync_once(SETTINGS, ProfileStore(), rows(people=[person(2, "a@x.com", 7)]))
    shell = profile(store.accounts, "copper:7")
    assert shell["attributes"] == {} and shell["domain"] is None
    assert profile(store.users, "copper-person:2")["account_hull_id"] == shell["hull_id"]
    assert changes.account_upserts.empty
    assert changes.account_claims["is_new_profile"].tolist() == [True]

    acme = company(7, "acme.com", **{"custom:Account ID": "ACC-7", "custom:ARR": None})
    changes, store = sync_once(SETTINGS, store, rows(companies=[acme]))
    assert len(store.accounts) == 1
    filled = profile(store.accounts, "copper:7")
    assert filled["hull_id"] == shell["hull_id"]
    assert (filled["domain"], filled["external_id"]) == ("acme.com", "ACC-7")
    assert filled["attributes"]["copper/name"] == "Company 7"
    assert not changes.account_upserts["is_new_profile"].any()


def test_person_without_company_is_not_linked() -> None:
    changes, store = sync_once(SETTINGS, ProfileStore(), rows(people=[person(2, "a@x.com")]))
    assert changes.links.empty and store.accounts.empty
    assert profile(store.users, "copper-person:2")["account_hull_id"] is None


def test_linking_is_configuration() -> None:
    settings = settings_with(link_person_to_account=False)
    changes, store = sync_once(settings, ProfileStore(), rows(people=[person(2, "a@x.com", 7)]))
    assert changes.links.empty and store.accounts.empty


def test_company_domain_and_attributes_follow_the_configuration() -> None:
    acme = company(
        7,
        "acme.com",
        contact_type="Customer",
        **{
            "custom:assignee_planhat_id": "ph-user-1",
            "custom:ARR": {"currency": "EUR", "amount": 1200.0},
        },
    )
    _, store = sync_once(SETTINGS, ProfileStore(), rows(companies=[acme]))
    account = profile(store.accounts, "copper:7")
    assert account["domain"] == "acme.com"
    assert account["attributes"] == {
        "copper/arr": {"amount": 1200, "currency": "EUR"},
        "copper/contact_type": "Customer",
        "copper/domain": "acme.com",
        "copper/name": "Company 7",
        "copper/owner_planhat_id": "ph-user-1",
    }


def test_company_without_domain_has_no_domain_claim() -> None:
    changes, store = sync_once(SETTINGS, ProfileStore(), rows(companies=[company(7), company(8)]))
    assert len(store.accounts) == 2
    assert set(changes.account_claims["claim"]) == {"anonymous_id"}


def test_opportunity_lands_on_the_account_and_the_primary_contact() -> None:
    changes, store = sync_once(
        SETTINGS,
        ProfileStore(),
        rows(
            people=[person(2, "a@x.com", 7)],
            opportunities=[opportunity(9, "New Business", 7, 2, close_date="2024-05-01")],
        ),
    )
    group = "copper_opportunity_New Business"
    expected = {
        f"{group}/id": 9,
        f"{group}/name": "Deal 9",
        f"{group}/status": "Open",
        f"{group}/value": 1000,
        f"{group}/close_date": "2024-05-01",
    }
    assert profile(store.accounts, "copper:7")["attributes"] == expected
    user = profile(store.users, "copper-person:2")["attributes"]
    assert {k: v for k, v in user.items() if k.startswith(group)} == expected
    assert set(changes.account_upserts["source_object"]) == {"opportunity"}


def test_opportunity_for_a_contact_not_pulled_makes_a_shell_user() -> None:
    _, store = sync_once(
        SETTINGS, ProfileStore(), rows(opportunities=[opportunity(9, "Upsell", None, 5)])
    )
    shell = profile(store.users, "copper-person:5")
    _, store = sync_once(SETTINGS, store, rows(people=[person(5, "p5@x.com")]))
    assert len(store.users) == 1
    filled = profile(store.users, "copper-person:5")
    assert filled["hull_id"] == shell["hull_id"] and filled["email"] == "p5@x.com"


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_blank_opportunity_type_is_skipped(blank: str | None) -> None:
    changes, store = sync_once(
        SETTINGS, ProfileStore(), rows(opportunities=[opportunity(9, blank, 7, 2)])
    )
    assert store.accounts.empty and store.users.empty
    skips = [e for e in changes.log if e.event == "incoming.account.skip"]
    assert [(e.object_type, e.object_id, e.reason) for e in skips] == [
        ("opportunity", "9", "Blank opportunity type")
    ]


@pytest.mark.parametrize("order", [1, -1])
def test_two_opportunities_of_one_type_the_later_modified_wins(order: int) -> None:
    older = opportunity(9, "Upsell", 7, None, date_modified=T0.timestamp(), name="Old")
    newer = opportunity(8, "Upsell", 7, None, date_modified=T0.timestamp() + 60, name="New")
    changes, store = sync_once(
        SETTINGS, ProfileStore(), rows(opportunities=[older, newer][::order])
    )
    attributes = profile(store.accounts, "copper:7")["attributes"]
    assert attributes["copper_opportunity_Upsell/name"] == "New"
    assert attributes["copper_opportunity_Upsell/id"] == 8
    assert set(changes.account_upserts["source_id"]) == {"8"}


def test_a_deleted_opportunity_leaves_the_profiles_on_a_full_refresh() -> None:
    deals = [opportunity(9, "Upsell", 7, 2), opportunity(10, "Renewal", 7, 2)]
    _, store = sync_once(
        SETTINGS, ProfileStore(), rows(people=[person(2, "a@x.com", 7)], opportunities=deals)
    )
    # an incremental batch without opportunity 10 clears nothing
    partial = rows(opportunities=deals[:1])
    changes, _ = sync_once(SETTINGS, store, partial)
    assert changes.account_upserts.empty
    complete = CopperRows(opportunities=partial.opportunities, opportunities_complete=True)
    changes, store = sync_once(SETTINGS, store, complete)
    cleared = changes.account_upserts
    assert set(cleared["attribute"]) == {
        f"copper_opportunity_Renewal/{n}" for n in ("id", "name", "status", "value")
    }
    assert cleared["value"].isna().all() and cleared["previous"].notna().all()
    assert set(changes.user_upserts["attribute"]) == set(cleared["attribute"])
    remaining = profile(store.accounts, "copper:7")["attributes"]
    assert sorted(remaining) == sorted(
        f"copper_opportunity_Upsell/{n}" for n in ("id", "name", "status", "value")
    )
    again, _ = sync_once(SETTINGS, store, complete)
    assert again.is_empty


def test_user_activities_become_events_keyed_by_activity_id() -> None:
    changes, store = sync_once(
        SETTINGS,
        ProfileStore(),
        rows(people=[person(2, "a@x.com")], activities=[activity(100, ("person", 2))]),
    )
    event = changes.events.iloc[0]
    assert event["event_id"] == "copper-activity:100"
    assert event["user_hull_id"] == profile(store.users, "copper-person:2")["hull_id"]
    assert (event["name"], event["source"], event["source_id"]) == ("Note", "copper", "100")
    assert event["occurred_at"] == T0
    assert json.loads(event["properties"]) == {
        "activity_type_id": 0,
        "details": "details 100",
        "parent_id": 2,
        "parent_type": "person",
        "user_email": None,
        "user_id": 42,
    }


def test_an_edited_activity_updates_its_event_once() -> None:
    first = rows(activities=[activity(100, ("lead", 1))])
    _, store = sync_once(SETTINGS, ProfileStore(), first)
    edited = activity(100, ("lead", 1))
    edited["details"] = "edited"
    changes, store = sync_once(SETTINGS, store, rows(activities=[edited]))
    assert changes.events["event_id"].tolist() == ["copper-activity:100"]
    assert len(store.events) == 1
    assert json.loads(store.events.iloc[0]["properties"])["details"] == "edited"
    again, _ = sync_once(SETTINGS, store, rows(activities=[edited]))
    assert again.events.empty


def test_an_event_for_a_lead_not_pulled_yet_keeps_its_user() -> None:
    _, store = sync_once(SETTINGS, ProfileStore(), rows(activities=[activity(100, ("lead", 1))]))
    shell = profile(store.users, "copper-lead:1")
    _, store = sync_once(SETTINGS, store, rows(leads=[lead(1, "l@x.com")]))
    assert profile(store.users, "copper-lead:1")["hull_id"] == shell["hull_id"]
    assert store.events.iloc[0]["user_hull_id"] == shell["hull_id"]


def test_a_shell_with_events_merges_into_the_user_found_by_email() -> None:
    _, store = sync_once(
        SETTINGS,
        ProfileStore(),
        rows(leads=[lead(1, "ann@x.com")], activities=[activity(100, ("person", 2))]),
    )
    assert len(store.users) == 2
    changes, store = sync_once(
        SETTINGS,
        store,
        rows(people=[person(2, "ann@x.com")], activities=[activity(100, ("person", 2))]),
    )
    assert len(store.users) == 1 and len(changes.merges) == 1
    user = profile(store.users, "copper-person:2")
    assert store.events.iloc[0]["user_hull_id"] == user["hull_id"]


@pytest.mark.parametrize(
    ("parent", "name", "category", "reason"),
    [
        (("person", 2), "Note", "system", "System activity"),
        (("company", 7), "Note", "user", "Not owned by a person or a lead"),
        (("opportunity", 9), "Meeting", "user", "Not owned by a person or a lead"),
        (("person", 2), "Email", "user", "Activity type not configured"),
    ],
)
def test_ignored_activities_are_counted_not_ingested(
    parent: tuple[str, int], name: str, category: str, reason: str
) -> None:
    changes, store = sync_once(
        SETTINGS, ProfileStore(), rows(activities=[activity(100, parent, name, category)])
    )
    assert changes.events.empty and store.users.empty
    [skip] = [e for e in changes.log if e.event == "incoming.event.skip"]
    assert skip.reason == reason
    assert (skip.object_type, skip.object_id) == ("activity", "100")


def test_null_claims_are_not_identities() -> None:
    _, store = sync_once(SETTINGS, ProfileStore(), rows(leads=[lead(1, None), lead(2, None)]))
    assert len(store.users) == 2


def test_sql_field_resolution_matches_field_value() -> None:
    normalized = {
        "name": "n",
        "title": None,
        "custom:Plan": "Pro",
        "custom:assignee_planhat_id": "ph1",
        "custom:title": "shadowed",
    }
    names = ["name", "title", "custom:Plan", "assignee_planhat_id", "missing", "custom:missing"]
    fields = JsonFields()
    exprs = [fields.copper_field(n) for n in names]
    with batch() as work:
        work.sql(
            f"create table t as select {fields.extraction('f')} from (select ?::varchar as f)",
            [json.dumps(normalized)],
        )
        got = work.con.execute(f"select {', '.join(exprs)} from t").fetchone()
    for name, value in zip(names, got, strict=True):
        expected = field_value(normalized, name)
        assert (None if expected is MISSING else json.dumps(expected)) == value, name


def test_mapping_never_raises_for_odd_records() -> None:
    odd = lead(1, None, **{"custom:Lead Score": {"nested": [1.0, {"b": 1, "a": 2}]}})
    changes = compute_changes(SETTINGS, ProfileStore(), rows(leads=[odd]))
    values = upserted(changes.user_upserts)
    assert values[(stable_id("user", "copper-lead:1"), "copper_lead/score")] == {
        "nested": [1, {"a": 2, "b": 1}]
    }


def test_rerun_with_the_same_input_gives_the_same_ids() -> None:
    data = rows(people=[person(2, "a@x.com", 7)], companies=[company(8, "b.com")])
    first = compute_changes(SETTINGS, ProfileStore(), data)
    second = compute_changes(SETTINGS, ProfileStore(), data)
    assert first.user_claims.equals(second.user_claims)
    assert first.account_claims.equals(second.account_claims)
    _, one = sync_once(SETTINGS, ProfileStore(), data, now=NOW)
    _, two = sync_once(SETTINGS, ProfileStore(), data, now=NOW + dt.timedelta(days=1))
    assert one.users["hull_id"].tolist() == two.users["hull_id"].tolist()


def test_a_shell_account_merges_into_the_account_its_company_resolves_to() -> None:
    from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows
    from hull_planhat_pipelines_tests.hull_support import planhat_frame

    planhat = PlanhatRows(
        companies=planhat_frame([{"_id": "c1", "name": "Acme", "externalId": "ACC-7"}], "companies")
    )
    _, store = sync_once(SETTINGS, ProfileStore(), rows(people=[person(2, "a@x.com", 7)]), planhat)
    assert len(store.accounts) == 2  # the shell copper:7 and the Planhat account
    planhat_account = profile(store.accounts, "planhat:c1")["hull_id"]

    acme = company(7, "acme.com", **{"custom:Account ID": "ACC-7"})
    changes, store = sync_once(SETTINGS, store, rows(companies=[acme]))
    assert changes.merges[["kind", "into_hull_id"]].values.tolist() == [
        ["account", planhat_account]
    ]
    assert len(store.accounts) == 1
    merged = profile(store.accounts, "copper:7")
    assert merged["hull_id"] == planhat_account
    assert sorted(merged["anonymous_ids"]) == ["copper:7", "planhat:c1"]
    assert merged["attributes"]["copper/name"] == "Company 7"
    assert merged["attributes"]["planhat/name"] == "Acme"
    assert profile(store.users, "copper-person:2")["account_hull_id"] == planhat_account
    assert changes.links["source_object"].tolist() == ["merge"]


def test_records_with_invalid_fields_are_reported_not_fatal() -> None:
    frame = copper_frame("leads", [lead(1, "a@x.com"), lead(2, "b@x.com")])
    frame.loc[1, "fields"] = "{not json"
    changes, store = sync_once(SETTINGS, ProfileStore(), CopperRows(leads=frame))
    assert len(store.users) == 1
    [error] = [e for e in changes.log if e.event == "incoming.user.error"]
    assert (error.reason, error.object_type, error.object_id) == (
        "Invalid fields JSON",
        "lead",
        "2",
    )


def test_summaries_count_what_changed() -> None:
    changes, _ = sync_once(
        SETTINGS, ProfileStore(), rows(leads=[lead(1, "a@x.com")], people=[person(2, "a@x.com")])
    )
    [summary] = [
        e for e in changes.log if e.event == "incoming.user.success" and e.object_id is None
    ]
    assert summary.details["records"] == 2
    assert summary.details["profiles_created"] == 1
    assert summary.details["attribute_upserts"] == len(changes.user_upserts)


def test_handed_rows_are_let_go_once_staged(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first load's raw rows are the largest frames of a sync: handed over, each is freed
    once copied into the batch (before any record is mapped, not after all are), and the
    changes are the same as with rows passed in."""
    import gc
    import weakref

    from hull_planhat_pipelines.sync.hull import changes as changes_module
    from hull_planhat_pipelines.sync.hull import from_copper as from_copper_module

    def records() -> CopperRows:
        return rows(leads=[lead(1, "ann@x.com")], people=[person(2, "bo@x.com", company_id=3)])

    expected = compute_changes(SETTINGS, ProfileStore(), records())
    handed = changes_module.HandedRows(records())
    alive = [weakref.ref(handed.copper.leads), weakref.ref(handed.copper.people)]
    seen: list[bool] = []
    resolve = changes_module.resolve
    stage_users = from_copper_module._stage_users

    def spy(work: Any, kind: str) -> None:
        gc.collect()
        seen.extend(ref() is not None for ref in alive)
        resolve(work, kind)

    def staging(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        seen.extend(ref() is not None for ref in alive)
        return stage_users(*args, **kwargs)

    monkeypatch.setattr(changes_module, "resolve", spy)
    monkeypatch.setattr(from_copper_module, "_stage_users", staging)
    changes = compute_changes(SETTINGS, ProfileStore(), handed)

    assert handed.copper is None and len(seen) > 4 and not any(seen)
    pd.testing.assert_frame_equal(changes.user_upserts, expected.user_upserts)
    pd.testing.assert_frame_equal(changes.record_log, expected.record_log)


def test_records_with_no_address_are_skipped_in_the_order_of_their_ids() -> None:
    """Skipped by number, as Copper numbers them (9 before 10); none of them reaches a
    profile."""
    changes, store = sync_once(
        SETTINGS,
        ProfileStore(),
        rows(
            people=[
                person(100, "not an address"),
                person(9, "ann@"),
                person(10, "bob at x.com"),
                person(11, "cat@x.com"),
            ]
        ),
    )
    skips = [(e.object_id, e.reason) for e in changes.log if e.event == "incoming.user.skip"]
    assert skips == [
        ("9", "Invalid email"),
        ("10", "Invalid email"),
        ("100", "Invalid email"),
    ]
    assert list(store.users["email"]) == ["cat@x.com"]
