"""Hull -> Planhat payloads: filters, mapping, owners, change detection, activities, metrics.

Pure and fast: frames built in memory; the round trips use the emulated Planhat store in
process (no HTTP) and the client's own bulk-response reconciliation.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.clients.delivery import OUTCOME_COLUMNS
from hull_planhat_pipelines.clients.planhat_outcomes import DELIVERED, reconcile_bulk
from hull_planhat_pipelines.sandbox.planhat_store import PlanhatStore
from hull_planhat_pipelines.settings import (
    ActivityQuerySettings,
    MetricSettings,
    Settings,
    parse_settings,
)
from hull_planhat_pipelines.sync.batching import record_payloads
from hull_planhat_pipelines.sync.log import SyncEvent
from hull_planhat_pipelines.sync.planhat.activities import (
    EVENT_NO_USER_IDENTITY,
    activity_payloads,
    sql_activity_keys,
    sql_activity_payloads,
)
from hull_planhat_pipelines.sync.planhat.companies import (
    DUPLICATE_EXTERNAL_ID,
    INVALID_CO_OWNER,
    INVALID_OWNER,
    company_payloads,
)
from hull_planhat_pipelines.sync.planhat.endusers import (
    ACCOUNT_NO_EXTERNAL_ID,
    NO_USER_IDENTITY,
    TAKEN_ENDUSER,
    addressed_by_id,
    after_movers,
    enduser_payloads,
    held_under,
    matchable_keys,
    moved_fingerprints,
    not_taking_over,
    planhat_enduser_ids,
)
from hull_planhat_pipelines.sync.planhat.fingerprints import (
    DELIVERED_STATUSES,
    FINGERPRINT_COLUMNS,
    PAYLOAD_COLUMNS,
    empty_fingerprints,
    fingerprint,
)
from hull_planhat_pipelines.sync.planhat.metrics import (
    METRIC_NOT_A_NUMBER,
    all_metric_payloads,
    metric_keys,
    metric_payloads,
)
from hull_planhat_pipelines.sync.planhat.shared import (
    NO_EXTERNAL_ID,
    compile_fields,
    payloads_as_json,
)
from hull_planhat_pipelines.warehouse.planhat_queries import activity_answers, metric_answers
from hull_planhat_pipelines_tests.planhat_support import advance_fingerprints

NOW = dt.datetime(2024, 3, 2, 12, 30, tzinfo=dt.UTC)
OWNER = "5f1c00000000000000000001"
INACTIVE = "5f1c00000000000000000002"
REMOVED = "5f1c00000000000000000003"
CO_OWNER = "5f1c00000000000000000004"


def make_settings(**planhat: Any) -> Settings:
    base: dict[str, Any] = {
        "contact_segments": ["Customers"],
        "company_segments": ["Customer accounts"],
        "tracking_events": ["Meeting", "Phone Call"],
        "user_attributes": {
            "copper_person/title": "position",
            "copper_person/plan": "custom.Plan",
        },
        "account_attributes": {"copper/name": "name", "copper/arr": "custom.ARR"},
        "owner_attribute": "copper/owner_planhat_id",
        "co_owner_attribute": None,
    }
    base.update(planhat)
    return parse_settings({"copper": {"start_date": "2024-01-01"}, "planhat": base})


def account(
    hull_id: str,
    external_id: str | None = None,
    segments: tuple[str, ...] = ("Customer accounts",),
    updated_at: dt.datetime = NOW,
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "hull_id": hull_id,
        "domain": None,
        "external_id": external_id,
        "anonymous_ids": [f"copper:{hull_id}"],
        "attributes": json.dumps({k.replace("__", "/"): v for k, v in attributes.items()}),
        "segments": list(segments),
        "created_at": NOW,
        "updated_at": updated_at,
    }


def user(
    hull_id: str,
    email: str | None,
    account_hull_id: str | None = "a1",
    external_id: str | None = None,
    segments: tuple[str, ...] = ("Customers",),
    **attributes: Any,
) -> dict[str, Any]:
    return {
        "hull_id": hull_id,
        "email": email,
        "external_id": external_id,
        "anonymous_ids": [],
        "account_hull_id": account_hull_id,
        "attributes": json.dumps({k.replace("__", "/"): v for k, v in attributes.items()}),
        "segments": list(segments),
        "created_at": NOW,
        "updated_at": NOW,
    }


def planhat_users() -> pd.DataFrame:
    rows = [
        (OWNER, False, False),
        (INACTIVE, True, False),
        (REMOVED, False, True),
        (CO_OWNER, False, False),
    ]
    frame = pd.DataFrame(rows, columns=["_id", "inactive", "removed"])
    frame["email"] = frame["_id"] + "@team.example"
    for column in ("inactive", "removed"):
        frame[column] = frame[column].astype("boolean")
    return frame


def accounts_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def outcomes_for(payloads: pd.DataFrame, statuses: dict[str, str] | None = None) -> pd.DataFrame:
    """Outcome rows as the delivery engine writes them (default: every record updated)."""
    statuses = statuses or {}
    rows = [
        {"target": t, "key": k, "status": statuses.get(k, "updated")}
        for t, k in zip(payloads["target"], payloads["key"], strict=True)
    ]
    return pd.DataFrame(rows, columns=OUTCOME_COLUMNS)


def reasons(events: list[SyncEvent]) -> dict[str | None, str | None]:
    return {e.object_id: e.reason for e in events if e.event.endswith(".skip")}


def by_key(payloads: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return dict(zip(payloads["key"], payloads["payload"], strict=True))


# -- companies -------------------------------------------------------------------------------
def test_company_segment_filter_and_mapping() -> None:
    accounts = accounts_frame(
        account("a1", "A1", copper__name="Acme", copper__arr={"amount": 1200.0, "currency": "USD"}),
        account("a2", "A2", segments=("Prospects",), copper__name="Other"),
        account("a3", "A3", segments=(), copper__name="Nobody"),
    )
    payloads, events = company_payloads(accounts, planhat_users(), make_settings(), None)
    assert list(payloads.columns[: len(PAYLOAD_COLUMNS)]) == PAYLOAD_COLUMNS
    assert by_key(payloads) == {
        "A1": {"name": "Acme", "custom": {"ARR": 1200.0}, "externalId": "A1"}
    }
    row = payloads.iloc[0]
    assert (row["target"], row["hull_id"], row["change"]) == ("companies", "a1", "new")
    assert json.loads(row["fields"]) == ["custom.ARR", "name"]
    progress = events[-1]
    assert progress.event == "outgoing.account.progress"
    assert progress.details["in_segment"] == 1 and progress.details["selected"] == 1


def test_missing_blank_and_falsy_values() -> None:
    accounts = accounts_frame(
        account("a1", "A1", copper__name="", copper__arr=0),
        account("a2", "A2", copper__arr={"amount": None, "currency": "USD"}),
    )
    payloads, _ = company_payloads(accounts, None, make_settings(owner_attribute=None), None)
    assert by_key(payloads) == {
        "A1": {"custom": {"ARR": 0}, "externalId": "A1"},
        "A2": {"externalId": "A2"},
    }


def test_account_without_external_id_is_skipped() -> None:
    accounts = accounts_frame(account("a1", None, copper__name="Acme"))
    payloads, events = company_payloads(accounts, planhat_users(), make_settings(), None)
    assert payloads.empty and list(payloads.columns[:7]) == PAYLOAD_COLUMNS
    (skip,) = [e for e in events if e.event == "outgoing.account.skip"]
    assert (skip.object_id, skip.reason) == ("a1", NO_EXTERNAL_ID)


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (OWNER, OWNER),  # valid
        (INACTIVE, INACTIVE),  # inactive users are still assignable
        (None, None),  # no owner: no field, not a skip
        ("", None),
    ],
)
def test_owner_sent_when_valid(owner: str | None, expected: str | None) -> None:
    attributes = {} if owner is None else {"copper__owner_planhat_id": owner}
    accounts = accounts_frame(account("a1", "A1", copper__name="Acme", **attributes))
    payloads, events = company_payloads(accounts, planhat_users(), make_settings(), None)
    assert not reasons(events)
    assert payloads.iloc[0]["payload"].get("owner") == expected
    assert "owner" in payloads.iloc[0]["payload"] or expected is None


@pytest.mark.parametrize("owner", [REMOVED, "not-a-user-id"])
def test_invalid_or_removed_owner_skips_the_account(owner: str) -> None:
    accounts = accounts_frame(
        account("a1", "A1", copper__name="Acme", copper__owner_planhat_id=owner),
        account("a2", "A2", copper__name="Fine", copper__owner_planhat_id=OWNER),
    )
    payloads, events = company_payloads(accounts, planhat_users(), make_settings(), None)
    assert list(payloads["key"]) == ["A2"]
    assert reasons(events) == {"a1": INVALID_OWNER}


def test_invalid_co_owner_skips_the_account() -> None:
    settings = make_settings(co_owner_attribute="copper/co_owner_id")
    accounts = accounts_frame(
        account("a1", "A1", copper__owner_planhat_id=OWNER, copper__co_owner_id="nope"),
        account("a2", "A2", copper__owner_planhat_id=OWNER, copper__co_owner_id=CO_OWNER),
    )
    payloads, events = company_payloads(accounts, planhat_users(), settings, None)
    assert reasons(events) == {"a1": INVALID_CO_OWNER}
    assert by_key(payloads)["A2"] == {"externalId": "A2", "owner": OWNER, "coOwner": CO_OWNER}


def test_owner_checked_against_the_user_list_only() -> None:
    """No Planhat users known (table empty): every owner value is invalid, none is sent."""
    accounts = accounts_frame(account("a1", "A1", copper__owner_planhat_id=OWNER))
    payloads, events = company_payloads(accounts, None, make_settings(), None)
    assert payloads.empty and reasons(events) == {"a1": INVALID_OWNER}


def test_duplicate_external_id_sends_the_newest() -> None:
    older = NOW - dt.timedelta(days=1)
    accounts = accounts_frame(
        account("old", "A1", updated_at=older, copper__name="Old"),
        account("new", "A1", copper__name="New"),
    )
    payloads, events = company_payloads(accounts, None, make_settings(owner_attribute=None), None)
    assert by_key(payloads)["A1"]["name"] == "New"
    assert reasons(events) == {"old": DUPLICATE_EXTERNAL_ID}


def test_dotted_fields_nest_and_bad_mappings_are_refused() -> None:
    settings = make_settings(
        owner_attribute=None,
        account_attributes={
            "copper/arr": "custom.ARR",
            "copper/tier": "custom.Tier",
            "copper/deep": "custom.Group.Inner",
            "copper/status": "status",
        },
    )
    accounts = accounts_frame(
        account(
            "a1",
            "A1",
            copper__arr=5,
            copper__tier="Gold",
            copper__deep=True,
            copper__status="customer",
        )
    )
    payloads, _ = company_payloads(accounts, None, settings, None)
    assert by_key(payloads)["A1"] == {
        "custom": {"ARR": 5, "Tier": "Gold", "Group": {"Inner": True}},
        "status": "customer",
        "externalId": "A1",
    }
    for mapping in (
        {"x": "custom", "y": "custom.ARR"},
        {"x": "externalId"},
        {"x": "updatedAt"},
        {"x": "custom..ARR"},
    ):
        with pytest.raises(ValueError):
            compile_fields(mapping, reserved={"externalId", "owner", "coOwner"})


def test_company_depends_on_account_segments_only() -> None:
    """A user in a contact segment is sent as an enduser; its account, in no company
    segment, is not sent as a company."""
    accounts = accounts_frame(account("a1", "A1", segments=("Prospects",), copper__name="Acme"))
    users = pd.DataFrame([user("u1", "ann@acme.example", "a1", copper_person__title="CTO")])
    settings = make_settings(owner_attribute=None)
    companies, _ = company_payloads(accounts, None, settings, None)
    endusers, _ = enduser_payloads(users, accounts, settings, None)
    assert companies.empty
    assert by_key(endusers) == {
        "email:ann@acme.example": {
            "position": "CTO",
            "email": "ann@acme.example",
            "companyExternalId": "A1",
        }
    }


# -- endusers --------------------------------------------------------------------------------
def test_enduser_identity_keys_and_skips() -> None:
    accounts = accounts_frame(account("a1", "A1"), account("a2", None))
    users = pd.DataFrame(
        [
            user("u1", "ann@acme.example", "a1", copper_person__plan="Pro"),
            user("u2", None, "a1", external_id="E2"),
            user("u3", "both@acme.example", "a1", external_id="E3"),
            user("u4", None, "a1"),
            user("u5", "lost@acme.example", "a2"),
            user("u6", "orphan@acme.example", None),
            user("u7", "out@acme.example", "a1", segments=("Leads",)),
        ]
    )
    payloads, events = enduser_payloads(users, accounts, make_settings(), None)
    assert by_key(payloads) == {
        "email:ann@acme.example": {
            "custom": {"Plan": "Pro"},
            "email": "ann@acme.example",
            "companyExternalId": "A1",
        },
        "external_id:E2": {"externalId": "E2", "companyExternalId": "A1"},
        "external_id:E3": {
            "email": "both@acme.example",
            "externalId": "E3",
            "companyExternalId": "A1",
        },
    }
    assert reasons(events) == {
        "u4": NO_USER_IDENTITY,
        "u5": ACCOUNT_NO_EXTERNAL_ID,
        "u6": ACCOUNT_NO_EXTERNAL_ID,
    }
    assert set(payloads["company_external_id"]) == {"A1"}


# -- change detection ------------------------------------------------------------------------
def test_unchanged_records_are_not_sent_again_and_force_sends_all() -> None:
    settings = make_settings(owner_attribute=None)
    accounts = accounts_frame(
        account("a1", "A1", copper__name="Acme"), account("a2", "A2", copper__name="Beta")
    )
    first, _ = company_payloads(accounts, None, settings, None)
    fingerprints = advance_fingerprints(None, outcomes_for(first), first, NOW)
    assert list(fingerprints.columns) == FINGERPRINT_COLUMNS and len(fingerprints) == 2

    again, events = company_payloads(accounts, None, settings, fingerprints)
    assert again.empty and events[-1].details["unchanged"] == 2

    changed = accounts_frame(
        account("a1", "A1", copper__name="Acme Inc"), account("a2", "A2", copper__name="Beta")
    )
    delta, _ = company_payloads(changed, None, settings, fingerprints)
    assert list(delta["key"]) == ["A1"] and list(delta["change"]) == ["changed"]

    forced, _ = company_payloads(accounts, None, settings, fingerprints, force=True)
    assert sorted(forced["key"]) == ["A1", "A2"]
    assert set(forced["change"]) == {"forced"}


def test_fingerprint_is_stable_across_key_order_and_number_form() -> None:
    one = {"name": "Acme", "custom": {"ARR": 1200.0, "Tier": "Gold"}, "externalId": "A1"}
    two = {"externalId": "A1", "custom": {"Tier": "Gold", "ARR": 1200}, "name": "Acme"}
    assert fingerprint(one) == fingerprint(two)
    assert fingerprint(one) != fingerprint({**one, "name": "Acme Inc"})
    reordered = accounts_frame(
        {**account("a1", "A1"), "attributes": '{"copper/arr": 7, "copper/name": "X"}'}
    )
    original = accounts_frame(
        {**account("a1", "A1"), "attributes": '{"copper/name": "X", "copper/arr": 7.0}'}
    )
    settings = make_settings(owner_attribute=None)
    first, _ = company_payloads(original, None, settings, None)
    fingerprints = advance_fingerprints(None, outcomes_for(first), first, NOW)
    assert company_payloads(reordered, None, settings, fingerprints)[0].empty


def test_fingerprints_advance_only_on_delivered_outcomes() -> None:
    assert DELIVERED_STATUSES == DELIVERED
    settings = make_settings(owner_attribute=None)
    accounts = accounts_frame(*(account(f"a{i}", f"A{i}", copper__name=f"N{i}") for i in range(5)))
    payloads, _ = company_payloads(accounts, None, settings, None)
    statuses = {"A0": "created", "A1": "unchanged", "A2": "error", "A3": "ignored", "A4": "sent"}
    fingerprints = advance_fingerprints(
        empty_fingerprints(), outcomes_for(payloads, statuses), payloads, NOW
    )
    assert sorted(fingerprints["key"]) == ["A0", "A1", "A4"]
    assert (fingerprints["delivered_at"] == pd.Timestamp(NOW)).all()
    retry, _ = company_payloads(accounts, None, settings, fingerprints)
    assert sorted(retry["key"]) == ["A2", "A3"]
    # a failed retry keeps the old fingerprint: the record still differs next run
    later = NOW + dt.timedelta(hours=1)
    kept = advance_fingerprints(fingerprints, outcomes_for(retry, {"A2": "error"}), retry, later)
    assert sorted(kept["key"]) == ["A0", "A1", "A3", "A4"]
    assert kept.set_index("key").loc["A0", "delivered_at"] == pd.Timestamp(NOW)


def _deliver(store: PlanhatStore, model: str, payloads: pd.DataFrame) -> pd.DataFrame:
    """One bulk upsert against the emulated store, read back as outcome rows."""
    items = [dict(p) for p in payloads["payload"]]
    result = store.bulk_upsert(model, items)
    outcomes, _ = reconcile_bulk(items, result.body(), result.status)
    return pd.DataFrame(
        {
            "target": payloads["target"].tolist(),
            "key": payloads["key"].tolist(),
            "status": [o.status for o in outcomes],
            "error": [o.error for o in outcomes],
        }
    )


def _store() -> PlanhatStore:
    clock = iter(NOW + dt.timedelta(seconds=i) for i in range(10_000))
    return PlanhatStore(clock=lambda: next(clock))


def test_one_bad_record_in_a_bulk_response_is_the_only_one_sent_again() -> None:
    store = _store()
    store.inject("companies", lambda item: item.get("externalId") == "A2", "bad ARR", times=None)
    settings = make_settings(owner_attribute=None)
    accounts = accounts_frame(*(account(f"a{i}", f"A{i}", copper__name=f"N{i}") for i in range(4)))
    payloads, _ = company_payloads(accounts, None, settings, None)
    outcomes = _deliver(store, "companies", payloads)
    assert dict(zip(outcomes["key"], outcomes["status"], strict=True)) == {
        "A0": "created",
        "A1": "created",
        "A2": "error",
        "A3": "created",
    }
    fingerprints = advance_fingerprints(None, outcomes, payloads, NOW)
    retry, _ = company_payloads(accounts, None, settings, fingerprints)
    assert list(retry["key"]) == ["A2"]


def test_loop_safety_planhat_records_fed_back_make_no_payloads() -> None:
    """Planhat bumps ``updatedAt`` on every write; fed back into the profiles (as the
    incoming sync does, ``planhat/*`` attributes and a newer ``updated_at``) nothing is sent."""
    store = _store()
    settings = make_settings(owner_attribute=None)
    accounts = accounts_frame(
        account("a1", "A1", copper__name="Acme", copper__arr={"amount": 10.0, "currency": "USD"})
    )
    users = pd.DataFrame([user("u1", "ann@acme.example", "a1", copper_person__title="CTO")])
    companies, _ = company_payloads(accounts, None, settings, None)
    endusers, _ = enduser_payloads(users, accounts, settings, None)
    fingerprints = advance_fingerprints(
        None, _deliver(store, "companies", companies), companies, NOW
    )
    fingerprints = advance_fingerprints(
        fingerprints, _deliver(store, "endusers", endusers), endusers, NOW
    )
    assert len(fingerprints) == 2
    # a second, unchanged write: Planhat bumps updatedAt again
    store.bulk_upsert("companies", [dict(p) for p in companies["payload"]])
    (company,) = store.all("companies")
    (enduser,) = store.all("endusers")
    assert company["updatedAt"] and enduser["updatedAt"]

    def fed_back(frame: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
        out = frame.copy()
        attributes = json.loads(out.loc[0, "attributes"])
        for field in ("name", "updatedAt", "lastUpdated", "position", "_id"):
            if field in record:
                attributes[f"planhat/{field}"] = record[field]
        out.loc[0, "attributes"] = json.dumps(attributes)
        out.loc[0, "updated_at"] = NOW + dt.timedelta(hours=1)
        return out

    again, _ = company_payloads(fed_back(accounts, company), None, settings, fingerprints)
    users_again, _ = enduser_payloads(
        fed_back(users, enduser), fed_back(accounts, company), settings, fingerprints
    )
    assert again.empty and users_again.empty
    for payload in [*companies["payload"], *endusers["payload"]]:
        assert not {"updatedAt", "lastUpdated", "_id"} & payload.keys()


def test_a_cleared_attribute_is_sent_as_null_once() -> None:
    settings = make_settings(owner_attribute=None)
    before = accounts_frame(account("a1", "A1", copper__name="Acme", copper__arr=100))
    first, _ = company_payloads(before, None, settings, None)
    fingerprints = advance_fingerprints(None, outcomes_for(first), first, NOW)
    after = accounts_frame(account("a1", "A1", copper__name="Acme"))
    cleared, _ = company_payloads(after, None, settings, fingerprints)
    assert by_key(cleared)["A1"] == {"name": "Acme", "custom": {"ARR": None}, "externalId": "A1"}
    fingerprints = advance_fingerprints(fingerprints, outcomes_for(cleared), cleared, NOW)
    assert company_payloads(after, None, settings, fingerprints)[0].empty
    # a field no longer mapped is never cleared
    unmapped = make_settings(owner_attribute=None, account_attributes={"copper/name": "name"})
    renamed = accounts_frame(account("a1", "A1", copper__name="Acme 2"))
    fresh_fp = advance_fingerprints(None, outcomes_for(first), first, NOW)
    payloads, _ = company_payloads(renamed, None, unmapped, fresh_fp)
    assert by_key(payloads)["A1"] == {"name": "Acme 2", "externalId": "A1"}


# -- activities ------------------------------------------------------------------------------
def _events() -> pd.DataFrame:
    rows = [
        ("e1", "u1", "Meeting", {"subject": "Kickoff"}, "2024-03-01T10:00:00.123456Z"),
        ("e2", "u1", "Note", {}, "2024-03-01T11:00:00Z"),
        ("e3", "u2", "Phone Call", {"minutes": 5}, "2024-03-01T09:00:00Z"),
        ("e4", "u3", "Meeting", None, "2024-03-01T12:00:00Z"),
        ("e5", "u4", "Meeting", {}, "2024-03-01T13:00:00Z"),
        ("e1", "u1", "Meeting", {"subject": "Kickoff"}, "2024-03-01T10:00:00.123456Z"),
        ("e6", "ghost", "Meeting", {}, "2024-03-01T13:00:00Z"),
    ]
    frame = pd.DataFrame(rows, columns=["event_id", "user_hull_id", "name", "properties", "t"])
    frame["properties"] = [None if p is None else json.dumps(p) for p in frame["properties"]]
    frame["occurred_at"] = pd.to_datetime(frame.pop("t"), utc=True, format="ISO8601")
    frame["source"], frame["source_id"] = "copper", frame["event_id"]
    return frame


def _activity_people() -> tuple[pd.DataFrame, pd.DataFrame]:
    accounts = accounts_frame(account("a1", "A1"))
    users = pd.DataFrame(
        [
            user("u1", "ann@acme.example", "a1", copper_person__name="Ann Smith"),
            user("u2", None, None, external_id="E2", planhat__first_name="Bob"),
            user("u3", None, "a1"),
            user("u4", "out@acme.example", "a1", segments=("Leads",)),
        ]
    )
    return users, accounts


def test_activities_filter_map_and_dedup() -> None:
    users, accounts = _activity_people()
    payloads, events = activity_payloads(_events(), users, accounts, make_settings(), set())
    assert list(payloads["key"]) == ["e3", "e1"]  # in time order
    assert by_key(payloads) == {
        "e3": {
            "action": "Phone Call",
            "info": {"minutes": 5},
            "date": "2024-03-01T09:00:00.000Z",
            "externalId": "E2",
            "name": "Bob",
        },
        "e1": {
            "action": "Meeting",
            "info": {"subject": "Kickoff"},
            "date": "2024-03-01T10:00:00.123Z",
            "email": "ann@acme.example",
            "name": "Ann Smith",
            "companyExternalId": "A1",
        },
    }
    assert reasons(events) == {"e4": EVENT_NO_USER_IDENTITY}
    progress = events[-1]
    assert progress.event == "outgoing.event.progress"
    assert progress.details == {
        "events": 7,
        "not_tracked": 1,
        "repeated": 1,
        "already_sent": 0,
        "not_in_segment": 2,
        "skipped": 1,
        "selected": 2,
    }
    # events the caller left unread (untracked, sent before) still count in the progress
    _, counted = activity_payloads(
        _events(),
        users,
        accounts,
        make_settings(),
        None,
        left_out={"events": 10, "not_tracked": 6, "already_sent": 4},
    )
    assert {k: counted[-1].details[k] for k in ("events", "not_tracked", "already_sent")} == {
        "events": 17,
        "not_tracked": 7,
        "already_sent": 4,
    }
    # sent ids (a set, or the fingerprints table after delivery) are never sent again
    outcomes = outcomes_for(payloads, {"e3": "sent", "e1": "error"})
    fingerprints = advance_fingerprints(None, outcomes, payloads, NOW)
    again, _ = activity_payloads(_events(), users, accounts, make_settings(), fingerprints)
    assert list(again["key"]) == ["e1"]
    by_set, _ = activity_payloads(_events(), users, accounts, make_settings(), {"e1"})
    assert list(by_set["key"]) == ["e3"]


def test_activity_name_follows_the_enduser_mapping() -> None:
    settings = make_settings(
        user_attributes={"copper_person/first": "firstName", "copper_person/last": "lastName"}
    )
    accounts = accounts_frame(account("a1", "A1"))
    users = pd.DataFrame(
        [
            user(
                "u1",
                "ann@acme.example",
                "a1",
                copper_person__first="Ann",
                copper_person__last="Lee",
            )
        ]
    )
    payloads, _ = activity_payloads(_events(), users, accounts, settings, None)
    assert by_key(payloads)["e1"]["name"] == "Ann Lee"


# -- metrics ---------------------------------------------------------------------------------
def test_metric_items_keys_and_skips() -> None:
    metric = MetricSettings(dimension_id="open_pipeline_value", sql="select 1")
    rows = pd.DataFrame(
        {
            "external_id": ["A1", "A2", "A3", None, "A1"],
            "value": [10, "abc", 2.5, 1, 11],
            "date": [None, None, dt.date(2024, 2, 1), None, None],
        }
    )
    payloads, events = metric_payloads(rows, metric, NOW)
    assert list(payloads["key"]) == [
        "open_pipeline_value:Company:A1:2024-03-02T00:00:00.000Z",
        "open_pipeline_value:Company:A3:2024-02-01T00:00:00.000Z",
    ]
    assert payloads.iloc[0]["payload"] == {
        "dimensionId": "open_pipeline_value",
        "value": 10.0,
        "externalId": "A1",
        "model": "Company",
        "date": "2024-03-02T00:00:00.000Z",
    }
    skips = [e for e in events if e.event == "outgoing.account.skip"]
    assert [e.reason for e in skips].count(METRIC_NOT_A_NUMBER) == 1
    assert {e.reason for e in skips} == {
        METRIC_NOT_A_NUMBER,
        NO_EXTERNAL_ID,
        "Duplicate row for this key",
    }
    fingerprints = advance_fingerprints(None, outcomes_for(payloads, {}), payloads, NOW)
    again, _ = metric_payloads(rows, metric, NOW, fingerprints=fingerprints)
    assert again.empty


def test_metric_queries_run_on_the_callers_connection() -> None:
    conn = duckdb.connect()
    conn.execute("create table t as select 'A1' as external_id, 3::decimal(10,2) as value")
    metrics = [
        MetricSettings(dimension_id="ok", sql="select * from t"),
        MetricSettings(dimension_id="broken", model="EndUser", sql="select * from missing"),
        MetricSettings(dimension_id="no_value", sql="select external_id from t"),
    ]
    payloads, events = all_metric_payloads(metric_answers(conn, metrics), NOW)
    assert [p["value"] for p in payloads["payload"]] == [3.0]
    errors = {e.object_id: e.event for e in events if e.event.endswith(".error")}
    assert errors == {"broken": "outgoing.user.error", "no_value": "outgoing.account.error"}


def test_metric_keys_are_the_keys_its_items_are_sent_under() -> None:
    """What a payload run reads the fingerprints of: every key an item of the answers may take
    (a row skipped for its value too, harmlessly), none of a failed query."""
    conn = duckdb.connect()
    conn.execute(
        "create table t as select * from (values ('A1', '1', null), ('A2', '2', date '2024-02-01'),"
        " (' A3 ', '3', null), (null, '4', null), ('A4', 'x', null)) v(external_id, value, date)"
    )
    metrics = [
        MetricSettings(dimension_id="ok", sql="select * from t"),
        MetricSettings(dimension_id="users", model="EndUser", sql="select * from t"),
        MetricSettings(dimension_id="broken", sql="select * from missing"),
    ]
    answers = metric_answers(conn, metrics)
    payloads, _ = all_metric_payloads(answers, NOW)
    keys = metric_keys(answers, NOW)
    assert set(payloads["key"]) <= keys
    assert keys - set(payloads["key"]) == {
        "ok:Company:A4:2024-03-02T00:00:00.000Z",
        "users:EndUser:A4:2024-03-02T00:00:00.000Z",
    }
    assert "ok:Company:A2:2024-02-01T00:00:00.000Z" in keys
    assert not [k for k in keys if k.startswith("broken:")]


def test_sql_activity_keys_are_the_keys_its_items_are_sent_under() -> None:
    """The ``sql:`` fingerprints a payload run reads: the keys of the answers' activities,
    whatever the id's type (as the items are keyed), none of a failed query."""
    conn = duckdb.connect()
    conn.execute(
        "create table calls as select * from (values (7, 'Called', 'a@x.example'),"
        " (8, 'Called', null)) t(activity_id, action, email);"
        "create table notes as select * from (values ('n-1', 'Noted', 'a@x.example'))"
        " t(activity_id, action, email);"
        "create table scores as select 1.5::double as activity_id, 'Scored' as action,"
        " 'b@x.example' as email"
    )
    queries = [
        ActivityQuerySettings(name="calls", sql="select * from calls"),
        ActivityQuerySettings(name="notes", sql="select * from notes"),
        ActivityQuerySettings(name="scores", sql="select * from scores"),
        ActivityQuerySettings(name="broken", sql="select * from missing"),
    ]
    answers = activity_answers(conn, queries)
    payloads, _ = sql_activity_payloads(answers, None)
    keys = sql_activity_keys(answers)
    assert set(payloads["key"]) == {"sql:calls:7", "sql:notes:n-1", "sql:scores:1.5"}
    assert keys == {*payloads["key"], "sql:calls:8"}  # 8 is skipped (no identity): harmless


# -- scale -----------------------------------------------------------------------------------
def test_many_accounts_map_and_a_rerun_selects_none() -> None:
    count = 10_000
    attributes = [
        json.dumps(
            {
                "copper/name": f"Company {i}",
                "copper/arr": {"amount": float(i), "currency": "USD"},
                "copper/owner_planhat_id": OWNER,
                "copper/contact_type": "Customer",
            }
        )
        for i in range(count)
    ]
    accounts = pd.DataFrame(
        {
            "hull_id": [f"h{i}" for i in range(count)],
            "external_id": [f"X{i}" for i in range(count)],
            "attributes": attributes,
            "segments": [["Customer accounts"]] * count,
            "updated_at": pd.Timestamp(NOW),
        }
    )
    payloads, _ = company_payloads(accounts, planhat_users(), make_settings(), None)
    fingerprints = advance_fingerprints(None, outcomes_for(payloads), payloads, NOW)
    again, _ = company_payloads(accounts, planhat_users(), make_settings(), fingerprints)
    assert len(payloads) == count and again.empty


def test_payloads_survive_a_warehouse_round_trip() -> None:
    """Stored as a table (``payload`` as JSON text), the payloads the delivery engine reads back
    are the dicts built, clears included; fingerprints read back still match."""
    settings = make_settings(owner_attribute=None)
    before = accounts_frame(account("a1", "A1", copper__name="Acmé", copper__arr=100))
    first, _ = company_payloads(before, None, settings, None)
    conn = duckdb.connect()
    fingerprints = advance_fingerprints(None, outcomes_for(first), first, NOW)
    conn.register("fp_frame", fingerprints)
    conn.execute("create table fp as select * from fp_frame")
    stored_fp = conn.sql("select * from fp").df()
    after = accounts_frame(account("a1", "A1", copper__name="Acmé"))
    payloads, _ = company_payloads(after, None, settings, stored_fp)
    conn.register("payload_frame", payloads_as_json(payloads))
    conn.execute("create table payloads as select * from payload_frame")
    stored = conn.sql("select * from payloads").df()
    sent = record_payloads(stored, payload_column="payload", key_column="key")
    assert sent == list(payloads["payload"])
    assert sent[0]["custom"] == {"ARR": None}
    assert company_payloads(before, None, settings, stored_fp)[0].empty


def test_a_renamed_enduser_is_addressed_by_its_planhat_id_outside_its_fingerprint() -> None:
    users = pd.DataFrame(
        {
            "hull_id": ["one", "two", "none", "copper"],
            "anonymous_ids": [
                ["copper-person:1", "planhat:p1"],
                ["planhat:p2", "planhat:p3"],  # two Planhat endusers: none is chosen
                None,
                ["copper-person:4"],
            ],
        }
    )
    assert planhat_enduser_ids(users) == {"one": "p1"}
    payloads = pd.DataFrame(
        {
            "hull_id": ["one", "copper"],
            "key": ["email:new@x.io", "email:c@x.io"],
            "payload": [{"email": "new@x.io"}, {"email": "c@x.io"}],
            "fingerprint": ["f1", "f2"],
        }
    )
    addressed = addressed_by_id(payloads, {"one": "p1"})
    assert addressed["payload"].tolist() == [
        {"email": "new@x.io", "_id": "p1"},
        {"email": "c@x.io"},
    ]
    assert addressed["fingerprint"].tolist() == ["f1", "f2"]
    assert payloads["payload"].tolist()[0] == {"email": "new@x.io"}  # the input is not changed


def test_a_record_taking_a_key_an_enduser_moves_away_from_is_sent_after_it() -> None:
    """A's enduser is renamed by ``_id`` away from a@x.io; C, never sent, takes a@x.io (by
    email); F's enduser, keyed by an external id that does not change, leaves f@x.io, which D
    takes; E takes nothing anyone leaves; B, addressed by ``_id``, never waits. C and D go in
    a later request than the others, whatever their place before (stable within an order)."""
    payloads = pd.DataFrame(
        {
            "hull_id": ["c", "a", "d", "e", "b", "f"],
            "key": [
                "email:a@x.io",
                "email:zz.a@x.io",
                "email:f@x.io",
                "email:e@x.io",
                "email:b@x.io",
                "external_id:f-1",
            ],
            "email": ["a@x.io", "zz.a@x.io", "f@x.io", "e@x.io", "b@x.io", "zz.f@x.io"],
            "external_id": [None, None, None, None, None, "f-1"],
            "payload": [{}, {"_id": "p-a"}, {}, {}, {"_id": "p-b"}, {}],
        }
    )
    moved = pd.DataFrame(
        {
            "hull_id": ["a", "b", "gone"],
            "key": ["email:zz.a@x.io", "email:b@x.io", "email:g@x.io"],
            "planhat_id": ["p-a", "p-b", "p-g"],
            # "gone" is not sent: the key it leaves is still its enduser's
            "other_keys": [["email:a@x.io"], ["email:f@x.io"], ["email:e@x.io"]],
        }
    )
    snapshot = {"a": {"email:a@x.io"}, "f": {"external_id:f-1", "email:f@x.io"}}
    held = held_under(moved, snapshot)
    assert held["a"] == {"email:a@x.io"} and held["b"] == {"email:f@x.io"}
    ordered = after_movers(payloads, held)
    assert ordered[["hull_id", "send_order", "waits_for"]].values.tolist() == [
        ["a", 0, "[]"],
        ["e", 0, "[]"],
        ["b", 0, "[]"],
        ["f", 0, "[]"],
        ["c", 1, '["email:zz.a@x.io"]'],
        # B's enduser may still answer to f@x.io too: D waits for it as for F's
        ["d", 1, '["email:b@x.io", "external_id:f-1"]'],
    ]
    # nothing left by anyone: one order, as it was
    unmoved = after_movers(payloads, {"e": {"email:e@x.io"}})
    assert unmoved["send_order"].tolist() == [0] * 6
    assert set(unmoved["waits_for"]) == {"[]"}
    assert unmoved["hull_id"].tolist() == list(payloads["hull_id"])


def _identity_payloads(rows: list[list[object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["hull_id", "key", "email", "external_id", "payload"])


NO_MOVES = pd.DataFrame(
    {c: pd.Series([], dtype=object) for c in ("hull_id", "key", "planhat_id", "other_keys")}
)


def test_nobody_waits_without_a_key_some_payload_gives_another_value() -> None:
    """Two users built from one enduser (neither renames it); a payload without an email
    (Planhat keeps the enduser's); two people keyed by unchanged external ids trading emails
    (each is matched first by its own enduser's external id): no record waits, no request is
    added."""
    shared = _identity_payloads(
        [["a", "email:a@x.io", "a@x.io", None, {}], ["b", "email:b@x.io", "b@x.io", None, {}]]
    )
    # the asset leaves an enduser two users share out of ``held``
    assert after_movers(shared, held_under(NO_MOVES, {"a": {"email:a@x.io"}}))[
        "send_order"
    ].tolist() == [0, 0]
    no_email = _identity_payloads(
        [
            ["a", "external_id:e-a", None, "e-a", {}],
            ["c", "email:a@x.io", "a@x.io", None, {}],
        ]
    )
    held = held_under(NO_MOVES, {"a": {"external_id:e-a", "email:a@x.io"}})
    assert after_movers(no_email, held)["send_order"].tolist() == [0, 0]
    trading = _identity_payloads(
        [
            ["a", "external_id:e-a", "b@x.io", "e-a", {}],
            ["b", "external_id:e-b", "a@x.io", "e-b", {}],
        ]
    )
    held = held_under(
        NO_MOVES,
        {"a": {"external_id:e-a", "email:a@x.io"}, "b": {"external_id:e-b", "email:b@x.io"}},
    )
    assert after_movers(trading, held)["send_order"].tolist() == [0, 0]


def test_a_record_waiting_for_one_that_waits_goes_after_it() -> None:
    """A (new external id, so keyed by one its enduser does not hold) takes b, which B's
    enduser leaves; C, new, takes a, which A's leaves: C goes after A, which goes after B."""
    payloads = _identity_payloads(
        [
            ["c", "email:a@x.io", "a@x.io", None, {}],
            ["a", "external_id:e-a2", "b@x.io", "e-a2", {}],
            ["b", "external_id:e-b", "zz.b@x.io", "e-b", {}],
        ]
    )
    held = held_under(
        NO_MOVES,
        {"a": {"external_id:e-a", "email:a@x.io"}, "b": {"external_id:e-b", "email:b@x.io"}},
    )
    ordered = after_movers(payloads, held)
    assert ordered[["hull_id", "send_order", "waits_for"]].values.tolist() == [
        ["b", 0, "[]"],
        ["a", 1, '["external_id:e-b"]'],
        ["c", 2, '["external_id:e-a2"]'],
    ]


def test_a_record_taking_a_key_two_endusers_leave_goes_after_both() -> None:
    """Two endusers answer to x (Planhat keeps an email per company) and both leave it: A at
    once, B after D (it takes d, which D leaves). C, new, taking x, goes after both, not in
    B's request, where B's enduser still answers to x."""
    payloads = _identity_payloads(
        [
            ["c", "email:x@x.io", "x@x.io", None, {}],
            ["b", "external_id:e-b2", "d@x.io", "e-b2", {}],
            ["d", "external_id:e-d", "zz.d@x.io", "e-d", {}],
            ["a", "external_id:e-a", "zz.a@x.io", "e-a", {}],
        ]
    )
    held = held_under(
        NO_MOVES,
        {
            "a": {"external_id:e-a", "email:x@x.io"},
            "b": {"external_id:e-b", "email:x@x.io"},
            "d": {"external_id:e-d", "email:d@x.io"},
        },
    )
    ordered = after_movers(payloads, held)
    assert ordered[["hull_id", "send_order", "waits_for"]].values.tolist() == [
        ["d", 0, "[]"],
        ["a", 0, "[]"],
        ["b", 1, '["external_id:e-d"]'],
        ["c", 2, '["external_id:e-a", "external_id:e-b2"]'],
    ]


def test_a_record_matching_an_enduser_another_profile_keeps_is_not_sent() -> None:
    """C takes x, which M's enduser answers to while M is not in the delivery: C is skipped
    (it would take M's enduser over). D takes y, which B's enduser leaves in this delivery:
    D goes (after B). E, addressed by ``_id``, and F, keyed by a key its own enduser holds,
    are matched first by their own; G's payload gives B's enduser no email, so B keeps g and
    H, taking g, is skipped too."""
    payloads = _identity_payloads(
        [
            ["c", "email:x@x.io", "x@x.io", None, {}],
            ["b", "external_id:e-b", "zz.b@x.io", "e-b", {}],
            ["d", "email:y@x.io", "y@x.io", None, {}],
            ["e", "email:x@x.io", "x@x.io", None, {"_id": "p-e"}],
            ["f", "external_id:e-f", "x@x.io", "e-f", {}],
            ["g", "external_id:e-g", None, "e-g", {}],
            ["h", "email:g@x.io", "g@x.io", None, {}],
        ]
    )
    held = {
        "m": {"email:x@x.io"},
        "b": {"external_id:e-b", "email:y@x.io"},
        "f": {"external_id:e-f"},
        "g": {"external_id:e-g", "email:g@x.io"},
    }
    kept, events = not_taking_over(payloads, held)
    assert kept["hull_id"].tolist() == ["b", "d", "e", "f", "g"]
    assert [(e.object_id, e.reason, e.details) for e in events] == [
        ("c", TAKEN_ENDUSER, {"key": "email:x@x.io", "held_by": "m"}),
        ("h", TAKEN_ENDUSER, {"key": "email:g@x.io", "held_by": "g"}),
    ]
    assert not_taking_over(payloads, {})[0] is payloads
    # A, leaving x for y, which M's enduser keeps, is skipped: its enduser keeps x, so C,
    # taking x, is skipped too
    chain = _identity_payloads(
        [["a", "email:y@x.io", "y@x.io", None, {}], ["c", "email:x@x.io", "x@x.io", None, {}]]
    )
    kept, events = not_taking_over(chain, {"a": {"email:x@x.io"}, "m": {"email:y@x.io"}})
    assert kept.empty
    assert [(e.object_id, e.details["held_by"]) for e in events] == [("a", "m"), ("c", "a")]
    assert matchable_keys(payloads) >= {"email:x@x.io", "external_id:e-f", "email:g@x.io"}


def test_a_moved_key_is_compared_with_nothing_and_clears_what_every_key_sent() -> None:
    """A key whose enduser took other keys since (returned to, or new): it matches no payload
    (it is sent as a change), and its previous fields are those sent under it and under the
    other keys (Planhat holds theirs), so a field no payload has now is cleared."""
    fingerprints = pd.DataFrame(
        {
            "target": ["endusers", "endusers", "endusers", "companies"],
            "key": ["email:a@x.io", "email:b@x.io", "email:c@x.io", "email:a@x.io"],
            "fingerprint": ["fa", "fb", "fc", "fx"],
            "fields": ['["email","name"]', '["email","position"]', '["phone"]', '["name"]'],
        }
    )
    moved = pd.DataFrame(
        {
            "key": ["email:a@x.io", "email:new@x.io"],
            "other_keys": [["email:b@x.io", "email:c@x.io"], ["email:b@x.io"]],
        }
    )
    others = fingerprints.iloc[[1, 2]]
    out = moved_fingerprints(fingerprints, moved, others)
    assert out[["key", "fingerprint", "fields"]].values.tolist() == [
        ["email:a@x.io", "", '["email","name","phone","position"]'],
        ["email:b@x.io", "fb", '["email","position"]'],
        ["email:c@x.io", "fc", '["phone"]'],
        ["email:a@x.io", "fx", '["name"]'],
        ["email:new@x.io", "", '["email","position"]'],  # a new key: the others' fields
    ]
    assert out["target"].tolist()[-1] == "endusers"
    assert fingerprints["fingerprint"].tolist() == ["fa", "fb", "fc", "fx"]  # input kept
    assert moved_fingerprints(fingerprints, moved.iloc[0:0], others) is fingerprints
    alone = moved_fingerprints(empty_fingerprints(), moved.iloc[[1]], others)
    assert alone[["key", "fingerprint", "fields"]].values.tolist() == [
        ["email:new@x.io", "", '["email","position"]']
    ]
