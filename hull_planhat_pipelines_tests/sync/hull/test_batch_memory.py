"""What a sync's batch holds at once: each staged table leaves as soon as nothing reads it.

A first load's peak is where the most tables live side by side: every object's raw JSON while
the activities were staged, every staged attribute beside the wanted values and the upserts,
the upserts beside the new profiles as they crossed into pandas. Each case spies on the
batch's statements and asks DuckDB what the batch held when the statement ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from hull_planhat_pipelines.sync.hull.apply import apply_changes
from hull_planhat_pipelines.sync.hull.batch import Batch
from hull_planhat_pipelines.sync.hull.changes import ProfileStore, compute_changes
from hull_planhat_pipelines_tests.hull_support import NOW, example_settings
from hull_planhat_pipelines_tests.sync.hull.test_from_copper import (
    activity,
    company,
    lead,
    opportunity,
    person,
    rows,
)

SETTINGS = example_settings()


def _tables(batch: Batch) -> set[str]:
    return {r[0] for r in batch.con.execute("select table_name from duckdb_tables()").fetchall()}


@contextmanager
def _seen(
    monkeypatch: pytest.MonkeyPatch, method: str, starts: str, look: Callable[[Batch], Any]
) -> Iterator[list[Any]]:
    """What ``look`` found in the batch just before each ``Batch.<method>`` statement that
    starts with ``starts`` ran."""
    found: list[Any] = []
    original = getattr(Batch, method)

    def spy(self: Batch, query: str, *args: Any, **kwargs: Any) -> Any:
        if " ".join(query.split()).startswith(starts):
            found.append(look(self))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(Batch, method, spy)
    yield found


def _copper() -> Any:
    return rows(
        leads=[lead(1, "ann@x.com")],
        people=[person(2, "bob@y.com", company_id=7)],
        companies=[company(7, domain="y.com")],
        opportunities=[opportunity(9, "New Business", 7, 2)],
        activities=[activity(11, ("person", 2), "Meeting")],
    )


def test_activities_are_staged_without_the_other_objects_raw_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        _seen(monkeypatch, "sql", "create or replace temp table _act", _tables) as at_start,
        _seen(monkeypatch, "sql", "insert into in_events", _tables) as at_events,
    ):
        compute_changes(SETTINGS, ProfileStore(), _copper(), now=NOW)
    assert at_start and at_events
    raw = {"cu_leads", "cu_people", "cu_companies", "cu_opportunities", "_src", "_opp"}
    assert not raw & at_start[0]
    assert "cu_activities" in at_start[0]
    assert "cu_activities" not in at_events[0]  # only the values read from its JSON stay


def test_a_kind_s_staged_attributes_leave_once_its_wanted_values_are_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def kinds(batch: Batch) -> set[str]:
        return {r[0] for r in batch.con.execute("select kind from in_attributes").fetchall()}

    with _seen(monkeypatch, "sql", "create or replace temp table upserts_", kinds) as staged:
        changes = compute_changes(SETTINGS, ProfileStore(), _copper(), now=NOW)
    # users first (the accounts' rows still wait), then accounts: each consumed its own
    assert staged == [{"account"}, set()]
    assert len(changes.user_upserts) and len(changes.account_upserts)


def test_rewritten_profiles_cross_into_pandas_without_the_upserts_beside_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The new profiles are built in the sync's batch; when they cross into pandas, the
    upserts (and the attribute rows they were built from) have left it."""
    with _seen(monkeypatch, "frame", "select * from rewrite_", _tables) as exported:
        changes = compute_changes(SETTINGS, ProfileStore(), _copper(), now=NOW)
    assert len(exported) == 2  # users, accounts
    for kind, tables in zip(("user", "account"), exported, strict=True):
        assert f"rewrite_{kind}" in tables
        assert not {"upserts_user", "upserts_account", "_rw_attrs", "in_attributes"} & tables
        assert not {"lk", "in_links"} & tables  # the links are built
    store = apply_changes(ProfileStore(), changes, NOW)
    assert len(store.users) and len(store.accounts)
