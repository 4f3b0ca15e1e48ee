"""Attribute diffs and apply: only changes become rows; null vs missing; canonical values;
Planhat change detection; idempotence; deterministic apply."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.sync.canonical import value_json
from hull_planhat_pipelines.sync.hull.apply import apply_changes
from hull_planhat_pipelines.sync.hull.changes import ProfileStore, compute_changes
from hull_planhat_pipelines.sync.hull.from_copper import CopperRows
from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows
from hull_planhat_pipelines.sync.hull.model import stable_id
from hull_planhat_pipelines_tests.hull_support import (
    NOW,
    copper_frame,
    example_settings,
    planhat_frame,
    profile,
    sync_once,
    upserted,
)

SETTINGS = example_settings()
LEAD_HULL = stable_id("user", "copper-lead:1")


def leads(**fields: Any) -> CopperRows:
    record = {"id": 1, "name": "Ann", "primary_email": "ann@x.com", **fields}
    return CopperRows(leads=copper_frame("leads", [record]))


def store_with(**attributes: Any) -> ProfileStore:
    """One user, the lead 1 profile, holding ``attributes``."""
    _, store = sync_once(SETTINGS, ProfileStore(), leads())
    users = store.users.copy()
    users.loc[0, "attributes"] = value_json(
        {"copper_lead/name": "Ann", **{f"copper_lead/{k}": v for k, v in attributes.items()}}
    )
    return ProfileStore(users=users, accounts=store.accounts)


def lead_upserts(store: ProfileStore, rows: CopperRows) -> dict[str, Any]:
    changes = compute_changes(SETTINGS, store, rows)
    return {a: v for (_, a), v in upserted(changes.user_upserts).items()}


# -- null vs missing -----------------------------------------------------------------------------
def test_null_when_the_profile_lacks_the_attribute_writes_nothing() -> None:
    assert lead_upserts(store_with(), leads(status=None)) == {}


def test_null_when_the_profile_has_a_value_clears_it() -> None:
    changes = compute_changes(SETTINGS, store_with(status="New"), leads(status=None))
    row = changes.user_upserts.iloc[0]
    assert (row["attribute"], row["value"], row["previous"]) == (
        "copper_lead/status",
        None,
        '"New"',
    )
    applied = apply_changes(store_with(status="New"), changes, NOW)
    assert "copper_lead/status" not in profile(applied.users, "copper-lead:1")["attributes"]


def test_a_missing_field_leaves_the_attribute_alone() -> None:
    assert lead_upserts(store_with(score=5), leads()) == {}


def test_a_new_value_is_an_upsert_with_the_previous_one() -> None:
    changes = compute_changes(SETTINGS, store_with(status="New"), leads(status="Won"))
    row = changes.user_upserts.iloc[0]
    assert (row["value"], row["previous"], row["is_new_profile"]) == ('"Won"', '"New"', False)
    assert (row["hull_id"], row["email"], row["anonymous_id"]) == (
        LEAD_HULL,
        "ann@x.com",
        "copper-lead:1",
    )
    assert (row["source_object"], row["source_id"]) == ("lead", "1")


# -- canonical values ------------------------------------------------------------------------------
def test_object_key_order_is_not_a_change() -> None:
    stored = store_with(score={"amount": 1, "currency": "USD"})
    incoming = leads(**{"custom:Lead Score": {"currency": "USD", "amount": 1.0}})
    assert lead_upserts(stored, incoming) == {}


@pytest.mark.parametrize(("stored", "incoming"), [(1, 1.0), (1.0, 1), (0, -0.0), (2.5, 2.5)])
def test_an_integral_float_equals_the_integer(stored: float, incoming: float) -> None:
    assert lead_upserts(store_with(score=stored), leads(**{"custom:Lead Score": incoming})) == {}


def test_different_numbers_and_types_are_changes() -> None:
    assert lead_upserts(store_with(score=1), leads(**{"custom:Lead Score": 1.5})) == {
        "copper_lead/score": 1.5
    }
    assert lead_upserts(store_with(score=1), leads(**{"custom:Lead Score": "1"})) == {
        "copper_lead/score": "1"
    }


def test_store_attributes_may_be_dicts() -> None:
    stored = store_with(status="New")
    users = stored.users.copy()
    users["attributes"] = [json.loads(a) for a in users["attributes"]]
    assert lead_upserts(ProfileStore(users=users), leads(status="New")) == {}


# -- idempotence and apply -----------------------------------------------------------------------
def full_sources() -> tuple[CopperRows, PlanhatRows]:
    copper = CopperRows(
        leads=copper_frame("leads", [{"id": 1, "name": "A", "primary_email": "a@x.com"}]),
        people=copper_frame(
            "people",
            [
                {"id": 2, "primary_email": "a@x.com", "title": "CTO", "company_id": 7},
                {"id": 3, "primary_email": "b@x.com", "company_id": 8, "custom:User ID": "U3"},
            ],
        ),
        companies=copper_frame(
            "companies",
            [{"id": 7, "name": "Acme", "email_domain": "acme.com", "custom:Account ID": "A7"}],
        ),
        opportunities=copper_frame(
            "opportunities",
            [
                {
                    "id": 9,
                    "name": "D",
                    "company_id": 7,
                    "primary_contact_id": 2,
                    "opportunity_type": "Upsell",
                    "monetary_value": 10.0,
                }
            ],
        ),
        activities=copper_frame(
            "activities",
            [
                {
                    "id": 100,
                    "parent_type": "person",
                    "parent_id": 3,
                    "type_id": 0,
                    "type_category": "user",
                    "type_name": "Note",
                    "activity_date": NOW,
                }
            ],
        ),
        opportunities_complete=True,
    )
    planhat = PlanhatRows(
        companies=planhat_frame(
            [ph_company("c1", externalId="A7", phase="Onboarding")], "companies"
        ),
        endusers=planhat_frame(
            [ph_enduser("e1", email="b@x.com", companyId="c1", firstName="Bo")], "endusers"
        ),
    )
    return copper, planhat


def test_a_second_run_over_unchanged_sources_changes_nothing() -> None:
    copper, planhat = full_sources()
    first, store = sync_once(SETTINGS, ProfileStore(), copper, planhat)
    assert not first.is_empty
    second, again = sync_once(SETTINGS, store, copper, planhat, now=NOW + dt.timedelta(hours=1))
    assert second.is_empty, second
    assert again.users.equals(store.users) and again.accounts.equals(store.accounts)


def test_cross_source_identity_joins_copper_and_planhat() -> None:
    copper, planhat = full_sources()
    _, store = sync_once(SETTINGS, ProfileStore(), copper, planhat)
    account = profile(store.accounts, "planhat:c1")
    assert "copper:7" in account["anonymous_ids"] and account["external_id"] == "A7"
    assert account["attributes"]["planhat/phase"] == "Onboarding"
    user = profile(store.users, "planhat:e1")
    assert "copper-person:3" in user["anonymous_ids"]


def test_apply_stamps_only_changed_profiles_and_keeps_row_order() -> None:
    copper, planhat = full_sources()
    _, store = sync_once(SETTINGS, ProfileStore(), copper, planhat)
    later = NOW + dt.timedelta(days=1)
    changed = CopperRows(
        people=copper_frame(
            "people", [{"id": 2, "primary_email": "a@x.com", "title": "CEO", "company_id": 7}]
        )
    )
    changes, after = sync_once(SETTINGS, store, changed, now=later)
    assert changes.user_upserts["attribute"].tolist() == ["copper_person/title"]
    assert after.users["hull_id"].tolist() == store.users["hull_id"].tolist()
    stamped = after.users.set_index("hull_id")["updated_at"]
    target = changes.user_upserts["hull_id"].iloc[0]
    assert stamped[target] == later
    assert (stamped.drop(target) == NOW).all()
    assert (after.users["created_at"] == NOW).all()


def test_apply_is_deterministic() -> None:
    copper, planhat = full_sources()
    changes = compute_changes(SETTINGS, ProfileStore(), copper, planhat)
    one = apply_changes(ProfileStore(), changes, NOW)
    two = apply_changes(ProfileStore(), changes, NOW)
    assert one.users.equals(two.users) and one.accounts.equals(two.accounts)
    assert one.users["hull_id"].is_monotonic_increasing
    attributes = one.users["attributes"].tolist()
    assert all(a == value_json(json.loads(a)) for a in attributes)


# -- Planhat -------------------------------------------------------------------------------------
def ph_company(id: str, **fields: Any) -> dict[str, Any]:
    return {"_id": id, "name": f"Co {id}", "updatedAt": "2024-03-01T00:00:00Z", **fields}


def ph_enduser(id: str, **fields: Any) -> dict[str, Any]:
    return {"_id": id, "updatedAt": "2024-03-01T00:00:00Z", **fields}


def planhat_rows(current: list[dict], previous: list[dict] | None = None) -> PlanhatRows:
    return PlanhatRows(
        companies=planhat_frame(current, "companies"),
        previous_companies=planhat_frame(previous, "companies") if previous else None,
    )


def test_planhat_updated_at_alone_is_not_a_change() -> None:
    before = [ph_company("c1", phase="Live", mrr=10)]
    _, store = sync_once(SETTINGS, ProfileStore(), None, planhat_rows(before))
    bumped = [ph_company("c1", phase="Live", mrr=10, updatedAt="2024-03-02T08:00:00Z")]
    changes = compute_changes(SETTINGS, store, None, planhat_rows(bumped, before))
    assert changes.is_empty
    summaries = [
        e.details["records"]
        for e in changes.log
        if e.event == "incoming.account.success" and e.object_id is None
    ]
    assert summaries == [0]


def test_planhat_changed_fields_are_upserts() -> None:
    before = [ph_company("c1", phase="Live", mrr=10), ph_company("c2", phase="Live")]
    _, store = sync_once(SETTINGS, ProfileStore(), None, planhat_rows(before))
    after = [ph_company("c1", phase="Churned", mrr=10.0), ph_company("c2", phase="Live")]
    changes = compute_changes(SETTINGS, store, None, planhat_rows(after, before))
    assert changes.account_upserts[["attribute", "value", "previous"]].values.tolist() == [
        ["planhat/phase", '"Churned"', '"Live"']
    ]
    assert changes.account_upserts["source_object"].tolist() == ["planhat_company"]


def test_a_planhat_field_that_disappeared_is_cleared() -> None:
    before = [ph_company("c1", phase="Live", mrr=10)]
    _, store = sync_once(SETTINGS, ProfileStore(), None, planhat_rows(before))
    after = [ph_company("c1", phase="Live")]
    changes = compute_changes(SETTINGS, store, None, planhat_rows(after, before))
    assert changes.account_upserts[["attribute", "value"]].values.tolist() == [
        ["planhat/mrr", None]
    ]


def test_planhat_enduser_links_to_its_company() -> None:
    planhat = PlanhatRows(
        companies=planhat_frame([ph_company("c1")], "companies"),
        endusers=planhat_frame(
            [ph_enduser("e1", email="e@x.com", companyId="c1", externalId="U1", lastName="L")],
            "endusers",
        ),
    )
    _, store = sync_once(SETTINGS, ProfileStore(), None, planhat)
    user = profile(store.users, "planhat:e1")
    assert (user["email"], user["external_id"]) == ("e@x.com", "U1")
    # planhat/id names the record that wrote the group (a deletion detaches what it wrote)
    assert user["attributes"] == {"planhat/last_name": "L", "planhat/id": "e1"}
    assert user["account_hull_id"] == profile(store.accounts, "planhat:c1")["hull_id"]


def test_planhat_dotted_fields_read_nested_values() -> None:
    settings = SETTINGS.model_copy(
        update={
            "planhat": SETTINGS.planhat.model_copy(
                update={
                    "incoming": SETTINGS.planhat.incoming.model_copy(
                        update={"company_attributes": {"custom.Tier": "tier"}}
                    )
                }
            )
        }
    )
    record = ph_company("c1", custom={"Tier": "Gold"})
    _, store = sync_once(settings, ProfileStore(), None, planhat_rows([record]))
    assert profile(store.accounts, "planhat:c1")["attributes"] == {
        "planhat/tier": "Gold",
        "planhat/id": "c1",
    }


def test_empty_inputs_give_empty_typed_frames() -> None:
    changes = compute_changes(SETTINGS, ProfileStore(), CopperRows(), PlanhatRows())
    assert changes.is_empty
    applied = apply_changes(ProfileStore(), changes, NOW)
    assert applied.users.empty and isinstance(applied.users, pd.DataFrame)


def test_planhat_records_with_invalid_json_are_reported_not_fatal() -> None:
    frame = planhat_frame([ph_company("c1"), ph_company("c2")], "companies")
    frame.loc[0, "record"] = "{oops"
    changes, store = sync_once(SETTINGS, ProfileStore(), None, PlanhatRows(companies=frame))
    assert len(store.accounts) == 1
    [error] = [e for e in changes.log if e.event == "incoming.account.error"]
    assert (error.object_id, error.reason) == ("c1", "Invalid record JSON")


def test_planhat_records_with_invalid_json_are_reported_in_the_order_of_their_ids() -> None:
    """By ``_id``, a record without one last; none reaches a profile, the valid one does."""
    frame = planhat_frame(
        [ph_company("c3"), ph_company("c1"), ph_company("c4"), ph_company("c2")], "companies"
    )
    frame.loc[[0, 1, 2], "record"] = "{oops"
    frame.loc[2, "_id"] = None
    changes, store = sync_once(SETTINGS, ProfileStore(), None, PlanhatRows(companies=frame))
    errors = [e.object_id for e in changes.log if e.event == "incoming.account.error"]
    assert errors == ["c1", "c3", None]
    assert len(store.accounts) == 1
    profile(store.accounts, "planhat:c2")


def _store_with_a_shell_account(user_attributes: str, account_attributes: str) -> ProfileStore:
    """User U on the shell account of Copper company 7, beside account A of its domain."""
    return ProfileStore(
        users=pd.DataFrame(
            {
                "hull_id": ["U"],
                "email": ["u@seven.com"],
                "external_id": [None],
                "anonymous_ids": [["copper-person:2"]],
                "account_hull_id": ["SHELL"],
                "attributes": [user_attributes],
                "created_at": [NOW],
                "updated_at": [NOW],
            }
        ),
        accounts=pd.DataFrame(
            {
                "hull_id": ["A", "SHELL"],
                "domain": ["seven.com", None],
                "external_id": [None, None],
                "anonymous_ids": [[], ["copper:7"]],
                "attributes": [account_attributes, "{}"],
                "created_at": [NOW, NOW],
                "updated_at": [NOW, NOW],
            }
        ),
    )


COMPANY_7 = CopperRows(
    companies=copper_frame("companies", [{"id": 7, "name": "Seven", "email_domain": "seven.com"}])
)


def test_a_user_moved_with_its_merged_account_keeps_its_attributes_as_stored() -> None:
    """Only what changed is rewritten: a user following its account into the profile that
    absorbed it (no record of its own in the sync) keeps its attribute text as stored, while a
    profile whose attributes change has them written canonical."""
    stored = '{"copper_person/title": "CEO"}'  # not the canonical form: a space after ':'
    store = _store_with_a_shell_account(stored, '{"copper/name": "Old"}')
    later = NOW + dt.timedelta(days=1)
    changes, after = sync_once(SETTINGS, store, COMPANY_7, now=later)
    assert changes.merges[["from_hull_id", "into_hull_id"]].values.tolist() == [["SHELL", "A"]]
    user = after.users.set_index("hull_id").loc["U"]
    assert (user["account_hull_id"], user["attributes"]) == ("A", stored)
    assert user["updated_at"] == later and user["created_at"] == NOW
    account = after.accounts.set_index("hull_id").loc["A"]
    assert json.loads(account["attributes"])["copper/name"] == "Seven"
    assert account["attributes"] == value_json(json.loads(account["attributes"]))
    assert list(after.accounts["hull_id"]) == ["A"]


def test_changes_applied_to_a_store_without_their_profiles_are_refused() -> None:
    """A rewritten row whose stored attributes stay as they are needs them from the store the
    changes were computed against: applied to another, the apply says so instead of writing
    the profile without its attributes."""
    store = _store_with_a_shell_account('{"copper_person/title":"CEO"}', "{}")
    changes = compute_changes(SETTINGS, store, COMPANY_7)
    assert changes.user_rows["hull_id"].tolist() == ["U"]
    with pytest.raises(ValueError, match=r"another store .* user profiles \['U'\]"):
        apply_changes(ProfileStore(accounts=store.accounts), changes, NOW)


def test_a_record_that_changes_only_its_link_leaves_the_attribute_text_as_stored() -> None:
    """A person whose record comes again, unchanged but for its company, is rewritten for its
    account only: its attributes, compared and found equal, keep their stored text."""
    companies = [
        {"id": 7, "name": "Seven", "email_domain": "seven.com"},
        {"id": 8, "name": "Eight", "email_domain": "eight.com"},
    ]
    person = {"id": 2, "primary_email": "a@x.com", "title": "CEO", "company_id": 7}
    _, store = sync_once(
        SETTINGS,
        ProfileStore(),
        CopperRows(
            people=copper_frame("people", [person]),
            companies=copper_frame("companies", companies),
        ),
    )
    users = store.users.copy()
    stored = '{"copper_person/title": "CEO"}'  # equal to the canonical text, spaced otherwise
    users.loc[0, "attributes"] = stored
    moved = CopperRows(people=copper_frame("people", [{**person, "company_id": 8}]))
    changes, after = sync_once(SETTINGS, replace(store, users=users), moved)
    assert changes.user_upserts.empty and len(changes.links) == 1
    assert after.users.loc[0, "attributes"] == stored
    assert after.users.loc[0, "account_hull_id"] == changes.links.loc[0, "account_hull_id"]


def test_a_rewritten_profile_keeps_its_other_values_as_stored() -> None:
    """Rewriting one attribute leaves the text of the others as stored: a number written
    ``2.0`` and an object with its keys unsorted compare equal to their canonical forms and
    are written back as they were."""
    _, store = sync_once(SETTINGS, ProfileStore(), leads())
    users = store.users.copy()
    users.loc[0, "attributes"] = (
        '{"copper_lead/name":"Ann","copper_lead/score":2.0,"copper_lead/x":{"b":1,"a":[2.0]}}'
    )
    changes, after = sync_once(SETTINGS, replace(store, users=users), leads(status="Won"))
    assert upserted(changes.user_upserts) == {(LEAD_HULL, "copper_lead/status"): "Won"}
    assert after.users.loc[0, "attributes"] == (
        '{"copper_lead/name":"Ann","copper_lead/score":2.0,"copper_lead/status":"Won",'
        '"copper_lead/x":{"b":1,"a":[2.0]}}'
    )


@pytest.mark.parametrize(
    "stored",
    [
        '{"copper_lead/name":"Ann","copper_lead/score":1,"copper_lead/score":2}',
        '["copper_lead/name"]',
    ],
)
def test_stored_attributes_that_are_no_object_of_unique_keys_are_refused(stored: str) -> None:
    """The profile store writes each profile's attributes as one object with each key once.
    Text that is not such an object was not written by a sync: its values cannot be told, so
    the sync stops with an error instead of comparing with two values for one attribute (or
    with an array's positions as attributes) and writing them back."""
    _, store = sync_once(SETTINGS, ProfileStore(), leads())
    users = store.users.copy()
    users.loc[0, "attributes"] = stored
    with pytest.raises(duckdb.Error, match=r"unique|Expected OBJECT"):
        compute_changes(SETTINGS, replace(store, users=users), leads(status="Won"))
