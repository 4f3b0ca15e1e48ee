"""Segments: named DuckDB predicates over hull.accounts and hull.users (+ account_* columns)."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pandas as pd
import pytest

from hull_planhat_pipelines.settings import SegmentSettings
from hull_planhat_pipelines.sync.hull import batch as batch_module
from hull_planhat_pipelines.sync.hull import segments as segments_module
from hull_planhat_pipelines.sync.hull.model import empty_store
from hull_planhat_pipelines.sync.hull.segments import (
    SegmentError,
    account_columns_read,
    evaluate_segments,
    moving_accounts,
    validate_segments,
)
from hull_planhat_pipelines_tests.hull_support import T0, example_settings


def accounts(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "hull_id": row["hull_id"],
                "domain": row.get("domain"),
                "external_id": row.get("external_id"),
                "anonymous_ids": row.get("anonymous_ids", []),
                "attributes": json.dumps(row.get("attributes", {})),
                "created_at": pd.Timestamp(T0),
                "updated_at": pd.Timestamp(T0),
            }
            for row in rows
        ]
    )


def users(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "hull_id": row["hull_id"],
                "email": row.get("email"),
                "external_id": row.get("external_id"),
                "anonymous_ids": row.get("anonymous_ids", []),
                "account_hull_id": row.get("account"),
                "attributes": json.dumps(row.get("attributes", {})),
                "created_at": pd.Timestamp(T0),
                "updated_at": pd.Timestamp(T0),
            }
            for row in rows
        ]
    )


ACCOUNTS = accounts(
    {"hull_id": "a1", "external_id": "E1", "attributes": {"copper/contact_type": "Customer"}},
    {"hull_id": "a2", "attributes": {"copper/contact_type": "Customer"}},
    {"hull_id": "a3", "external_id": "E3", "attributes": {"copper/contact_type": "Prospect"}},
)
USERS = users(
    {"hull_id": "u1", "email": "a@x.com", "account": "a1"},
    {"hull_id": "u2", "account": "a1"},
    {"hull_id": "u3", "email": "c@x.com", "account": "a2"},
    {"hull_id": "u4", "email": "d@x.com"},
)


def segment_map(frame: pd.DataFrame) -> dict[str, list[str]]:
    return dict(zip(frame["hull_id"], frame["segments"], strict=True))


def test_the_example_configuration_segments() -> None:
    scored_users, scored_accounts = evaluate_segments(USERS, ACCOUNTS, example_settings().segments)
    assert segment_map(scored_accounts) == {"a1": ["Customer accounts"], "a2": [], "a3": []}
    assert segment_map(scored_users) == {"u1": ["Customers"], "u2": [], "u3": [], "u4": []}
    assert list(scored_users.columns[:-1]) == list(USERS.columns)


@pytest.mark.parametrize(("parallel_rows", "cores"), [(4, True), (5, False)])
def test_segments_of_a_large_store_are_evaluated_on_every_core(
    monkeypatch: pytest.MonkeyPatch, parallel_rows: int, cores: bool
) -> None:
    """The batch is locked down before it loads anything: its size is known first."""
    monkeypatch.setattr(batch_module, "PARALLEL_ROWS", parallel_rows)
    seen: list[int] = []
    real_lock_down = segments_module.lock_down

    def lock_down(conn: Any) -> Any:
        locked = real_lock_down(conn)
        seen.append(int(conn.execute("select current_setting('threads')").fetchall()[0][0]))
        return locked

    monkeypatch.setattr(segments_module, "lock_down", lock_down)
    evaluate_segments(USERS, ACCOUNTS, example_settings().segments)  # 4 users, 3 accounts
    default = duckdb.connect().execute("select current_setting('threads')").fetchall()[0][0]
    assert seen == [int(default) if cores else 1]


def test_user_predicates_see_the_account_columns() -> None:
    segments = SegmentSettings(
        accounts={"Has external id": "external_id is not null"},
        users={
            "Account E1": "account_external_id = 'E1'",
            "Prospect account": "account_attributes->>'copper/contact_type' = 'Prospect'",
            "No account": "account_hull_id is null",
            "Tagged account": "len(account_segments) > 0",
        },
    )
    scored_users, _ = evaluate_segments(USERS, ACCOUNTS, segments)
    assert segment_map(scored_users) == {
        "u1": ["Account E1", "Tagged account"],
        "u2": ["Account E1", "Tagged account"],
        "u3": [],
        "u4": ["No account"],
    }


def test_several_segments_keep_configuration_order() -> None:
    segments = SegmentSettings(accounts={"Z first": "true", "A second": "hull_id = 'a1'"})
    _, scored = evaluate_segments(USERS, ACCOUNTS, segments)
    assert scored.set_index("hull_id").loc["a1", "segments"] == ["Z first", "A second"]


def test_previous_segments_are_replaced() -> None:
    stale = ACCOUNTS.assign(segments=[["Old"]] * len(ACCOUNTS))
    _, scored = evaluate_segments(USERS, stale, SegmentSettings())
    assert scored["segments"].tolist() == [[], [], []]


@pytest.mark.parametrize(
    "predicate",
    [
        "no_such_column = 1",
        "email = 'x'; drop table users_v",
        "(email is null",
        "email::integer = 1",
    ],
)
def test_a_broken_predicate_names_its_segment(predicate: str) -> None:
    segments = SegmentSettings(users={"Fine": "true", "Broken one": predicate})
    with pytest.raises(SegmentError, match="user segment 'Broken one'") as caught:
        evaluate_segments(USERS, ACCOUNTS, segments)
    assert caught.value.name == "Broken one"


def test_validation_compiles_against_empty_tables() -> None:
    validate_segments(example_settings().segments)
    with pytest.raises(SegmentError, match="account segment 'Bad'"):
        validate_segments(SegmentSettings(accounts={"Bad": "attributes->>'x' = "}))


def test_empty_tables_get_an_empty_segments_column() -> None:
    scored_users, scored_accounts = evaluate_segments(
        empty_store("user"), empty_store("account"), example_settings().segments
    )
    assert scored_users.empty and "segments" in scored_users.columns
    assert scored_accounts.empty and "segments" in scored_accounts.columns


@pytest.mark.parametrize(
    ("predicate", "read"),
    [
        (
            "email is not null and list_contains(account_segments, 'Customer accounts')",
            {"segments"},
        ),
        (
            "ACCOUNT_Attributes->>'plan' = 'Pro' and users_v.account_domain <> ''",
            {"attributes", "domain"},
        ),
        ("list_filter(account_segments, lambda s: s like 'C%') <> []", {"segments"}),
        ("list_filter([{'d': account_domain}], lambda s: s.d = 'x') <> []", {"domain"}),
        (
            "list_filter(account_anonymous_ids, lambda s, i: s = email and i > 0) <> []",
            {"anonymous_ids"},
        ),
        ("account_hull_id is not null and attributes->>'x' = '1'", set()),
        ("case when account_external_id is null then false else true end", {"external_id"}),
    ],
)
def test_the_account_columns_user_segments_read(predicate: str, read: set[str]) -> None:
    segments = SegmentSettings(users={"Members": "true", "Tested": predicate})
    assert account_columns_read(segments) == read


@pytest.mark.parametrize(
    "predicate",
    [
        "exists (select 1 from accounts_s where domain = account_domain)",  # other rows
        "columns('account_.*') is not null",  # columns named by a pattern
        "users_v is not null",  # the whole row
        "count(*) over () > 1",  # other rows again
        "list_filter(account_segments, lambda email: email = 'x') <> []",  # shadows a column
        "some_unknown_column = 1",
        "true), (false",  # not one expression
    ],
)
def test_a_predicate_whose_reads_cannot_be_named_reads_every_account_column(
    predicate: str,
) -> None:
    assert account_columns_read(SegmentSettings(users={"Unclear": predicate})) is None


def test_without_user_segments_no_account_column_is_read() -> None:
    assert account_columns_read(SegmentSettings(accounts={"All": "true"})) == set()


def _moving(read: frozenset[str] | None, **after: Any) -> set[str]:
    before = ACCOUNTS
    stored = {"a1": ["Customer accounts"], "a2": [], "a3": []}
    new = ACCOUNTS.assign(segments=[["Customer accounts"], [], []])
    for column, (hull_id, value) in after.items():
        new.loc[new["hull_id"] == hull_id, column] = pd.Series([value], dtype=object).values
    return moving_accounts(before, stored, new, read)


def test_an_account_moves_its_users_only_when_a_column_their_segments_read_changed() -> None:
    renamed = json.dumps({"copper/contact_type": "Customer", "copper/name": "New"})
    # a changed name: the example's user segment reads only the account's segments
    assert _moving(frozenset({"segments"}), attributes=("a1", renamed)) == set()
    assert _moving(frozenset({"segments", "attributes"}), attributes=("a1", renamed)) == {"a1"}
    assert _moving(frozenset({"segments"}), segments=("a2", ["Customer accounts"])) == {"a2"}
    assert _moving(frozenset({"anonymous_ids"}), anonymous_ids=("a3", ["copper:3"])) == {"a3"}
    assert _moving(
        frozenset({"updated_at"}), updated_at=("a3", pd.Timestamp(T0) + pd.Timedelta(1, "s"))
    ) == {"a3"}
    assert _moving(frozenset({"external_id", "anonymous_ids", "updated_at"})) == set()
    assert _moving(frozenset({"domain"}), domain=("a2", pd.NA)) == set()  # NULL either way
    assert _moving(frozenset({"domain"}), domain=("a2", "a2.io")) == {"a2"}
    # unknown reads: every changed account moves its users, as does one not read before
    assert _moving(None) == {"a1", "a2", "a3"}
    fresh = ACCOUNTS.iloc[[0]].assign(hull_id="a9", segments=[[]])
    assert moving_accounts(ACCOUNTS, {}, fresh, frozenset({"segments"})) == {"a9"}
