"""An incremental sync reads an account's users only when it moves them, and moves them all.

The slice holds the profiles the staged records name and those records' accounts. A merge or a
deleted company moves every user of an account, most of them named by no record of the sync:
those are read once identities are resolved (``StoreKeys.account_users``). The changes are the
same as over the whole store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import duckdb
import pandas as pd

from hull_planhat_pipelines.sync.hull.apply import apply_changes
from hull_planhat_pipelines.sync.hull.changes import Changes, ProfileStore, compute_changes
from hull_planhat_pipelines.sync.hull.from_copper import CopperRows
from hull_planhat_pipelines.sync.hull.from_planhat import PlanhatRows
from hull_planhat_pipelines.warehouse import hull_store
from hull_planhat_pipelines_tests.hull_support import (
    NOW,
    example_settings,
    planhat_frame,
    profile,
    sync_once,
)
from hull_planhat_pipelines_tests.sync.hull.test_from_copper import company, person, rows

SETTINGS = example_settings()
LIVING_COMPANIES = ["7", "8"]  # company 9 was deleted in Copper


def _store_before() -> ProfileStore:
    """A Planhat company ACC-7; people 2, 3, 4 of company 7, not pulled yet (a shell account);
    person 5 of company 8; person 6 of company 9."""
    planhat = PlanhatRows(
        companies=planhat_frame([{"_id": "c1", "name": "Acme", "externalId": "ACC-7"}], "companies")
    )
    copper = rows(
        people=[
            person(2, "a@acme.com", 7),
            person(3, "b@acme.com", 7),
            person(4, "c@acme.com", 7),
            person(5, "d@eight.com", 8),
            person(6, "e@nine.com", 9),
        ],
        companies=[company(8, "eight.com"), company(9, "nine.com")],
    )
    _, store = sync_once(SETTINGS, ProfileStore(), copper, planhat)
    return store


def _company_7_arrives() -> CopperRows:
    """Built anew for each sync (a sync takes its rows over)."""
    copper = rows(companies=[company(7, "acme.com", **{"custom:Account ID": "ACC-7"})])
    return dataclasses.replace(
        copper, current_ids={"companies": pd.Series(LIVING_COMPANIES, dtype=object)}
    )


def _warehouse(
    path: Path, store: ProfileStore, living: list[str] = LIVING_COMPANIES
) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(path))
    conn.execute(
        "create schema hull; create schema copper; create schema copper_current;"
        f"create table copper.companies as select unnest([{', '.join(living)}])::bigint as id;"
        "create view copper_current.companies as select * from copper.companies"
    )
    for table, frame in (("users", store.users), ("accounts", store.accounts)):
        assert frame is not None
        hull_store.replace_table(
            conn, f"hull.{table}", frame.assign(segments=[[] for _ in range(len(frame))])
        )
    return conn


def _same(one: Changes, other: Changes) -> None:
    for name in ("links", "merges", "deleted", "user_upserts", "account_upserts", "events"):
        left, right = getattr(one, name), getattr(other, name)
        columns = list(left.columns)
        assert columns == list(right.columns), name
        pd.testing.assert_frame_equal(
            left.astype(str).sort_values(columns).reset_index(drop=True),
            right.astype(str).sort_values(columns).reset_index(drop=True),
            obj=name,
        )


def test_a_merge_and_a_deleted_company_move_users_no_record_of_the_sync_names(
    tmp_path: Path,
) -> None:
    store = _store_before()
    shell = profile(store.accounts, "copper:7")["hull_id"]
    planhat_account = profile(store.accounts, "planhat:c1")["hull_id"]
    deleted = profile(store.accounts, "copper:9")["hull_id"]
    users = {p: profile(store.users, f"copper-person:{p}")["hull_id"] for p in range(2, 7)}
    over_the_store = compute_changes(SETTINGS, store, _company_7_arrives(), now=NOW)

    conn = _warehouse(tmp_path / "warehouse.duckdb", store)
    reads: list[hull_store.StoreKeys] = []
    reader = hull_store.SliceReader(conn)

    def recording(keys: hull_store.StoreKeys) -> hull_store.StoreSlice:
        reads.append(keys)
        return reader(keys)

    try:
        over_the_slice = compute_changes(SETTINGS, recording, _company_7_arrives(), now=NOW)
    finally:
        hull_store.drop_slice(conn)
        conn.close()

    # the same changes: the shell's three people follow it into the Planhat account, the
    # deleted company's person leaves it
    _same(over_the_slice, over_the_store)
    links = over_the_store.links
    moved = dict(zip(links["user_hull_id"], links["account_hull_id"], strict=True))
    assert moved == {
        users[2]: planhat_account,
        users[3]: planhat_account,
        users[4]: planhat_account,
        users[6]: None,
    }
    assert over_the_store.merges["from_hull_id"].tolist() == [shell]
    # read twice: the records' slice (no user: the sync names companies only), then the users
    # of the two accounts it moves, those only (not person 5 of company 8)
    first, second = reads
    assert first.account_users is None
    assert sorted(second.account_users) == sorted([shell, deleted])
    assert sorted(reader.store.users["hull_id"]) == sorted(users[p] for p in (2, 3, 4, 6))
    # and the rows written from what was read are the rows the whole store gives
    after = apply_changes(reader.store, over_the_slice, NOW)
    whole = apply_changes(store, over_the_store, NOW)
    assert after.users is not None and whole.users is not None
    for p in (2, 3, 4, 6):
        assert (
            profile(after.users, f"copper-person:{p}")["account_hull_id"]
            == profile(whole.users, f"copper-person:{p}")["account_hull_id"]
        )


def test_a_sync_that_moves_no_account_reads_the_store_once(tmp_path: Path) -> None:
    store = _store_before()
    conn = _warehouse(tmp_path / "warehouse.duckdb", store, ["7", "8", "9"])
    reads: list[hull_store.StoreKeys] = []
    reader = hull_store.SliceReader(conn)

    def recording(keys: hull_store.StoreKeys) -> hull_store.StoreSlice:
        reads.append(keys)
        return reader(keys)

    edited = rows(people=[person(5, "d@eight.com", 8, title="CEO")])
    try:
        changes = compute_changes(SETTINGS, recording, edited, now=NOW)
    finally:
        hull_store.drop_slice(conn)
        conn.close()
    assert len(reads) == 1 and changes.links.empty
    # person 5 and its account; not the account's other users, nor anyone else
    assert reader.store.users is not None and reader.store.accounts is not None
    assert reader.store.users["hull_id"].tolist() == [
        profile(store.users, "copper-person:5")["hull_id"]
    ]
    assert reader.store.accounts["hull_id"].tolist() == [
        profile(store.accounts, "copper:8")["hull_id"]
    ]
