"""The profile store is read and written by the change: an incremental sync reads the slice of
the store its records can touch and rewrites only the profiles that changed (and the segments
of the users of a changed account). Copper over real HTTP, as in ``test_hull_incoming``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from hull_planhat_pipelines.clients.planhat import PlanhatClient
from hull_planhat_pipelines.sandbox.planhat import PlanhatSandbox
from hull_planhat_pipelines.sync.hull.changes import StoreKeys, StoreSlice
from hull_planhat_pipelines.warehouse import hull_store
from hull_planhat_pipelines_tests.assets.test_hull_assets import stack  # noqa: F401
from hull_planhat_pipelines_tests.assets.test_hull_incoming import Pipeline, pipeline  # noqa: F401
from hull_planhat_pipelines_tests.materialize import HULL, PLANHAT_SNAPSHOTS, asset_metadata

ROW = "select hull_id, email, external_id, anonymous_ids, account_hull_id, attributes,"
USERS = f"{ROW} created_at, updated_at, segments from hull.users"
ACCOUNTS = (
    "select hull_id, domain, external_id, anonymous_ids, attributes, created_at, updated_at,"
    " segments from hull.accounts"
)


def _rows(target: Pipeline, sql: str) -> dict[str, tuple]:
    return {row[0]: row for row in target.query(sql)}


def _logged_last(target: Pipeline, kind: str) -> dict[str, list[str]]:
    """The groups the last apply logged per profile of ``kind``."""
    rows = target.query(
        "select hull_id, list(grp order by grp) from ops.hull_changes where kind = ?"
        " and seq = (select max(seq) from ops.hull_changes) group by hull_id",
        [kind],
    )
    return {h: list(groups) for h, groups in rows}


@pytest.fixture
def slices(monkeypatch: pytest.MonkeyPatch) -> list[StoreSlice]:
    """Every slice the asset reads."""
    seen: list[StoreSlice] = []
    read = hull_store.read_slice

    def spy(conn: Any, keys: StoreKeys) -> StoreSlice:
        part = read(conn, keys)
        seen.append(part)
        return part

    monkeypatch.setattr(hull_store, "read_slice", spy)
    return seen


def test_one_edited_person_reads_its_slice_and_rewrites_its_row_only(
    pipeline: Pipeline,  # noqa: F811
    slices: list[StoreSlice],
) -> None:
    copper = pipeline.copper
    first = pipeline.full_refresh()
    # the first load writes every profile with its segments
    assert asset_metadata(first, "hull/user_upserts")["store_read"]["whole_store"]
    person = next(
        r for r in copper.records("people") if r.get("emails") and r["company_id"] is not None
    )
    profile = pipeline.user(f"copper-person:{person['id']}")
    users, accounts = _rows(pipeline, USERS), _rows(pipeline, ACCOUNTS)
    events = pipeline.query("select * from hull.events order by event_id")
    slices.clear()

    copper.edit("people", person["id"], {"title": "Chief Benchmark Officer"})
    result = pipeline.incremental()

    # the slice: the profiles of the records fetched again (today's), the person's among them,
    # with its account; not the store
    [part] = slices
    assert profile["hull_id"] in set(part.store.users["hull_id"])
    assert profile["account_hull_id"] in set(part.store.accounts["hull_id"])
    assert len(part.store.users) < len(users)
    # the run says what it read of the store: that slice, not every profile
    assert asset_metadata(result, "hull/user_upserts")["store_read"] == {
        "users": len(part.store.users),
        "accounts": len(part.store.accounts),
        "events": len(part.store.events),
        "whole_store": False,
    }
    run = "(select run_id from hull.user_upserts order by computed_at desc limit 1)"
    upserted = {
        r[0] for r in pipeline.query(f"select hull_id from hull.user_upserts where run_id = {run}")
    }

    after = _rows(pipeline, USERS)
    assert after.keys() == users.keys()
    changed = {h for h in users if after[h] != users[h]}
    assert profile["hull_id"] in changed
    assert changed <= upserted  # no other row rewritten
    assert pipeline.user(f"copper-person:{person['id']}")["attributes"]["copper_person/title"] == (
        "Chief Benchmark Officer"
    )
    accounts_after = _rows(pipeline, ACCOUNTS)
    account_run = "(select run_id from hull.account_upserts order by computed_at desc limit 1)"
    upserted_accounts = {
        r[0]
        for r in pipeline.query(
            f"select hull_id from hull.account_upserts where run_id = {account_run}"
        )
    }
    assert {h for h in accounts if accounts_after[h] != accounts[h]} <= upserted_accounts
    assert pipeline.query("select * from hull.events order by event_id") == events
    # the change log says which part changed: the title's group, nothing structural
    assert _logged_last(pipeline, "user")[profile["hull_id"]] == ["copper_person"]

    # nothing changed: no slice worth writing, not one row rewritten
    unchanged = pipeline.incremental()
    assert _rows(pipeline, USERS) == after
    assert not asset_metadata(unchanged, "hull/user_upserts")["store_read"]["whole_store"]


@pytest.mark.parametrize("slice_holds_them", [True, False])
def test_an_account_leaving_a_segment_moves_its_users_without_touching_them(
    pipeline: Pipeline,  # noqa: F811
    slices: list[StoreSlice],
    monkeypatch: pytest.MonkeyPatch,
    slice_holds_them: bool,
) -> None:
    copper = pipeline.copper
    pipeline.full_refresh()
    members = pipeline.query(
        "select u.hull_id, a.hull_id, a.anonymous_ids from hull.users u"
        " join hull.accounts a on a.hull_id = u.account_hull_id"
        " where list_contains(u.segments, 'Customers')"
    )
    assert members, "the sandbox seed has customers"
    account_id, anonymous_ids = members[0][1], members[0][2]
    company_id = int(next(a for a in anonymous_ids if a.startswith("copper:")).split(":")[1])
    customers = {h for h, a, _ in members if a == account_id}
    other = next(t["id"] for t in copper.metadata.contact_types if t["name"] != "Customer")
    users = _rows(pipeline, USERS)
    if not slice_holds_them:
        # the slice holds an account's users only when the sync moves them (a merge, a
        # deleted company); lacking them, the apply reads them from the store instead of
        # leaving their membership as it was
        read = hull_store.read_slice

        def without_members(conn: Any, keys: StoreKeys) -> StoreSlice:
            part = read(conn, keys)
            held = part.store.users
            kept = held[~held["hull_id"].isin(customers)].reset_index(drop=True)
            return replace(part, store=replace(part.store, users=kept))

        monkeypatch.setattr(hull_store, "read_slice", without_members)

    copper.edit("companies", company_id, {"contact_type_id": other})
    pipeline.incremental()

    after = _rows(pipeline, USERS)
    for hull_id in customers:
        assert "Customers" not in list(after[hull_id][8])
        # the user's own row is as it was: only its membership moved
        assert after[hull_id][:8] == users[hull_id][:8]
    account = pipeline.query("select segments from hull.accounts where hull_id = ?", [account_id])
    assert "Customer accounts" not in list(account[0][0])
    untouched = {h for h, row in users.items() if row[4] != account_id}
    assert {h: after[h] for h in untouched} == {h: users[h] for h in untouched}
    # a membership that moved is structural: every payload target maps it again
    logged = _logged_last(pipeline, "user")
    assert all(logged[h] == ["*"] for h in customers)
    assert "*" in _logged_last(pipeline, "account")[account_id]


def test_a_renamed_account_leaves_its_users_unread(
    pipeline: Pipeline,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The example's user segment reads the account's segments only: a new name moves none of
    the account's users, so they are neither read from the store nor rewritten; and the
    account's stored segments come with the slice, not from another scan of the store."""
    copper = pipeline.copper
    pipeline.full_refresh()
    account_id, anonymous_ids = pipeline.query(
        "select hull_id, anonymous_ids from hull.accounts a where exists (select 1"
        " from hull.users u where u.account_hull_id = a.hull_id)"
        " and list_contains(segments, 'Customer accounts')"
        " and len(list_filter(anonymous_ids, lambda i: starts_with(i, 'copper:'))) > 0 limit 1"
    )[0]
    company = int(next(a for a in anonymous_ids if a.startswith("copper:")).split(":")[1])
    members = {
        h
        for (h,) in pipeline.query(
            "select hull_id from hull.users where account_hull_id = ?", [account_id]
        )
    }
    users = _rows(pipeline, USERS)
    reads: list[tuple[str, str]] = []
    read_profiles = hull_store.read_profiles

    def spy(conn: Any, kind: str, where: str) -> Any:
        reads.append((kind, where))
        return read_profiles(conn, kind, where)

    monkeypatch.setattr(hull_store, "read_profiles", spy)
    scans: list[str] = []
    memberships = hull_store._memberships

    def scan(conn: Any, kind: str, *args: Any) -> Any:
        scans.append(kind)
        return memberships(conn, kind, *args)

    monkeypatch.setattr(hull_store, "_memberships", scan)
    copper.edit("companies", company, {"name": "Renamed Inc"})
    pipeline.incremental()

    assert pipeline.account(f"copper:{company}")["attributes"]["copper/name"] == "Renamed Inc"
    assert [kind for kind, _ in reads if kind == "user"] == []
    # the segments the changed profiles held were read with the slice: no scan for them
    assert scans == []
    assert _rows(pipeline, USERS) == users
    assert not members & set(_logged_last(pipeline, "user"))


STORE_DDL = (
    "create schema hull; create schema copper; create schema copper_current;"
    "create table hull.users (hull_id varchar, email varchar, external_id varchar,"
    " anonymous_ids varchar[], account_hull_id varchar, attributes varchar,"
    " created_at timestamptz, updated_at timestamptz, segments varchar[]);"
    "create table hull.accounts (hull_id varchar, domain varchar, external_id varchar,"
    " anonymous_ids varchar[], attributes varchar, created_at timestamptz,"
    " updated_at timestamptz, segments varchar[]);"
    "create table hull.events (event_id varchar, user_hull_id varchar, name varchar,"
    " properties varchar, occurred_at timestamptz, source varchar, source_id varchar);"
)
"""An empty profile store as the warehouse keeps it, and the Copper schemas beside it."""


def test_the_slice_is_what_the_keys_name_and_what_copper_lost(tmp_path: Any) -> None:
    """Matches by email, domain (trimmed, lower-cased) and anonymous id, profiles holding a
    deleted record and those users' accounts; nothing else. A matched account's other users
    are read when asked for (``account_users``), those not read already."""
    import duckdb
    import pandas as pd

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute(
        STORE_DDL + "create table copper.people as select 1::bigint as id;"
        "create view copper_current.people as select * from copper.people;"
        "insert into hull.users values"
        " ('u1', null, null, ['copper-person:1'], null, '{}', null, null, []),"
        " ('u2', null, null, ['copper-person:2'], 'a2', '{}', null, null, []),"
        " ('u3', 'A@x.io ', null, ['planhat:z'], null, '{}', null, null, []),"
        " ('u4', 'b@y.io', null, ['copper-lead:9'], 'a3', '{}', null, null, []),"
        " ('u5', null, 'e5', [], 'a1', '{}', null, null, []),"
        " ('u6', '  A@X.io', null, [], null, '{}', null, null, []),"
        " ('u7', 'A@x.io.org', null, [], null, '{}', null, null, []);"
        "insert into hull.accounts values"
        " ('a1', 'x.io', null, ['copper:7'], '{}', null, null, []),"
        " ('a2', 'z.io', null, [], '{}', null, null, []),"
        " ('a3', 'y.io', null, [], '{}', null, null, []),"
        " ('a4', ' X.IO', null, [], '{}', null, null, []);"
        "insert into hull.events values"
        " ('ev5', 'u5', 'Note', '{}', null, 'copper', '55'),"
        " ('ev4', 'u4', 'Note', '{}', null, 'copper', '44')"
    )
    keys = StoreKeys(
        claims=pd.DataFrame(
            {
                "kind": ["user", "account", "user"],
                "claim": ["email", "domain", "anonymous_id"],
                "value": ["a@x.io", "x.io", "copper-person:1"],
            }
        ),
        event_ids=pd.Series(["ev-new"], dtype=object),
        opportunities=False,
    )
    part = hull_store.read_slice(conn, keys)
    assert sorted(part.store.users["hull_id"]) == ["u1", "u2", "u3", "u6"]
    assert sorted(part.store.accounts["hull_id"]) == ["a1", "a2", "a4"]
    assert part.store.events.empty  # ev5 is u5's: u5 is not read (ev4's user not matched)
    assert sorted(part.current_ids) == ["people"]
    assert list(part.current_ids["people"]) == ["1"]
    # the users of a1 (u5) and a2 (u2, read already), asked for once identities are resolved
    more = hull_store.read_slice(conn, StoreKeys.users_of(pd.Series(["a1", "a2"])))
    assert more.store.users["hull_id"].tolist() == ["u5"]
    assert more.store.accounts is None and not more.current_ids
    conn.close()


def test_a_new_planhat_snapshot_hands_hull_only_its_changed_rows(
    stack,  # noqa: F811
    planhat_client_for: Callable[[PlanhatSandbox], PlanhatClient],
) -> None:
    """Two of N companies edited in Planhat (over HTTP): Hull reads those two; an unchanged
    snapshot hands Hull nothing and writes nothing."""
    import json

    assert stack.sync().success
    companies = [c for c in stack.planhat.companies() if c.get("phase")]
    assert len(companies) > 3
    first, second = companies[0], companies[1]
    planhat_client_for(stack.planhat).bulk_upsert(
        "companies",
        [
            {"_id": first["_id"], "name": "Renamed in Planhat"},
            {"_id": second["_id"], "name": "Renamed too"},
        ],
    )
    assert stack.materialize(PLANHAT_SNAPSHOTS).success
    # the snapshot's step compared it with Hull's copy: Hull's job reads the two rows only
    assert stack.query(
        "select _id, _change from ops.hull_planhat_companies_diff order by 2, 1"
    ) == [(i, "changed") for i in sorted([first["_id"], second["_id"]])] + [
        (i, "previous") for i in sorted([first["_id"], second["_id"]])
    ]
    result = stack.materialize(HULL)
    assert result.success
    assert asset_metadata(result, "hull/account_upserts")["sources_read"]["planhat.companies"] == 2
    assert stack.query("select count(*) from ops.hull_planhat_diffs") == [(0,)]

    def attributes(planhat_id: str) -> dict:
        [(text,)] = stack.query(
            "select attributes from hull.accounts"
            f" where list_contains(anonymous_ids, 'planhat:{planhat_id}')"
        )
        return json.loads(text)

    assert attributes(first["_id"])["planhat/name"] == "Renamed in Planhat"
    assert attributes(second["_id"])["planhat/name"] == "Renamed too"
    assert attributes(companies[2]["_id"])["planhat/name"] == companies[2]["name"]

    copy = stack.query("select count(*) from ops.hull_planhat_companies")
    assert stack.materialize(PLANHAT_SNAPSHOTS).success
    again = stack.materialize(HULL)
    read = asset_metadata(again, "hull/account_upserts")["sources_read"]
    assert {"planhat.companies", "planhat.endusers", "copper.people"} <= set(read)
    assert set(read.values()) == {0}  # every source listed, nothing read
    assert asset_metadata(again, "hull/account_upserts")["rows"] == 0
    assert stack.query("select count(*) from ops.hull_planhat_companies") == copy
